"""How long a web app with open QR pages takes to stop: SIGTERM/SIGINT to process exit.

Each run starts the fake server program (``python -m wachat_async.testing``) and one example
app in its own process, pointed at it as in production (``WACHAT_API_KEY`` and
``WACHAT_BASE_URL``): ``examples/aiohttp_proxy.py`` (aiohttp.web) or
``examples/fastapi_proxy.py`` (uvicorn). It opens ``--viewers`` QR event streams (plain HTTP
clients reading ``/qr/NAME/events`` until their first ``qr`` event), sends the signal, and
reports the seconds until the process exited, its exit status, how each stream ended (a clean
end of stream, or an error) and the log lines it printed after the signal.
Also run with no viewer, for comparison.

It imports ``wachat_async`` from wherever it runs; the examples are those of the tree it
runs in (``--examples DIR`` to take another tree's).

Run: ``.venv/bin/python benchmarks/shutdown.py`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

try:  # importable both as ``benchmarks.shutdown`` and as a script (``benchmarks/`` on sys.path)
    from . import limits  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    import limits  # type: ignore[import-not-found,no-redef,unused-ignore]

NAME = "t1_shutdown_bench"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: The example, and the line it prints once it listens.
APPS = {
    "aiohttp.web": ("aiohttp_proxy.py", "Open http"),
    "uvicorn": ("fastapi_proxy.py", "Uvicorn running"),
}
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
#: Times, dates and process ids: lines that differ only there are counted as one.
BRACKETS = re.compile(r"\[[^\]]*\]")
#: Bound on each wait, so that a regression cannot hang the benchmark.
LIMIT = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class App:
    """One example app in a child process, its output collected line by line."""

    proc: asyncio.subprocess.Process
    url: str
    log: list[tuple[float, str]] = field(default_factory=list)  # (perf_counter, line)
    reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.log.append((time.perf_counter(), line.decode(errors="replace").rstrip()))

    def lines_after(self, moment: float) -> list[str]:
        return [line for at, line in self.log if at >= moment]


async def start_app(app: str, base_url: str, examples: Path, names: Sequence[str]) -> App:
    """Start *app* against the fake server at *base_url*; return once it listens."""
    script, ready = APPS[app]
    port = free_port()
    env = dict(os.environ, WACHAT_API_KEY=limits.LIMITS_API_KEY, WACHAT_BASE_URL=base_url)
    env["PYTHONUNBUFFERED"] = "1"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(examples / script),
        "--port",
        str(port),
        *names,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    started = App(proc, f"http://127.0.0.1:{port}")
    started.reader = asyncio.create_task(started._read())
    deadline = time.perf_counter() + LIMIT
    while not any(ready in line for _, line in started.log):
        if proc.returncode is not None or time.perf_counter() > deadline:
            proc.kill()
            raise RuntimeError(f"{script} did not start: {[line for _, line in started.log]}")
        await asyncio.sleep(0.05)
    return started


@dataclass
class Viewer:
    """One open event stream: how it went and how it ended."""

    first_qr: asyncio.Event = field(default_factory=asyncio.Event)
    events_after_first: Counter[str] = field(default_factory=Counter)
    ended: str = "open"  # "clean end" or the error's type


async def view(session: aiohttp.ClientSession, url: str, viewer: Viewer) -> None:
    """Read one event stream to its end; note the first ``qr`` event and how it ended."""
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                viewer.ended = f"HTTP {resp.status}"
                viewer.first_qr.set()
                return
            kind = "message"
            while raw := await resp.content.readline():
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    kind = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    if kind == "qr" and not viewer.first_qr.is_set():
                        viewer.first_qr.set()
                    else:
                        viewer.events_after_first[kind] += 1
                elif not line:
                    kind = "message"
        viewer.ended = "clean end"
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        viewer.ended = type(exc).__name__
    finally:
        viewer.first_qr.set()


@dataclass
class ShutdownRow:
    """One app stopped by one signal with some viewers open."""

    app: str
    signal: str
    viewers: int
    seconds_to_exit: float = 0.0
    exit_status: int | None = None
    streams_ended: dict[str, int] = field(default_factory=dict)
    events_after_signal: dict[str, int] = field(default_factory=dict)
    log_after_signal: list[str] = field(default_factory=list)


async def measure(app: str, sig: str, viewers: int, examples: Path) -> ShutdownRow:
    """Start the fake server and *app*, open *viewers* streams, signal, time the exit."""
    row = ShutdownRow(app, sig, viewers)
    with limits.FakeProgram(instances=0, names=[NAME]) as fake:
        started = await start_app(app, fake.base_url, examples, [NAME])
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            url = f"{started.url}/qr/{NAME}/events"
            opened = [Viewer() for _ in range(viewers)]
            tasks = [asyncio.create_task(view(http, url, v)) for v in opened]
            await asyncio.wait_for(asyncio.gather(*(v.first_qr.wait() for v in opened)), LIMIT)
            for v in opened:
                v.events_after_first.clear()
            sent = time.perf_counter()
            started.proc.send_signal(SIGNALS[sig])
            try:
                row.exit_status = await asyncio.wait_for(started.proc.wait(), LIMIT)
            except TimeoutError:
                started.proc.kill()
                row.exit_status = await started.proc.wait()
            row.seconds_to_exit = time.perf_counter() - sent
            await asyncio.wait_for(asyncio.gather(*tasks), LIMIT)
        assert started.reader is not None
        await started.reader
    row.streams_ended = dict(Counter(v.ended for v in opened))
    row.events_after_signal = dict(sum((v.events_after_first for v in opened), Counter()))
    row.log_after_signal = started.lines_after(sent)
    return row


def table(rows: Sequence[ShutdownRow]) -> str:
    """Markdown, one line per run, then the log lines each printed after the signal."""
    lines = [
        "| app | signal | viewers | seconds to exit | exit status | streams ended "
        "| events after the signal | log lines after the signal |",
        "|---|---|--:|--:|--:|---|---|--:|",
    ]
    for r in rows:
        ended = ", ".join(f"{k} {v}" for k, v in r.streams_ended.items()) or "-"
        events = ", ".join(f"{k} {v}" for k, v in r.events_after_signal.items()) or "none"
        lines.append(
            f"| {r.app} | {r.signal} | {r.viewers:,} | {r.seconds_to_exit:.2f} "
            f"| {r.exit_status} | {ended} | {events} | {len(r.log_after_signal)} |"
        )
    for r in rows:
        lines.append(f"\n{r.app}, {r.signal}, {r.viewers:,} viewers, after the signal:")
        seen = Counter(BRACKETS.sub("[...]", line) for line in r.log_after_signal)
        lines += [f"    {n}x {line}" for line, n in seen.items()] or ["    (nothing)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", nargs="+", choices=list(APPS), default=list(APPS))
    parser.add_argument("--signals", nargs="+", choices=list(SIGNALS), default=list(SIGNALS))
    parser.add_argument("--viewers", type=int, nargs="+", default=[0, 1000], help="default: 0 1000")
    parser.add_argument("--examples", type=Path, default=EXAMPLES)
    parser.add_argument("--json", action="store_true", help="print JSON rows, not Markdown")
    args = parser.parse_args(argv)
    out = sys.stderr if args.json else sys.stdout
    print(f"# web shutdown benchmark; load at start: {limits.load_average()}", file=out, flush=True)
    rows = []
    for app in args.apps:
        for sig in args.signals:
            for n in args.viewers:
                print(f"{app}, {sig}, {n:,} viewers ...", file=sys.stderr, flush=True)
                rows.append(asyncio.run(measure(app, sig, n, args.examples)))
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=1))
    else:
        print(table(rows))
        print(f"\nload average at end: {limits.load_average()} (other processes share these CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
