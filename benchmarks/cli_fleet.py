"""``wachat-qr poll`` at fleet scale: peak memory over a whole pass, and SIGTERM mid-pass.

The fake server program (``python -m wachat_async.testing --instances N``) runs in its own
process; ``wachat-qr poll -f NAMES`` runs in another (``python -c 'from wachat_async.cli
import main; ...'``: the package of the tree this runs in), pinned to the other CPU when there
are two. Its peak RSS is the kernel's ``ru_maxrss`` for that one process (``os.wait4``), the
same number as ``/usr/bin/time -v``'s "Maximum resident set size".

* ``--mode rss``: one whole pass per output (``--outputs``: ``table`` to a file, ``json``
  to a file, ``out-dir`` PNGs into a directory); wall time, peak RSS, exit status, the last
  lines of stderr (the summary) and the files written.
* ``--mode sigterm``: SIGTERM ``--after`` seconds into a pass with ``--out-dir``; the exit
  status, seconds from the signal to the exit, ``.part`` files left, PNGs written, and the
  last lines of stderr (the partial summary).

One fake server serves every row (QRs never rotate): the first pass is "cold" (the server
renders each QR once), later ones are served from its cache.

Run: ``.venv/bin/python benchmarks/cli_fleet.py --names 100000`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:  # importable both as ``benchmarks.cli_fleet`` and as a script (``benchmarks/`` on sys.path)
    from . import limits  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    import limits  # type: ignore[import-not-found,no-redef,unused-ignore]

CLI = [sys.executable, "-c", "import sys; from wachat_async.cli import main; sys.exit(main())"]
OUTPUTS = ("table", "json", "out-dir")


@dataclass
class PollRow:
    """One ``wachat-qr poll`` run."""

    mode: str
    output: str
    names: int
    concurrency: int
    command: str = ""
    wall_s: float = 0.0
    peak_rss: int = 0
    exit_status: int | None = None
    seconds_after_signal: float | None = None
    part_files: int | None = None
    pngs: int | None = None
    stdout_lines: int = 0
    stdout_tail: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)


def run_poll(
    row: PollRow,
    argv: Sequence[str],
    env: dict[str, str],
    *,
    stdout: Path,
    stderr: Path,
    cpu: int | None,
    after: float | None = None,
) -> None:
    """Run one poll to its end (or SIGTERM it *after* seconds); fill *row*'s numbers."""

    def pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    with stdout.open("wb") as out, stderr.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([*CLI, *argv], env=env, stdout=out, stderr=err, preexec_fn=pin)
        signalled = None
        if after is not None:
            try:
                proc.wait(timeout=after)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                signalled = time.perf_counter()
        if proc.returncode is None:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            row.peak_rss = usage.ru_maxrss * 1024  # Linux: KiB
        end = time.perf_counter()
    row.wall_s = end - t0
    row.exit_status = proc.returncode
    if signalled is not None:
        row.seconds_after_signal = end - signalled
    lines = stdout.read_text(errors="replace").splitlines()
    row.stdout_lines, row.stdout_tail = len(lines), lines[-2 if row.output == "json" else -9 :]
    row.stderr_tail = stderr.read_text(errors="replace").splitlines()[-6:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["rss", "sigterm", "all"], default="all")
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--outputs", nargs="+", choices=OUTPUTS, default=list(OUTPUTS))
    parser.add_argument("--after", type=float, default=10.0, help="sigterm: seconds (10)")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("--json", action="store_true", help="print JSON rows, not Markdown")
    parser.add_argument("--no-pin", action="store_true", help="do not pin client/server CPUs")
    args = parser.parse_args(argv)

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and len(cpus) >= 2
    client_cpu, server_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    out = sys.stderr if args.json else sys.stdout
    print(
        f"# wachat-qr poll fleet benchmark: {args.names:,} names, -c {args.concurrency}; "
        f"pinned: {pin}; load at start: {limits.load_average()}",
        file=out,
        flush=True,
    )
    rows: list[PollRow] = []
    with tempfile.TemporaryDirectory(prefix="wachat-cli-fleet-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        names_file = work / "names.txt"
        names_file.write_text("\n".join(limits.server_names(args.names)) + "\n")
        with limits.FakeProgram(instances=args.names, cpu=server_cpu) as fake:
            env = dict(os.environ, WACHAT_API_KEY=limits.LIMITS_API_KEY)
            env["WACHAT_BASE_URL"] = fake.base_url
            common = ["poll", "-f", str(names_file), "-c", str(args.concurrency)]
            plan = [("rss", o) for o in args.outputs] if args.mode in ("rss", "all") else []
            if args.mode in ("sigterm", "all"):
                plan.append(("sigterm", "out-dir"))
            for i, (mode, output) in enumerate(plan):
                print(f"{mode}, {output} ...", file=sys.stderr, flush=True)
                row = PollRow(mode, output, args.names, args.concurrency)
                pngs = work / f"pngs-{i}"
                extra = {"table": [], "json": ["--json"], "out-dir": ["-d", str(pngs)]}[output]
                row.command = "wachat-qr " + " ".join([*common, *extra]).replace(tmp, "$TMP")
                run_poll(
                    row,
                    [*common, *extra],
                    env,
                    stdout=work / f"stdout-{i}",
                    stderr=work / f"stderr-{i}",
                    cpu=client_cpu,
                    after=args.after if mode == "sigterm" else None,
                )
                if output == "out-dir":
                    files = list(pngs.iterdir()) if pngs.exists() else []
                    row.part_files = sum(f.name.endswith(".part") for f in files)
                    row.pngs = sum(f.name.endswith(".png") for f in files)
                rows.append(row)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
        return 0
    print(
        "\n| mode | output | wall s | peak RSS MiB | exit | s after SIGTERM | .part left "
        "| PNGs written | stdout lines |\n|---|---|--:|--:|--:|--:|--:|--:|--:|"
    )
    for r in rows:
        after = "-" if r.seconds_after_signal is None else f"{r.seconds_after_signal:.2f}"
        print(
            f"| {r.mode} | {r.output} | {r.wall_s:.1f} | {r.peak_rss / 2**20:.1f} "
            f"| {r.exit_status} | {after} | {'-' if r.part_files is None else r.part_files} "
            f"| {'-' if r.pngs is None else f'{r.pngs:,}'} | {r.stdout_lines:,} |"
        )
    for r in rows:
        for stream, tail in (("stdout", r.stdout_tail), ("stderr", r.stderr_tail)):
            print(f"\n`{r.command}`, last lines of {stream}:")
            print("\n".join(f"    {line}" for line in tail) or "    (nothing)")
    print(f"\nload average at end: {limits.load_average()} (other processes share these CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
