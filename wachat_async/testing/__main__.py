"""The fake Wachat server as a program: `python -m wachat_async.testing` = `wachat-qr fake-server`.

One implementation, two entry points: both parse the options of :func:`add_arguments` and run
:func:`serve`. By default it serves the instance names the README's examples use, with the key
``demo``, and prints the exact ``export`` lines that point a client (the README's ten-line
example, ``wachat-qr``, your own code) at it::

    $ python -m wachat_async.testing
    Fake Wachat server listening on http://127.0.0.1:8080/api/v1
      export WACHAT_BASE_URL=http://127.0.0.1:8080/api/v1
      export WACHAT_API_KEY=demo
    ...

The first line ends with the base URL (for scripts: last word of the first line). A key given
with ``--api-key`` is never printed. Exit status: 0 stopped (Ctrl-C, SIGTERM or
``--duration``), 2 usage error or the ``testing`` extra (segno) missing, 8 the address could not
be bound or stdout could not be written (closed, full), 70 an unexpected error (``--debug``
shows its traceback), 141 stdout was closed by its reader. The same numbers as ``wachat-qr``'s
table. This module never imports the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import string
import sys
import tempfile
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, NoReturn, TextIO

from ._faults import Conditions
from ._program import (
    OutputError,
    closed_streams_stand_in,
    integer,
    print_message,
    seconds,
    silence,
    write_diagnostic,
    write_out,
)

if TYPE_CHECKING:
    from ._server import FakeWachatServer

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_INSTANCES",
    "add_arguments",
    "generated_names",
    "main",
    "serve",
]

PROG: Final = "python -m wachat_async.testing"

#: The key the fake server accepts unless ``--api-key`` is given. It opens nothing but a fake
#: server, so it is printed (and fixed, so exported variables survive a restart).
DEFAULT_API_KEY: Final = "demo"

#: The instance names used by the README's and the examples' code, served by default so that
#: copied examples work against the fake server.
DEFAULT_INSTANCES: Final = (
    "t1_mq9r2jov_jakarta_store",
    "t1_k2p8x1aa_bandung_store",
    "t1_zt7c4v0q_surabaya_warehouse",
    "t1_abc_store",
    "t1_def_shop",
    "t1_demo0001_store",
)

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_BIND: Final = 8  # also: stdout could not be written (closed, full: a local I/O error)
EXIT_INTERNAL: Final = 70
EXIT_BROKEN_PIPE: Final = 141

_MAX_GENERATED: Final = 100_000
_ALL_INTERFACES: Final = ("", "0.0.0.0", "::")  # noqa: S104 - names, not a bind
_PLACES: Final = ("jakarta", "bandung", "surabaya", "medan", "bali", "makassar", "semarang")


def generated_names(count: int) -> list[str]:
    """*count* distinct, realistic instance names (``t1_`` + 8 characters + ``_`` + a place),
    the same ones on every run."""
    rng = random.Random(2026)  # noqa: S311 - demo data, not security
    alphabet = string.ascii_lowercase + string.digits
    names = []
    for i in range(count):
        tag = "".join(rng.choices(alphabet, k=8))
        names.append(f"t1_{tag}_{_PLACES[i % len(_PLACES)]}_store_{i:02d}")
    return names


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def _count(text: str) -> int:
    if "," in text or (text.strip() and not text.strip().lstrip("+-").isdigit()):
        raise argparse.ArgumentTypeError(
            f"takes a number of generated instances, got {text!r}; give names with "
            "--instance NAME (repeatable)"
        )
    return integer(0, _MAX_GENERATED)(text)


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an instance name must not be empty or whitespace")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
        raise argparse.ArgumentTypeError(
            f"an instance name must not contain control characters: {text!r}"
        )
    return text


def _key(text: str) -> str:
    if not text.strip() or text != text.strip() or any(c in text for c in "\r\n\x00"):
        # Never quote the key: even a malformed one may be a secret.
        raise argparse.ArgumentTypeError(
            "the API key must be non-empty, without surrounding whitespace or CR/LF/NUL"
        )
    return text


def _share(text: str) -> float:
    value = seconds(zero=True)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, got {text!r}")
    return value


def _conditions(args: argparse.Namespace) -> Conditions:
    return Conditions(
        rate_limit=args.rate_limit,
        retry_after=args.retry_after,
        outage=args.outage,
        share_502=args.share_502,
        share_hang=args.share_hang,
        seed=args.seed,
    )


def _describe(conditions: Conditions) -> str | None:
    """The conditions in a few words, or None when there are none."""
    parts = []
    if conditions.outage:
        parts.append(f"502 for the first {conditions.outage:g} s")
    if conditions.rate_limit is not None:
        parts.append(
            f"429 (Retry-After: {conditions.retry_after}) above "
            f"{conditions.rate_limit:g} requests/s"
        )
    if conditions.share_502:
        parts.append(f"{conditions.share_502:.0%} answered 502")
    if conditions.share_hang:
        parts.append(f"{conditions.share_hang:.0%} left hanging")
    return f"Faults of the QR requests: {'; '.join(parts)}." if parts else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fake server's options to *parser* (both entry points use exactly these)."""
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 = every IPv4 interface, :: = every "
        "interface of both families on one dual-stack socket where the OS allows; a client on "
        "another machine then needs --allow-insecure-http: the fake server speaks plain http)",
    )
    parser.add_argument(
        "--port",
        type=integer(0, 65535),
        default=8080,
        help="TCP port, from 0 to 65535 (default 8080; 0 = any free port)",
    )
    parser.add_argument(
        "--api-key",
        type=_key,
        default=None,
        metavar="KEY",
        help=f"the key clients must send (default {DEFAULT_API_KEY!r}, printed; a key you "
        "give is never printed)",
    )
    parser.add_argument(
        "--instance",
        dest="instance_names",
        action="append",
        type=_name,
        default=None,
        metavar="NAME",
        help="serve this instance (repeatable); without it, the names of the README's "
        f"examples: {', '.join(DEFAULT_INSTANCES)}",
    )
    parser.add_argument(
        "--instances",
        dest="generated",
        type=_count,
        default=0,
        metavar="N",
        help=f"also serve N generated instances, from 0 to {_MAX_GENERATED} (default 0)",
    )
    parser.add_argument(
        "--auto-create",
        action="store_true",
        help="create any unknown instance on first use (instead of answering 404)",
    )
    parser.add_argument(
        "--rotation",
        type=seconds(zero=True),
        default=20.0,
        metavar="SECONDS",
        help="QR codes change every SECONDS, >= 0 (default 20; 0 = never)",
    )
    parser.add_argument(
        "--latency",
        type=seconds(zero=True),
        default=0.0,
        metavar="SECONDS",
        help="delay every answer by SECONDS, >= 0 (default 0)",
    )
    parser.add_argument(
        "--log-limit",
        type=integer(0),
        default=10_000,
        metavar="N",
        help="recorded requests kept in memory, >= 0 (default 10000)",
    )
    faults = parser.add_argument_group(
        "faults",
        "what goes wrong for the QR requests of every instance (the state route is spared), "
        "to rehearse a fleet against an upstream at its limits",
    )
    faults.add_argument(
        "--rate-limit",
        type=seconds(zero=False),
        default=None,
        metavar="N",
        help="accept N QR requests per second, > 0 (a token bucket holding one second's "
        "worth); answer each one above it 429 with Retry-After (default: no limit)",
    )
    faults.add_argument(
        "--retry-after",
        type=integer(0),
        default=1,
        metavar="SECONDS",
        help="the Retry-After of those 429s, an integer >= 0 (default 1)",
    )
    faults.add_argument(
        "--outage",
        type=seconds(zero=True),
        default=0.0,
        metavar="SECONDS",
        help="answer every QR request 502 for the first SECONDS, >= 0 (default 0)",
    )
    faults.add_argument(
        "--share-502",
        type=_share,
        default=0.0,
        metavar="P",
        help="answer this share of QR requests 502, from 0 to 1 (default 0)",
    )
    faults.add_argument(
        "--share-hang",
        type=_share,
        default=0.0,
        metavar="P",
        help="leave this share of QR requests hanging (no answer until the client gives up), "
        "from 0 to 1 (default 0)",
    )
    faults.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="seed the draws of --share-502 and --share-hang (the same faults on every run)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request on stderr")
    parser.add_argument(
        "--admin",
        action="store_true",
        help="serve POST /_fake/NAME/state (body: open), /_fake/NAME/rotate and "
        "/_fake/NAME/script (body: 502,502,200), with the key as a Bearer token: link a "
        "phone, rotate a QR, script faults from a shell",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a certificate from a throwaway CA made at start (needs trustme, "
        "in the testing extra); its CA certificate is written to --ca-file",
    )
    parser.add_argument(
        "--ca-file",
        default=None,
        metavar="PATH",
        help="with --tls: write the CA certificate to PATH, for wachat-qr --ca-file PATH or "
        "SSL_CERT_FILE (default: a temporary file, removed on exit)",
    )
    parser.add_argument(
        "--duration",
        type=seconds(zero=False),
        default=None,
        metavar="SECONDS",
        help="stop after SECONDS, > 0 (default: run until Ctrl-C or SIGTERM)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an unexpected error, print the traceback",
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and a pointer to --help, not argparse's whole usage block."""
        sys.stderr.write(
            f"{self.prog}: error: {message}\n{self.prog}: hint: try '{self.prog} --help'\n"
        )
        raise SystemExit(EXIT_USAGE)

    def _print_message(self, message: str, file: object = None) -> None:
        print_message(message, file)  # `--help >/dev/full` fails (exit 8) instead of exit 0


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Serve a fake Wachat QR API until Ctrl-C (the same program as "
        "`wachat-qr fake-server`).",
        epilog="exit status: 0 stopped (Ctrl-C, SIGTERM, --duration); 2 usage error or segno "
        "missing; 8 the address could not be bound or stdout not written; 70 unexpected error "
        "(a bug); 141 stdout closed by its reader",
    )
    add_arguments(parser)
    return parser


# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------


def _say(text: str, stream: TextIO) -> None:
    """One line of output on *stream*: a failed write is an :class:`OutputError` (exit 8), a
    gone reader a ``BrokenPipeError`` (exit 141)."""
    write_out(text + "\n", stream)


def _complain(text: str, stream: TextIO) -> None:
    """One line of diagnostics on *stream* (stderr): a failure to write it is ignored."""
    write_diagnostic(text + "\n", stream)


def _names(args: argparse.Namespace) -> list[str]:
    chosen: list[str] = args.instance_names or list(DEFAULT_INSTANCES)
    return list(dict.fromkeys([*chosen, *generated_names(args.generated)]))


def _remote_url(host: str, port: int, scheme: str = "http") -> str | None:
    """The base URL another machine would use, when bound to every interface."""
    if host not in _ALL_INTERFACES:
        return None
    try:
        name = socket.gethostname()
    except OSError:  # pragma: no cover - gethostname practically never fails
        return None
    return f"{scheme}://{name}:{port}/api/v1" if name else None


async def serve(
    args: argparse.Namespace,
    *,
    prog: str = PROG,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Serve a fake Wachat server with the options of :func:`add_arguments` until a signal or
    ``--duration``; return the exit status (0, 2 or 8). Errors are one line on *stderr*."""
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr

    if args.access_log:
        import logging

        logging.basicConfig(level=logging.INFO, stream=err, format="%(message)s")
    try:
        from ._server import FakeWachatServer

        if args.ca_file is not None and not args.tls:
            _complain(f"{prog}: error: --ca-file needs --tls", err)
            return EXIT_USAGE
        if args.share_502 + args.share_hang > 1:
            _complain(f"{prog}: error: --share-502 and --share-hang add up to over 1", err)
            return EXIT_USAGE
        server = FakeWachatServer(
            DEFAULT_API_KEY if args.api_key is None else args.api_key,
            host=args.host,
            port=args.port,
            qr_rotation=args.rotation or None,
            auto_create=args.auto_create,
            latency=args.latency,
            access_log=args.access_log,
            max_logged_requests=args.log_limit,
            tls=args.tls,
            admin=args.admin,
        )
    except ImportError as exc:  # segno or trustme: the testing extra
        _complain(f"{prog}: error: {exc}", err)
        return EXIT_USAGE
    ca_file: str | None = None
    temporary_ca = False
    if args.tls:
        try:
            if args.ca_file is None:
                handle, ca_file = tempfile.mkstemp(prefix="wachat-fake-ca-", suffix=".pem")
                os.close(handle)
                temporary_ca = True
            else:
                ca_file = args.ca_file
            server.write_ca_file(ca_file)
        except OSError as exc:
            _complain(
                f"{prog}: error: cannot write the CA file {ca_file}: {exc.strerror or exc}", err
            )
            return EXIT_USAGE
    try:
        return await _serve(server, args, prog=prog, ca_file=ca_file, out=out, err=err)
    finally:
        if temporary_ca and ca_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(ca_file)


async def _serve(
    server: FakeWachatServer,
    args: argparse.Namespace,
    *,
    prog: str,
    ca_file: str | None,
    out: TextIO,
    err: TextIO,
) -> int:
    names = _names(args)
    server.add_instances(names)
    conditions = _conditions(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)  # Windows: Ctrl-C raises instead
            installed.append(signum)
    try:
        try:
            await server.start()
            server.set_conditions(conditions)  # an --outage starts now
        except OSError as exc:
            where = f"{args.host}:{args.port}"
            _complain(f"{prog}: error: cannot listen on {where}: {exc.strerror or exc}", err)
            return EXIT_BIND
        try:
            _say(f"Fake Wachat server listening on {server.base_url}", out)
            _say("Point a client at it (copy these lines into your shell):", out)
            _say(f"  export WACHAT_BASE_URL={server.base_url}", out)
            if server.dual_stack:
                ipv4 = f"{server.url.partition('://')[0]}://127.0.0.1:{server.port}/api/v1"
                _say(f"  # IPv4 clients too (one dual-stack socket): {ipv4}", out)
            elif args.host == "::":
                _say("  # IPv6 only on this system: for IPv4 clients use --host 0.0.0.0", out)
            if args.api_key is None:
                _say(f"  export WACHAT_API_KEY={DEFAULT_API_KEY}", out)
            else:
                _say("  # WACHAT_API_KEY: the key you gave with --api-key (not printed)", out)
            if ca_file is not None:
                _say(
                    f"  # TLS: trust the CA in {ca_file} (wachat-qr --ca-file {ca_file}, or "
                    f"WachatClient(ssl=ssl.create_default_context(cafile={ca_file!r})))",
                    out,
                )
            remote = _remote_url(args.host, server.port, "https" if server.tls else "http")
            if remote is not None and server.tls:
                _say(
                    f"From another machine: WACHAT_BASE_URL={remote} (the certificate names "
                    "only 127.0.0.1, localhost and ::1: expect a host name mismatch)",
                    out,
                )
            elif remote is not None:
                _say(
                    f"From another machine: WACHAT_BASE_URL={remote} (plain http: "
                    "wachat-qr --allow-insecure-http, WachatClient(allow_insecure_http=True))",
                    out,
                )
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            others = "created on first use" if args.auto_create else "404"
            _say(f"Instances ({len(names)}): {shown}; any other name: {others}", out)
            if args.admin:
                origin = server.base_url.removesuffix("/api/v1")
                _say(
                    'Admin: curl -X POST -H "Authorization: Bearer $WACHAT_API_KEY" -d open '
                    f"{origin}/_fake/NAME/state (also /rotate, and /script with -d 502,502,200)",
                    out,
                )
            rotation = f"every {args.rotation:g} s" if args.rotation else "never"
            _complain(f"QR codes change {rotation}. Press Ctrl-C to stop.", err)
            if (faults := _describe(conditions)) is not None:
                _complain(faults, err)
            with contextlib.suppress(asyncio.TimeoutError):  # --duration over
                await asyncio.wait_for(stop.wait(), args.duration)  # None: until a signal
        finally:
            await server.close()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
    _complain("Stopped.", err)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Parse *argv* (default ``sys.argv[1:]``), serve until stopped, return the exit status."""
    with closed_streams_stand_in():  # started with `>&-`: writes fail with EBADF, not None
        try:
            return _main(argv)
        except BrokenPipeError:  # the reader of stdout went away: stop quietly
            silence(sys.stdout)  # so the final flush cannot fail again
            return EXIT_BROKEN_PIPE
        except OutputError as exc:  # stdout closed or full: one line, a local I/O error
            silence(sys.stdout)
            write_diagnostic(f"{PROG}: error: {exc}\n")
            return EXIT_BIND


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exc:  # --help and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        code = asyncio.run(serve(args))
        write_out("")  # what is still buffered fails this run, not the interpreter's exit
        return code
    except KeyboardInterrupt:  # pragma: no cover - only where add_signal_handler is missing
        return EXIT_OK
    except (BrokenPipeError, OutputError):
        raise
    except Exception as exc:  # a bug: one line, the traceback only with --debug
        write_diagnostic(f"{PROG}: error: internal error: {type(exc).__name__}: {exc}\n")
        if args.debug:
            trace = traceback.format_exception(type(exc), exc, exc.__traceback__)
            write_diagnostic("".join(trace))
        else:
            write_diagnostic(f"{PROG}: hint: run again with --debug to see the traceback\n")
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover - run in a subprocess by the tests
    raise SystemExit(main())
