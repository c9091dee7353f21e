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

from wachat_async import InvalidResponseError, QRImage, TLSVerificationError, WachatError
from wachat_async._network import CA_HINT
from wachat_async._redact import mentions, redact
from wachat_async.testing._program import (
    OutputError,
    silence,
    write_diagnostic,
    write_out,
    writing,
)

from ._exit import BASE_URL_NOTE, UsageError, wrong_base_url
from ._extras import need
from ._terminal import qr_modules, render_half_blocks

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "MIN_REDACTED_KEY",
    "PROG",
    "LogHandler",
    "Out",
    "OutputError",
    "describe",
    "is_stdout",
    "isatty",
    "one_line",
    "plural",
    "print_qr",
    "silence_stdout",
    "stderr_line",
    "stdout_is_unicode",
    "write_stdout",
    "write_stdout_bytes",
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

    def cell(self, text: str) -> str:
        """*text* for a table cell: redacted, and escaped (``\\xf6``) where stdout's encoding
        cannot carry a character, before the table is laid out (so its columns stay aligned)."""
        text = self.clean(text)
        if stdout_is_unicode():
            return text
        encoding = getattr(sys.stdout, "encoding", None) or "ascii"
        return text.encode(encoding, "backslashreplace").decode(encoding)

    def result(self, text: str) -> None:
        """A line of the command's output (stdout), shown even with --quiet."""
        write_stdout(self.clean(text) + "\n")

    def info(self, text: str) -> None:
        """An informational line (stdout), hidden by --quiet."""
        if not self.quiet:
            self.result(text)

    def note(self, text: str) -> None:
        """A side remark (stderr), hidden by --quiet."""
        if not self.quiet:
            stderr_line(self.clean(text))

    def warning(self, text: str, *, library: bool = False) -> None:
        """A warning (stderr), always shown. A *library* warning's fixed text (which names
        ``apiKey=...`` as a placeholder, a credential's shape to the redactor) is shown as
        written unless it holds a key in use."""
        shown = text if library and not mentions(text, self.secrets) else self.clean(text)
        stderr_line(f"{PROG}: warning: {shown}")

    def error(self, text: str, *, prog: str = PROG, label: str = "") -> None:
        """One line on stderr, always shown. *label*, our own words put before *text*, is not
        passed through the redactor (``argument --api-key: expected one argument`` would
        otherwise look like an ``api-key: <secret>`` pair to it)."""
        stderr_line(f"{prog}: error: {one_line(label + self.clean(text))}")

    def hint(self, text: str) -> None:
        """A line that says what to try, after an error (stderr, always shown)."""
        stderr_line(f"{PROG}: hint: {one_line(self.clean(text))}")

    def console(self, *, stderr: bool) -> Console:
        """A rich console on stdout or stderr (silent on stderr with --quiet)."""
        need("rich")
        from rich.console import Console

        return Console(stderr=stderr, highlight=False, quiet=self.quiet and stderr)

    def tables(self, *renderables: object) -> None:
        """Print rich tables on stdout: as they are on a terminal; piped, as plain lines that
        never wrap (an instance name stays whole, whatever its length) and never end in
        spaces, for grep, awk and diff. A table's title is a line of its own above it, in both
        cases: rich would wrap it to the table's width ("1000 instances in 2.86" / "s")."""
        need("rich")
        from rich.console import Console
        from rich.text import Text

        console = self.console(stderr=False)
        terminal = console.is_terminal
        if not terminal:  # rendered in memory, as wide as it takes; stdout is written below
            capture = _Capture(getattr(sys.stdout, "encoding", None) or "utf-8")
            console = Console(file=capture, width=_PIPE_WIDTH, highlight=False, no_color=True)
        with writing("stdout"):
            for renderable in renderables:
                title = getattr(renderable, "title", None)
                if title is not None:
                    renderable.title = None  # type: ignore[attr-defined]
                    heading = title if isinstance(title, Text) else Text(str(title))
                    heading.no_wrap = True
                    console.print(heading, crop=False, soft_wrap=True)
                console.print(renderable, crop=False)
        if not terminal:
            assert isinstance(console.file, io.StringIO)
            for line in console.file.getvalue().splitlines():
                self.result(line.rstrip())


class _Capture(io.StringIO):
    """Where piped tables are rendered: a StringIO that states stdout's encoding, so that rich
    draws ASCII borders for an ASCII stdout (``PYTHONIOENCODING=ascii``) as it would there."""

    def __init__(self, encoding: str) -> None:
        super().__init__()
        self._encoding = encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding


def stdout_is_unicode() -> bool:
    """Whether stdout's encoding takes any character (UTF-8 and its kin)."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    return encoding.lower().replace("-", "").replace("_", "").startswith("utf")


def write_stdout(text: str) -> None:
    """Write *text* on stdout and flush it: a failure other than a gone reader (EPIPE, which
    stays a BrokenPipeError) is an :class:`OutputError` (one line, exit 8). A character that
    stdout's encoding cannot carry (``PYTHONIOENCODING=ascii``) is written escaped, ``\\xf6``,
    rather than failing the command."""
    try:
        write_out(text)
    except UnicodeEncodeError as exc:
        write_out(text.encode(exc.encoding, "backslashreplace").decode(exc.encoding))


def write_stdout_bytes(data: bytes) -> None:
    """Write *data* (a PNG) on stdout's binary buffer, as :func:`write_stdout` does text."""
    with writing("stdout"):
        sys.stdout.flush()  # nothing written before may come after
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def stderr_line(line: str) -> None:
    """*line* on stderr if it can be written: stderr carries diagnostics only, and a closed
    or full stderr leaves nowhere to complain, so a failure there never fails the command."""
    write_diagnostic(line + "\n")


def is_stdout(path: str) -> bool:
    """Whether *path* is where stdout goes: ``-``, or a path to the same file as descriptor 1
    (``/dev/stdout``, ``/dev/fd/1``, ``/proc/self/fd/1``, the file stdout is redirected to)."""
    if path == "-":
        return True
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):  # no such file, or stdout has no descriptor
        return False


def silence_stdout() -> None:
    """Point stdout at /dev/null after its reader went away or a write to it failed (see
    :func:`wachat_async.testing._program.silence`)."""
    silence(sys.stdout)


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def one_line(text: str) -> str:
    """*text* on one line, with any control character shown escaped (never sent raw)."""
    text = " ".join(text.splitlines())
    return _CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], text)


def describe(error: WachatError, *, ca_file: str | None = None) -> str:
    """``ClassName: message (notes)`` on one line (the message is already redacted); for a
    404 that is the route's, not the instance's (:func:`wrong_base_url`), a line that says the
    base URL looks wrong instead of "instance not found" (the commands' hints() then say what
    the base URL should be). With *ca_file* (``--ca-file`` was given), an unknown-CA failure
    says that file's CAs do not sign the certificate, instead of advising ``--ca-file``."""
    # The client's base-URL note is replaced by the CLI's own hint, worded for --base-url.
    notes = [n for n in getattr(error, "__notes__", []) if not str(n).startswith(BASE_URL_NOTE)]
    if wrong_base_url(error):
        body = getattr(error, "body", "")
        text = "the base URL looks wrong: 404 for the API route itself, not the instance" + (
            f"; server said: {body}" if body else ""
        )
    else:
        text = f"{type(error).__name__}: {error}"
        if ca_file is not None and isinstance(error, TLSVerificationError):
            text = text.replace(
                CA_HINT,
                f"The CA certificates in {ca_file} (--ca-file) do not sign this server's "
                "certificate: is it the CA that issued it?",
            )
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
        except Exception:  # pragma: no cover - logging must never break the command
            self.handleError(record)
        else:
            stderr_line(f"{PROG}: {level}: {line}")


def plural(count: int, noun: str) -> str:
    """``1 instance``, ``2 instances``, ``0 instances``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def isatty(stream: object) -> bool:
    """Whether *stream* is a terminal (False for a stream without isatty, or a closed one)."""
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


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
        write_out(text)  # strict: an escaped block character would draw no QR
    except UnicodeEncodeError:
        raise UsageError(
            "this terminal cannot print Unicode block characters (set PYTHONIOENCODING=utf-8, "
            "or save the PNG with 'fetch -o FILE')"
        ) from None
