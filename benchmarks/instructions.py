"""Client instructions per request under callgrind: bare aiohttp vs wachat-async.

CPU-time ratios on a shared 2-core machine swing by +-20% between runs; instruction counts do
not (callgrind counts the same total for the same binary and inputs, whatever else runs). For
each client this runs the client process under ``valgrind --tool=callgrind`` twice, with a small
and a large number of requests, and divides the difference by the difference in requests, so
interpreter start-up and imports cancel out. The server is ``_server.py`` in its own process
(not under valgrind). Run to run, a client's count moves by about 0.2% (how many responses
one event-loop turn picks up varies a little).

Rows (each a pair of clients, ``--rows`` picks some):

* ``same-timeouts``: the library's own cost. Bare aiohttp with wachat-async's checks done by
  hand (status, PNG signature) and a ``WachatClient``, both with the same per-attempt timeouts
  ``total=20, sock_connect=10, sock_read=15`` (aiohttp arms timers for these; a floor without
  them would charge wachat-async for aiohttp's timers).
* ``default-timeouts``: the same with ``DEFAULT_TIMEOUT`` (no ``sock_read``) on both sides.
* ``as-users-write-it``: bare aiohttp as its users write it (``session.get(url, params=...)``,
  ``raise_for_status()``, ``read()``, aiohttp's default timeouts) against the default
  ``WachatClient()``: what switching to wachat-async costs.

    .venv/bin/python benchmarks/instructions.py --concurrency 50

Needs valgrind (Debian package ``valgrind``). Hand-run, never a test (a smoke test runs the
clients without valgrind).
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
from wachat_async._transport import DEFAULT_TIMEOUT

try:  # importable both as ``benchmarks.instructions`` and as a script
    from ._server import BENCH_API_KEY, ServerProcess  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from _server import (  # type: ignore[import-not-found,no-redef,unused-ignore]
        BENCH_API_KEY,
        ServerProcess,
    )

#: The per-attempt timeouts of the ``same-timeouts`` row (wachat-async's earlier default).
TIMEOUT = aiohttp.ClientTimeout(total=20.0, sock_connect=10.0, sock_read=15.0)
#: Each client: (what it is, what it does).
CLIENTS = {
    "bare": "bare aiohttp, status + PNG signature checked, timeouts of the same-timeouts row",
    "wachat": "WachatClient(timeout=TIMEOUT)",
    "bare-default": "bare aiohttp as 'bare', with wachat-async's DEFAULT_TIMEOUT",
    "wachat-default": "WachatClient() (DEFAULT_TIMEOUT)",
    "bare-user": "session.get(url, params=...), raise_for_status(), read(), aiohttp's defaults",
}
#: Each row: (label, the floor, the wachat-async client).
ROWS = {
    "same-timeouts": ("same per-attempt timeouts (with sock_read)", "bare", "wachat"),
    "default-timeouts": (
        "same per-attempt timeouts (DEFAULT_TIMEOUT)",
        "bare-default",
        "wachat-default",
    ),
    "as-users-write-it": (
        "bare aiohttp as users write it vs WachatClient()",
        "bare-user",
        "wachat-default",
    ),
}


async def _drive(fetch: Callable[[str], Awaitable[object]], n: int, concurrency: int) -> None:
    names = iter(range(n))

    async def worker() -> None:
        for i in names:
            await fetch(f"t1_{i}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _client(kind: str, base_url: str, n: int, concurrency: int) -> None:
    if kind.startswith("bare"):
        connector = aiohttp.TCPConnector(limit=concurrency)
        # As users write it, a session keeps aiohttp's default timeouts (total=300, connect=30).
        timeouts = {"bare": TIMEOUT, "bare-default": DEFAULT_TIMEOUT}
        timeout = timeouts.get(kind, aiohttp.client.DEFAULT_TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
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

            async def fetch_as_users_do(name: str) -> bytes:
                async with session.get(url, params={"instanceName": name}, headers=headers) as r:
                    r.raise_for_status()
                    return await r.read()

            await _drive(fetch_as_users_do if kind == "bare-user" else fetch, n, concurrency)
    else:
        async with WachatClient(
            api_key=BENCH_API_KEY,
            base_url=base_url,
            max_connections=concurrency,
            timeout=TIMEOUT if kind == "wachat" else None,  # None: DEFAULT_TIMEOUT
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
    parser.add_argument(
        "--rows", nargs="+", choices=ROWS, default=list(ROWS), help="rows to measure (default all)"
    )
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
    kinds = list(dict.fromkeys(kind for row in args.rows for kind in ROWS[row][1:]))
    per_request: dict[str, float] = {}
    with ServerProcess() as server:
        for kind in kinds:
            small = _instructions(kind, server.base_url, args.small, args.concurrency)
            large = _instructions(kind, server.base_url, args.large, args.concurrency)
            per_request[kind] = (large - small) / (args.large - args.small)
            print(f"{kind}: {per_request[kind]:,.0f} instructions/request", file=sys.stderr)
    columns = "bare aiohttp | wachat-async | extra | ratio"
    print(f"| measure (concurrency {args.concurrency}) | {columns} |")
    print("|---|--:|--:|--:|--:|")
    for row in args.rows:
        label, floor, ours = ROWS[row]
        bare, wachat = per_request[floor], per_request[ours]
        extra, ratio = wachat - bare, wachat / bare
        print(f"| {label} | {bare:,.0f} | {wachat:,.0f} | {extra:,.0f} | {ratio:.3f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
