"""Enqueue one ``fetch_qr`` task per distinct instance name and wait for every result.

Install: ``pip install -e '.[fleet]'``. Run from the repository root, with workers running
(``taskiq worker examples.taskiq_fleet.worker:broker --workers 2``) and the same ``REDIS_URL``::

    python -m examples.taskiq_fleet.produce --names-file names.txt --out-dir qr-codes

``--names-file`` has one name per line (blank lines and ``#`` comments skipped, ``-`` for
stdin); each distinct name is sent once. ``--out-dir`` is made absolute here, because the
workers may run elsewhere (on other machines it must be a shared folder). Each failed
instance is one line on stderr (``NAME: ErrorType: message``, key redacted); the last line on
stdout is ``{"ok": N, "failed": M, "seconds": S}``. Exit status 0 when every name was saved,
1 when any failed or ``--timeout`` passed first (the names still waiting count as failed),
2 for a usage error, 3 when Redis cannot be reached (one line on stderr, no traceback): at the
start, or for more than ``OUTAGE_LIMIT`` seconds (60) in a row later. A shorter outage (a
Redis restart) is ridden out: one line on stderr when it starts, one when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError
from taskiq import AsyncTaskiqTask, TaskiqResult

from .worker import ResultStore, broker, fetch_qr, log

__all__ = ["main", "read_names", "run"]

#: Tasks sent at once.
CONCURRENCY = 64
#: Results awaited at once, in the order sent (they arrive in about that order).
WAITERS = 16
#: Seconds between two reads of a result not there yet.
POLL_INTERVAL = 0.1
#: Seconds Redis may stay unreachable in a row, once the run has started, before giving up.
OUTAGE_LIMIT = 60.0


def read_names(lines: Iterable[str]) -> list[str]:
    """The distinct names in *lines*, in first-seen order (blank lines and ``#`` skipped)."""
    names: dict[str, None] = {}
    for line in lines:
        name = line.strip()
        if name and not name.startswith("#"):
            names.setdefault(name, None)
    return list(names)


async def run(
    names: Sequence[str],
    out_dir: str,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - bounds the wait for results only
) -> tuple[list[dict[str, Any]], float]:
    """Send a task per name, wait for all (or *timeout* s); return the outcomes and seconds."""
    started = time.perf_counter()
    outcomes: dict[str, dict[str, Any]] = {}
    broker.outage.limit = OUTAGE_LIMIT
    await broker.startup()  # an unreachable Redis raises here, at once
    try:
        sent = await _send(names, out_dir)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_collect(sent, outcomes), timeout)
    finally:
        await broker.shutdown()
    for name in names:
        if name not in outcomes:
            error = f"no result within {timeout} s"
            outcomes[name] = {"instance": name, "ok": False, "error": error, "file": None}
    return [outcomes[name] for name in names], time.perf_counter() - started


Sent = list[tuple[str, AsyncTaskiqTask[dict[str, Any]]]]


async def _send(names: Sequence[str], out_dir: str) -> Sent:
    sent: Sent = []
    for start in range(0, len(names), CONCURRENCY):
        chunk = names[start : start + CONCURRENCY]
        tasks = await asyncio.gather(*(fetch_qr.kiq(name, out_dir) for name in chunk))
        sent += zip(chunk, tasks, strict=True)
    return sent


async def _collect(sent: Sent, outcomes: dict[str, dict[str, Any]]) -> None:
    """Wait for the results in the order sent: by the time the first is in, most are."""
    store = broker.result_backend
    assert isinstance(store, ResultStore)
    queue = iter(sent)

    async def waiter() -> None:
        for name, task in queue:
            result = await _result(store, task.task_id)
            if result.is_err:  # the task raised something other than a WachatError or OSError
                error = f"task failed: {result.error!r}"
                outcomes[name] = {"instance": name, "ok": False, "error": error, "file": None}
            else:
                outcomes[name] = result.return_value

    await asyncio.gather(*(waiter() for _ in range(min(WAITERS, len(sent)))))


async def _result(store: ResultStore, task_id: str) -> TaskiqResult[Any]:
    """Read *task_id*'s result every ``POLL_INTERVAL`` s until it is there."""
    while True:
        result = await store.take_result(task_id)
        if result is not None:
            return result
        await asyncio.sleep(POLL_INTERVAL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.taskiq_fleet.produce", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--names-file", required=True, help="one name per line; - for stdin")
    parser.add_argument("--out-dir", required=True, help="folder for NAME.png (shared)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds; default: none")
    args = parser.parse_args(argv)
    if args.timeout is not None and not args.timeout > 0:
        parser.error("--timeout must be > 0")
    try:
        if args.names_file == "-":
            names = read_names(sys.stdin)
        else:
            names = read_names(Path(args.names_file).read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"cannot read --names-file: {exc}")
    out_dir = str(Path(args.out_dir).absolute())
    if not log.handlers:  # the outage lines, on stderr like the errors
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"{parser.prog}: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    try:
        outcomes, seconds = asyncio.run(run(names, out_dir, timeout=args.timeout))
    except (ConnectionError, RedisError) as exc:  # redis-py's errors, and the OS's below them
        print(
            f"{parser.prog}: error: cannot reach Redis ({type(exc).__name__}); is REDIS_URL right "
            "and redis-server running?",
            file=sys.stderr,
        )
        return 3
    failed = [o for o in outcomes if not o["ok"]]
    for outcome in failed:
        print(f"{outcome['instance']}: {outcome['error']}", file=sys.stderr)
    summary = {"ok": len(outcomes) - len(failed), "failed": len(failed), "seconds": seconds}
    print(json.dumps({**summary, "seconds": round(seconds, 3)}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
