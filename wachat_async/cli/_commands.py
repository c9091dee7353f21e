"""The commands that talk to the Wachat API: ``fetch``, ``show``, ``url``, ``poll``, ``watch``,
``state``, ``doctor`` and ``fake-server`` (the fake server's own program, run under
``wachat-qr``).

Each command is ``async def cmd_x(args, out) -> int``: it reads the parsed command line, builds
the client (:func:`client_for`: key, base URL, timeout, retries, the ``http://`` refusal in CLI
words), writes through :class:`~wachat_async.cli._output.Out` (or, for a PNG or the URL asked
for, straight to stdout) and returns an exit status. A failure is raised (a library error,
:class:`UsageError`, :class:`OSError`) and ``main`` turns it into one line and its status;
:func:`hints` says what to try next where a message alone does not.

Never parses the command line, never renders a QR itself (``_terminal`` does), never writes a
file except through the atomic ``write_bytes_async``, and never prints the API key (only
``url --expose-api-key``'s URL carries it, because it was asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import attrs
from yarl import URL

from wachat_async import (
    DEFAULT_BASE_URL,
    ConfigurationError,
    InstanceState,
    QRImage,
    RetryPolicy,
    WachatClient,
    WachatError,
    build_qr_image_url,
)
from wachat_async._files import write_bytes_async
from wachat_async._polling import watch_qr
from wachat_async._validate import check_instance_name, is_loopback_host
from wachat_async.doctor import diagnose

from ._exit import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    exit_code_for,
    fails_every_request,
    wrong_base_url,
)
from ._extras import need
from ._fleet import Fleet, failure_record, png_filename, poll_fleet, summary
from ._output import (
    PROG,
    Out,
    describe,
    is_stdout,
    isatty,
    print_qr,
    stdout_is_unicode,
    write_stdout,
    write_stdout_bytes,
)

__all__ = [
    "NO_KEY_MESSAGE",
    "RETRY_POLICY",
    "client_for",
    "cmd_doctor",
    "cmd_fake_server",
    "cmd_fetch",
    "cmd_poll",
    "cmd_show",
    "cmd_state",
    "cmd_url",
    "cmd_watch",
    "hints",
]

#: The retry policy of every command but ``demo`` (``--retries N`` changes its attempts; tests
#: swap in a zero-wait one).
RETRY_POLICY = RetryPolicy()
#: The wait and the clock of ``doctor``'s rotation step (tests swap in a clock they move).
SLEEP: Callable[[float], Awaitable[object]] = asyncio.sleep
CLOCK: Callable[[], float] = time.monotonic


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
    given = getattr(args, "base_url", None)
    if given is not None and not given.strip():  # --base-url "$UNSET": never the production API
        raise UsageError("--base-url is empty (an unset variable?): give the API root, .../api/v1")
    return given or os.environ.get("WACHAT_BASE_URL") or DEFAULT_BASE_URL


def _host(url: str) -> str:
    try:
        return URL(url).host or url
    except (TypeError, ValueError):
        return url


def client_for(args: argparse.Namespace, *, max_connections: int = 100) -> WachatClient:
    """The client the command line asks for: key (``--api-key`` or ``WACHAT_API_KEY``), base
    URL, timeout, retries. No key, or plain ``http://`` to another host without
    ``--allow-insecure-http``, is a :class:`UsageError` worded for a shell user."""
    key = _api_key(args)
    if key is None or not key.strip():
        raise UsageError(NO_KEY_MESSAGE)
    allow_insecure = bool(getattr(args, "allow_insecure_http", False))
    base_url = _base_url(args)
    context = _ca_context(getattr(args, "ca_file", None))
    # Like curl, the proxy variables count unless --no-env-proxy; unlike curl (and like Go's
    # net/http), never for a loopback base URL: a fake server on this machine must not be sent
    # to a company proxy that HTTP_PROXY names for everything else. --proxy still applies.
    trust_env = not getattr(args, "no_env_proxy", False) and not is_loopback_host(_host(base_url))
    try:
        return WachatClient(
            api_key=key,
            base_url=base_url,
            timeout=getattr(args, "timeout", None),
            retry=_retry_policy(args),
            max_connections=max_connections,
            allow_insecure_http=allow_insecure,
            ssl=context,
            proxy=getattr(args, "proxy", None),
            trust_env=trust_env,
        )
    except ConfigurationError as exc:
        if not allow_insecure and "allow_insecure_http" in str(exc):
            raise UsageError(
                f"refusing plain http:// to {_host(_base_url(args))}: the API key would travel "
                "in clear text; use https://, or --allow-insecure-http if you mean it (for "
                "example for a fake server on another machine)"
            ) from None
        raise


def _ca_context(path: str | None) -> ssl.SSLContext | None:
    """A verifying context trusting the CA file *path* (None: the default trust store)."""
    if path is None:
        return None
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        reason = (
            exc.strerror
            if isinstance(exc, OSError) and exc.strerror
            else "no PEM certificate in it"
        )
        raise UsageError(f"cannot use the CA file {path!r}: {reason}") from None


def _read_names(args: argparse.Namespace) -> list[str]:
    """Names from the command line and --from-file (blank lines and ``#`` comments skipped),
    checked up front so that one bad line is a usage error, not a crash mid-fleet."""
    checked = [_checked(name, "argument") for name in args.names]
    source: str | None = args.from_file
    if source is not None:
        for number, line in enumerate(_name_lines(source), 1):
            name = line.strip()
            if name and not name.startswith("#"):
                checked.append(_checked(name, f"{source}:{number}"))
    if not checked:
        raise UsageError("no instance names: give NAME arguments or --from-file FILE")
    return checked


def _checked(name: str, where: str) -> str:
    try:
        return check_instance_name(name)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: {exc}") from None


#: The largest names file read (a million long names fit): past it, a device such as /dev/zero
#: or a wrong file would be read until memory runs out.
MAX_NAMES_FILE: Final = 64 * 2**20
#: A path segment that names an API version (``v1``, ``v2``): the part a wrong base URL replaces.
_VERSION_SEGMENT: Final = re.compile(r"v[0-9]+")


def _name_lines(source: str) -> list[str]:
    """The lines of a names file (``-``: stdin), read as UTF-8 with or without a byte-order
    mark (Notepad, PowerShell's ``Out-File``), LF or CRLF, a last line with or without its
    newline. Split on ``\\n`` only: ``str.splitlines`` would also split a line at U+2028, a
    form feed or U+0085, making two names of one (the name check then judges the line whole)."""
    try:
        if source == "-":
            stdin = sys.stdin
            binary = getattr(stdin, "buffer", None)
            try:
                data = (
                    binary.read(MAX_NAMES_FILE + 1)
                    if binary
                    else stdin.read().encode(errors="surrogatepass")
                )
            except OSError as exc:  # stdin closed at start (<&-): EBADF
                exc.filename = "stdin"
                raise
        else:
            with open(source, "rb") as file:
                data = file.read(MAX_NAMES_FILE + 1)
        if len(data) > MAX_NAMES_FILE:  # /dev/zero, /dev/full, a log file by mistake
            raise UsageError(
                f"{source}: larger than {MAX_NAMES_FILE // 2**20} MiB: not a names file "
                "(one instance name per line)"
            )
        text = data.decode("utf-8-sig").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 text ({exc.reason})") from None
    return text.split("\n")


def suggested_base_url(base_url: str) -> str | None:
    """The base URL to try instead of *base_url*, or None if its path already ends in /api/v1.

    The path's wrong part is replaced, never appended to: everything from the last ``api``
    segment on (``/api``, ``/api/v2``, ``/api/v1/instance``) or a last version segment
    (``/v1``) becomes ``/api/v1``; what comes before it (a gateway's prefix) stays. The query
    and fragment are dropped: the API root has neither.
    """
    url = URL(base_url)
    segments = [segment for segment in url.raw_path.split("/") if segment]
    if segments[-2:] == ["api", "v1"]:
        return None
    if "api" in segments:
        segments = segments[: len(segments) - 1 - segments[::-1].index("api")]
    elif segments and _VERSION_SEGMENT.fullmatch(segments[-1]):
        segments = segments[:-1]
    path = "/" + "/".join([*segments, "api", "v1"])
    return str(url.with_path(path, encoded=True).with_query(None).with_fragment(None))


def hints(error: BaseException, args: argparse.Namespace) -> list[str]:
    """What to try next, for the errors whose fix is not obvious from the message."""
    base_url = _base_url(args)
    if wrong_base_url(error):
        suggestion = suggested_base_url(base_url)
        guess = "" if suggestion is None else f" (try {suggestion}?)"
        return [
            f"is --base-url (or WACHAT_BASE_URL) right? it should end in /api/v1; "
            f"it is {base_url}{guess}"
        ]
    return []


async def cmd_fetch(args: argparse.Namespace, out: Out) -> int:
    # -o -, /dev/stdout, /dev/fd/1, or the very file stdout is redirected to: written through
    # descriptor 1, at its offset (a file stdout is on is never replaced), and the line saying
    # so goes to stderr (never after the PNG's bytes).
    to_stdout = args.output is not None and is_stdout(args.output)
    if to_stdout and isatty(sys.stdout):
        raise UsageError("refusing to write a PNG to a terminal: use -o FILE, or 'show' to see it")
    async with client_for(args) as client:
        qr = await client.get_qr_image(args.name)
    what = f"{qr.width}x{qr.height} PNG, {len(qr.data)} bytes"
    if to_stdout:
        write_stdout_bytes(qr.data)
        out.note(f"wrote the QR of {args.name!r} to stdout ({what})")
        return EXIT_OK
    path = await write_bytes_async(args.output or png_filename(args.name), qr.data)
    out.info(f"saved {path} ({what})")
    return EXIT_OK


async def cmd_show(args: argparse.Namespace, out: Out) -> int:
    need("PIL")
    async with client_for(args) as client:
        qr = await client.get_qr_image(args.name)
    print_qr(qr, args)
    out.note(f"QR code of {args.name!r}, fetched {qr.fetched_at:%H:%M:%S} UTC")
    return EXIT_OK


async def cmd_url(args: argparse.Namespace, out: Out) -> int:
    base_url = _base_url(args)
    try:
        if not args.expose_api_key:
            url = build_qr_image_url(args.name, base_url=base_url)
        else:
            key = _api_key(args)
            if not key:
                raise ConfigurationError(
                    "--expose-api-key needs an API key: set WACHAT_API_KEY or pass --api-key"
                )
            scheme, host = URL(base_url).scheme, URL(base_url).host or ""
            if (
                scheme == "http"
                and not is_loopback_host(host)
                and not getattr(args, "allow_insecure_http", False)
            ):
                raise UsageError(
                    f"refusing a plain http:// URL with the API key in it for {host}: every "
                    "browser that loads it would send the key in clear text; use https://, or "
                    "--allow-insecure-http if you mean it"
                )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                url = build_qr_image_url(
                    args.name, api_key=key, base_url=base_url, expose_api_key=True
                )
            for warning in caught:
                out.warning(str(warning.message), library=True)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, WachatError):
            raise
        raise UsageError(str(exc)) from None
    # The one place the key may be printed: the user asked for exactly this URL.
    write_stdout(url + "\n")
    return EXIT_OK


async def cmd_poll(args: argparse.Namespace, out: Out) -> int:
    if not args.json and not out.quiet:
        need("rich")  # the summary tables: say so before any request is made
    fleet = Fleet(_read_names(args), Path(args.out_dir) if args.out_dir else None)
    async with client_for(args, max_connections=max(100, args.concurrency)) as client:
        try:
            await poll_fleet(client, fleet, out, concurrency=args.concurrency, json_lines=args.json)
        except asyncio.CancelledError:  # a signal: what was done before it, then main says why
            summary(fleet, out, json_lines=args.json)
            raise
    summary(fleet, out, json_lines=args.json)
    if fleet.aborted is not None:
        out.error(stopped_message(describe(fleet.aborted), fleet.done, fleet.total))
        for hint in hints(fleet.aborted, args):
            out.hint(hint)
        return exit_code_for(fleet.aborted)
    return EXIT_FAILED if fleet.failed else EXIT_OK


def stopped_message(error: str, done: int, total: int) -> str:
    """The error line of a fleet stopped at once: *error* (the description of what stopped it),
    then, if any instance was left unfetched, how many and why; one sentence, whatever
    punctuation *error* ends with (a server message often ends in ``.``)."""
    left = total - done
    if left <= 0:
        return error
    others = "the other one" if left == 1 else f"the other {left}"
    return (
        f"{error.rstrip('.')}; stopped after {done} of {total} instances: "
        f"{others} would fail the same way"
    )


async def cmd_watch(args: argparse.Namespace, out: Out) -> int:
    if args.output is not None and is_stdout(args.output):
        # Each new PNG would land among the drawings or lines that watch prints there.
        raise UsageError(
            "watch -o cannot be stdout (watch prints there): give a file, or use "
            f"'{PROG} fetch NAME -o -' for one PNG on stdout"
        )
    if args.show:
        need("PIL")
    redraw = args.show and isatty(sys.stdout)
    updates = 0
    async with client_for(args) as client:
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
            max_qrs=args.max_qrs,
            linking_timeout=args.linking_timeout,
        )
        async for qr in watch:
            updates += 1
            if args.output:
                await write_bytes_async(args.output, qr.data)
            stamp = f"{qr.fetched_at:%H:%M:%S} UTC"
            if args.show:
                if redraw:
                    write_stdout("\x1b[2J\x1b[H")
                print_qr(qr, args)
                out.note(f"{stamp} QR of {args.name!r} (update {updates}); waiting for a scan")
            else:
                out.result(f"{stamp} {args.name} QR changed: sha256={qr.sha256}")
            if args.count and updates >= args.count:
                return EXIT_OK
    out.info(f"{args.name} is connected")
    return EXIT_OK


async def cmd_state(args: argparse.Namespace, out: Out) -> int:
    names = list(dict.fromkeys(args.names))
    async with client_for(args) as client:
        results = await asyncio.gather(
            *(client.get_instance_state(name) for name in names), return_exceptions=True
        )
    code = EXIT_OK
    for name, result in zip(names, results, strict=True):
        if isinstance(result, InstanceState):
            out.result(
                _json_line(
                    {
                        "instance": name,
                        "ok": True,
                        "state": result.state,
                        "connected": result.is_connected,
                        "integration": result.integration,
                    }
                )
                if args.json
                else f"{name} {result.state}"
            )
            continue
        if not isinstance(result, WachatError) or fails_every_request(result):
            raise result  # a bug, or every name failed the same way: one line, its status
        code = code or exit_code_for(result)
        if args.json:
            out.result(_json_line(failure_record(name, result)))
        else:
            out.error(describe(result))
    return code


def _json_line(record: dict[str, object]) -> str:
    return json.dumps(record, ensure_ascii=not stdout_is_unicode())


async def cmd_doctor(args: argparse.Namespace, out: Out) -> int:
    # Each request failure is a finding of the report; only a usage problem is raised.
    async with client_for(args) as client:
        report = await diagnose(
            client, args.name, rotation_timeout=args.rotation_timeout, sleep=SLEEP, clock=CLOCK
        )
    if args.json:
        out.result(report.to_json(ensure_ascii=not stdout_is_unicode()))
    else:
        for line in str(report).split("\n"):
            out.result(line)
    return report.exit_status


async def cmd_fake_server(args: argparse.Namespace, out: Out) -> int:
    # The same program as `python -m wachat_async.testing`: same options, same output.
    from wachat_async.testing.__main__ import serve

    return await serve(args, prog=f"{PROG} fake-server")
