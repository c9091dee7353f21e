"""Polling many instances (:func:`fetch_many`) and watching one (:func:`watch_qr`).

Both work on a small *fetch* callable (``WachatClient.get_qr_image``), not on the client class,
so the client can offer them as thin methods without an import circle.

``fetch_many`` runs a fixed set of at most *concurrency* worker tasks that pull names from the
caller's iterable one at a time. Nothing is created per name up front, so a fleet of a million
names costs *concurrency* tasks, a result queue of *concurrency* slots and the set of names
already seen (needed to fetch duplicates once). Queueing happens in our own workers, before a
request is made, so time spent waiting for a turn never eats into a request's timeout.

``watch_qr`` polls one instance, yields a :class:`QRImage` only when its content hash changes,
rides out transient failures (logged on the ``wachat_async`` logger) and raises terminal ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import Final

from ._errors import APIStatusError, WachatError
from ._models import InstanceState, QRImage, QRResult
from ._retry import is_transient  # the one definition, next to RetryPolicy.is_retryable

__all__ = ["FetchMany", "fetch_many", "is_transient", "watch_qr"]

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


_DONE: Final = _Done()
_Item = QRResult | _Failure | _Done


class _Batch:
    """The running part of a :class:`FetchMany`: workers, the name iterator and the queue.

    Workers reference this object, never the :class:`FetchMany` the consumer holds, so when a
    consumer drops its iterator (``break`` without ``async with``) the iterator is freed at once
    and its ``__del__`` can cancel the workers.
    """

    def __init__(self, fetch: Fetch, names: Iterator[str], concurrency: int) -> None:
        self.fetch = fetch
        self.names = names
        self.seen: set[str] = set()
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=concurrency)
        self.tasks: list[asyncio.Task[None]] = []
        self.running = 0
        self.exhausted = False
        # Start only as many workers as there are names (up to *concurrency*): a batch of three
        # names does not need a hundred tasks. The first names are pulled before any task
        # exists, so an iterable that fails at once leaves nothing running.
        first: list[str] = []
        while len(first) < concurrency and (name := self.next_name()) is not None:
            first.append(name)
        batch = next(_worker_batches)
        self.tasks = [
            asyncio.create_task(self.work(name), name=f"{WORKER_TASK_PREFIX}-{batch}.{number}")
            for number, name in enumerate(first)
        ]
        self.running = len(self.tasks)
        if not self.tasks:
            self.queue.put_nowait(_DONE)

    def next_name(self) -> str | None:
        """The next name not fetched yet, or None once the iterable is exhausted."""
        if self.exhausted:
            return None
        for name in self.names:
            if name not in self.seen:
                self.seen.add(name)
                return name
        self.exhausted = True
        return None

    async def work(self, name: str) -> None:
        current: str | None = name
        try:
            while current is not None:
                try:
                    image = await self.fetch(current)
                except WachatError as exc:
                    result = QRResult(instance_name=current, error=exc)
                else:
                    result = QRResult(instance_name=current, image=image)
                await self.queue.put(result)
                current = self.next_name()
        except Exception as exc:  # a bug (ours or the caller's): hand it to the consumer
            self.exhausted = True
            await self.queue.put(_Failure(exc))
        finally:
            self.running -= 1
        if self.running == 0:
            await self.queue.put(_DONE)

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def stop(self) -> None:
        """Cancel the workers and wait until every one has finished (connections released)."""
        self.exhausted = True
        self.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


class FetchMany:
    """What :func:`fetch_many` returns: an async iterator of :class:`QRResult` that is also an
    async context manager.

    Iterate it to get one result per distinct name, in order of completion::

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
        on_progress: Callable[[QRResult], object] | None = None,
    ) -> None:
        self._batch: _Batch | None = None
        self._finished = False
        if isinstance(instance_names, (str, bytes)):
            raise TypeError(
                "instance_names must be an iterable of names, not a single "
                f"{type(instance_names).__name__} (wrap one name in a list)"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError(f"concurrency must be an int, not {type(concurrency).__name__}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._fetch = fetch
        self._names: Iterable[str] | None = instance_names
        self._concurrency = concurrency
        self._on_progress = on_progress

    def __aiter__(self) -> FetchMany:
        return self

    async def __anext__(self) -> QRResult:
        if self._finished:
            raise StopAsyncIteration
        batch = self._batch
        if batch is None:
            assert self._names is not None
            names, self._names = self._names, None
            self._finished = True  # until the batch has started: a failing iterable ends it
            batch = self._batch = _Batch(self._fetch, iter(names), self._concurrency)
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
        return f"<FetchMany concurrency={self._concurrency} {state}>"


def fetch_many(
    fetch: Fetch,
    instance_names: Iterable[str],
    *,
    concurrency: int,
    on_progress: Callable[[QRResult], object] | None = None,
) -> FetchMany:
    """Fetch the QR of every distinct name in *instance_names*, *concurrency* at a time.

    Returns a :class:`FetchMany`: an async iterator yielding one :class:`QRResult` per distinct
    name as each fetch completes (duplicates are fetched once; order is order of completion),
    and an async context manager that cancels what is still in flight when the block is left.

    * At most *concurrency* fetches run at once, in that many worker tasks pulling names from
      the iterable lazily: names may come from a generator, even an endless one.
    * A fetch that raises a :class:`WachatError` becomes a result with ``error`` set; it never
      stops the others. Any other exception (a bug, in *fetch* or in the iterable) cancels the
      fetches in flight and is raised from the ``async for``; results not yet consumed are
      dropped. Invalid names (``TypeError``/``ValueError`` from the client's name check) are
      such bugs: validate names you read from untrusted input first.
    * *on_progress* is called with each result just before it is yielded, in the consumer's
      task; an exception from it cancels the batch and propagates.

    Raises ``TypeError``/``ValueError`` at once for a bad *concurrency* (an int >= 1 is needed)
    or when *instance_names* is a single string.
    """
    return FetchMany(fetch, instance_names, concurrency=concurrency, on_progress=on_progress)


def _check_interval(interval: float, jitter: float) -> None:
    for what, value in (("interval", interval), ("jitter", jitter)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    if not (interval > 0 and math.isfinite(interval)):
        raise ValueError(f"interval must be a finite number of seconds > 0, got {interval!r}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be >= 0 and < 1, got {jitter!r}")


def watch_qr(
    fetch: Fetch,
    instance_name: str,
    *,
    interval: float,
    jitter: float,
    get_state: GetState | None,
    sleep: Callable[[float], Awaitable[None]],
    rand: Callable[[float, float], float] = random.uniform,
) -> AsyncIterator[QRImage]:
    """Poll *instance_name* and yield its QR each time the image changes (by SHA-256).

    Each round: when *get_state* is given, check the instance state first and end cleanly once
    it ``is_connected``; then fetch the QR and yield it if its hash differs from the last one
    yielded; then ``await sleep(interval * rand(1 - jitter, 1 + jitter))``. The jitter keeps a
    fleet of watchers started together from polling in lock step.

    Transient failures (see :func:`is_transient`; the client's retry policy has already had its
    go at them) are logged as warnings on the ``wachat_async`` logger and the watch goes on.
    Terminal ones (400/401/403/404/409, an invalid image, ...) are raised. Arguments are
    checked at call time: *interval* must be > 0 and finite, *jitter* in ``[0, 1)``.
    """
    _check_interval(interval, jitter)
    return _watch(fetch, instance_name, interval, jitter, get_state, sleep, rand)


async def _watch(
    fetch: Fetch,
    name: str,
    interval: float,
    jitter: float,
    get_state: GetState | None,
    sleep: Callable[[float], Awaitable[None]],
    rand: Callable[[float, float], float],
) -> AsyncIterator[QRImage]:
    last_digest: str | None = None
    failures = 0
    while True:
        try:
            if get_state is not None and (await get_state(name)).is_connected:
                logger.info("Instance %r is connected; watch ended", name)
                return
            image = await fetch(name)
        except WachatError as exc:
            if not is_transient(exc):
                raise
            failures += 1
            status = exc.status if isinstance(exc, APIStatusError) else type(exc).__name__
            logger.warning(
                "Watching instance %r: transient failure %d in a row (%s): %s; still watching",
                name,
                failures,
                status,
                exc,
            )
        else:
            failures = 0
            digest = image.sha256
            if digest != last_digest:
                last_digest = digest
                yield image
        await sleep(interval * rand(1.0 - jitter, 1.0 + jitter))
