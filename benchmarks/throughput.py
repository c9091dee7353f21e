"""Success-path cost and 502-storm amplification of wachat-async versus other HTTP clients.

Two modes (``--mode``), both against ``benchmarks/_server.py`` running in its own process
(pinned to the other CPU when there are two), so ``time.process_time()`` here counts only
client work:

* ``throughput``: fetch ``--requests`` QR images at ``--concurrency`` with each client, in
  ``--rounds`` interleaved rounds (round-robin, starting client rotated each round); print the
  median requests/s and client CPU microseconds per request, with ratios to bare aiohttp.
* ``storm``: the server answers 100% 502; fire ``--storm-calls`` concurrent logical calls with
  each *retrying* client and print how many HTTP requests the server received per logical call.

Run: ``.venv/bin/python benchmarks/throughput.py --mode all`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import httpx
from aiohttp_retry import ExponentialRetry, RetryClient
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from wachat_async import RetryPolicy, WachatClient
from wachat_async._transport import DEFAULT_TIMEOUT

try:  # importable both as ``benchmarks.throughput`` and as a script (``benchmarks/`` on sys.path)
    from . import _server  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    import _server  # type: ignore[import-not-found,no-redef,unused-ignore]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RETRY_STATUSES = frozenset({502, 504})

Fetch = Callable[[str], Awaitable[object]]


class StatusError(Exception):
    """Raised by the hand-written clients for a non-200 status (retryable if 502/504)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class RetryableStatusError(StatusError):
    """A 502/504: the only thing the retrying hand-written clients retry."""


def _raise_for(status: int) -> None:
    raise (RetryableStatusError if status in RETRY_STATUSES else StatusError)(status)


def _check_png(data: bytes) -> None:
    # The minimum any QR client must do; wachat-async does more (content type, IHDR, size cap).
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG")


@dataclass(frozen=True)
class Target:
    """Where the benchmark server is and how the retrying clients should behave."""

    base_url: str  # ends with /api/v1
    api_key: str
    connections: int  # pool size for every client
    attempts: int = 4
    initial_wait: float = 0.0  # seconds; small in storm mode so runs are quick
    max_wait: float = 0.0
    # wachat-async's deadline in storm mode: how long a call waits at most, the circuit's hold
    # (new attempts wait while the API fails most of them) included
    deadline: float | None = 30.0

    @property
    def qr_url(self) -> str:
        return f"{self.base_url}/instance/qr/image"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


ClientFactory = Callable[[Target], AbstractAsyncContextManager[Fetch]]


# Every client gets the same per-attempt timeouts as wachat-async's default, DEFAULT_TIMEOUT
# (total=20, sock_connect=10, no sock_read). aiohttp arms a timer per request for ``total``
# (and would re-arm one per chunk for a ``sock_read``), so a floor with other timers would
# charge wachat-async, or credit it, for aiohttp's timers instead of its own code.
AIOHTTP_TIMEOUT = DEFAULT_TIMEOUT
HTTPX_TIMEOUT = httpx.Timeout(20.0, connect=10.0)


def _aiohttp_session(t: Target) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=t.connections), timeout=AIOHTTP_TIMEOUT
    )


@asynccontextmanager
async def bare_aiohttp(t: Target) -> AsyncIterator[Fetch]:
    """The floor: one GET, status check, read, PNG signature check. No retries."""
    url, headers = t.qr_url, t.headers
    async with _aiohttp_session(t) as session:

        async def fetch(name: str) -> bytes:
            async with session.get(url, params={"instanceName": name}, headers=headers) as resp:
                if resp.status != 200:
                    _raise_for(resp.status)
                data = await resp.read()
            _check_png(data)
            return data

        yield fetch


@asynccontextmanager
async def aiohttp_tenacity(t: Target) -> AsyncIterator[Fetch]:
    """The naive wrapper: a fresh ``AsyncRetrying`` around every GET (the usual recipe)."""
    url, headers = t.qr_url, t.headers
    async with _aiohttp_session(t) as session:

        async def fetch(name: str) -> bytes:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(t.attempts),
                wait=wait_random_exponential(multiplier=t.initial_wait, max=t.max_wait),
                retry=retry_if_exception_type(RetryableStatusError),
                reraise=True,
            ):
                with attempt:
                    async with session.get(
                        url, params={"instanceName": name}, headers=headers
                    ) as resp:
                        if resp.status != 200:
                            _raise_for(resp.status)
                        data = await resp.read()
                    _check_png(data)
                    return data
            raise AssertionError("unreachable: reraise=True")  # pragma: no cover

        yield fetch


@asynccontextmanager
async def aiohttp_retry_client(t: Target) -> AsyncIterator[Fetch]:
    """aiohttp-retry's ``RetryClient`` retrying only 502/504 (not every 5xx, its default)."""
    url, headers = t.qr_url, t.headers
    options = ExponentialRetry(
        attempts=t.attempts,
        start_timeout=t.initial_wait,
        max_timeout=t.max_wait,
        statuses={502, 504},
        retry_all_server_errors=False,
    )
    async with RetryClient(client_session=_aiohttp_session(t), retry_options=options) as client:

        async def fetch(name: str) -> bytes:
            async with client.get(url, params={"instanceName": name}, headers=headers) as resp:
                if resp.status != 200:
                    _raise_for(resp.status)
                data = await resp.read()
            _check_png(data)
            return data

        yield fetch


@asynccontextmanager
async def httpx_client(t: Target) -> AsyncIterator[Fetch]:
    """``httpx.AsyncClient``: one GET, status check, PNG signature check. No retries."""
    url, headers = t.qr_url, t.headers
    limits = httpx.Limits(max_connections=t.connections, max_keepalive_connections=t.connections)
    async with httpx.AsyncClient(limits=limits, timeout=HTTPX_TIMEOUT) as client:

        async def fetch(name: str) -> bytes:
            resp = await client.get(url, params={"instanceName": name}, headers=headers)
            if resp.status_code != 200:
                _raise_for(resp.status_code)
            data = resp.content
            _check_png(data)
            return data

        yield fetch


def wachat_retry_policy(t: Target, *, storm: bool) -> RetryPolicy:
    """The default policy; in storm mode the same attempts and small waits as the others.

    The client's ``RetryBudget`` is always the default one: that is the point of the storm.
    """
    if not storm:
        return RetryPolicy()  # what users get out of the box
    waits = {"initial_wait": t.initial_wait, "max_wait": t.max_wait}
    return RetryPolicy(max_attempts=t.attempts, deadline=t.deadline, **waits)


def wachat_factory(*, storm: bool = False) -> ClientFactory:
    """``WachatClient.get_qr_image`` with the default ``RetryBudget`` (policy: see above)."""

    @asynccontextmanager
    async def wachat(t: Target) -> AsyncIterator[Fetch]:
        async with WachatClient(
            api_key=t.api_key,
            base_url=t.base_url,
            max_connections=t.connections,
            retry=wachat_retry_policy(t, storm=storm),
        ) as client:
            yield client.get_qr_image

    return wachat


def client_table(*, include_wachat: bool = True, storm: bool = False) -> dict[str, ClientFactory]:
    """Name -> factory, bare aiohttp first. Storm mode only lists clients that retry."""
    clients: dict[str, ClientFactory] = {}
    if not storm:
        clients["bare aiohttp"] = bare_aiohttp
    clients["aiohttp + tenacity (naive)"] = aiohttp_tenacity
    clients["aiohttp-retry"] = aiohttp_retry_client
    if not storm:
        clients["httpx"] = httpx_client
    if include_wachat:
        clients["wachat-async"] = wachat_factory(storm=storm)
    return clients


# --------------------------------------------------------------------------- throughput


@dataclass(frozen=True)
class RunSample:
    """One timed run of one client."""

    requests: int
    wall_s: float
    cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6


@dataclass
class ClientStats:
    """All rounds of one client."""

    name: str
    samples: list[RunSample] = field(default_factory=list)

    @property
    def median_rps(self) -> float:
        return statistics.median(s.rps for s in self.samples)

    @property
    def median_cpu_us(self) -> float:
        return statistics.median(s.cpu_us_per_request for s in self.samples)

    @property
    def cpu_us_range(self) -> tuple[float, float]:
        values = [s.cpu_us_per_request for s in self.samples]
        return min(values), max(values)


async def drive(
    fetch: Fetch, names: Sequence[str], concurrency: int, *, collect: bool = True
) -> RunSample:
    """Fetch every name with ``concurrency`` workers; time wall clock and this process's CPU.

    Workers pull from one shared iterator (no task per request), so the harness itself costs
    the same small amount for every client.
    """
    todo = iter(names)

    async def worker() -> None:
        for name in todo:
            await fetch(name)

    if collect:  # start every timed run from the same garbage state
        gc.collect()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall1, cpu1 = time.perf_counter(), time.process_time()
    return RunSample(requests=len(names), wall_s=wall1 - wall0, cpu_s=cpu1 - cpu0)


def instance_names(n: int) -> list[str]:
    """``n`` plausible instance names (1,000 distinct ones, so nothing can cache by name)."""
    return [f"t1_bench{i % 1000:04d}_store" for i in range(n)]


async def run_throughput(
    t: Target,
    clients: dict[str, ClientFactory],
    *,
    requests: int,
    concurrency: int,
    rounds: int,
    warmup: int = 200,
    progress: Callable[[str], None] | None = None,
    collect: bool = True,
) -> list[ClientStats]:
    """Interleaved rounds over all clients; each client keeps one warm pool for all rounds.

    *collect* runs ``gc.collect()`` before every timed run (off only for quick smoke tests).
    """
    names = instance_names(requests)
    stats = {name: ClientStats(name) for name in clients}
    order = list(clients)
    async with _open_all(t, clients) as fetchers:
        for name in order:  # warm-up: open connections, first-call imports, lazy sessions
            if warmup > 0:
                await drive(
                    fetchers[name], instance_names(warmup), min(concurrency, warmup), collect=False
                )
        for r in range(rounds):
            shift = r % len(order)
            for name in order[shift:] + order[:shift]:
                sample = await drive(fetchers[name], names, concurrency, collect=collect)
                stats[name].samples.append(sample)
                if progress is not None:
                    progress(
                        f"round {r + 1}/{rounds} {name:<28} {sample.rps:8.0f} req/s "
                        f"{sample.cpu_us_per_request:7.1f} us CPU/req"
                    )
    return [stats[name] for name in order]


@asynccontextmanager
async def _open_all(
    t: Target, clients: dict[str, ClientFactory]
) -> AsyncIterator[dict[str, Fetch]]:
    fetchers: dict[str, Fetch] = {}
    stack: list[AbstractAsyncContextManager[Fetch]] = []
    try:
        for name, factory in clients.items():
            cm = factory(t)
            fetchers[name] = await cm.__aenter__()
            stack.append(cm)
        yield fetchers
    finally:
        for cm in reversed(stack):
            await cm.__aexit__(None, None, None)


def throughput_table(results: Sequence[ClientStats]) -> str:
    """Markdown table; ratios are to the first row (bare aiohttp).

    Two CPU ratios besides the ratio of medians, both steadier on a shared machine:
    "paired" is the median over rounds of (this client's CPU/req / bare's CPU/req in the same
    round), so a noisy round affects both sides of its ratio; "best round" compares each
    client's lowest CPU/req (interference from other processes only ever adds CPU).
    """
    base = results[0]
    base_lo = base.cpu_us_range[0]
    lines = [
        "| client | req/s (median) | req/s vs bare | client CPU µs/req (median) "
        "| CPU µs/req range | CPU vs bare: medians | paired | best round |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in results:
        lo, hi = s.cpu_us_range
        paired = statistics.median(
            a.cpu_us_per_request / b.cpu_us_per_request
            for a, b in zip(s.samples, base.samples, strict=True)
        )
        lines.append(
            f"| {s.name} | {s.median_rps:,.0f} | {s.median_rps / base.median_rps:.2f}x "
            f"| {s.median_cpu_us:.0f} | {lo:.0f}-{hi:.0f} "
            f"| {s.median_cpu_us / base.median_cpu_us:.2f}x | {paired:.2f}x | {lo / base_lo:.2f}x |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- storm


@dataclass(frozen=True)
class StormResult:
    """How one retrying client behaved against a 100%-502 server."""

    name: str
    calls: int
    server_requests: int
    wall_s: float
    outcomes: dict[str, int]  # exception class name (or "ok") -> count

    @property
    def requests_per_call(self) -> float:
        return self.server_requests / self.calls


async def storm_once(
    t: Target, name: str, factory: ClientFactory, root_url: str, *, calls: int
) -> StormResult:
    """Reset the server's counter, run ``calls`` concurrent logical calls, read the counter."""
    await _server.control(root_url, "_reset")
    outcomes: Counter[str] = Counter()

    async def one(fetch: Fetch, i: int) -> None:
        try:
            await fetch(f"t1_storm{i:04d}_store")
        except Exception as exc:
            outcomes[type(exc).__name__] += 1
        else:
            outcomes["ok"] += 1

    async with factory(t) as fetch:
        wall0 = time.perf_counter()
        await asyncio.gather(*(one(fetch, i) for i in range(calls)))
        wall = time.perf_counter() - wall0
    received = int(str((await _server.control(root_url, "_stats"))["requests"]))
    return StormResult(name, calls, received, wall, dict(outcomes))


async def run_storm(
    t: Target, clients: dict[str, ClientFactory], root_url: str, *, calls: int
) -> list[StormResult]:
    """Switch the server to 100% 502, measure every retrying client, switch it back."""
    await _server.control(root_url, "_mode", mode="storm")
    try:
        return [
            await storm_once(t, name, factory, root_url, calls=calls)
            for name, factory in clients.items()
        ]
    finally:
        await _server.control(root_url, "_mode", mode="ok")


def storm_table(results: Sequence[StormResult], attempts: int) -> str:
    """Markdown table of server requests per logical call."""
    lines = [
        f"| client (max {attempts} attempts) | logical calls | requests at server "
        "| requests per call | wall s | what callers got |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for r in results:
        got = ", ".join(f"{k} x{v}" for k, v in sorted(r.outcomes.items()))
        lines.append(
            f"| {r.name} | {r.calls:,} | {r.server_requests:,} | {r.requests_per_call:.2f} "
            f"| {r.wall_s:.2f} | {got} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def machine_description() -> str:
    """One line naming the OS, CPU count and library versions (call before pinning CPUs)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.system()} {platform.machine()}, {cpus} CPUs, Python "
        f"{platform.python_version()}, aiohttp {aiohttp.__version__}, httpx {httpx.__version__}"
    )


def _load() -> str:
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("throughput", "storm", "all"), default="all")
    parser.add_argument("--requests", type=int, default=2000, help="requests per client per round")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests per client")
    parser.add_argument("--storm-calls", type=int, default=1000)
    parser.add_argument("--storm-pool", type=int, default=100, help="connections per client")
    parser.add_argument(
        "--storm-wait",
        type=float,
        default=0.01,
        help="initial (and, x8, max) backoff in seconds for every client in storm mode",
    )
    parser.add_argument(
        "--storm-deadline",
        type=float,
        default=30.0,
        help="wachat-async's deadline in storm mode (its calls wait for the circuit up to it)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin client/server CPUs")
    parser.add_argument("--no-wachat", action="store_true", help="skip wachat-async")
    args = parser.parse_args(argv)

    machine = machine_description()
    pin = not args.no_pin and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
    server_cpu: int | None = None
    if pin:
        client_cpu, server_cpu = sorted(os.sched_getaffinity(0))[:2]
        os.sched_setaffinity(0, {client_cpu})
    include_wachat = not args.no_wachat

    print(f"# wachat-async benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine}; client and server pinned to one CPU each: {pin}")
    print(f"load average at start: {_load()}\n")
    with _server.ServerProcess(cpu=server_cpu) as server:
        if args.mode in ("throughput", "all"):
            t = Target(server.base_url, server.api_key, connections=args.concurrency)
            print(
                f"## Success path: {args.requests:,} requests x {args.rounds} interleaved rounds, "
                f"concurrency {args.concurrency}, median of rounds\n"
            )
            results = asyncio.run(
                run_throughput(
                    t,
                    client_table(include_wachat=include_wachat),
                    requests=args.requests,
                    concurrency=args.concurrency,
                    rounds=args.rounds,
                    warmup=args.warmup,
                    progress=lambda line: print(line, file=sys.stderr),
                )
            )
            print(throughput_table(results) + "\n")
        if args.mode in ("storm", "all"):
            t = Target(
                server.base_url,
                server.api_key,
                connections=args.storm_pool,
                initial_wait=args.storm_wait,
                max_wait=args.storm_wait * 8,
                deadline=args.storm_deadline,
            )
            print(
                f"## 502 storm: {args.storm_calls:,} concurrent calls, server fails 100% with 502, "
                f"backoff {args.storm_wait * 1000:g}-{args.storm_wait * 8000:g} ms\n"
            )
            storm = asyncio.run(
                run_storm(
                    t,
                    client_table(include_wachat=include_wachat, storm=True),
                    server.root_url,
                    calls=args.storm_calls,
                )
            )
            print(storm_table(storm, t.attempts) + "\n")
    print(f"load average at end: {_load()} (other processes share these CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
