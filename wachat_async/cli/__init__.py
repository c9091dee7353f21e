"""``wachat-qr``: the command line for the Wachat QR-code endpoint.

Installed with the ``cli`` extra (``pip install 'wachat-async[cli]'``, which brings rich, Pillow
and segno); ``python -m wachat_async`` runs the same ``main``. Commands::

    wachat-qr fetch NAME [-o FILE]            save the QR PNG (-o - writes it to stdout)
    wachat-qr show NAME                       print the QR in the terminal (Unicode half blocks)
    wachat-qr url NAME [--expose-api-key]     print the image URL (key only with the flag)
    wachat-qr poll NAME... | --from-file F    fetch a fleet: progress, summary table or --json
    wachat-qr watch NAME [--until-connected]  print the QR again each time it changes
    wachat-qr fake-server                     the fake server (= python -m wachat_async.testing)
    wachat-qr demo                            all of the above against an in-process fake server

The API key comes from ``--api-key`` or, better, the ``WACHAT_API_KEY`` environment variable (a
command-line flag is visible to other users in ``ps`` and lands in shell history); the base URL
from ``--base-url`` or ``WACHAT_BASE_URL``. The key is never printed, except inside the URL that
``url --expose-api-key`` was asked for.

Errors are one line on stderr (sometimes followed by one ``hint:`` line), never a traceback
(``--debug`` adds it for unexpected errors), and the exit status says what kind:

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success
1     ``poll``: at least one instance failed (details in the table or the JSON); or a
      library error of no more specific kind
2     usage or configuration error (bad option or name, no API key, missing ``cli`` extra)
3     authentication: 401 invalid key, 403 subscription does not allow QR codes
4     not found or not possible: 404 unknown instance, 409 not a Baileys instance, 400
5     upstream failure: 502/504 after the retries gave up, or an undocumented status
6     connection failure or timeout
7     invalid response: not a PNG, truncated, or larger than the size cap
8     local I/O error: a file could not be written, a port could not be bound
70    internal error: an unexpected exception (a bug; ``--debug`` shows the traceback)
130   interrupted (Ctrl-C)
141   stdout was closed by its reader (``| head``): stop quietly, as SIGPIPE would
====  ==========================================================================

``poll --json`` writes JSON Lines: one object per distinct instance, in order of completion,
flushed as each completes, and nothing else on stdout. Success:
``{"instance": ..., "ok": true, "file": path-or-null, "width": ..., "height": ...,
"bytes": ..., "sha256": ...}``; failure: ``{"instance": ..., "ok": false,
"error": "InstanceNotFoundError", "status": 404-or-null, "exit_code": 4, "message": ...,
"attempts": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import io
import json
import logging
import math
import os
import random
import re
import secrets
import string
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

import attrs
from yarl import URL

from .._client import WachatClient
from .._errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    InstanceNotFoundError,
    InvalidResponseError,
    QRNotSupportedError,
    SubscriptionRestrictedError,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)
from .._files import write_bytes_async
from .._models import QRImage, QRResult
from .._polling import fetch_many, watch_qr
from .._redact import redact
from .._retry import RetryPolicy
from .._urls import DEFAULT_BASE_URL, build_qr_image_url
from .._validate import check_instance_name
from .._version import __version__

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "EXIT_AUTH",
    "EXIT_BROKEN_PIPE",
    "EXIT_CONNECTION",
    "EXIT_FAILED",
    "EXIT_FILE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UPSTREAM",
    "EXIT_USAGE",
    "exit_code_for",
    "main",
    "qr_modules",
    "render_half_blocks",
]

PROG: Final = "wachat-qr"
INSTALL_HINT: Final = "pip install 'wachat-async[cli]'"

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_AUTH: Final = 3
EXIT_NOT_FOUND: Final = 4
EXIT_UPSTREAM: Final = 5
EXIT_CONNECTION: Final = 6
EXIT_INVALID: Final = 7
EXIT_FILE: Final = 8
EXIT_INTERNAL: Final = 70  # sysexits.h EX_SOFTWARE
EXIT_INTERRUPTED: Final = 130
EXIT_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE: what a shell reports for `cat` or `grep`

#: Every exit status main() can return (the table above).
EXIT_CODES: Final = frozenset(
    {
        EXIT_OK,
        EXIT_FAILED,
        EXIT_USAGE,
        EXIT_AUTH,
        EXIT_NOT_FOUND,
        EXIT_UPSTREAM,
        EXIT_CONNECTION,
        EXIT_INVALID,
        EXIT_FILE,
        EXIT_INTERNAL,
        EXIT_INTERRUPTED,
        EXIT_BROKEN_PIPE,
    }
)

#: The retry policy of every command but ``demo`` (tests swap in a zero-wait one).
RETRY_POLICY = RetryPolicy()

_EPILOG = """\
environment:
  WACHAT_API_KEY    the API key (preferred over --api-key: a flag is visible in `ps`
                    and in shell history)
  WACHAT_BASE_URL   the API base URL (default https://app.wachat.net/api/v1)

exit status:
  0 ok    1 some instances failed (poll)    2 usage/configuration error
  3 authentication (401/403)    4 not found (404/409/400)    5 upstream (502/504/other status)
  6 connection/timeout    7 invalid response (not a PNG, too large)    8 local I/O error
  70 internal error (--debug shows the traceback)    130 interrupted
  141 stdout closed by its reader (e.g. `| head`)

Try it without an account: wachat-qr demo
"""


def exit_code_for(error: WachatError) -> int:
    """The exit status for *error* (see the table in the module docstring)."""
    if isinstance(error, (ConfigurationError, ValueError)):  # InvalidInstanceNameError too
        return EXIT_USAGE
    if isinstance(error, (AuthenticationError, SubscriptionRestrictedError)):
        return EXIT_AUTH
    if isinstance(error, (InstanceNotFoundError, QRNotSupportedError, BadRequestError)):
        return EXIT_NOT_FOUND
    if isinstance(error, APIStatusError):
        return EXIT_UPSTREAM
    if isinstance(error, (WachatConnectionError, WachatTimeoutError)):
        return EXIT_CONNECTION
    if isinstance(error, InvalidResponseError):
        return EXIT_INVALID
    return EXIT_FAILED


class _Usage(Exception):
    """A usage problem found after parsing (bad names file, ...): one line, exit status 2.

    *hint*, when given, is printed on a second line.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class _ParseError(Exception):
    """argparse found a bad command line (raised by :meth:`_Parser.error` instead of exiting)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors come back to :func:`main`, which prints them in one line
    (argparse's own wrapped usage block can take ten lines and echoes raw control characters)."""

    def error(self, message: str) -> NoReturn:
        raise _ParseError(self.prog, message)


class _MissingExtra(Exception):
    """rich / Pillow / segno is not installed."""


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


_MIN_REDACTED_KEY: Final = 6
#: Piped tables are laid out this wide: as wide as their content, never wrapped.
_PIPE_WIDTH: Final = 100_000


class _Out:
    """Where a command writes. stdout carries results, stderr progress, warnings and errors.

    Everything passes through :func:`redact` with the key in use, as a last safety net.
    """

    def __init__(self, quiet: bool, secrets_: Sequence[str]) -> None:
        self.quiet = quiet
        # A key of a few characters would turn every "x" of the output into [REDACTED]; keys
        # that short are no secret anyway (real ones are long, and the client never prints them).
        self.secrets = [s for s in secrets_ if len(s) >= _MIN_REDACTED_KEY]

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

    def error(self, text: str, *, prog: str = PROG) -> None:
        """One line on stderr, always shown."""
        self._stderr_line(f"{prog}: error: {_one_line(self.clean(text))}")

    def hint(self, text: str) -> None:
        """A line that says what to try, after an error (stderr, always shown)."""
        self._stderr_line(f"{PROG}: hint: {_one_line(self.clean(text))}")

    @staticmethod
    def _stderr_line(line: str) -> None:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or gone: nowhere left to complain
            pass

    def console(self, *, stderr: bool) -> Console:
        _need("rich")
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


def _one_line(text: str) -> str:
    """*text* on one line, with any control character shown escaped (never sent raw)."""
    text = " ".join(text.splitlines())
    return _CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], text)


#: Notes the CLI replaces by its own, CLI-worded hint (see _hints).
_BASE_URL_NOTE: Final = "is the base URL right?"


def _describe(error: WachatError) -> str:
    """``ClassName: message; note`` on one line (the message is already redacted)."""
    notes = [n for n in getattr(error, "__notes__", []) if not str(n).startswith(_BASE_URL_NOTE)]
    text = f"{type(error).__name__}: {error}"
    if notes:
        text += " (" + "; ".join(str(n) for n in notes) + ")"
    return text


class _LogHandler(logging.Handler):
    """Shows the library's warnings (and, with -v, its retry lines) on stderr, one line each."""

    def __init__(self, out: _Out) -> None:
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


# --------------------------------------------------------------------------------------------
# Optional dependencies
# --------------------------------------------------------------------------------------------

_EXTRA_MODULES: Final = {"rich": "rich", "PIL": "Pillow", "segno": "segno"}


def _has(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _need(*modules: str) -> None:
    missing = [_EXTRA_MODULES.get(module, module) for module in modules if not _has(module)]
    if missing:
        raise _MissingExtra(
            f"this command needs {', '.join(missing)}, from the 'cli' extra: {INSTALL_HINT}"
        )


# --------------------------------------------------------------------------------------------
# Terminal QR rendering
# --------------------------------------------------------------------------------------------

_UPPER, _LOWER, _FULL = "\u2580", "\u2584", "\u2588"  # ▀ ▄ █


def qr_modules(png: bytes) -> list[list[bool]]:
    """Read a QR code PNG into its module grid (``True`` = dark), with Pillow.

    The symbol is the bounding box of the dark pixels; the module size comes from the top-left
    finder pattern (7 modules wide), snapped to a real QR size (21 + 4k modules), and each
    module is sampled at its centre, so any scale (even a non-integer one), smoothing from a
    resize, and any quiet zone work. Transparent pixels count as white. Raises ``ValueError``
    when no QR-like symbol is found.
    """
    _need("PIL")
    from PIL import Image

    with Image.open(io.BytesIO(png)) as opened:
        image = opened.convert("RGBA")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    background.alpha_composite(image)
    grey = background.convert("L")
    mask = grey.point(lambda v: 255 if v < 128 else 0)
    box = mask.getbbox()
    if box is None:
        raise ValueError("the image has no dark pixels: not a QR code")
    left, top, right, bottom = box
    pixels = grey.load()
    assert pixels is not None

    def dark(x: float, y: float) -> bool:
        value = pixels[int(x), int(y)]
        assert isinstance(value, int)
        return value < 128

    def run_from_left(y: int) -> int:
        x = left
        while x < right and not dark(x, y):  # an anti-aliased corner may start light
            x += 1
        start = x
        while x < right and dark(x, y):
            x += 1
        return x - start

    # The finder's first module row is 7 modules of solid dark: take the longest run over the
    # rows a module can span (a smoothed, scaled image blurs the very first row).
    first_module_rows = max(1, (bottom - top) // 21)
    run = max(run_from_left(y) for y in range(top, min(bottom, top + first_module_rows + 1)))
    if run < 7:
        raise ValueError("no QR finder pattern in the top-left corner of the image")
    estimate = (right - left) / (run / 7)
    version = min(40, max(1, round((estimate - 17) / 4)))
    size = 17 + 4 * version
    if abs(size - estimate) > 1.5:
        size = max(1, round(estimate))
    step_x = (right - left) / size
    step_y = (bottom - top) / size
    return [
        [dark(left + (col + 0.5) * step_x, top + (row + 0.5) * step_y) for col in range(size)]
        for row in range(size)
    ]


#: Black on bright white: the code reads right whatever the terminal's own colours are.
_ANSI_QR, _ANSI_RESET = "\x1b[30;107m", "\x1b[0m"


def render_half_blocks(
    modules: Sequence[Sequence[bool]],
    *,
    border: int = 2,
    invert: bool = False,
    color: bool = False,
) -> str:
    """Draw a module grid with Unicode half blocks: one module per column, two rows per line.

    Without *color* the characters draw the *light* modules (and a quiet zone of *border*
    modules), so the code reads right on the usual light-on-dark terminal; *invert* draws the
    dark modules instead, for dark-on-light terminals. With *color* each line is wrapped in ANSI
    codes for black on white and the dark modules are drawn, which reads right on any terminal
    that has colours (*invert* is then ignored). Returns the lines joined by ``\\n``, ending
    with one.
    """
    rows = len(modules)
    cols = len(modules[0]) if rows else 0
    height, width = rows + 2 * border, cols + 2 * border
    draw_dark = invert or color

    def ink(row: int, col: int) -> bool:
        if row >= height:
            return False  # below the last row: plain terminal background
        r, c = row - border, col - border
        is_dark = 0 <= r < rows and 0 <= c < cols and bool(modules[r][c])
        return is_dark if draw_dark else not is_dark

    glyphs = {(True, True): _FULL, (True, False): _UPPER, (False, True): _LOWER}
    lines = [
        "".join(glyphs.get((ink(row, col), ink(row + 1, col)), " ") for col in range(width))
        for row in range(0, height, 2)
    ]
    if color:
        lines = [f"{_ANSI_QR}{line}{_ANSI_RESET}" for line in lines]
    return "\n".join(lines) + "\n"


def _use_color(args: argparse.Namespace) -> bool:
    if args.color == "auto":
        return sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    return bool(args.color == "always")


def _terminal_qr(qr: QRImage, args: argparse.Namespace) -> str:
    try:
        modules = qr_modules(qr.data)
    except ValueError as exc:
        raise InvalidResponseError(
            f"cannot draw the QR of {qr.instance_name!r}: {exc}", instance_name=qr.instance_name
        ) from None
    return render_half_blocks(
        modules, border=args.border, invert=args.invert, color=_use_color(args)
    )


def _write_terminal(text: str) -> None:
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        raise _Usage(
            "this terminal cannot print Unicode block characters (set PYTHONIOENCODING=utf-8, "
            "or save the PNG with 'fetch -o FILE')"
        ) from None
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


def png_filename(instance_name: str) -> str:
    """A file name for *instance_name*'s PNG that is safe on every OS and never collides.

    Names made only of ``A-Za-z0-9._-`` are kept; anything else is replaced by ``_`` and a short
    hash of the real name is appended, so ``a/b`` and ``a_b`` get different files.
    """
    safe = _UNSAFE_FILENAME.sub("_", instance_name)[:100]
    if safe != instance_name or safe.startswith("."):
        digest = hashlib.sha256(instance_name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        safe = f"{safe.lstrip('.') or 'instance'}-{digest}"
    return f"{safe}.png"


def _plural(count: int, noun: str) -> str:
    """``1 instance``, ``2 instances``, ``0 instances``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # no isatty, or a closed stream
        return False


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
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


def _seconds(*, zero: bool) -> Callable[[str], float]:
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


def _instance_name(text: str) -> str:
    """An argparse type for NAME: a name the client would refuse is a usage error (exit 2)."""
    try:
        return check_instance_name(text)
    except (TypeError, ValueError) as exc:  # InvalidInstanceNameError is a ValueError
        raise argparse.ArgumentTypeError(str(exc)) from None


def _path(text: str) -> str:
    """An argparse type for a file or folder: no NUL byte (the OS cannot take one)."""
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"a path cannot contain a NUL byte: {text!r}")
    if not text:
        raise argparse.ArgumentTypeError("a path must not be empty")
    return text


#: Bounds of the numeric options (the help texts and error messages state them).
_MAX_BORDER: Final = 100
_DEMO_MIN, _DEMO_MAX = 12, 10_000


def _api_key(args: argparse.Namespace) -> str | None:
    key: str | None = getattr(args, "api_key", None)
    return key if key is not None else os.environ.get("WACHAT_API_KEY")


def _retry_policy(args: argparse.Namespace) -> RetryPolicy:
    retries: int | None = getattr(args, "retries", None)
    if retries is None:
        return RETRY_POLICY
    return attrs.evolve(RETRY_POLICY, max_attempts=retries + 1)


#: What a user without a key is told (a fixed text: the redaction net leaves ``=<...>`` alone).
NO_KEY_MESSAGE: Final = (
    "no API key: export WACHAT_API_KEY=<your key> (or pass --api-key KEY, but a flag is "
    f"visible in `ps`); no account? try '{PROG} demo'"
)


def _base_url(args: argparse.Namespace) -> str:
    return getattr(args, "base_url", None) or os.environ.get("WACHAT_BASE_URL") or DEFAULT_BASE_URL


def _host(url: str) -> str:
    try:
        return URL(url).host or url
    except (TypeError, ValueError):
        return url


def _client(args: argparse.Namespace, *, max_connections: int = 100) -> WachatClient:
    key = _api_key(args)
    if key is None or not key.strip():
        raise _Usage(NO_KEY_MESSAGE)
    allow_insecure = bool(getattr(args, "allow_insecure_http", False))
    try:
        return WachatClient(
            api_key=key,
            base_url=getattr(args, "base_url", None),
            timeout=getattr(args, "timeout", None),
            retry=_retry_policy(args),
            max_connections=max_connections,
            allow_insecure_http=allow_insecure,
        )
    except ConfigurationError as exc:
        if not allow_insecure and "allow_insecure_http" in str(exc):
            raise _Usage(
                f"refusing plain http:// to {_host(_base_url(args))}: the API key would travel "
                "in clear text; use https://, or --allow-insecure-http if you mean it (for "
                "example for a fake server on another machine)"
            ) from None
        raise


def _read_names(args: argparse.Namespace) -> list[str]:
    """Names from the command line and --from-file (blank lines and ``#`` comments skipped),
    checked up front so that one bad line is a usage error, not a crash mid-fleet."""
    names: list[tuple[str, str]] = [(name, "argument") for name in args.names]
    source: str | None = args.from_file
    if source is not None:
        try:
            if source == "-":
                lines = sys.stdin.read().splitlines()
            else:
                lines = Path(source).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise _Usage(f"{source}: not UTF-8 text ({exc.reason})") from None
        for number, line in enumerate(lines, 1):
            name = line.strip()
            if name and not name.startswith("#"):
                names.append((name, f"{source}:{number}"))
    checked = []
    for name, where in names:
        try:
            checked.append(check_instance_name(name))
        except (TypeError, ValueError) as exc:
            raise _Usage(f"{where}: {exc}") from None
    if not checked:
        raise _Usage("no instance names: give NAME arguments or --from-file FILE")
    return checked


# --------------------------------------------------------------------------------------------
# Fleet polling (poll and demo)
# --------------------------------------------------------------------------------------------


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


class _Fleet:
    """Outcome of a fleet poll, for the summary."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.ok: list[QRResult] = []
        self.failed: list[QRResult] = []
        self.saved: dict[str, Path] = {}
        self.aborted: WachatError | None = None
        self.started = time.monotonic()
        self.elapsed = 0.0


async def _poll_fleet(
    client: WachatClient,
    names: Sequence[str],
    *,
    concurrency: int,
    out_dir: Path | None,
    out: _Out,
    json_lines: bool,
) -> _Fleet:
    distinct = list(dict.fromkeys(names))
    fleet = _Fleet(len(distinct))
    if out_dir is not None:
        _make_dir(out_dir)
    # The tables need rich; --json and --quiet do not, so scripts work without the extra
    # (--json then simply shows no progress bar). The bar is for a person watching a terminal:
    # on a piped or redirected stderr it would only leave a stray line behind.
    show_progress = not out.quiet and _isatty(sys.stderr) and (not json_lines or _has("rich"))
    progress = None
    if show_progress:
        _need("rich")
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(
            TextColumn("[bold]polling"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=out.console(stderr=True),
            transient=False,
        )
    with progress if progress is not None else contextlib.nullcontext():
        task = progress.add_task("poll", total=fleet.total, failed=0) if progress else None
        # The FetchMany itself (not the client method's AsyncIterator view): leaving the block
        # early (401/403, Ctrl-C) cancels what is in flight.
        async with fetch_many(client.get_qr_image, distinct, concurrency=concurrency) as results:
            async for result in results:
                _record(result, fleet, out_dir, out, json_lines)
                if progress is not None and task is not None:
                    progress.update(task, advance=1, failed=len(fleet.failed))
                if isinstance(result.error, (AuthenticationError, SubscriptionRestrictedError)):
                    # Every other request with this key would fail the same way.
                    fleet.aborted = result.error
                    break
    fleet.elapsed = time.monotonic() - fleet.started
    return fleet


def _record(
    result: QRResult, fleet: _Fleet, out_dir: Path | None, out: _Out, json_lines: bool
) -> None:
    path: Path | None = None
    if result.image is not None:
        fleet.ok.append(result)
        if out_dir is not None:
            path = result.image.save(out_dir / png_filename(result.instance_name))
            fleet.saved[result.instance_name] = path
        if json_lines:
            image = result.image
            out.result(
                json.dumps(
                    {
                        "instance": result.instance_name,
                        "ok": True,
                        "file": None if path is None else str(path),
                        "width": image.width,
                        "height": image.height,
                        "bytes": len(image.data),
                        "sha256": image.sha256,
                    },
                    ensure_ascii=False,
                )
            )
        return
    error = result.error
    assert error is not None
    fleet.failed.append(result)
    if json_lines:
        out.result(
            json.dumps(
                {
                    "instance": result.instance_name,
                    "ok": False,
                    "error": type(error).__name__,
                    "status": getattr(error, "status", None),
                    "exit_code": exit_code_for(error),
                    "message": str(error),
                    "attempts": error.attempts,
                },
                ensure_ascii=False,
            )
        )


def _short(error: WachatError) -> str:
    """What went wrong, in a few words (the full message is in --json and -v output)."""
    if isinstance(error, APIStatusError):
        return f"{error.status}: {error.default_message}"
    text = str(error)
    return text if len(text) <= 100 else text[:99] + "…"


def _summary(
    fleet: _Fleet, out: _Out, *, out_dir: Path | None, expected: Mapping[str, str] | None = None
) -> None:
    """The summary tables (stdout): outcome counts, then the failures."""
    if out.quiet:
        return
    from rich.table import Table
    from rich.text import Text

    expected = expected or {}
    counts: Counter[str] = Counter()
    for result in fleet.failed:
        error = result.error
        assert error is not None
        status = getattr(error, "status", None)
        counts[f"{type(error).__name__}" + (f" ({status})" if status else "")] += 1
    title = f"{_plural(fleet.total, 'instance')} in {fleet.elapsed:.2f} s"
    table = Table(title=title, title_justify="left")
    table.add_column("outcome")
    table.add_column("instances", justify="right")
    table.add_row(Text("ok", style="green"), str(len(fleet.ok)))
    for label, count in counts.most_common():
        table.add_row(Text(label, style="red"), str(count))
    not_done = fleet.total - len(fleet.ok) - len(fleet.failed)
    if not_done:
        table.add_row(Text("not fetched (stopped early)", style="yellow"), str(not_done))
    tables: list[Table] = [table]
    if fleet.failed:
        failures = Table(title="failures", title_justify="left")
        failures.add_column("instance", overflow="fold")
        failures.add_column("error", overflow="fold")
        failures.add_column("tries", justify="right")
        failures.add_column("why", overflow="fold")
        for result in fleet.failed[:20]:
            error = result.error
            assert error is not None
            why = expected.get(result.instance_name)
            failures.add_row(
                Text(out.clean(result.instance_name)),
                Text(type(error).__name__),
                str(error.attempts),
                Text(out.clean(f"expected: {why}" if why else _short(error))),
            )
        if len(fleet.failed) > 20:
            failures.add_row(Text(f"... and {len(fleet.failed) - 20} more"), "", "", "")
        tables.append(failures)
    out.tables(*tables)
    if out_dir is not None and fleet.saved:
        out.info(f"saved {_plural(len(fleet.saved), 'PNG file')} in {out_dir}")


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


async def _cmd_fetch(args: argparse.Namespace, out: _Out) -> int:
    if args.output == "-" and sys.stdout.isatty():
        raise _Usage("refusing to write a PNG to a terminal: use -o FILE, or 'show' to see it")
    async with _client(args) as client:
        qr = await client.get_qr_image(args.name)
    if args.output == "-":
        sys.stdout.buffer.write(qr.data)
        sys.stdout.flush()
        return EXIT_OK
    path = Path(args.output) if args.output else Path(png_filename(args.name))
    await write_bytes_async(path, qr.data)  # like qr.save, but Ctrl-C can stop a FIFO's wait
    out.info(f"saved {path} ({qr.width}x{qr.height} PNG, {len(qr.data)} bytes)")
    return EXIT_OK


async def _cmd_show(args: argparse.Namespace, out: _Out) -> int:
    _need("PIL")
    async with _client(args) as client:
        qr = await client.get_qr_image(args.name)
    _write_terminal(_terminal_qr(qr, args))
    out.note(f"QR code of {args.name!r}, fetched {qr.fetched_at:%H:%M:%S} UTC")
    return EXIT_OK


async def _cmd_url(args: argparse.Namespace, out: _Out) -> int:
    base_url = getattr(args, "base_url", None) or os.environ.get("WACHAT_BASE_URL")
    base_url = base_url or DEFAULT_BASE_URL
    try:
        if not args.expose_api_key:
            url = build_qr_image_url(args.name, base_url=base_url)
        else:
            key = _api_key(args)
            if not key:
                raise ConfigurationError(
                    "--expose-api-key needs an API key: set WACHAT_API_KEY or pass --api-key"
                )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                url = build_qr_image_url(
                    args.name, api_key=key, base_url=base_url, expose_api_key=True
                )
            for warning in caught:
                sys.stderr.write(f"{PROG}: warning: {out.clean(str(warning.message))}\n")
    except (TypeError, ValueError) as exc:
        if isinstance(exc, WachatError):
            raise
        raise _Usage(str(exc)) from None
    # The one place the key may be printed: the user asked for exactly this URL.
    sys.stdout.write(url + "\n")
    return EXIT_OK


async def _cmd_poll(args: argparse.Namespace, out: _Out) -> int:
    if not args.json and not out.quiet:
        _need("rich")  # the summary tables: say so before any request is made
    names = _read_names(args)
    out_dir = Path(args.out_dir) if args.out_dir else None
    async with _client(args, max_connections=max(100, args.concurrency)) as client:
        fleet = await _poll_fleet(
            client,
            names,
            concurrency=args.concurrency,
            out_dir=out_dir,
            out=out,
            json_lines=args.json,
        )
    if not args.json:
        _summary(fleet, out, out_dir=out_dir)
    if fleet.aborted is not None:
        done = len(fleet.ok) + len(fleet.failed)
        out.error(
            f"{_describe(fleet.aborted)}; stopped after {done} of {fleet.total} instances "
            "(every request with this key would fail the same way)"
        )
        for hint in _hints(fleet.aborted, args):
            out.hint(hint)
        return exit_code_for(fleet.aborted)
    if fleet.failed and all(
        isinstance(r.error, InstanceNotFoundError) for r in fleet.failed
    ):  # every name unknown: more likely a wrong base URL than a fleet of typos
        first = fleet.failed[0].error
        assert first is not None
        for hint in _hints(first, args):
            out.hint(hint)
    return EXIT_FAILED if fleet.failed else EXIT_OK


async def _cmd_watch(args: argparse.Namespace, out: _Out) -> int:
    if args.show:
        _need("PIL")
    redraw = args.show and _isatty(sys.stdout)
    updates = 0
    async with _client(args) as client:
        # The first round must succeed: a wrong URL, port or key fails at once with its exit
        # status instead of being "ridden out" as transient forever. Later failures are.
        first: list[QRImage] = []
        if args.until_connected:
            if (await client.get_instance_state(args.name)).is_connected:
                out.info(f"{args.name} is connected")
                return EXIT_OK
        else:
            first.append(await client.get_qr_image(args.name))

        async def fetch(name: str) -> QRImage:
            return first.pop() if first else await client.get_qr_image(name)

        async def no_sleep(seconds: float) -> None:
            await asyncio.sleep(0)

        watch = watch_qr(
            fetch,
            args.name,
            interval=args.interval,
            jitter=0.1,
            get_state=client.get_instance_state if args.until_connected else None,
            sleep=no_sleep if client.retry_policy.zero_wait else asyncio.sleep,
        )
        async for qr in watch:
            updates += 1
            if args.output:
                await write_bytes_async(args.output, qr.data)
            stamp = f"{qr.fetched_at:%H:%M:%S} UTC"
            if args.show:
                if redraw:
                    sys.stdout.write("\x1b[2J\x1b[H")
                _write_terminal(_terminal_qr(qr, args))
                out.note(f"{stamp} QR of {args.name!r} (update {updates}); waiting for a scan")
            else:
                out.result(f"{stamp} {args.name} QR changed: sha256={qr.sha256}")
            if args.count and updates >= args.count:
                return EXIT_OK
    out.info(f"{args.name} is connected")
    return EXIT_OK


class _DemoFleet:
    """The demo's instance names: mostly healthy stores, plus a few that fail on purpose."""

    def __init__(self, count: int) -> None:
        rng = random.Random(2026)  # noqa: S311 - demo data, not security
        places = ["jakarta", "bandung", "surabaya", "medan", "bali", "makassar", "semarang"]

        def prefixed(friendly: str) -> str:
            # The API's shape: "t1_" + 8 lowercase alphanumerics + "_" + the friendly name.
            tag = "".join(rng.choices(string.ascii_lowercase + string.digits, k=8))
            return f"t1_{tag}_{friendly}"

        self.stores = [
            prefixed(f"{places[i % len(places)]}_store_{i:02d}") for i in range(max(0, count - 2))
        ]
        self.business = prefixed("head_office_cloud_api")  # not Baileys: 409
        self.typo = prefixed("jakarta_stroe")  # never created: 404
        self.names = list(self.stores)
        self.names.insert(len(self.names) // 2, self.business)
        self.names.append(self.typo)
        #: Fails with 502 on every attempt, so the retries give up.
        self.give_up = self.stores[min(7, len(self.stores) - 1)] if self.stores else ""
        healthy = [n for n in self.stores if n != self.give_up]
        #: Answer 502/504 once or twice; the retries absorb it.
        self.absorbed = healthy[3 :: max(1, len(healthy) // 5)][:4]
        self.failing = {
            self.business: "409, a WhatsApp Business (Cloud API) instance has no QR code",
            self.typo: "404, a typo: no such instance for this key",
            self.give_up: "502 on every attempt, so the retries give up",
        }


async def _cmd_demo(args: argparse.Namespace, out: _Out) -> int:
    _need("rich", "PIL", "segno")
    from ..testing import FakeWachatServer, Fault

    fleet_names = _DemoFleet(args.instances)
    names, failing = fleet_names.names, fleet_names.failing
    key = "demo-" + secrets.token_hex(12)
    out.secrets.append(key)
    policy = RetryPolicy(initial_wait=0.05, max_wait=0.2, deadline=10.0, zero_wait=args.no_wait)
    server = FakeWachatServer(api_key=key, latency=0.0 if args.no_wait else 0.04, qr_rotation=None)
    async with server:
        server.add_instances(fleet_names.stores)
        server.add_instance(fleet_names.business, integration="WHATSAPP-BUSINESS")
        scripts: list[list[int | Fault]] = [
            [502],
            [504],
            [502, 502],
            [Fault(status=502, retry_after="0")],
        ]
        absorbed = fleet_names.absorbed
        for name, script in zip(absorbed, scripts, strict=False):
            server.script(name, script)
        server.script(fleet_names.give_up, [502] * policy.max_attempts)
        out.info(
            f"Demo: a fake Wachat server on {server.base_url} (in this process, no network) "
            f"with {len(names)} instances; {len(absorbed)} answer 502/504 at first (the retries "
            f"absorb them) and {len(failing)} fail on purpose."
        )
        out_dir = Path(args.out_dir)
        async with WachatClient(
            api_key=key,
            base_url=server.base_url,
            retry=policy,
            timeout=getattr(args, "timeout", None) or 10.0,
        ) as client:
            fleet = await _poll_fleet(
                client,
                names,
                concurrency=args.concurrency,
                out_dir=out_dir,
                out=out,
                json_lines=False,
            )
            _summary(fleet, out, out_dir=out_dir, expected=failing)
            unexpected = [r for r in fleet.failed if r.instance_name not in failing]
            first = fleet.ok[0] if fleet.ok else None
            if first is not None and first.image is not None and not out.quiet:
                out.info(
                    f"\nThe QR of {first.instance_name} (saved as "
                    f"{fleet.saved.get(first.instance_name, '-')}); it encodes "
                    f"{server.qr_payload(first.instance_name)!r}:"
                )
                _write_terminal(_terminal_qr(first.image, args))
                out.info(
                    "Next: `wachat-qr fake-server` serves this fake API for your own code; "
                    "with WACHAT_API_KEY set, `wachat-qr show NAME` shows a real QR."
                )
    if unexpected:
        verb = "was" if len(unexpected) == 1 else "were"
        out.error(f"{_plural(len(unexpected), 'instance')} failed that {verb} meant to succeed")
        return EXIT_FAILED
    return EXIT_OK


async def _cmd_fake_server(args: argparse.Namespace, out: _Out) -> int:
    # The same program as `python -m wachat_async.testing`: same options, same output.
    from ..testing.__main__ import serve

    return await serve(args, prog=f"{PROG} fake-server")


# --------------------------------------------------------------------------------------------
# Parser and main
# --------------------------------------------------------------------------------------------


_MAX_RETRIES: Final = 100


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("connection options")
    group.add_argument(
        "--api-key",
        metavar="KEY",
        default=default,
        help="API key; prefer the WACHAT_API_KEY environment variable (a flag is visible in "
        "`ps` and shell history)",
    )
    group.add_argument(
        "--base-url",
        metavar="URL",
        default=default,
        help=f"API base URL, ending in /api/v1 (env WACHAT_BASE_URL; default {DEFAULT_BASE_URL})",
    )
    group.add_argument(
        "--allow-insecure-http",
        action="store_true",
        default=default if suppress else False,
        help="allow a plain http:// base URL on another host (the key travels in clear text: "
        "only for a fake server, e.g. `wachat-qr fake-server --host 0.0.0.0` elsewhere)",
    )
    group.add_argument(
        "--timeout",
        type=_seconds(zero=False),
        metavar="SECONDS",
        default=default,
        help="timeout of each HTTP attempt, > 0 (default 20)",
    )
    group.add_argument(
        "--retries",
        type=_integer(0, _MAX_RETRIES),
        metavar="N",
        default=default,
        help=f"retries of a 502/504 answer, with jittered backoff, from 0 to {_MAX_RETRIES} "
        "(default 3; 0 disables)",
    )
    _output_options(group, suppress=suppress)


def _output_options(group: argparse._ActionsContainer, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else False
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="print only results and errors (no progress, no summary)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="also log every retry on stderr",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="on an unexpected error, print the traceback (key redacted); log everything",
    )


def _terminal_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="draw black on white with ANSI colours, right on any terminal (auto: when stdout "
        "is a terminal and NO_COLOR is not set)",
    )
    parser.add_argument(
        "--invert",
        action="store_true",
        help="without colours, draw dark modules instead of light ones (for dark-on-light "
        "terminals)",
    )
    parser.add_argument(
        "--border",
        type=_integer(0, _MAX_BORDER),
        default=2,
        metavar="MODULES",
        help=f"quiet zone around the code, in modules, from 0 to {_MAX_BORDER} (default 2)",
    )


_Command = Callable[[argparse.Namespace, _Out], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    """The ``wachat-qr`` argument parser (its errors raise instead of exiting: see main)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description="Fetch, show and watch WhatsApp QR codes from the Wachat API.",
        epilog=_EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, suppress=True)
    common = _Parser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(
        name: str,
        run: _Command,
        help_: str,
        *,
        parents: Sequence[_Parser] = (common,),
        epilog: str = _EPILOG,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            parents=list(parents),
            epilog=epilog,
            formatter_class=formatter,
        )
        p.set_defaults(run=run)
        return p

    p = command("fetch", _cmd_fetch, "save an instance's QR code as a PNG file")
    p.add_argument(
        "name",
        metavar="NAME",
        type=_instance_name,
        help="instance name, e.g. t1_mq9r2jov_jakarta_store",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        type=_path,
        help="where to save (default NAME.png; - for stdout)",
    )

    p = command("show", _cmd_show, "print an instance's QR code in the terminal")
    p.add_argument("name", metavar="NAME", type=_instance_name)
    _terminal_options(p)

    p = command(
        "url",
        _cmd_url,
        "print the QR image URL (without the API key unless --expose-api-key)",
    )
    p.add_argument("name", metavar="NAME", type=_instance_name)
    p.add_argument(
        "--expose-api-key",
        action="store_true",
        help="put the API key in the URL (?apiKey=) for a bare <img> tag; anyone who sees the "
        "URL can use your key, so a warning is printed on stderr",
    )

    p = command("poll", _cmd_poll, "fetch the QR codes of many instances concurrently")
    p.add_argument("names", metavar="NAME", nargs="*", type=_instance_name, help="instance names")
    p.add_argument(
        "-f",
        "--from-file",
        metavar="FILE",
        type=_path,
        help="read names from FILE, one per line (# comments; - for stdin)",
    )
    p.add_argument(
        "-c",
        "--concurrency",
        type=_integer(1),
        default=32,
        help="requests at once, >= 1 (default 32)",
    )
    p.add_argument("-d", "--out-dir", metavar="DIR", type=_path, help="save each PNG in DIR")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per instance (JSON Lines) instead of the tables",
    )

    p = command("watch", _cmd_watch, "show the QR code again each time it changes")
    p.add_argument("name", metavar="NAME", type=_instance_name)
    p.add_argument(
        "--until-connected",
        action="store_true",
        help="stop (exit 0) once the phone is linked (instance state 'open')",
    )
    p.add_argument(
        "-i",
        "--interval",
        type=_seconds(zero=False),
        default=5.0,
        metavar="SECONDS",
        help="seconds between polls, > 0, +-10%% jitter (default 5)",
    )
    p.add_argument(
        "-n", "--count", type=_integer(1), metavar="N", help="stop after N QR codes, >= 1"
    )
    p.add_argument(
        "-o", "--output", metavar="FILE", type=_path, help="also save the latest QR to FILE"
    )
    p.add_argument(
        "--no-show",
        dest="show",
        action="store_false",
        help="print one line per change instead of drawing the QR",
    )
    _terminal_options(p)

    from ..testing import __main__ as fake_server

    p = command(
        "fake-server",
        _cmd_fake_server,
        "run the fake Wachat server (for trying the API and your own tests); the same program, "
        "with the same options, as `python -m wachat_async.testing`",
        parents=(),
        epilog="exit status:\n  0 stopped (Ctrl-C, SIGTERM, --duration)    2 usage error or segno "
        "missing\n  8 the address could not be bound    70 internal error    141 stdout closed\n",
    )
    fake_server.add_arguments(p)

    p = command(
        "demo",
        _cmd_demo,
        "poll a fleet of 50 instances on an in-process fake server: progress, retries, "
        "failures, saved PNGs and one QR in the terminal (no account or network needed)",
    )
    p.add_argument(
        "-d",
        "--out-dir",
        default="qr-codes",
        metavar="DIR",
        type=_path,
        help="where to save the PNGs (default ./qr-codes)",
    )
    p.add_argument(
        "--instances",
        type=_integer(_DEMO_MIN, _DEMO_MAX),
        default=50,
        metavar="N",
        help=f"fleet size, from {_DEMO_MIN} to {_DEMO_MAX} (default 50)",
    )
    p.add_argument(
        "-c",
        "--concurrency",
        type=_integer(1),
        default=8,
        help="requests at once, >= 1 (default 8)",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="skip the simulated latency and the retry backoff (for CI)",
    )
    _terminal_options(p)
    return parser


def _secrets_in(argv: Sequence[str]) -> list[str]:
    """The key from the environment and any ``--api-key`` value on the command line, so that
    even a message about a command line that did not parse cannot show it."""
    found = [os.environ.get("WACHAT_API_KEY") or ""]
    for i, arg in enumerate(argv):
        if arg == "--api-key" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--api-key="):
            found.append(arg.partition("=")[2])
    return found


def _hints(error: BaseException, args: argparse.Namespace) -> list[str]:
    """What to try next, for the errors whose fix is not obvious from the message."""
    base_url = _base_url(args)
    if isinstance(error, InstanceNotFoundError):
        path = URL(base_url).path.rstrip("/")
        if not path.endswith("/api/v1") or "no such route" in error.body.lower():
            return [
                f"is --base-url (or WACHAT_BASE_URL) right? it should end in /api/v1; "
                f"it is {base_url}"
            ]
    return []


def _silence_stdout() -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wachat-qr`` with *argv* (default ``sys.argv[1:]``); return the exit status.

    Never raises: every failure is a line on stderr and an exit status from the table in the
    module docstring (``EXIT_CODES``).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    out = _Out(False, _secrets_in(arguments))
    try:
        return _main(arguments, out)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        out.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # pragma: no cover - a bug in the guard itself
        out.error(f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_INTERNAL


def _main(argv: list[str], out: _Out) -> int:
    try:
        args = build_parser().parse_args(argv)
    except _ParseError as exc:
        out.error(exc.args[0], prog=exc.prog)
        out.hint(f"try '{exc.prog} --help'")
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version (their output is on stdout)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run: _Command | None = getattr(args, "run", None)
    if run is None:
        out.error(f"a command is needed: {', '.join(_COMMANDS)}")
        out.hint(f"try '{PROG} demo', or '{PROG} --help'")
        return EXIT_USAGE
    out.quiet = bool(getattr(args, "quiet", False))
    out.secrets.extend(s for s in _secrets_in([]) if len(s) >= _MIN_REDACTED_KEY)
    key = getattr(args, "api_key", None)
    if key and len(key) >= _MIN_REDACTED_KEY:
        out.secrets.append(key)
    debug = bool(getattr(args, "debug", False))
    handler = _LogHandler(out)
    library_log = logging.getLogger("wachat_async")
    level = logging.WARNING
    if debug:
        level = logging.DEBUG
    elif getattr(args, "verbose", False):
        level = logging.INFO
    handler.setLevel(level)
    previous_level = library_log.level
    library_log.addHandler(handler)
    if library_log.getEffectiveLevel() > handler.level:
        library_log.setLevel(handler.level)
    try:
        return asyncio.run(run(args, out))
    except BrokenPipeError:
        raise  # main() stops quietly
    except WachatError as exc:
        out.error(_describe(exc))
        for hint in _hints(exc, args):
            out.hint(hint)
        return exit_code_for(exc)
    except (_Usage, _MissingExtra) as exc:
        out.error(str(exc))
        if isinstance(exc, _Usage) and exc.hint:
            out.hint(exc.hint)
        return EXIT_USAGE
    except ValueError as exc:  # a bad argument found late (a name, a path, an encoding)
        out.error(str(exc) or type(exc).__name__)
        return EXIT_USAGE
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        out.error(f"{where}{exc.strerror or exc}")
        return EXIT_FILE
    except Exception as exc:  # a bug: one line, a hint, and the traceback only with --debug
        out.error(f"internal error: {type(exc).__name__}: {exc}")
        if debug:
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(out.clean(trace))
                sys.stderr.flush()
        else:
            out.hint("this is a bug: run again with --debug to see the traceback, and report it")
        return EXIT_INTERNAL
    finally:
        library_log.removeHandler(handler)
        library_log.setLevel(previous_level)


_COMMANDS: Final = ("fetch", "show", "url", "poll", "watch", "fake-server", "demo")
