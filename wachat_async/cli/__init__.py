"""``wachat-qr``: the command line for the Wachat QR-code endpoint.

Installed with the ``cli`` extra (``pip install 'wachat-async[cli]'``, which brings rich, Pillow
and segno); ``python -m wachat_async`` runs the same ``main``. Commands::

    wachat-qr fetch NAME [-o FILE]            save the QR PNG (-o - writes it to stdout)
    wachat-qr show NAME                       print the QR in the terminal (Unicode half blocks)
    wachat-qr url NAME [--expose-api-key]     print the image URL (key only with the flag)
    wachat-qr poll NAME... | --from-file F    fetch a fleet: progress, summary table or --json
    wachat-qr watch NAME [--until-connected]  print the QR again each time it changes
    wachat-qr state NAME... [--json]          each instance's connection state (open = linked)
    wachat-qr doctor NAME [--json]            why no QR shows: one line per step, exit = cause
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
2     usage or configuration error (bad option or name, no API key, missing ``cli`` extra,
      a base URL that looks wrong: a 404 for the route itself, not the instance)
3     authentication: 401 invalid key, 403 subscription does not allow QR codes
4     not found or not possible: 404 unknown instance, 409 not a Baileys instance, 400
5     upstream failure: 502/504 after the retries gave up, or an undocumented status
6     connection failure or timeout
7     invalid response: not a PNG, truncated, or larger than the size cap
8     local I/O error: a file could not be written, a port could not be bound, stdout
      could not be written (closed, full: ``--help`` and ``--version`` too)
9     ``watch``: ``--max-qrs`` or ``--linking-timeout`` reached before the phone was
      linked (run it again for a new QR)
10    ``doctor``: the phone is already linked (no QR is needed)
11    ``doctor``: the base URL's host name does not resolve (DNS)
12    ``doctor``: the connection was refused (nothing listens at that host and port)
13    ``doctor``: no answer (a timeout, no route, a proxy in the way)
14    ``doctor``: the server's TLS certificate does not verify
15    ``doctor``: a server answers, but not the API (404 for the route: the base URL)
16    ``doctor``: 401, the key is refused
17    ``doctor``: 404, no such instance for this key
18    ``doctor``: 409, not a WhatsApp Baileys instance (no QR exists for it)
19    ``doctor``: 403, the subscription does not allow QR codes
20    ``doctor``: 502/504 that persisted through the retries
21    ``doctor``: a 200 that is not a PNG
22    ``doctor``: a PNG that is not a QR code (checked with the ``doctor`` extra)
23    ``doctor``: the QR did not change within ``--rotation-timeout``
24    ``doctor``: anything else (an undocumented status, a state body that does not parse)
70    internal error: an unexpected exception (a bug; ``--debug`` shows the traceback)
130   interrupted (Ctrl-C, SIGINT)
143   terminated (SIGTERM: systemd, Kubernetes, ``timeout``)
141   stdout was closed by its reader (``| head``): stop quietly, as SIGPIPE would
====  ==========================================================================

``poll --json`` writes JSON Lines: one object per distinct instance, in order of completion,
flushed as each completes, then a summary record; nothing else on stdout. Success:
``{"instance": ..., "ok": true, "file": path-or-null, "width": ..., "height": ...,
"bytes": ..., "sha256": ...}``; failure: ``{"instance": ..., "ok": false,
"error": "InstanceNotFoundError", "status": 404-or-null, "exit_code": 4, "message": ...,
"attempts": ...}``; the last line is ``{"summary": {...}}`` (counts, see docs/cli.md).

One concern per module; imports run one way, down this list (none imports this package, and
the library's core never imports the CLI)::

    __init__    main(): parse, set up logging, run the command, map failures to exit statuses
    _commands   fetch, show, url, poll, watch, state, doctor, fake-server: the client from the
                command line
    _demo       demo: a fleet on an in-process fake server
    _fleet      polling many instances: bounded fetches, off-loop PNG saves, JSON lines, summary
    _parser     the grammar: commands, options, bounds, help (parsing only)
    _output     where lines go (stdout/stderr), redaction, one-line errors, drawing a QR
    _terminal   PNG to Unicode half blocks (pure: no I/O)
    _extras     the optional rich / Pillow / segno and the install hint
    _exit       the exit statuses and the error-to-status map
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Final

from wachat_async import WachatError
from wachat_async.testing._program import closed_streams_stand_in, writing

from ._commands import (
    cmd_doctor,
    cmd_fake_server,
    cmd_fetch,
    cmd_poll,
    cmd_show,
    cmd_state,
    cmd_url,
    cmd_watch,
    hints,
)
from ._demo import cmd_demo
from ._exit import (
    EXIT_AUTH,
    EXIT_BROKEN_PIPE,
    EXIT_CONNECTION,
    EXIT_EXPIRED,
    EXIT_FAILED,
    EXIT_FILE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_UPSTREAM,
    EXIT_USAGE,
    Interrupted,
    UsageError,
    exit_code_for,
)
from ._exit import EXIT_CODES as EXIT_CODES  # importable here too (not in __all__)
from ._extras import MissingExtraError
from ._fleet import png_filename as png_filename  # importable here too (not in __all__)
from ._output import PROG, LogHandler, Out, OutputError, describe, silence_stdout
from ._parser import ParseError, build_parser
from ._terminal import qr_modules, render_half_blocks

__all__ = [
    "EXIT_AUTH",
    "EXIT_BROKEN_PIPE",
    "EXIT_CONNECTION",
    "EXIT_EXPIRED",
    "EXIT_FAILED",
    "EXIT_FILE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_UPSTREAM",
    "EXIT_USAGE",
    "exit_code_for",
    "main",
    "qr_modules",
    "render_half_blocks",
]

_Command = Callable[[argparse.Namespace, Out], Coroutine[Any, Any, int]]

#: Each command's name (as the parser spells it) and what runs it.
_COMMANDS: Final[Mapping[str, _Command]] = {
    "fetch": cmd_fetch,
    "show": cmd_show,
    "url": cmd_url,
    "poll": cmd_poll,
    "watch": cmd_watch,
    "state": cmd_state,
    "doctor": cmd_doctor,
    "fake-server": cmd_fake_server,
    "demo": cmd_demo,
}


#: How argparse begins its complaint about an option whose name the redactor would take for a
#: credential's (``api-key: ...``): kept out of the redaction, the rest of the line is not.
_OPTION_LABELS: Final = ("argument --api-key: ",)


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


async def _until_signal(command: _Command, args: argparse.Namespace, out: Out) -> int:
    """Run *command*; SIGINT (Ctrl-C) or SIGTERM cancels it, so that its cleanups run (no
    temporary file is left; ``poll`` prints its partial summary), and raises
    :class:`Interrupted`."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None  # asyncio.run runs this as a task
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        task.cancel()

    installed: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Windows has no add_signal_handler (Ctrl-C then raises KeyboardInterrupt: 130).
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop, signum)
            installed.append(signum)
    try:
        return await command(args, out)
    except asyncio.CancelledError:
        if not received:
            raise
        task.uncancel()
        raise Interrupted(received[0]) from None
    finally:
        for installed_signal in installed:
            loop.remove_signal_handler(installed_signal)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wachat-qr`` with *argv* (default ``sys.argv[1:]``); return the exit status.

    Never raises: every failure is a line on stderr and an exit status from the table in the
    module docstring (``EXIT_CODES``).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    out = Out(False, _secrets_in(arguments))
    with closed_streams_stand_in():  # started with `>&-`: writes fail with EBADF, not None
        try:
            code = _main(arguments, out)
            with writing("stdout"):  # what is still buffered fails this run, not Python's exit
                sys.stdout.flush()
            return code
        except BrokenPipeError:
            silence_stdout()
            return EXIT_BROKEN_PIPE
        except OutputError as exc:  # a closed or full stdout (EBADF, ENOSPC, EIO)
            silence_stdout()
            out.error(str(exc))
            return EXIT_FILE
        except KeyboardInterrupt:
            out.error("interrupted")
            return EXIT_INTERRUPTED
        except Exception as exc:  # pragma: no cover - a bug in the guard itself
            out.error(f"internal error: {type(exc).__name__}: {exc}")
            return EXIT_INTERNAL


def _main(argv: list[str], out: Out) -> int:
    try:
        args = build_parser().parse_args(argv)
    except ParseError as exc:
        message: str = exc.args[0]
        label = next((lb for lb in _OPTION_LABELS if message.startswith(lb)), "")
        out.error(message[len(label) :], prog=exc.prog, label=label)
        out.hint(f"try '{exc.prog} --help'")
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version (their output is on stdout)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        out.error(f"a command is needed: {', '.join(_COMMANDS)}")
        out.hint(f"try '{PROG} demo', or '{PROG} --help'")
        return EXIT_USAGE
    out.quiet = bool(getattr(args, "quiet", False))
    out.add_secrets([*_secrets_in([]), getattr(args, "api_key", None)])
    debug = bool(getattr(args, "debug", False))
    handler = LogHandler(out)
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
        return asyncio.run(_until_signal(_COMMANDS[args.command], args, out))
    except (BrokenPipeError, OutputError):
        raise  # main() stops quietly, or says stdout failed
    except Interrupted as exc:
        out.error(str(exc))
        return exc.exit_code
    except WachatError as exc:
        out.error(describe(exc, ca_file=getattr(args, "ca_file", None)))
        for hint in hints(exc, args):
            out.hint(hint)
        return exit_code_for(exc)
    except (UsageError, MissingExtraError) as exc:
        out.error(str(exc))
        if isinstance(exc, UsageError) and exc.hint:
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
