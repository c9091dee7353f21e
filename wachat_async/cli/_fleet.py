"""Polling a fleet (``poll`` and ``demo``): fetch, save, report each instance, then summarise.

:func:`poll_fleet` fetches every distinct name of a :class:`Fleet` through the client's
bounded ``fetch_many``, saves each PNG under a safe, collision-free file name
(:func:`png_filename`) while the next ones are fetched, prints one JSON line per instance
(``--json``) and a progress bar (a person at a terminal) or a line every few seconds (a log),
and stops early on a 401/403 or a 404 of the route itself (a wrong base URL): every other
request would fail the same way. The :class:`Fleet` keeps counts, not images, so memory stays
flat whatever the fleet's size. :func:`summary` prints the outcome tables or JSON record.

The files are written off the event loop (each save fsyncs the file and its folder), a few
at a time: a slow disk slows the fetching down instead of piling images up in memory, and a
JSON line names a file only once it is in place. Never decides the exit status (the commands
do) and never reads the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

from wachat_async import (
    APIStatusError,
    QRFailure,
    QRSuccess,
    WachatClient,
    WachatError,
)
from wachat_async._files import write_bytes_async

from ._exit import exit_code_for, fails_every_request
from ._extras import has, need
from ._output import PROG, Out, isatty, plural, stdout_is_unicode

__all__ = ["Fleet", "failure_record", "png_filename", "poll_fleet", "summary"]

#: PNG writes in flight at once. Each waits on the disk (two fsyncs) in a worker thread of the
#: loop's default executor (min(32, CPUs + 4) threads), so a few overlap the disk's latency:
#: measured, 1,000 files took 10-14 s one at a time and 1.3-2.2 s eight at a time; more than
#: that only queues for the executor's threads, and holds more images in memory.
WRITES_IN_FLIGHT: Final = 8
#: Failures listed one by one in the summary, and kept until then (all are counted).
FAILURES_LISTED: Final = 20
#: Seconds between progress lines on a stderr that is not a terminal (cron, CI, Kubernetes).
PROGRESS_EVERY: Final = 5.0
#: The clock of the elapsed times and of the progress lines (tests swap in their own).
clock: Callable[[], float] = time.monotonic

_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


def png_filename(instance_name: str) -> str:
    """A file name for *instance_name*'s PNG that is safe on every OS and never collides.

    Names made only of ``A-Za-z0-9._-`` are kept; anything else is replaced by ``_`` and a short
    hash of the real name is appended, so ``a/b`` and ``a_b`` get different files.
    """
    safe = _UNSAFE_FILENAME.sub("_", instance_name)[:100]
    if safe != instance_name or safe.startswith("."):
        digest = hashlib.sha256(instance_name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        safe = f"{safe.lstrip('.') or 'instance'}-{digest}"
    return f"{safe}.png"


class Fleet:
    """What a fleet poll did, for the summary: counts, the first failures and one success.

    Nothing of a PNG is kept once it is written or printed, and the failures beyond the first
    few are only counted: memory stays bounded whatever the fleet's size. *expected* maps the
    names meant to fail to why (the demo's); those are not counted as ``unexpected``.
    """

    def __init__(
        self,
        names: Sequence[str],
        out_dir: Path | None = None,
        *,
        expected: Mapping[str, str] | None = None,
    ) -> None:
        self.names = list(dict.fromkeys(names))
        self.total = len(self.names)
        self.out_dir = out_dir
        self.expected: Mapping[str, str] = expected or {}
        self.ok = 0
        self.failed = 0
        self.unexpected = 0
        self.saved = 0
        #: Failures by kind (``InstanceNotFoundError (404)``), all counted.
        self.errors: Counter[str] = Counter()
        #: The first failures, listed one by one in the summary.
        self.failures: list[QRFailure] = []
        #: The first success and where it was saved (the demo draws it).
        self.first: tuple[QRSuccess, Path | None] | None = None
        self.aborted: WachatError | None = None
        self.interrupted = False
        self.started = clock()
        self.elapsed = 0.0

    @property
    def done(self) -> int:
        """Instances fetched so far, ok or failed."""
        return self.ok + self.failed

    def add(self, result: QRSuccess | QRFailure, path: Path | None) -> None:
        """Count *result* (saved at *path*, if it was)."""
        if isinstance(result, QRSuccess):
            self.ok += 1
            self.saved += path is not None
            if self.first is None:
                self.first = (result, path)
            return
        self.failed += 1
        self.unexpected += result.instance_name not in self.expected
        error = result.error
        status = getattr(error, "status", None)
        self.errors[type(error).__name__ + (f" ({status})" if status else "")] += 1
        if len(self.failures) < FAILURES_LISTED:
            self.failures.append(result)

    def record(self) -> dict[str, object]:
        """The ``--json`` summary record's fields (see docs/cli.md)."""
        stopped = "signal" if self.interrupted else self.aborted and type(self.aborted).__name__
        return {
            "instances": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "not_fetched": self.total - self.done,
            "saved": self.saved,
            "errors": dict(self.errors.most_common()),
            "stopped": stopped,
            "seconds": round(self.elapsed, 3),
        }


class _Writer(contextlib.AbstractAsyncContextManager["_Writer"]):
    """Writes PNGs off the event loop, at most *limit* at once, and reports each once written.

    :meth:`save` first waits for a free slot, so the caller (the fetch loop) slows down to the
    disk's pace. The first failure of a write or of its *then* (an :class:`OSError` of the disk,
    a :class:`BrokenPipeError` of stdout) is raised as itself by the next :meth:`save` or at
    the end of the block, and the writes still in flight are cancelled (a cancelled write
    leaves no temporary file behind). Leaving the block on an exception cancels them too, but
    for a cancellation (a signal), which lets them end.
    """

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        # Cancelled (a signal): the few writes in flight end and are reported all the same, so
        # that every file left in the folder is named by a JSON line and counted as saved.
        if exc is None or isinstance(exc, asyncio.CancelledError):
            while self._tasks and self._failure is None:
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
        await self._cancel_all()
        if exc is None:
            self.raise_failure()

    async def save(self, path: Path, data: bytes, then: Callable[[Path], None]) -> None:
        """Write *data* to *path* in the background; call *then* with the path once it is."""
        self.raise_failure()
        await self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            self.raise_failure()
        task = asyncio.create_task(self._write(path, data, then))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, path: Path, data: bytes, then: Callable[[Path], None]) -> None:
        try:
            then(await write_bytes_async(path, data))
        except Exception as exc:  # handed to the fetch loop, which raises it
            if self._failure is None:
                self._failure = exc
        finally:
            self._slots.release()

    async def _cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def raise_failure(self) -> None:
        """Raise the first failure of a write, if there was one."""
        if self._failure is not None:
            raise self._failure


async def poll_fleet(
    client: WachatClient,
    fleet: Fleet,
    out: Out,
    *,
    concurrency: int,
    json_lines: bool = False,
) -> None:
    """Fetch each name of *fleet*, save it into its ``out_dir`` (if any), report it and count
    it in *fleet*. Cancelled (a signal), it stops at once and *fleet* holds what was done."""
    out_dir = fleet.out_dir
    if out_dir is not None:
        try:
            await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
        except FileExistsError:  # a file of that name: "File exists" would not say what is wrong
            raise NotADirectoryError(
                errno.ENOTDIR, "exists and is not a folder", str(out_dir)
            ) from None
    # The tables need rich; --json and --quiet do not, so scripts work without the extra
    # (--json then simply shows no progress bar). The bar is for a person watching a terminal:
    # on a piped or redirected stderr it would only leave a stray line behind, so a line
    # every PROGRESS_EVERY seconds says how far it got instead.
    terminal = isatty(sys.stderr)
    show_progress = not out.quiet and terminal and (not json_lines or has("rich"))
    progress = None
    if show_progress:
        need("rich")
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(
            TextColumn("[bold]polling"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=out.console(stderr=True),
            transient=False,
        )
    next_line = fleet.started + PROGRESS_EVERY if not terminal else math.inf

    def done(result: QRSuccess | QRFailure, path: Path | None) -> None:
        nonlocal next_line
        fleet.add(result, path)
        if json_lines:
            out.result(json.dumps(_json_record(result, path), ensure_ascii=not stdout_is_unicode()))
        if progress is not None and task is not None:
            progress.update(task, advance=1, failed=fleet.failed)
        if (now := clock()) >= next_line:
            next_line = now + PROGRESS_EVERY
            out.note(
                f"{PROG}: polled {fleet.done} of {fleet.total} instances in "
                f"{now - fleet.started:.0f} s: {fleet.ok} ok, {fleet.failed} failed"
            )

    try:
        with progress if progress is not None else contextlib.nullcontext():
            task = progress.add_task("poll", total=fleet.total, failed=0) if progress else None
            # Leaving these blocks early (401/403, a signal, a full disk) cancels the fetches
            # and the writes still in flight; at the normal end the writes are waited for.
            async with (
                _Writer(WRITES_IN_FLIGHT) as writer,
                client.fetch_many(fleet.names, concurrency=concurrency) as results,
            ):
                async for result in results:
                    writer.raise_failure()
                    image = result.image
                    if image is not None and out_dir is not None:
                        path = out_dir / png_filename(result.instance_name)
                        await writer.save(path, image.data, functools.partial(done, result))
                    else:
                        done(result, None)
                    if fails_every_request(result.error):
                        fleet.aborted = result.error
                        break
    except asyncio.CancelledError:
        fleet.interrupted = True
        raise
    finally:
        fleet.elapsed = clock() - fleet.started


def _json_record(result: QRSuccess | QRFailure, path: Path | None) -> dict[str, object]:
    if isinstance(result, QRSuccess):
        image = result.image
        return {
            "instance": result.instance_name,
            "ok": True,
            "file": None if path is None else str(path),
            "width": image.width,
            "height": image.height,
            "bytes": len(image.data),
            "sha256": image.sha256,
        }
    return failure_record(result.instance_name, result.error)


def failure_record(name: str, error: WachatError) -> dict[str, object]:
    """The JSON record of a request for *name* that failed with *error*."""
    return {
        "instance": name,
        "ok": False,
        "error": type(error).__name__,
        "status": getattr(error, "status", None),
        "exit_code": exit_code_for(error),
        "message": str(error),
        "attempts": error.attempts,
    }


def _short(error: WachatError) -> str:
    """What went wrong, in a few words (the full message is in --json and -v output)."""
    if isinstance(error, APIStatusError):
        return f"{error.status}: {error.default_message}"
    text = str(error)
    return text if len(text) <= 100 else text[:99] + "…"


def summary(fleet: Fleet, out: Out, *, json_lines: bool = False) -> None:
    """The summary on stdout: with *json_lines*, one ``{"summary": {...}}`` line; else the
    outcome counts and the first failures as tables (not with --quiet)."""
    if json_lines:
        out.result(json.dumps({"summary": fleet.record()}))
        return
    if out.quiet:
        return
    from rich.table import Table
    from rich.text import Text

    title = f"{plural(fleet.total, 'instance')} in {fleet.elapsed:.2f} s"
    table = Table(title=title, title_justify="left")
    table.add_column("outcome")
    table.add_column("instances", justify="right")
    table.add_row(Text("ok", style="green"), str(fleet.ok))
    for label, count in fleet.errors.most_common():
        table.add_row(Text(label, style="red"), str(count))
    not_done = fleet.total - fleet.done
    if not_done:
        table.add_row(Text("not fetched (stopped early)", style="yellow"), str(not_done))
    tables: list[Table] = [table]
    if fleet.failed:
        failures = Table(title="failures", title_justify="left")
        failures.add_column("instance", overflow="fold")
        failures.add_column("error", overflow="fold")
        failures.add_column("tries", justify="right")
        failures.add_column("why", overflow="fold")
        for result in fleet.failures:
            error = result.error
            why = fleet.expected.get(result.instance_name)
            failures.add_row(
                Text(out.cell(result.instance_name)),
                Text(type(error).__name__),
                str(error.attempts),
                Text(out.cell(f"expected: {why}" if why else _short(error))),
            )
        if fleet.failed > len(fleet.failures):
            more = fleet.failed - len(fleet.failures)
            failures.add_row(Text(f"... and {more} more"), "", "", "")
        tables.append(failures)
    out.tables(*tables)
    if fleet.saved:
        out.info(f"saved {plural(fleet.saved, 'PNG file')} in {fleet.out_dir}")
