"""Fleets at an upstream's limits: rate limit, outage, hangs and flaky 502s (issue 21).

Each row runs one client over the same names against a fresh fake server *program*
(``python -m wachat_async.testing``, the operator's tool) in its own process, with the
scenario's fault options; the program's access log (on its stderr, read by a thread here)
counts the requests it answered, by status. Rows, all in one run with the same settings:

* ``wachat-async``: a default ``WachatClient()`` and ``fetch_many(names, concurrency=...)``;
* ``bare aiohttp``: ``ClientSession()`` + an ``asyncio.Semaphore`` + ``asyncio.as_completed``;
* ``aiohttp + tenacity (naive)``: the same, each GET inside ``AsyncRetrying`` (4 attempts,
  full-jitter exponential backoff from 0.5 s, retrying 429/502/504, timeouts and connection
  errors; Retry-After ignored);
* ``httpx``: ``httpx.AsyncClient()`` the same way, if httpx is installed.

The hand-written clients keep their libraries' default pools (100 connections, like the
default ``WachatClient``) and get wachat-async's per-attempt timeouts (``total=20,
sock_connect=10``), as in ``throughput.py``.

It imports ``wachat_async`` from wherever it runs and nothing else of its own tree, so
``cd OTHER && .venv/bin/python /path/to/benchmarks/limits.py`` measures OTHER's code.

Run: ``.venv/bin/python benchmarks/limits.py --scenario all`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import TracebackType

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

import wachat_async
from wachat_async import WachatClient

try:
    import httpx
except ImportError:  # pragma: no cover - httpx is a bench extra
    httpx = None  # type: ignore[assignment]

LIMITS_API_KEY = "limits-bench-key"  # loopback fake server only; not a real credential
QR_PATH = "/instance/qr/image"
NAIVE_RETRY_STATUSES = frozenset({429, 502, 504})
# wachat-async's DEFAULT_TIMEOUT, spelled out so that any tree's package can be measured.
AIOHTTP_TIMEOUT = aiohttp.ClientTimeout(total=20, sock_connect=10)


@dataclass(frozen=True)
class Scenario:
    """One of issue 21's "done when" cases: the fake server's options and the default size."""

    name: str
    server_args: tuple[str, ...]
    names: int
    what: str
    rate: float | None = None  # requests/s the server accepts: ideal wall = names / rate


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "ratelimit",
            ("--rate-limit", "500", "--retry-after", "1"),
            5_000,
            "500 requests/s accepted, 429 + Retry-After: 1 above",
            rate=500.0,
        ),
        Scenario("outage", ("--outage", "5"), 10_000, "every request 502 for the first 5 s"),
        Scenario("hang", ("--share-hang", "1"), 10_000, "every request hangs"),
        Scenario("flaky", ("--share-502", "0.5", "--seed", "21"), 10_000, "50% of requests 502"),
    )
}


# --------------------------------------------------------------------------- server program


class FakeProgram:
    """``python -m wachat_async.testing`` in a child process (sync context manager).

    ``statuses`` counts the QR requests its access log shows, by status (a request left
    hanging is never answered, so it is not there); ``paths`` every request, by path.
    """

    def __init__(
        self,
        *,
        instances: int,
        server_args: Sequence[str] = (),
        cpu: int | None = None,
        names: Sequence[str] = ("t1_limits_bench",),
    ) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "wachat_async.testing",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--api-key",
            LIMITS_API_KEY,
            *[arg for name in names for arg in ("--instance", name)],
            "--instances",
            str(instances),
            "--rotation",
            "0",
            "--log-limit",
            "0",
            "--access-log",
            *server_args,
        ]
        self._cpu = cpu
        self._proc: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self.base_url = ""
        self.statuses: Counter[int] = Counter()
        self.paths: Counter[str] = Counter()
        self.started = 0.0  # perf_counter() when it said it listens (its faults start then)

    def _pin(self) -> None:  # runs in the child before exec
        if self._cpu is not None:
            os.sched_setaffinity(0, {self._cpu})

    def _read_log(self) -> None:
        assert self._proc is not None
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            parts = line.split()  # "127.0.0.1 GET /api/v1/instance/qr/image 429 0.000401s"
            if len(parts) == 5 and parts[2].startswith("/"):
                self.paths[parts[2]] += 1
                if parts[2].endswith(QR_PATH):
                    self.statuses[int(parts[3])] += 1

    def __enter__(self) -> FakeProgram:
        self._proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=self._pin if self._cpu is not None else None,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        self.started = time.perf_counter()
        if "listening on" not in line:
            self._proc.kill()
            _, err = self._proc.communicate()
            raise RuntimeError(f"fake server program failed to start: {line!r} {err[-500:]!r}")
        self.base_url = line.split()[-1]
        self._readers = [
            threading.Thread(target=self._read_log, daemon=True),
            threading.Thread(target=self._proc.stdout.read, daemon=True),  # drain stdout
        ]
        for reader in self._readers:
            reader.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._proc is not None
        self._proc.terminate()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for reader in self._readers:
            reader.join(timeout=30)
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()


def server_names(instances: int) -> list[str]:
    """The names ``--instances N`` serves (the program's own generator)."""
    from wachat_async.testing.__main__ import generated_names

    return generated_names(instances)


# --------------------------------------------------------------------------- clients

Fetch = Callable[[str], Awaitable[object]]


class StatusError(Exception):
    """A non-200 answer to a hand-written client."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _check_png(data: bytes) -> None:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")


@dataclass
class Row:
    """What one client did in one scenario."""

    client: str
    scenario: str
    names: int
    concurrency: int
    wall_s: float = 0.0
    cpu_s: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)  # "ok" or the error's type
    statuses: Counter[int] = field(default_factory=Counter)  # answered by the server
    attempts: int | None = None  # counted by the hand-written clients (hung ones included)
    ideal_s: float | None = None

    @property
    def failed(self) -> int:
        return self.names - self.outcomes["ok"]

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def requests(self) -> int:
        """Requests sent: the client's count where it has one, else the server's."""
        return self.answered if self.attempts is None else max(self.attempts, self.answered)

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["outcomes"] = dict(self.outcomes)
        data["statuses"] = {str(k): v for k, v in sorted(self.statuses.items())}
        data.update(failed=self.failed, requests=self.requests, answered=self.answered)
        return data


def _label(error: BaseException) -> str:
    status = getattr(error, "status", None)
    name = type(error).__name__
    return f"{name}({status})" if type(status) is int and status else name


@asynccontextmanager
async def _aiohttp_fetch(base_url: str, row: Row) -> AsyncIterator[Fetch]:
    url, headers = f"{base_url}{QR_PATH}", {"Authorization": f"Bearer {LIMITS_API_KEY}"}
    row.attempts = 0
    async with aiohttp.ClientSession(timeout=AIOHTTP_TIMEOUT) as session:

        async def fetch(name: str) -> bytes:
            row.attempts = (row.attempts or 0) + 1
            async with session.get(url, params={"instanceName": name}, headers=headers) as resp:
                if resp.status != 200:
                    raise StatusError(resp.status)
                data = await resp.read()
            _check_png(data)
            return data

        yield fetch


def _retryable(error: BaseException) -> bool:
    if isinstance(error, StatusError):
        return error.status in NAIVE_RETRY_STATUSES
    return isinstance(error, (TimeoutError, aiohttp.ClientConnectionError))


@asynccontextmanager
async def _tenacity_fetch(base_url: str, row: Row) -> AsyncIterator[Fetch]:
    async with _aiohttp_fetch(base_url, row) as once:

        async def fetch(name: str) -> object:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(4),
                wait=wait_random_exponential(multiplier=0.5, max=8),
                retry=retry_if_exception(_retryable),
                reraise=True,
            ):
                with attempt:
                    return await once(name)
            raise AssertionError("unreachable: reraise=True")  # pragma: no cover

        yield fetch


@asynccontextmanager
async def _httpx_fetch(base_url: str, row: Row) -> AsyncIterator[Fetch]:
    assert httpx is not None
    url, headers = f"{base_url}{QR_PATH}", {"Authorization": f"Bearer {LIMITS_API_KEY}"}
    row.attempts = 0
    async with httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=10.0)) as client:

        async def fetch(name: str) -> bytes:
            row.attempts = (row.attempts or 0) + 1
            resp = await client.get(url, params={"instanceName": name}, headers=headers)
            if resp.status_code != 200:
                raise StatusError(resp.status_code)
            _check_png(resp.content)
            return resp.content

        yield fetch


async def _gather(fetch: Fetch, names: Sequence[str], concurrency: int, row: Row) -> None:
    """What users write: a semaphore, one task per name, ``as_completed``."""
    gate = asyncio.Semaphore(concurrency)

    async def one(name: str) -> None:
        async with gate:
            await fetch(name)

    for done in asyncio.as_completed([one(n) for n in names]):
        try:
            await done
        except Exception as exc:  # every failure is counted by type
            row.outcomes[_label(exc)] += 1
        else:
            row.outcomes["ok"] += 1


async def _wachat(base_url: str, names: Sequence[str], concurrency: int, row: Row) -> None:
    async with WachatClient(api_key=LIMITS_API_KEY, base_url=base_url) as client:
        async for result in client.fetch_many(names, concurrency=concurrency):
            row.outcomes["ok" if result.error is None else _label(result.error)] += 1


Runner = Callable[[str, Sequence[str], int, Row], Coroutine[object, object, None]]


def _hand_written(
    make: Callable[[str, Row], AbstractAsyncContextManager[Fetch]],
) -> Runner:
    async def run(base_url: str, names: Sequence[str], concurrency: int, row: Row) -> None:
        async with make(base_url, row) as fetch:
            await _gather(fetch, names, concurrency, row)

    return run


def client_table() -> dict[str, Runner]:
    """Row name -> runner, wachat-async first; httpx only if installed."""
    clients: dict[str, Runner] = {
        "wachat-async": _wachat,
        "bare aiohttp": _hand_written(_aiohttp_fetch),
        "aiohttp + tenacity (naive)": _hand_written(_tenacity_fetch),
    }
    if httpx is not None:
        clients["httpx"] = _hand_written(_httpx_fetch)
    return clients


# --------------------------------------------------------------------------- measurement


def measure(
    scenario: Scenario,
    client: str,
    runner: Runner,
    *,
    names: int,
    concurrency: int,
    server_cpu: int | None = None,
    warm: bool = True,
) -> Row:
    """One row: a fresh fake server program, one pass of *client* over *names* names."""
    row = Row(client, scenario.name, names, concurrency)
    if scenario.rate:
        row.ideal_s = names / scenario.rate
    fleet = server_names(names)
    with FakeProgram(instances=names, server_args=scenario.server_args, cpu=server_cpu) as srv:
        if warm and scenario.rate:
            asyncio.run(warm_up(srv.base_url, fleet, scenario.rate))
            srv.statuses.clear()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        asyncio.run(runner(srv.base_url, fleet, concurrency, row))
        row.wall_s, row.cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    row.statuses = srv.statuses
    return row


async def warm_up(base_url: str, names: Sequence[str], rate: float) -> None:
    """Have the server render every QR (its first answer for a name costs it about 1-2 ms of
    CPU, the next ones about a fifth) at 90% of *rate*, then let its token bucket refill:
    the measured pass then meets the rate limit, not a server busy rendering."""
    url, headers = f"{base_url}{QR_PATH}", {"Authorization": f"Bearer {LIMITS_API_KEY}"}
    batch = max(1, int(rate * 0.9 / 10))  # every 0.1 s
    async with aiohttp.ClientSession(timeout=AIOHTTP_TIMEOUT) as session:

        async def get(name: str) -> bool:
            params = {"instanceName": name}
            async with session.get(url, params=params, headers=headers) as resp:
                await resp.read()
                return resp.status == 200

        todo = list(names)
        while todo:
            chunk, todo = todo[:batch], todo[batch:]
            started = time.perf_counter()
            done = await asyncio.gather(*(get(n) for n in chunk))
            todo += [n for n, ok in zip(chunk, done, strict=True) if not ok]
            await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - started)))
    await asyncio.sleep(1.5)  # the bucket holds one second's worth


def _outcomes(row: Row) -> str:
    failed = [(k, v) for k, v in row.outcomes.most_common() if k != "ok"]
    return ", ".join(f"{k} {v:,}" for k, v in failed) or "none"


def table(rows: Iterable[Row]) -> str:
    """Markdown, one line per row."""
    lines = [
        "| scenario | client | names | failed | failed by type | requests | requests/name "
        "| goodput | answered 429 | wall s | wall/ideal | requests/s | client CPU s |",
        "|---|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        share_429 = f"{r.statuses[429] / r.answered:.0%}" if r.answered else "-"
        requests = f"{r.requests:,}" if r.requests else "-"
        per_name = f"{r.requests / r.names:.2f}" if r.requests else "-"
        goodput = f"{r.outcomes['ok'] / r.requests:.0%}" if r.requests else "-"
        ideal = f"{r.wall_s / r.ideal_s:.2f}x" if r.ideal_s else "-"
        lines.append(
            f"| {r.scenario} | {r.client} | {r.names:,} | {r.failed:,} ({r.failed / r.names:.0%}) "
            f"| {_outcomes(r)} | {requests} | {per_name} | {goodput} | {share_429} "
            f"| {r.wall_s:.1f} | {ideal} | {r.requests / r.wall_s:,.0f} | {r.cpu_s:.1f} |"
        )
    return "\n".join(lines)


def load_average() -> str:
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--names", type=int, default=None, help="default: the scenario's size")
    parser.add_argument("--concurrency", type=int, default=200)
    clients = client_table()
    parser.add_argument(
        "--clients", nargs="+", choices=list(clients), default=list(clients), metavar="CLIENT"
    )
    parser.add_argument("--json", action="store_true", help="print JSON rows, not Markdown")
    parser.add_argument("--no-pin", action="store_true", help="do not pin client/server CPUs")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="ratelimit: do not have the server render every QR before the pass",
    )
    args = parser.parse_args(argv)

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and len(cpus) >= 2
    server_cpu = cpus[1] if pin else None
    scenarios = list(SCENARIOS.values()) if args.scenario == "all" else [SCENARIOS[args.scenario]]
    where = os.path.dirname(wachat_async.__file__)
    header = (
        f"# wachat-async limits benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        f"package: {where}; {platform.system()}, {len(cpus) or os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, aiohttp {aiohttp.__version__}"
        f"{'' if httpx is None else f', httpx {httpx.__version__}'}; "
        f"concurrency {args.concurrency}; pinned: {pin}; load at start: {load_average()}"
    )
    print(header, file=sys.stderr if args.json else sys.stdout, flush=True)
    if pin:
        os.sched_setaffinity(0, {cpus[0]})
    rows = []
    for scenario in scenarios:
        n = args.names or scenario.names
        for name in args.clients:
            print(f"{scenario.name}: {name}, {n:,} names ...", file=sys.stderr, flush=True)
            rows.append(
                measure(
                    scenario,
                    name,
                    clients[name],
                    names=n,
                    concurrency=args.concurrency,
                    server_cpu=server_cpu,
                    warm=not args.cold,
                )
            )
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=1))
    else:
        for scenario in scenarios:
            print(f"\n**{scenario.name}**: {scenario.what} (`{' '.join(scenario.server_args)}`)\n")
            print(table(r for r in rows if r.scenario == scenario.name))
        print(f"\nload average at end: {load_average()} (other processes share these CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
