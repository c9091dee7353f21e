"""Polling many instances (:class:`FetchMany`) and watching one (:class:`QRWatch`), on a
*fetch* callable, not the client (no import circle)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Final, cast

from ._errors import (
    APIStatusError,
    ClientClosedError,
    InvalidInstanceNameError,
    QRExpiredError,
    WachatError,
)
from ._models import InstanceState, QRFailure, QRImage, QRResult, QRSuccess
from ._retry import is_transient  # the one definition, next to RetryPolicy.is_retryable
from ._validate import check_bool, check_instance_name, check_number

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
    Workers never reference the :class:`FetchMany`, so a consumer's dropped iterator is freed
    at once and its ``__del__`` cancels them."""

    def __init__(
        self, fetch: Fetch, names: Iterator[object], concurrency: int, dedupe: bool
    ) -> None:
        self.fetch = fetch
        self.names = names
        self.concurrency = concurrency
        self.seen: set[str] | None = set() if dedupe else None
        self.in_flight: dict[str, asyncio.Event | None] = {}
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=concurrency)
        self.tasks: list[asyncio.Task[None]] = []
        self.running = 0
        self.exhausted = False
        self.number = next(_worker_batches)

    def start(self) -> None:
        """Pull the first name and start a worker for it (or end at once: no names). In the
        consumer's task, so an iterable that fails at once raises from the first
        ``__anext__`` and leaves nothing running."""
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
        """Start one more worker, with the next name, while there is room and a next name: the
        pool grows as fast as names come, but no worker starts without a name."""
        if self.running < self.concurrency:
            following = self.pull()
            if following is not _END:
                self.spawn(following)

    def admit(self, item: object) -> str | QRFailure | None:
        """The name to fetch, a failure to report (an invalid name, each time), or ``None`` to
        skip a name seen before (``dedupe=True``)."""
        if self.seen is not None and isinstance(item, str):
            if item in self.seen:
                return None
            self.seen.add(item)
        try:
            return check_instance_name(item)
        except InvalidInstanceNameError as exc:  # a non-str too: also a TypeError
            # Reported under the very object the iterable gave, so callers can map it back.
            return QRFailure(instance_name=cast(str, item), error=exc)

    async def work(self, item: object) -> None:
        """One worker: admit, fetch and queue items until the names run out; the last one
        out queues the end of the batch (a bug is queued as a failure for the consumer)."""
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
        except ClientClosedError:
            raise  # the client's fault, not this name's: it ends the batch (see fetch_many)
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


_CANCELLED = (
    "this fetch_many batch was cancelled while waiting for a result (asyncio.wait_for() or a "
    "cancelled task): the fetches still in flight were cancelled and their results are lost, "
    "so the batch cannot go on. To bound the wait, put the time limit around the whole loop "
    "(async with asyncio.timeout(...): async for ...); to show progress while waiting, use "
    "on_progress= or a heartbeat in a task of its own, not a timeout per result"
)


#: What :class:`FetchMany` yields: a result that type checkers can narrow with ``result.ok``.
AnyResult = QRSuccess | QRFailure


class FetchMany(contextlib.AbstractAsyncContextManager["FetchMany"]):
    """What ``fetch_many`` returns: an async iterator of a :class:`QRSuccess` or
    :class:`QRFailure` per name as each completes, *concurrency* at a time
    (:class:`ClientClosedError` and bugs are raised from the loop), and an async context
    manager that cancels what is in flight on exit. Details: docs/fleets.md."""

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
        self._cancelled = False
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
            if self._cancelled:
                raise RuntimeError(_CANCELLED)
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
            # The consumer was cancelled: the batch goes with it, and so do the results still
            # to come, so a later __anext__ must not pass for the end of a complete batch.
            self._cancelled = True
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

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped without aclose() (a plain ``break``): cancel now, the loop finishes the rest.
        batch = getattr(self, "_batch", None)
        if batch is not None and not getattr(self, "_finished", True):
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                batch.cancel()

    def __repr__(self) -> str:
        if self._cancelled:
            state = "cancelled"
        elif self._finished:
            state = "finished"
        elif self._batch is None:
            state = "not started"
        else:
            state = f"running, {self._batch.running} worker(s)"
        dedupe = "" if self._dedupe else " dedupe=False"
        return f"<FetchMany concurrency={self._concurrency}{dedupe} {state}>"


fetch_many = FetchMany


#: ``watch_qr`` never polls one instance more often than once per this many seconds: WhatsApp
#: gateways comparable to Wachat rate-limit QR fetches (Baileys #434, waha #1799). A smaller
#: *interval* is raised to it. (The client's zero-wait mode, for tests, still skips the sleep.)
MIN_INTERVAL: Final = 1.0
#: Default cap of the backoff after consecutive transient failures (seconds, before jitter).
DEFAULT_MAX_BACKOFF: Final = 60.0


def watch_wait(interval: float, failures: int, max_backoff: float = DEFAULT_MAX_BACKOFF) -> float:
    """The wait before the next poll, before jitter: the interval (at least ``MIN_INTERVAL``)
    doubled per transient failure in a row, capped at *max_backoff* (never below the interval),
    so a fleet of watchers slows down through an outage."""
    base = max(interval, MIN_INTERVAL)
    cap = max(max_backoff, base)
    return min(base * 2.0 ** min(failures, 64), cap)


class QRWatch(contextlib.AbstractAsyncContextManager["QRWatch"]):
    """What ``watch_qr`` returns: yields one instance's QR (a :class:`QRImage`) each time it
    changes; leaving its ``async with``, or :meth:`aclose` from any task, stops it. Transient
    failures are logged and double the wait up to *max_backoff*; others are raised; *max_qrs*
    and *linking_timeout* end it with :class:`QRExpiredError`. ``shown``, ``polls``,
    ``failures`` (in a row), ``latest`` and ``connected`` say how it went (docs/fleets.md)."""

    def __init__(
        self,
        fetch: Fetch,
        instance_name: str,
        *,
        interval: float,
        jitter: float,
        get_state: GetState | None,
        sleep: Callable[[float], Awaitable[None]],
        rand: Callable[[float, float], float] = random.uniform,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        max_qrs: int | None = None,
        linking_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_qrs is not None:
            check_number(max_qrs, "max_qrs", integer=True, minimum=1)
        if linking_timeout is not None:
            check_number(linking_timeout, "linking_timeout", exclusive=True)
        self.max_qrs: int | None = max_qrs
        self.linking_timeout: float | None = linking_timeout
        self._clock = clock
        self._started: float | None = None
        check_number(interval, "interval", exclusive=True)
        check_number(jitter, "jitter", below=1)
        check_number(max_backoff, "max_backoff", exclusive=True)
        self.instance_name = instance_name
        #: The interval in force (the one asked for, raised to ``MIN_INTERVAL``).
        self.interval: float = max(float(interval), MIN_INTERVAL)
        self.max_backoff: float = float(max_backoff)
        self.shown: int = 0
        self.polls: int = 0
        self.failures: int = 0
        self.latest: QRImage | None = None
        self.connected: bool = False
        self._fetch, self._get_state, self._sleep, self._rand = fetch, get_state, sleep, rand
        self._jitter = jitter
        self._waits = False  # whether the next round waits first (all but the first)
        self._done = False
        self._round: asyncio.Task[QRImage | None] | None = None  # the one running, if any

    def __aiter__(self) -> QRWatch:
        return self

    async def __anext__(self) -> QRImage:
        if self._done:
            raise StopAsyncIteration
        # Its own task, so that aclose() from another task can cancel it (and only it).
        self._round = asyncio.ensure_future(self._next())
        try:
            image = await self._round
        except BaseException as exc:
            closed, self._done = self._done, True
            task = asyncio.current_task()
            by_aclose = closed and isinstance(exc, asyncio.CancelledError)
            if by_aclose and task is not None and not task.cancelling():
                raise StopAsyncIteration from None  # the round was cancelled, not the consumer
            raise
        if image is None:
            self._done = True
            raise StopAsyncIteration
        return image

    def _expired(self) -> QRExpiredError:
        assert self._started is not None
        elapsed = self._clock() - self._started
        return QRExpiredError(
            instance_name=self.instance_name, qrs_shown=self.shown, elapsed=elapsed
        )

    async def _next(self) -> QRImage | None:
        """One round within *linking_timeout*: what :meth:`_poll` returns, else expire."""
        if self._started is None:
            self._started = self._clock()
        left = None
        if self.linking_timeout is not None:
            left = self.linking_timeout - (self._clock() - self._started)
            if left <= 0:
                raise self._expired()
        try:
            async with asyncio.timeout(left) as scope:
                return await self._poll()
        except TimeoutError:
            if not scope.expired():
                raise  # a WachatTimeoutError of the poll itself
        raise self._expired()

    async def _poll(self) -> QRImage | None:
        """Poll until the QR changes (return it) or the instance is linked (return None)."""
        name = self.instance_name
        while True:
            if self._waits:
                wait = watch_wait(self.interval, self.failures, self.max_backoff)
                jitter = self._rand(1.0 - self._jitter, 1.0 + self._jitter)
                await self._sleep(max(MIN_INTERVAL, wait * jitter))
            self._waits = True
            try:
                if self._get_state is not None and (await self._get_state(name)).is_connected:
                    logger.info("Instance %r is connected; watch ended", name)
                    self.connected = True
                    return None
                self.polls += 1
                image = await self._fetch(name)
            except WachatError as exc:
                if not is_transient(exc):
                    raise
                self.failures += 1
                logger.warning(
                    "Watching instance %r: transient failure %d in a row (%s): %s; still watching",
                    name,
                    self.failures,
                    exc.status if isinstance(exc, APIStatusError) else type(exc).__name__,
                    exc,
                )
                continue
            self.failures = 0
            if self.latest is None or image.sha256 != self.latest.sha256:
                if self.shown == self.max_qrs:
                    raise self._expired()  # the last QR allowed has been replaced
                self.shown += 1
                self.latest = image
                return image

    async def aclose(self) -> None:
        """Stop the watch, from any task: the request in flight is cancelled and the consumer's
        ``async for`` ends. Idempotent."""
        self._done = True
        if self._round is not None:
            self._round.cancel()
            await asyncio.wait([self._round])

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = " connected" if self.connected else ""
        return (
            f"<QRWatch {self.instance_name!r} interval={self.interval:g} shown={self.shown} "
            f"polls={self.polls} failures={self.failures}{state}>"
        )


watch_qr = QRWatch
