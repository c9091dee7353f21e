"""Web fan-out: what ``--viewers`` open QR pages of one instance cost a web app.

The fake server program (``python -m wachat_async.testing``, its QR rotating every
``--rotation`` seconds) and one example app (``examples/aiohttp_proxy.py`` or
``examples/fastapi_proxy.py``) run in their own processes, the app pointed at the fake
server as in production. This process opens ``--viewers`` event streams of one instance
(``/qr/NAME/events``), waits for the first ``qr`` event on each, holds them ``--hold``
seconds, then closes them. Reported: the app's RSS and open file descriptors idle, with the
viewers and after they left; memory per viewer; the upstream requests the fake server
answered while the viewers were held (by path), per viewer and per rotation; the events each
viewer received.

Run: ``.venv/bin/python benchmarks/fanout.py`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import psutil  # type: ignore[import-untyped,unused-ignore]

try:  # importable both as ``benchmarks.fanout`` and as a script (``benchmarks/`` on sys.path)
    from . import limits, shutdown  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    import limits  # type: ignore[import-not-found,no-redef,unused-ignore]
    import shutdown  # type: ignore[import-not-found,no-redef,unused-ignore]

NAME = shutdown.NAME


@dataclass
class FanoutRow:
    """One app with *viewers* streams of one instance held *hold* seconds."""

    app: str
    viewers: int
    hold_s: float
    rotation_s: float
    seconds_to_connect: float = 0.0
    rss_idle: int = 0
    rss_viewing: int = 0
    rss_after: int = 0
    fds_idle: int = 0
    fds_viewing: int = 0
    fds_after: int = 0
    upstream: dict[str, int] = field(default_factory=dict)  # path -> requests while held
    events: dict[str, int] = field(default_factory=dict)  # kind -> events, all viewers
    streams_failed: int = 0

    @property
    def upstream_total(self) -> int:
        return sum(self.upstream.values())

    @property
    def kib_per_viewer(self) -> float:
        return (self.rss_viewing - self.rss_idle) / 1024 / max(self.viewers, 1)


def _sample(pid: int) -> tuple[int, int]:
    proc = psutil.Process(pid)
    return int(proc.memory_info().rss), int(proc.num_fds())


async def measure(
    app: str, viewers: int, *, hold: float, rotation: float, examples: Path
) -> FanoutRow:
    """One app, *viewers* streams held *hold* seconds against a QR rotating every *rotation*."""
    row = FanoutRow(app, viewers, hold, rotation)
    server_args = ("--rotation", f"{rotation:g}")
    with limits.FakeProgram(instances=0, names=[NAME], server_args=server_args) as fake:
        started = await shutdown.start_app(app, fake.base_url, examples, [NAME])
        pid = started.proc.pid
        await asyncio.sleep(1)  # let start-up settle
        row.rss_idle, row.fds_idle = _sample(pid)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        t0 = time.perf_counter()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            url = f"{started.url}/qr/{NAME}/events"
            opened = [shutdown.Viewer() for _ in range(viewers)]
            tasks = [asyncio.create_task(shutdown.view(http, url, v)) for v in opened]
            await asyncio.wait_for(
                asyncio.gather(*(v.first_qr.wait() for v in opened)), shutdown.LIMIT
            )
            row.seconds_to_connect = time.perf_counter() - t0
            before = Counter(fake.paths)
            await asyncio.sleep(hold)
            row.upstream = dict(Counter(fake.paths) - before)
            row.rss_viewing, row.fds_viewing = _sample(pid)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(2)  # let the app notice the closed streams
        row.rss_after, row.fds_after = _sample(pid)
        started.proc.terminate()
        await started.proc.wait()
    row.events = dict(sum((v.events_after_first for v in opened), Counter()))
    row.events["qr (first)"] = sum(v.first_qr.is_set() for v in opened)
    row.streams_failed = sum(v.ended not in ("open", "clean end") for v in opened)
    return row


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def table(rows: Sequence[FanoutRow]) -> str:
    """Markdown, one line per run."""
    lines = [
        "| app | viewers | connect s | RSS idle / viewing / after MiB | KiB per viewer "
        "| fds idle / viewing / after | upstream requests while held | per viewer "
        "| events (all viewers) | failed streams |",
        "|---|--:|--:|--:|--:|--:|---|--:|---|--:|",
    ]
    for r in rows:
        upstream = ", ".join(f"{k} {v}" for k, v in sorted(r.upstream.items())) or "none"
        events = ", ".join(f"{k} {v:,}" for k, v in sorted(r.events.items()))
        lines.append(
            f"| {r.app} | {r.viewers:,} | {r.seconds_to_connect:.1f} "
            f"| {_mib(r.rss_idle)} / {_mib(r.rss_viewing)} / {_mib(r.rss_after)} "
            f"| {r.kib_per_viewer:.1f} | {r.fds_idle} / {r.fds_viewing} / {r.fds_after} "
            f"| {upstream} | {r.upstream_total / max(r.viewers, 1):.4f} | {events} "
            f"| {r.streams_failed} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--apps", nargs="+", choices=list(shutdown.APPS), default=list(shutdown.APPS)
    )
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds (default 20)")
    parser.add_argument(
        "--rotation", type=float, default=5.0, help="the fake QR's rotation (default 5 s)"
    )
    parser.add_argument("--examples", type=Path, default=shutdown.EXAMPLES)
    parser.add_argument("--json", action="store_true", help="print JSON rows, not Markdown")
    args = parser.parse_args(argv)
    out = sys.stderr if args.json else sys.stdout
    print(f"# web fan-out benchmark; load at start: {limits.load_average()}", file=out)
    rows = []
    for app in args.apps:
        print(f"{app}, {args.viewers:,} viewers ...", file=sys.stderr, flush=True)
        rows.append(
            asyncio.run(
                measure(
                    app,
                    args.viewers,
                    hold=args.hold,
                    rotation=args.rotation,
                    examples=args.examples,
                )
            )
        )
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
    else:
        print(
            f"{args.viewers:,} viewers of one instance held {args.hold:g} s; "
            f"the fake QR rotates every {args.rotation:g} s\n"
        )
        print(table(rows))
        print(f"\nload average at end: {limits.load_average()} (other processes share these CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
