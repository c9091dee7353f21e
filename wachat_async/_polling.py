"""Polling many instances (:func:`fetch_many`) and watching one (:func:`watch_qr`).

Both work on a small *fetch* callable (``WachatClient.get_qr_image``), not on the client class,
so the client can offer them as thin methods without an import circle.

``fetch_many`` runs at most *concurrency* worker tasks that pull names from the caller's
iterable one at a time. Nothing is created per name: a worker starts only when there is a name
for it, and the pool never exceeds *concurrency*. So a fleet of a million names costs at most
*concurrency* tasks, a result queue of *concurrency* slots, one entry per name in flight and,
with ``dedupe=True`` only, the set of names already seen. Queueing happens in our own workers,
before a request is made, so time spent waiting for a turn never eats into a request's timeout.
A worker yields to the loop at least once every ``PULLS_PER_YIELD`` names it pulls, so no
iterable (an endless ``itertools.cycle`` of names already seen included) can hold the loop.

``watch_qr`` polls one instance (never more often than once a second), yields a :class:`QRImage`
only when its content hash changes, rides out transient failures (logged on the ``wachat_async``
logger, with exponential backoff while they last) and raises terminal ones. It returns a
:class:`QRWatch`, which counts the QR codes shown so far.

Never imports the client, the transport or the stream: it is given the fetch (and state) callables.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import Final, cast

from ._errors import (
    APIStatusError,
    InvalidInstanceNameError,
    WachatError,
)
from ._models import InstanceState, QRFailure, QRImage, QRResult, QRSuccess
from ._retry import is_transient  # the one definition, next to RetryPolicy.is_retryable
from ._validate import check_bool, check_instance_name, check_number

__all__ = [
    "MIN_INTERVAL",
    "AnyResult",
    "FetchMany",
    "QRWatch",
    "fetch_many",
    "is_transient",
    "watch_qr",
    "watch_wait",
]

logger = logging.getLogger("wachat_async")

Fetch = Callable[[str], Awaitable[QRImage]]
GetState = Callable[[str], Awaitable[InstanceState]]

#: Prefix of the worker task names (visible in ``asyncio.all_tasks()`` and debuggers).
WORKER_TASK_PREFIX: Final = "wachat-fetch-many-worker"

_worker_batches = itertools.count(1)


class _Done:
    """Queue sentinel: every worker has finished and the names are exhausted."""


class _Failure:
    """Queue item carrying an exception that is not a ``WachatError`` (a bug), to re-raise."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _End:
    """What :meth:`_Batch.pull` returns once the names are exhausted."""


_DONE: Final = _Done()
_END: Final = _End()
_Item = QRSuccess | QRFailure | _Failure | _Done

#: A worker yields to the event loop at least once every this many names it pulls (names that
#: are skipped as duplicates or reported as invalid do not await anything by themselves).
PULLS_PER_YIELD: Final = 16


class _Batch:
    """The running part of a :class:`FetchMany`: workers, the name iterator and the queue.

    Workers reference this object, never the :class:`FetchMany` the consumer holds, so when a
    consumer drops its iterator (``break`` without ``async with``) the iterator is freed at once
    and its ``__del__`` can cancel the workers.

    State, all bounded by *concurrency* except ``seen`` (``dedupe=True`` only): at most
    *concurrency* worker tasks, each holding at most one name pulled from the iterable; a
    result queue of *concurrency* slots; ``in_flight``, the names being fetched.
    """

    def __init__(
        self, fetch: Fetch, names: Iterator[object], concurrency: int, dedupe: bool
    ) -> None:
        self.fetch = fetch
        self.names = names
        self.concurrency = concurrency
        self.seen: set[object] | None = set() if dedupe else None
        self.in_flight: dict[str, asyncio.Event | None] = {}
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=concurrency)
        self.tasks: list[asyncio.Task[None]] = []
        self.running = 0
        self.exhausted = False
        self.number = next(_worker_batches)

    def start(self) -> None:
        """Pull the first name and start a worker for it (or end at once: no names).

        The first name is pulled here, in the consumer's task, so an iterable that fails at
        once raises from the first ``__anext__`` and leaves nothing running.
        """
        first = self.pull()
        if first is _END:
            self.queue.put_nowait(_DONE)
        else:
            self.spawn(first)

    def pull(self) -> object:
        """The next item of the iterable (any object: it is checked later), or ``_END``."""
        if self.exhausted:
            return _END
        try:
            return next(self.names)
        except StopIteration:
            self.exhausted = True
            return _END

    def spawn(self, first: object) -> None:
        self.running += 1
        name = f"{WORKER_TASK_PREFIX}-{self.number}.{len(self.tasks)}"
        self.tasks.append(asyncio.create_task(self.work(first), name=name))

    def grow(self) -> None:
        """Start one more worker, with the next name, while there is room and a next name.

        Called by a worker that has a name to fetch: the pool grows to *concurrency* as fast
        as names come, but never has a worker without a name to start with.
        """
        if self.running < self.concurrency:
            following = self.pull()
            if following is not _END:
                self.spawn(following)

    def admit(self, item: object) -> str | QRFailure | None:
        """What to do with *item*: the name to fetch, a failure to report (an invalid name),
        or ``None`` to skip it (a duplicate, when deduplicating)."""
        if self.seen is not None:
            try:
                if item in self.seen:
                    return None
                self.seen.add(item)
            except TypeError:  # unhashable: not a name, reported each time it comes
                pass
        try:
            return check_instance_name(item)
        except InvalidInstanceNameError as exc:
            error = exc
        except TypeError as exc:  # not a str at all (None, an int, bytes...)
            error = InvalidInstanceNameError(str(exc))
        # Reported under the very object the iterable gave, so callers can map it back.
        return QRFailure(instance_name=cast(str, item), error=error)

    async def work(self, item: object) -> None:
        pulls = 0
        try:
            while item is not _END:
                admitted = self.admit(item)
                if isinstance(admitted, str):
                    self.grow()
                    await self.queue.put(await self.fetch_one(admitted))
                elif admitted is not None:
                    await self.queue.put(admitted)
                pulls += 1
                if pulls % PULLS_PER_YIELD == 0:
                    # Duplicates and invalid names await nothing, nor does a fetch that
                    # completes at once: never hold the loop, whatever the names are.
                    await asyncio.sleep(0)
                item = self.pull()
        except Exception as exc:  # a bug (ours or the caller's): hand it to the consumer
            self.exhausted = True
            await self.queue.put(_Failure(exc))
        finally:
            self.running -= 1
        if self.running == 0:
            await self.queue.put(_DONE)

    async def fetch_one(self, name: str) -> QRSuccess | QRFailure:
        """Fetch *name*, first waiting while another worker has the same name in flight."""
        in_flight = self.in_flight
        while name in in_flight:  # only with dedupe=False: a repeat pulled while in flight
            busy = in_flight[name]
            if busy is None:
                busy = in_flight[name] = asyncio.Event()
            await busy.wait()
        in_flight[name] = None  # the event is made only if a second worker comes for it
        try:
            image = await self.fetch(name)
        except WachatError as exc:
            return QRFailure(instance_name=name, error=exc)
        finally:
            waiting = in_flight.pop(name)
            if waiting is not None:
                waiting.set()
        return QRSuccess(instance_name=name, image=image)

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def stop(self) -> None:
        """Cancel the workers and wait until every one has finished (connections released)."""
        self.exhausted = True
        self.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


#: What :class:`FetchMany` yields: a result that type checkers can narrow with ``result.ok``.
AnyResult = QRSuccess | QRFailure


class FetchMany:
    """What :func:`fetch_many` returns: an async iterator of results (each a :class:`QRSuccess`
    or a :class:`QRFailure`, both :class:`QRResult`) that is also an async context manager.

    Iterate it to get the results in order of completion::

        async with client.fetch_many(names, concurrency=50) as results:
            async for result in results:
                if not result.ok:
                    print(result.instance_name, result.error)

    Leaving the ``async with`` block (normally, by ``break``, by an exception or by
    cancellation) cancels the fetches still in flight and waits for them, so no task is left
    pending and no connection stays checked out. A plain ``async for`` without ``async with``
    also works: finishing the loop ends everything; on ``break`` the dropped iterator cancels its
    workers at once and they finish on the next turns of the event loop (use ``async with`` or
    ``contextlib.aclosing`` when you need that to have happened before the next line runs).
    Cancelling the task that is waiting for the next result cancels the whole batch.

    Workers start on the first ``__anext__``; an iterator that is never iterated starts nothing.
    It can be iterated once.
    """

    def __init__(
        self,
        fetch: Fetch,
        instance_names: Iterable[str],
        *,
        concurrency: int,
        dedupe: bool = True,
        on_progress: Callable[[AnyResult], object] | None = None,
    ) -> None:
        self._batch: _Batch | None = None
        self._finished = False
        if isinstance(instance_names, (str, bytes)):
            raise TypeError(
                "instance_names must be an iterable of names, not a single "
                f"{type(instance_names).__name__} (wrap one name in a list)"
            )
        check_number(concurrency, "concurrency", integer=True, minimum=1)
        check_bool(dedupe, "dedupe")
        self._fetch = fetch
        self._names: Iterable[object] | None = instance_names
        self._concurrency = concurrency
        self._dedupe = dedupe
        self._on_progress = on_progress

    def __aiter__(self) -> FetchMany:
        return self

    async def __anext__(self) -> AnyResult:
        if self._finished:
            raise StopAsyncIteration
        batch = self._batch
        if batch is None:
            assert self._names is not None
            names, self._names = self._names, None
            self._finished = True  # until the batch has started: a failing iterable ends it
            batch = _Batch(self._fetch, iter(names), self._concurrency, self._dedupe)
            batch.start()
            self._batch = batch
            self._finished = False
        try:
            item = await batch.queue.get()
        except asyncio.CancelledError:
            # The consumer was cancelled: the batch goes with it.
            await self.aclose()
            raise
        if isinstance(item, QRResult):
            if self._on_progress is not None:
                try:
                    self._on_progress(item)
                except BaseException:
                    await self.aclose()
                    raise
            return item
        await self.aclose()
        if isinstance(item, _Failure):
            raise item.error
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Cancel what is still in flight and wait for it. Idempotent; ends the iteration."""
        self._finished = True
        self._names = None
        batch = self._batch
        if batch is not None:
            await batch.stop()

    async def __aenter__(self) -> FetchMany:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped without aclose() (a plain ``break``): cancel now, the loop finishes the rest.
        batch = getattr(self, "_batch", None)
        if batch is not None and not getattr(self, "_finished", True):
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                batch.cancel()

    def __repr__(self) -> str:
        if self._finished:
            state = "finished"
        elif self._batch is None:
            state = "not started"
        else:
            state = f"running, {self._batch.running} worker(s)"
        dedupe = "" if self._dedupe else " dedupe=False"
        return f"<FetchMany concurrency={self._concurrency}{dedupe} {state}>"


def fetch_many(
    fetch: Fetch,
    instance_names: Iterable[str],
    *,
    concurrency: int,
    dedupe: bool = True,
    on_progress: Callable[[AnyResult], object] | None = None,
) -> FetchMany:
    """Fetch the QR of the names in *instance_names*, at most *concurrency* at a time.

    Returns a :class:`FetchMany`: an async iterator yielding a result per fetched name as each
    fetch completes (order of completion), each a :class:`QRSuccess` (``ok``, ``image``) or a
    :class:`QRFailure` (``error``), and an async context manager that cancels what is still in
    flight when the block is left.

    * At most *concurrency* fetches run at once, in at most that many worker tasks pulling
      names from the iterable lazily: names may come from a generator, even an endless one.
      Whatever the iterable yields, the workers never hold the event loop: each yields at
      least once every ``PULLS_PER_YIELD`` (16) names it pulls.
    * ``dedupe=True`` (the default): one result per distinct name for the whole batch; a name
      seen again is skipped. The set of names seen grows with the number of distinct names.
      An endless iterable that stops producing new names keeps the batch pulling (without
      results) until you end it.
    * ``dedupe=False``: every name pulled is fetched and gives a result, so an endless
      repeating iterable (``itertools.cycle(names)``) is a polling loop. Memory is bounded by
      *concurrency*: at most *concurrency* workers each holding one name, a result queue of
      *concurrency* slots, and no per-name history.
    * In both modes one name is never in flight twice at the same time: a worker that pulls a
      name already being fetched waits for that fetch to finish, then fetches it again.
    * A fetch that raises a :class:`WachatError` becomes a :class:`QRFailure`; it never stops
      the others. So does an invalid name (empty, whitespace-only, control characters, or not a
      ``str`` at all): its result carries an :class:`InvalidInstanceNameError` and the name as
      the iterable gave it, and nothing is sent. Any other exception (a bug, in *fetch* or in the
      iterable) cancels the fetches in flight and is raised from the ``async for``.
    * *on_progress* is called with each result just before it is yielded, in the consumer's
      task; an exception from it cancels the batch and propagates.

    Raises ``TypeError``/``ValueError`` at once for a bad *concurrency* (an int >= 1 is needed),
    a *dedupe* that is not a bool, or when *instance_names* is a single string.
    """
    return FetchMany(
        fetch, instance_names, concurrency=concurrency, dedupe=dedupe, on_progress=on_progress
    )


#: ``watch_qr`` never polls one instance more often than once per this many seconds: WhatsApp
#: gateways comparable to Wachat rate-limit QR fetches (Baileys #434, waha #1799). A smaller
#: *interval* is raised to it. (The client's zero-wait mode, for tests, still skips the sleep.)
MIN_INTERVAL: Final = 1.0
#: Default cap of the backoff after consecutive transient failures (seconds, before jitter).
DEFAULT_MAX_BACKOFF: Final = 60.0


def watch_wait(interval: float, failures: int, max_backoff: float = DEFAULT_MAX_BACKOFF) -> float:
    """The wait before the next poll, before jitter: ``interval`` doubled per failure in a row.

    ``min(max(interval, MIN_INTERVAL) * 2**failures, max(max_backoff, interval, MIN_INTERVAL))``:
    the normal interval after a success (``failures == 0``), then 2x, 4x, 8x... while transient
    failures go on, capped at *max_backoff* (never below the interval itself), so a fleet of
    watchers slows down through an outage instead of polling it at full rate.
    """
    base = max(interval, MIN_INTERVAL)
    cap = max(max_backoff, base)
    return min(base * 2.0 ** min(failures, 64), cap)


class QRWatch:
    """What :func:`watch_qr` returns: an async iterator of :class:`QRImage` (one per new QR)
    that is also an async context manager, and tells how the watch is going.

    * ``shown``: how many different QR codes the instance has shown during this watch (the
      number of images yielded so far: the first is 1). WhatsApp rotates a QR about every
      20 seconds, so ``shown`` also says how long the person has been looking at the page.
    * ``polls``: QR fetches made (successful or not); ``failures``: transient failures in a
      row right now (0 after a success; the wait doubles with each, see :func:`watch_wait`).
    * ``latest``: the last image yielded (``None`` before the first).
    * ``connected``: ``True`` once the watch ended because the instance is linked
      (``until_connected=True`` and ``GET /instance/state`` said ``"open"``).

    Leaving ``async with`` (or calling :meth:`aclose`) stops the watch::

        async with client.watch_qr(name, until_connected=True) as watch:
            async for qr in watch:
                show(qr, f"QR number {watch.shown}")
        print("linked" if watch.connected else "stopped")
    """

    __slots__ = (
        "_iterator",
        "connected",
        "failures",
        "instance_name",
        "interval",
        "latest",
        "max_backoff",
        "polls",
        "shown",
    )

    def __init__(self, instance_name: str, interval: float, max_backoff: float) -> None:
        self.instance_name = instance_name
        #: The interval in force (the one asked for, raised to ``MIN_INTERVAL``).
        self.interval = max(float(interval), MIN_INTERVAL)
        self.max_backoff = float(max_backoff)
        self.shown = 0
        self.polls = 0
        self.failures = 0
        self.latest: QRImage | None = None
        self.connected = False
        self._iterator: AsyncGenerator[QRImage, None] | None = None

    def __aiter__(self) -> QRWatch:
        return self

    async def __anext__(self) -> QRImage:
        assert self._iterator is not None
        return await self._iterator.__anext__()

    async def aclose(self) -> None:
        """Stop the watch (a request in flight is cancelled). Idempotent."""
        if self._iterator is not None:
            await self._iterator.aclose()

    async def __aenter__(self) -> QRWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = " connected" if self.connected else ""
        return (
            f"<QRWatch {self.instance_name!r} interval={self.interval:g} shown={self.shown} "
            f"polls={self.polls} failures={self.failures}{state}>"
        )


def watch_qr(
    fetch: Fetch,
    instance_name: str,
    *,
    interval: float,
    jitter: float,
    get_state: GetState | None,
    sleep: Callable[[float], Awaitable[None]],
    rand: Callable[[float, float], float] = random.uniform,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
) -> QRWatch:
    """Poll *instance_name* and yield its QR each time the image changes (by SHA-256).

    Each round: when *get_state* is given, check the instance state first and end cleanly once
    it ``is_connected``; then fetch the QR and yield it if its hash differs from the last one
    yielded; then ``await sleep(max(MIN_INTERVAL, watch_wait(...) * rand(1 - jitter, 1 +
    jitter)))``. The jitter keeps a fleet of watchers started together from polling in lock
    step; *interval* below ``MIN_INTERVAL`` (1 s) is raised to it, so no watch polls faster.

    Transient failures (see :func:`is_transient`; the client's retry policy has already had its
    go at them) are logged as warnings on the ``wachat_async`` logger and the watch goes on,
    waiting twice as long after each one in a row, up to *max_backoff* (see
    :func:`watch_wait`); a success brings the normal interval back. Terminal ones
    (400/401/403/404/409, an invalid image, ...) are raised. Arguments are checked at call time:
    *interval* and *max_backoff* must be > 0 and finite, *jitter* in ``[0, 1)``.

    Returns a :class:`QRWatch` (its ``shown`` counts the QR codes seen so far).
    """
    check_number(interval, "interval", exclusive=True)
    check_number(jitter, "jitter", below=1)
    check_number(max_backoff, "max_backoff", exclusive=True)
    watch = QRWatch(instance_name, interval, max_backoff)
    watch._iterator = _watch(watch, fetch, jitter, get_state, sleep, rand)
    return watch


async def _watch(
    watch: QRWatch,
    fetch: Fetch,
    jitter: float,
    get_state: GetState | None,
    sleep: Callable[[float], Awaitable[None]],
    rand: Callable[[float, float], float],
) -> AsyncGenerator[QRImage, None]:
    name = watch.instance_name
    last_digest: str | None = None
    while True:
        try:
            if get_state is not None and (await get_state(name)).is_connected:
                logger.info("Instance %r is connected; watch ended", name)
                watch.connected = True
                return
            watch.polls += 1
            image = await fetch(name)
        except WachatError as exc:
            if not is_transient(exc):
                raise
            watch.failures += 1
            status = exc.status if isinstance(exc, APIStatusError) else type(exc).__name__
            logger.warning(
                "Watching instance %r: transient failure %d in a row (%s): %s; still watching",
                name,
                watch.failures,
                status,
                exc,
            )
        else:
            watch.failures = 0
            digest = image.sha256
            if digest != last_digest:
                last_digest = digest
                watch.shown += 1
                watch.latest = image
                yield image
        wait = watch_wait(watch.interval, watch.failures, watch.max_backoff)
        await sleep(max(MIN_INTERVAL, wait * rand(1.0 - jitter, 1.0 + jitter)))
