"""Client instructions per request under callgrind: bare aiohttp vs wachat-async.

CPU-time ratios on a shared 2-core machine swing by +-20% between runs; instruction counts do
not (callgrind counts the same total for the same binary and inputs, whatever else runs). For
each client this runs the client process under ``valgrind --tool=callgrind`` twice, with a small
and a large number of requests, and divides the difference by the difference in requests, so
interpreter start-up and imports cancel out. The server is ``_server.py`` in its own process
(not under valgrind).

    .venv/bin/python benchmarks/instructions.py --concurrency 50

Needs valgrind (Debian package ``valgrind``). Hand-run, never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from wachat_async import WachatClient

try:  # importable both as ``benchmarks.instructions`` and as a script
    from ._server import BENCH_API_KEY, ServerProcess  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from _server import (  # type: ignore[import-not-found,no-redef,unused-ignore]
        BENCH_API_KEY,
        ServerProcess,
    )

TIMEOUT = aiohttp.ClientTimeout(total=20.0, sock_connect=10.0, sock_read=15.0)
CLIENTS = ("bare", "wachat")


async def _drive(fetch: Callable[[str], Awaitable[object]], n: int, concurrency: int) -> None:
    names = iter(range(n))

    async def worker() -> None:
        for i in names:
            await fetch(f"t1_{i}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _client(kind: str, base_url: str, n: int, concurrency: int) -> None:
    if kind == "bare":
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
            url = base_url + "/instance/qr/image"
            headers = {"Authorization": f"Bearer {BENCH_API_KEY}"}

            async def fetch(name: str) -> bytes:
                async with session.get(url, params={"instanceName": name}, headers=headers) as r:
                    if r.status != 200:
                        raise RuntimeError(r.status)
                    data = await r.read()
                if not data.startswith(b"\x89PNG\r\n\x1a\n"):
                    raise RuntimeError("not a PNG")
                return data

            await _drive(fetch, n, concurrency)
    else:
        async with WachatClient(
            api_key=BENCH_API_KEY, base_url=base_url, max_connections=concurrency
        ) as client:
            await _drive(client.get_qr_image, n, concurrency)


def _instructions(kind: str, base_url: str, n: int, concurrency: int) -> int:
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--client",
        kind,
        "--base-url",
        base_url,
        "--requests",
        str(n),
        "--concurrency",
        str(concurrency),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise RuntimeError(f"no callgrind total in: {out[-500:]}")
    return int(match.group(1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--small", type=int, default=100, help="requests in the short run")
    parser.add_argument("--large", type=int, default=600, help="requests in the long run")
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:  # the child run under valgrind
        asyncio.run(_client(args.client, args.base_url, args.requests, args.concurrency))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind not found (apt-get install valgrind)", file=sys.stderr)
        return 2
    per_request: dict[str, float] = {}
    with ServerProcess() as server:
        for kind in CLIENTS:
            small = _instructions(kind, server.base_url, args.small, args.concurrency)
            large = _instructions(kind, server.base_url, args.large, args.concurrency)
            per_request[kind] = (large - small) / (args.large - args.small)
            print(f"{kind}: {per_request[kind]:,.0f} instructions/request", file=sys.stderr)
    print(f"| client | instructions per request (concurrency {args.concurrency}) | vs bare |")
    print("|---|--:|--:|")
    for kind, label in (("bare", "bare aiohttp"), ("wachat", "wachat-async")):
        ratio = per_request[kind] / per_request["bare"]
        print(f"| {label} | {per_request[kind]:,.0f} | {ratio:.3f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
