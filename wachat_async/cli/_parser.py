"""The ``wachat-qr`` command line's grammar: its commands, options, defaults, bounds and help.

:func:`build_parser` returns the parser; the chosen command's name is ``args.command`` (None
when there is none), and ``main`` runs it. The argparse types here check each value as it is
parsed, so a bad option or instance name is a usage error (exit 2) that states the true bound
before anything runs. A bad command line raises :class:`ParseError` instead of exiting, and
``main`` prints it in one line (argparse's own wrapped usage block can take ten lines and
echoes raw control characters).

Parsing only: never makes a request, never reads the environment or a file, never writes
(except argparse's own ``--help`` and ``--version``, which end in ``SystemExit``).
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from typing import Final, NoReturn, Protocol

from wachat_async import DEFAULT_BASE_URL, __version__
from wachat_async._validate import check_instance_name
from wachat_async.doctor import DEFAULT_ROTATION_TIMEOUT, Cause
from wachat_async.testing._program import integer, print_message, seconds

from ._output import PROG

__all__ = ["ParseError", "Parser", "build_parser"]

_EPILOG = """\
environment:
  WACHAT_API_KEY    the API key (preferred over --api-key: a flag is visible in `ps`
                    and in shell history)
  WACHAT_BASE_URL   the API base URL (default https://app.wachat.net/api/v1)

exit status:
  0 ok    1 some instances failed (poll)    2 usage/configuration error (a wrong base URL too)
  3 authentication (401/403)    4 not found (404/409/400)    5 upstream (502/504/other status)
  6 connection/timeout    7 invalid response (not a PNG, too large)
  8 local I/O error (a file, a port, or stdout closed or full)    9 watch limit reached, not linked
  70 internal error (--debug shows the traceback)    130 interrupted (Ctrl-C)
  143 terminated (SIGTERM)    141 stdout closed by its reader (e.g. `| head`)
{doctor}

Try it without an account: wachat-qr demo
"""
_EPILOG = _EPILOG.format(
    doctor=textwrap.fill(  # "N cause" pairs stay on one line (the no-break space)
        "  ".join(f"{c.exit_status}\xa0{c}" for c in Cause if c.exit_status),
        width=76,
        initial_indent="  doctor, by cause: ",
        subsequent_indent="    ",
        break_on_hyphens=False,
    ).replace("\xa0", " ")
)


class ParseError(Exception):
    """argparse found a bad command line (raised by :meth:`Parser.error` instead of exiting)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`ParseError` (see the module docstring),
    and whose ``--help`` and ``--version`` fail when stdout cannot take them."""

    def error(self, message: str) -> NoReturn:
        raise ParseError(self.prog, message)

    def _print_message(self, message: str, file: object = None) -> None:
        print_message(message, file)  # `--help >/dev/full` fails (exit 8) instead of exit 0


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
_MAX_RETRIES: Final = 100
_MAX_BORDER: Final = 100
_DEMO_MIN, _DEMO_MAX = 12, 10_000
#: The demo's fleet size unless --instances is given.
_DEMO_INSTANCES: Final = 50


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    flag = default if suppress else False  # of a store_true option
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
        default=flag,
        help="allow a plain http:// base URL on another host (the key travels in clear text: "
        "only for a fake server, e.g. `wachat-qr fake-server --host 0.0.0.0` elsewhere)",
    )
    group.add_argument(
        "--ca-file",
        metavar="FILE",
        type=_path,
        default=default,
        help="trust the CA certificates in FILE (PEM) instead of the system store: a private "
        "CA, a TLS-inspecting gateway, `wachat-qr fake-server --tls --ca-file FILE`",
    )
    group.add_argument(
        "--proxy",
        metavar="URL",
        default=default,
        help="send every request through this HTTP proxy, http://[USER:PASSWORD@]HOST:PORT "
        "(default: HTTPS_PROXY/HTTP_PROXY and NO_PROXY from the environment, as curl does, "
        "except for a loopback base URL)",
    )
    group.add_argument(
        "--no-env-proxy",
        action="store_true",
        default=flag,
        help="ignore HTTPS_PROXY, HTTP_PROXY, NO_PROXY and ~/.netrc",
    )
    group.add_argument(
        "--timeout",
        type=seconds(zero=False),
        metavar="SECONDS",
        default=default,
        help="timeout of each HTTP attempt, > 0 (default 20)",
    )
    group.add_argument(
        "--retries",
        type=integer(0, _MAX_RETRIES),
        metavar="N",
        default=default,
        help=f"retries of a 502/504 answer, with jittered backoff, from 0 to {_MAX_RETRIES} "
        "(default 3; 0 disables)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=flag,
        help="print only results and errors (no progress, no summary)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=flag,
        help="also log every retry on stderr",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=flag,
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
        type=integer(0, _MAX_BORDER),
        default=2,
        metavar="MODULES",
        help=f"quiet zone around the code, in modules, from 0 to {_MAX_BORDER} (default 2)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``wachat-qr`` argument parser; its errors raise :class:`ParseError`, and the
    command's name is ``args.command``."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = Parser(
        prog=PROG,
        description="Fetch, show and watch WhatsApp QR codes from the Wachat API.",
        epilog=_EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, suppress=True)
    common = Parser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(
        name: str,
        help_: str,
        *,
        parents: Sequence[Parser] = (common,),
        epilog: str = _EPILOG,
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            parents=list(parents),
            epilog=epilog,
            formatter_class=formatter,
        )

    for add in (
        _add_fetch,
        _add_show,
        _add_url,
        _add_poll,
        _add_watch,
        _add_state,
        _add_doctor,
        _add_fake_server,
        _add_demo,
    ):
        add(command)
    return parser


class _AddCommand(Protocol):
    """Adds one command's subparser (see :func:`build_parser`)."""

    def __call__(
        self, name: str, help_: str, *, parents: Sequence[Parser] = ..., epilog: str = ...
    ) -> argparse.ArgumentParser: ...


#: The help of every command's one NAME (fetch, show, url, watch).
_NAME_HELP: Final = "instance name, e.g. t1_mq9r2jov_jakarta_store"


def _add_fetch(command: _AddCommand) -> None:
    p = command("fetch", "save an instance's QR code as a PNG file")
    p.add_argument("name", metavar="NAME", type=_instance_name, help=_NAME_HELP)
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        type=_path,
        help="where to save (default NAME.png; - for stdout)",
    )


def _add_show(command: _AddCommand) -> None:
    p = command("show", "print an instance's QR code in the terminal")
    p.add_argument("name", metavar="NAME", type=_instance_name, help=_NAME_HELP)
    _terminal_options(p)


def _add_url(command: _AddCommand) -> None:
    p = command(
        "url",
        "print the QR image URL (without the API key unless --expose-api-key)",
    )
    p.add_argument("name", metavar="NAME", type=_instance_name, help=_NAME_HELP)
    p.add_argument(
        "--expose-api-key",
        action="store_true",
        help="put the API key in the URL (?apiKey=) for a bare <img> tag; anyone who sees the "
        "URL can use your key, so a warning is printed on stderr",
    )


def _add_poll(command: _AddCommand) -> None:
    p = command("poll", "fetch the QR codes of many instances concurrently")
    p.add_argument("names", metavar="NAME", nargs="*", type=_instance_name, help="instance names")
    p.add_argument(
        "-f",
        "--from-file",
        metavar="FILE",
        type=_path,
        help="read names from FILE, one per line; a line starting with # is a comment (a # "
        "later in a line is part of the name); - for stdin",
    )
    p.add_argument(
        "-c",
        "--concurrency",
        type=integer(1),
        default=32,
        help="requests at once, >= 1 (default 32)",
    )
    p.add_argument("-d", "--out-dir", metavar="DIR", type=_path, help="save each PNG in DIR")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per instance (JSON Lines) instead of the tables",
    )


def _add_watch(command: _AddCommand) -> None:
    p = command("watch", "show the QR code again each time it changes")
    p.add_argument("name", metavar="NAME", type=_instance_name, help=_NAME_HELP)
    p.add_argument(
        "--until-connected",
        action="store_true",
        help="stop (exit 0) once the phone is linked (instance state 'open')",
    )
    p.add_argument(
        "-i",
        "--interval",
        type=seconds(zero=False),
        default=5.0,
        metavar="SECONDS",
        help="seconds between polls, > 0, +-10%% jitter (default 5); never under 1: a "
        "shorter interval counts as 1, as in watch_qr",
    )
    p.add_argument(
        "-n", "--count", type=integer(1), metavar="N", help="stop after N QR codes, >= 1"
    )
    p.add_argument(
        "--max-qrs",
        type=integer(1),
        metavar="N",
        help="give up (exit 9) when the Nth QR code expires unscanned, >= 1",
    )
    p.add_argument(
        "--linking-timeout",
        type=seconds(zero=False),
        metavar="SECONDS",
        help="give up (exit 9) if the phone is not linked within SECONDS, > 0",
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


def _add_state(command: _AddCommand) -> None:
    p = command(
        "state",
        "print each instance's connection state (open = linked), one line per name; exit "
        "status of the first name that failed",
    )
    p.add_argument("names", metavar="NAME", nargs="+", type=_instance_name, help="instance names")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per instance (JSON Lines)"
    )


def _add_doctor(command: _AddCommand) -> None:
    p = command(
        "doctor",
        "say why no QR shows for an instance: one line per step (the base URL and its TLS, the "
        "key, the instance, its integration, the subscription, its state, the QR, whether it "
        "decodes and rotates); the exit status names the cause",
    )
    p.add_argument("name", metavar="NAME", type=_instance_name, help=_NAME_HELP)
    p.add_argument(
        "--json", action="store_true", help="print the report as one JSON object instead"
    )
    p.add_argument(
        "--rotation-timeout",
        type=seconds(zero=True),
        default=DEFAULT_ROTATION_TIMEOUT,
        metavar="SECONDS",
        help="wait up to SECONDS for a new QR, >= 0 (default "
        f"{DEFAULT_ROTATION_TIMEOUT:g}; 0 skips the rotation step)",
    )


def _add_fake_server(command: _AddCommand) -> None:
    from wachat_async.testing import __main__ as fake_server

    p = command(
        "fake-server",
        "run the fake Wachat server (for trying the API and your own tests); the same program, "
        "with the same options, as `python -m wachat_async.testing`",
        parents=(),
        epilog="exit status:\n  0 stopped (Ctrl-C, SIGTERM, --duration)    2 usage error or segno "
        "missing\n  8 the address could not be bound, or stdout not written    70 internal error"
        "\n  141 stdout closed\n",
    )
    fake_server.add_arguments(p)


def _add_demo(command: _AddCommand) -> None:
    p = command(
        "demo",
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
        type=integer(_DEMO_MIN, _DEMO_MAX),
        default=_DEMO_INSTANCES,
        metavar="N",
        help=f"fleet size, from {_DEMO_MIN} to {_DEMO_MAX} (default {_DEMO_INSTANCES})",
    )
    p.add_argument(
        "-c",
        "--concurrency",
        type=integer(1),
        default=8,
        help="requests at once, >= 1 (default 8)",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="skip the simulated latency and the retry backoff (for CI)",
    )
    _terminal_options(p)
