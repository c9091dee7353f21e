"""Where ``wachat-qr`` writes: results on stdout; progress, notes, warnings, errors on stderr.

:class:`Out` is every command's writer: each line passes through the key redactor (a last
safety net: the library never puts the key in a message), errors and hints are one line with
control characters shown escaped, and rich tables piped into another program come out as plain
lines that never wrap. :func:`describe` turns a library error into that one line;
:class:`LogHandler` shows the library's log records the same way; :func:`print_qr` draws a QR
on stdout.

Never makes a request, never decides an exit status, and imports rich only when a table or a
console is asked for (the base install has no rich).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from wachat_async import InvalidResponseError, QRImage, WachatError
from wachat_async._redact import redact

from ._exit import UsageError
from ._extras import need
from ._terminal import qr_modules, render_half_blocks

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "MIN_REDACTED_KEY",
    "PROG",
    "LogHandler",
    "Out",
    "describe",
    "isatty",
    "one_line",
    "plural",
    "print_qr",
    "silence_stdout",
]

#: The program's name: the first word of every line it writes on stderr.
PROG: Final = "wachat-qr"

#: Keys shorter than this are not redacted: a key of a few characters would turn every "x" of
#: the output into [REDACTED], and keys that short are no secret anyway (real ones are long,
#: and the client never prints them).
MIN_REDACTED_KEY: Final = 6
#: Piped tables are laid out this wide: as wide as their content, never wrapped.
_PIPE_WIDTH: Final = 100_000


class Out:
    """Where a command writes. stdout carries results, stderr progress, warnings and errors.

    Everything passes through :func:`redact` with the keys in use, as a last safety net.
    """

    def __init__(self, quiet: bool, secrets_: Sequence[str]) -> None:
        self.quiet = quiet
        self.secrets: list[str] = []
        self.add_secrets(secrets_)

    def add_secrets(self, secrets_: Sequence[str | None]) -> None:
        """Redact these too (keys too short to be secrets are skipped: see MIN_REDACTED_KEY)."""
        self.secrets.extend(s for s in secrets_ if s and len(s) >= MIN_REDACTED_KEY)

    def clean(self, text: str) -> str:
        return redact(text, self.secrets)

    def result(self, text: str) -> None:
        """A line of the command's output (stdout), shown even with --quiet."""
        sys.stdout.write(self.clean(text) + "\n")
        sys.stdout.flush()

    def info(self, text: str) -> None:
        """An informational line (stdout), hidden by --quiet."""
        if not self.quiet:
            self.result(text)

    def note(self, text: str) -> None:
        """A side remark (stderr), hidden by --quiet."""
        if not self.quiet:
            sys.stderr.write(self.clean(text) + "\n")
            sys.stderr.flush()

    def warning(self, text: str) -> None:
        """A warning (stderr), always shown."""
        self._stderr_line(f"{PROG}: warning: {self.clean(text)}")

    def error(self, text: str, *, prog: str = PROG) -> None:
        """One line on stderr, always shown."""
        self._stderr_line(f"{prog}: error: {one_line(self.clean(text))}")

    def hint(self, text: str) -> None:
        """A line that says what to try, after an error (stderr, always shown)."""
        self._stderr_line(f"{PROG}: hint: {one_line(self.clean(text))}")

    @staticmethod
    def _stderr_line(line: str) -> None:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or gone: nowhere left to complain
            pass

    def console(self, *, stderr: bool) -> Console:
        """A rich console on stdout or stderr (silent on stderr with --quiet)."""
        need("rich")
        from rich.console import Console

        return Console(stderr=stderr, highlight=False, quiet=self.quiet and stderr)

    def tables(self, *renderables: object) -> None:
        """Print rich tables on stdout: as they are on a terminal; piped, as plain lines that
        never wrap (an instance name stays whole, whatever its length) and never end in
        spaces, for grep, awk and diff."""
        console = self.console(stderr=False)
        if console.is_terminal:
            for renderable in renderables:
                console.print(renderable)
            return
        console.width = _PIPE_WIDTH
        with console.capture() as captured:
            for renderable in renderables:
                console.print(renderable, crop=False)
        for line in captured.get().splitlines():
            self.result(line.rstrip())


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def one_line(text: str) -> str:
    """*text* on one line, with any control character shown escaped (never sent raw)."""
    text = " ".join(text.splitlines())
    return _CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], text)


#: Notes the CLI replaces by its own, CLI-worded hint (see the commands' hints()).
_BASE_URL_NOTE: Final = "is the base URL right?"


def describe(error: WachatError) -> str:
    """``ClassName: message (notes)`` on one line (the message is already redacted)."""
    notes = [n for n in getattr(error, "__notes__", []) if not str(n).startswith(_BASE_URL_NOTE)]
    text = f"{type(error).__name__}: {error}"
    if notes:
        text += " (" + "; ".join(str(n) for n in notes) + ")"
    return text


class LogHandler(logging.Handler):
    """Shows the library's warnings (and, with -v, its retry lines) on stderr, one line each."""

    def __init__(self, out: Out) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = record.levelname.lower()
            line = " ".join(self.out.clean(record.getMessage()).splitlines())
            sys.stderr.write(f"{PROG}: {level}: {line}\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must never break the command
            self.handleError(record)


def plural(count: int, noun: str) -> str:
    """``1 instance``, ``2 instances``, ``0 instances``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def isatty(stream: object) -> bool:
    """Whether *stream* is a terminal (False for a stream without isatty, or a closed one)."""
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def silence_stdout() -> None:
    """The reader of stdout went away: point stdout at /dev/null, so that the interpreter's
    final flush cannot fail too and print "Exception ignored ... BrokenPipeError"."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a real file (tests) or already gone: nothing will be flushed to it


def _use_color(choice: str) -> bool:
    if choice == "auto":
        return sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    return choice == "always"


def print_qr(qr: QRImage, args: argparse.Namespace) -> None:
    """Draw *qr* on stdout with the terminal options in *args* (``--color``, ``--invert``,
    ``--border``).

    A PNG with no QR code in it is an :class:`InvalidResponseError` (exit 7); a terminal that
    cannot print the block characters a :class:`UsageError` that says what to do instead.
    """
    try:
        modules = qr_modules(qr.data)
    except ValueError as exc:
        raise InvalidResponseError(
            f"cannot draw the QR of {qr.instance_name!r}: {exc}", instance_name=qr.instance_name
        ) from None
    text = render_half_blocks(
        modules, border=args.border, invert=args.invert, color=_use_color(args.color)
    )
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        raise UsageError(
            "this terminal cannot print Unicode block characters (set PYTHONIOENCODING=utf-8, "
            "or save the PNG with 'fetch -o FILE')"
        ) from None
    sys.stdout.flush()
