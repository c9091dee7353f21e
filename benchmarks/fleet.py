"""Fleet polling: ``WachatClient.fetch_many`` over 10,000 instances against the fake server.

The fake server (``wachat_async.testing.FakeWachatServer``, real scannable PNGs) runs in its own
process, pinned to the other CPU when there are two, so this process's CPU time, RSS and file
descriptors are the client's alone. Each pass polls the whole fleet once with
``client.fetch_many(names, concurrency=...)``; the first pass is "cold" (the fake server renders
each instance's QR on first request), later passes are served from its cache.

Reported per pass: wall time, results/s, client CPU per result, outcome counts, open file
descriptors sampled during the pass; and for the run: RSS and file descriptors before and after,
peak RSS (``ru_maxrss``), and the fake server's request count.

Run: ``.venv/bin/python benchmarks/fleet.py`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import psutil  # type: ignore[import-untyped,unused-ignore]

FLEET_API_KEY = "fleet-bench-key"  # loopback fake server only; not a real credential


def fleet_names(n: int) -> list[str]:
    """``n`` distinct, realistic instance names."""
    return [f"t1_fleet{i:05d}_store-{i % 37}" for i in range(n)]


# --------------------------------------------------------------------------- server process


async def _serve_fake(instances: int, api_key: str) -> None:
    """Child process: serve a FakeWachatServer with the fleet until SIGTERM, then print stats."""
    from wachat_async.testing import FakeWachatServer

    server = FakeWachatServer(api_key, qr_rotation=None, max_logged_requests=0)
    server.add_instances(fleet_names(instances))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(json.dumps({"base_url": server.base_url}), flush=True)
        await stop.wait()
        requests = server.request_count()
    rss = psutil.Process().memory_info().rss
    print(json.dumps({"requests": requests, "rss": rss}), flush=True)


class FakeServerProcess:
    """The fleet's fake server in a child process (sync context manager)."""

    def __init__(self, *, instances: int, api_key: str = FLEET_API_KEY, cpu: int | None) -> None:
        self.api_key = api_key
        self._argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve-fake",
            "--instances",
            str(instances),
        ]
        self._cpu = cpu
        self._proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.final_stats: dict[str, int] = {}

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> FakeServerProcess:
        argv = self._argv + ([] if self._cpu is None else ["--cpu", str(self._cpu)])
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        try:
            self.base_url = json.loads(line)["base_url"]
        except (ValueError, KeyError):
            self._proc.kill()
            self._proc.wait()
            raise RuntimeError(f"fake server failed to start (got {line!r})") from None
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
            out, _ = self._proc.communicate(timeout=30)
            if out.strip():
                self.final_stats = json.loads(out.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


# --------------------------------------------------------------------------- measurement


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _fds() -> int:
    return int(psutil.Process().num_fds())


def _peak_rss() -> int:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class PassResult:
    """One poll of the whole fleet."""

    results: int
    wall_s: float
    cpu_s: float
    outcomes: Counter[str]
    max_fds: int
    max_rss: int
    image_bytes: int

    @property
    def per_second(self) -> float:
        return self.results / self.wall_s

    @property
    def cpu_us_per_result(self) -> float:
        return self.cpu_s / self.results * 1e6


@dataclass
class FleetReport:
    """Everything one run measured."""

    instances: int
    concurrency: int
    passes: list[PassResult] = field(default_factory=list)
    rss_before: int = 0
    rss_after: int = 0
    peak_rss: int = 0
    fds_before: int = 0
    fds_after: int = 0
    server_requests: int | None = None
    server_rss: int | None = None


async def poll_fleet(
    base_url: str,
    api_key: str,
    names: Sequence[str],
    *,
    concurrency: int,
    passes: int = 1,
    sample_every: int = 250,
) -> FleetReport:
    """Poll every name ``passes`` times with one ``WachatClient`` and ``fetch_many``."""
    from wachat_async import WachatClient

    report = FleetReport(instances=len(names), concurrency=concurrency)
    gc.collect()
    report.rss_before, report.fds_before = _rss(), _fds()
    # fetch_many caps its concurrency at the client's max_connections: size the pool to match.
    async with WachatClient(
        api_key=api_key, base_url=base_url, max_connections=concurrency
    ) as client:
        for _ in range(passes):
            outcomes: Counter[str] = Counter()
            max_fds, max_rss = _fds(), _rss()
            image_bytes = 0
            count = 0
            gc.collect()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            async for result in client.fetch_many(names, concurrency=concurrency):
                count += 1
                if result.error is not None:
                    outcomes[type(result.error).__name__] += 1
                else:
                    outcomes["ok"] += 1
                    assert result.image is not None
                    image_bytes += len(result.image.data)
                if count % sample_every == 0:
                    max_fds, max_rss = max(max_fds, _fds()), max(max_rss, _rss())
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            report.passes.append(
                PassResult(
                    count,
                    wall,
                    cpu,
                    outcomes,
                    max(max_fds, _fds()),
                    max(max_rss, _rss()),
                    image_bytes,
                )
            )
    await asyncio.sleep(0)  # let the connector's close callbacks run
    gc.collect()
    report.rss_after, report.fds_after = _rss(), _fds()
    # ru_maxrss is the kernel's high-water mark, updated lazily: take the sampled RSS too.
    report.peak_rss = max([_peak_rss(), report.rss_after] + [p.max_rss for p in report.passes])
    return report


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def report_tables(report: FleetReport) -> str:
    """Markdown: one row per pass, then the process-level numbers."""
    lines = [
        "| pass | results | wall s | results/s | client CPU µs/result | outcomes "
        "| max open fds during |",
        "|---|--:|--:|--:|--:|---|--:|",
    ]
    for i, p in enumerate(report.passes):
        label = "1 (cold: server renders each QR)" if i == 0 else f"{i + 1} (warm)"
        got = ", ".join(f"{k} {v:,}" for k, v in sorted(p.outcomes.items()))
        lines.append(
            f"| {label} | {p.results:,} | {p.wall_s:.2f} | {p.per_second:,.0f} "
            f"| {p.cpu_us_per_result:.0f} | {got} | {p.max_fds} |"
        )
    lines += [
        "",
        "| client process | before | after |",
        "|---|--:|--:|",
        f"| RSS | {_mib(report.rss_before)} | {_mib(report.rss_after)} |",
        f"| open file descriptors | {report.fds_before} | {report.fds_after} |",
        f"| peak RSS (whole run) | | {_mib(report.peak_rss)} |",
    ]
    if report.server_requests is not None:
        lines.append(f"\nfake server received {report.server_requests:,} requests")
        if report.server_rss is not None:
            lines[-1] += f"; its RSS at the end: {_mib(report.server_rss)}"
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--no-pin", action="store_true", help="do not pin client/server CPUs")
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve_fake:
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        asyncio.run(_serve_fake(args.instances, FLEET_API_KEY))
        return 0

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and len(cpus) >= 2
    client_cpu, server_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    names = fleet_names(args.instances)
    print(f"# wachat-async fleet benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"{args.instances:,} instances, concurrency {args.concurrency}, {args.passes} pass(es); "
        f"{len(cpus) or os.cpu_count()} CPUs, client and server pinned to one each: {pin}\n"
    )
    with FakeServerProcess(instances=args.instances, cpu=server_cpu) as server:
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        report = asyncio.run(
            poll_fleet(
                server.base_url,
                server.api_key,
                names,
                concurrency=args.concurrency,
                passes=args.passes,
            )
        )
    report.server_requests = server.final_stats.get("requests")
    report.server_rss = server.final_stats.get("rss")
    print(report_tables(report))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"\nload average at end: {load} (other processes share these CPUs)")
    failed = sum(p.results - p.outcomes["ok"] for p in report.passes)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
