"""Run the fake Wachat server from a shell: ``python -m wachat_async.testing``.

For demos, notebooks and benchmarks in another process. Prints the base URL (first line, last
word) and the instance names, then serves until Ctrl-C or SIGTERM. The API key is never
printed; clients use the value passed with ``--api-key``::

    python -m wachat_async.testing --port 8080 --api-key demo --instances a,b,c --rotation 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from ._server import FakeWachatServer

__all__ = ["main"]

DEFAULT_INSTANCES = "t1_demo0001_store"


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name.strip()]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wachat_async.testing",
        description="Serve a fake Wachat QR API on loopback until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8080, help="TCP port, 0 = any free one (default: %(default)s)"
    )
    parser.add_argument(
        "--api-key", default="demo", help="the key clients must send (default: %(default)s)"
    )
    parser.add_argument(
        "--instances",
        type=_names,
        default=DEFAULT_INSTANCES,
        metavar="A,B,C",
        help="comma-separated Baileys instances to create (default: %(default)s)",
    )
    parser.add_argument(
        "--rotation",
        type=_non_negative,
        default=20.0,
        metavar="SECONDS",
        help="QR rotation period, 0 = never (default: %(default)s)",
    )
    parser.add_argument(
        "--auto-create",
        action="store_true",
        help="create any unknown instance on first request",
    )
    parser.add_argument(
        "--latency", type=_non_negative, default=0.0, help="seconds added to every response"
    )
    parser.add_argument(
        "--log-limit",
        type=int,
        default=10_000,
        help="recorded requests kept in memory (default: %(default)s)",
    )
    parser.add_argument("--access-log", action="store_true", help="log requests to stderr")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    server = FakeWachatServer(
        args.api_key,
        host=args.host,
        port=args.port,
        qr_rotation=args.rotation or None,
        auto_create=args.auto_create,
        latency=args.latency,
        access_log=args.access_log,
        max_logged_requests=max(args.log_limit, 0),
    )
    server.add_instances(args.instances)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)  # Windows: Ctrl-C raises instead
            installed.append(signum)
    try:
        async with server:
            rotation = f"every {args.rotation:g} s" if args.rotation else "never"
            print(f"Fake Wachat server running at {server.base_url}")
            print(f"Instances ({len(args.instances)}): {', '.join(args.instances) or '-'}")
            print(
                "Auth: 'Authorization: Bearer <--api-key>' or '?apiKey=<--api-key>'; "
                f"QR rotates {rotation}; auto-create {'on' if args.auto_create else 'off'}."
            )
            print("Press Ctrl-C to stop.", flush=True)
            await stop.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse *argv* (default: ``sys.argv[1:]``), serve until interrupted, return the exit code."""
    args = _build_parser().parse_args(argv)
    if args.access_log:
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:  # pragma: no cover - only where add_signal_handler is missing
        pass
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    print("Stopped.")
    return 0


if __name__ == "__main__":  # pragma: no cover - run in a subprocess by the tests
    raise SystemExit(main())
