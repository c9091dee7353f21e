"""What both command lines share: ``wachat-qr`` and the fake server's own program.

* The argparse types (:func:`integer`, :func:`seconds`): each checks a value as it is parsed
  and states the true bound when it refuses one, so ``--retries -2`` says ``from 0 to 100``.
* Standard streams that cannot be written, handled as Unix tools do. A process started with
  stdout or stderr closed (``>&-``) has ``sys.stdout``/``sys.stderr`` set to ``None`` by
  Python: :func:`closed_streams_stand_in` puts a :class:`ClosedStream` there, whose writes
  fail with ``EBADF`` as writing a closed descriptor does. A failed write of a result on stdout
  other than a gone reader (``EPIPE``: quiet, 141) is an :class:`OutputError`, which each
  program reports in one line with exit status 8 (local I/O error); :func:`silence` then points
  the descriptor at ``/dev/null`` so that the interpreter's last flush cannot fail again.

They live here, beside the fake server, because the fake server imports nothing of
wachat-async outside ``testing/`` while ``cli/`` may import ``testing/``: this is the one place
both may share. No request, no parsing of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import math
import os
import sys
from collections.abc import Callable, Iterator
from typing import TextIO, cast

__all__ = [
    "ClosedStream",
    "OutputError",
    "closed_streams_stand_in",
    "integer",
    "print_message",
    "seconds",
    "silence",
    "write_diagnostic",
    "write_out",
    "writing",
]


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type for an integer option whose error states the true bounds."""
    bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text!r}")
        return value

    return parse


def seconds(*, zero: bool) -> Callable[[str], float]:
    """An argparse type for a finite number of seconds, > 0 (or >= 0 when *zero*)."""
    bound = ">= 0" if zero else "> 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
        return value

    return parse


class OutputError(Exception):
    """Writing *stream* failed, other than by its reader going away: a closed descriptor
    (``EBADF``), a full disk (``ENOSPC``, ``/dev/full``), an I/O error. One line, exit 8."""

    def __init__(self, stream: str, error: BaseException) -> None:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        super().__init__(f"cannot write to {stream}: {reason}")
        self.stream = stream
        self.errno: int | None = getattr(error, "errno", None)


@contextlib.contextmanager
def writing(stream: str = "stdout") -> Iterator[None]:
    """Turn a failed write (or flush) of *stream* inside the block into an :class:`OutputError`.

    A :class:`BrokenPipeError` (the reader went away) passes as itself, for the quiet exit 141,
    and so does a :class:`UnicodeError` (a text the stream's encoding cannot carry: its own
    message). Keep the block to the writes themselves.
    """
    try:
        yield
    except (BrokenPipeError, UnicodeError):
        raise
    except (OSError, ValueError) as exc:  # ValueError: "I/O operation on closed file"
        raise OutputError(stream, exc) from None


def write_out(text: str, stream: TextIO | None = None) -> None:
    """Write *text* on *stream* (default: ``sys.stdout`` now) and flush it, a failure being an
    :class:`OutputError` (see :func:`writing`)."""
    with writing("stdout"):
        target = sys.stdout if stream is None else stream
        target.write(text)
        target.flush()


def write_diagnostic(text: str, stream: TextIO | None = None) -> None:
    """Write *text* on *stream* (default: ``sys.stderr`` now) if it can be written: stderr
    carries diagnostics only, and a closed or full one leaves nowhere to complain, so a
    failure there never fails the program."""
    target = sys.stderr if stream is None else stream
    try:
        target.write(text)
        target.flush()
    except (OSError, ValueError):  # UnicodeEncodeError included: a diagnostic is not worth it
        pass


def print_message(message: str, file: object = None) -> None:
    """What ``argparse.ArgumentParser._print_message`` should do (a parser's override calls
    this): argparse's own swallows every ``OSError``, so ``--help >/dev/full`` exited 0. On
    stdout (``--help``, ``--version``) a failed write is an :class:`OutputError`, as GNU tools
    fail; anything else goes to stderr as a diagnostic."""
    if not message:
        return
    if file is None or file is sys.stdout:
        write_out(message)
    else:
        write_diagnostic(message, cast(TextIO, file))


class _ClosedBinary:
    """The ``buffer`` of a :class:`ClosedStream`: its reads and writes fail the same way."""

    def write(self, data: bytes) -> int:
        if not data:
            return 0
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def read(self, size: int = -1) -> bytes:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def flush(self) -> None:
        """Nothing is ever buffered."""


class ClosedStream:
    """Stands in for ``sys.stdin``, ``sys.stdout`` or ``sys.stderr`` when the process started
    with that descriptor closed (``>&-``, ``<&-``), where Python leaves ``None`` and a write
    would be an ``AttributeError``. Reading, or writing anything, fails with
    ``OSError(EBADF)``; it is no terminal and has no descriptor."""

    encoding = "utf-8"
    errors = "strict"
    closed = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.buffer = _ClosedBinary()

    def write(self, text: str) -> int:
        if not text:  # as a real stream: writing nothing cannot fail (rich does it)
            return 0
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def read(self, size: int = -1) -> str:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def flush(self) -> None:
        """Nothing is ever buffered."""

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation(f"{self.name} was closed when the program started")


@contextlib.contextmanager
def closed_streams_stand_in() -> Iterator[None]:
    """For the block, a :class:`ClosedStream` in place of a ``None`` stdin, stdout or stderr
    (put back afterwards): reading a closed stdin fails with ``EBADF`` too."""
    stdin, stdout, stderr = sys.stdin, sys.stdout, sys.stderr
    if stdin is None:
        sys.stdin = cast(TextIO, ClosedStream("<stdin>"))
    if stdout is None:
        sys.stdout = cast(TextIO, ClosedStream("<stdout>"))
    if stderr is None:
        sys.stderr = cast(TextIO, ClosedStream("<stderr>"))
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr


def silence(stream: TextIO | None) -> None:
    """Point *stream*'s descriptor at ``/dev/null`` (after its reader went away, or a write to
    it failed), so that the interpreter's final flush of what is still buffered cannot fail
    too and print "Exception ignored ...". Nothing for a stream without a descriptor."""
    try:
        target = stream.fileno()  # type: ignore[union-attr]
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, target)
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        pass  # not a real file (tests), a stand-in, or already gone: nothing to flush into
