"""taskiq workers that fetch Wachat QR codes: the broker, the ``fetch_qr`` task, one client each.

Install: ``pip install -e '.[fleet]'`` (taskiq and taskiq-redis). Run, from the repository root::

    export REDIS_URL=redis://127.0.0.1:6379/0 WACHAT_API_KEY=...
    taskiq worker examples.taskiq_fleet.worker:broker --workers 2 --log-level WARNING

Each worker process opens one :class:`~wachat_async.WachatClient` when it starts (its key and
base URL from ``WACHAT_API_KEY`` / ``WACHAT_BASE_URL``) and closes it when it stops, so every
task in that process shares one connection pool and one retry budget.

Nothing is lost when a worker dies. Tasks travel on a Redis stream read by one consumer group
(:class:`ReclaimingStreamBroker`, a taskiq-redis ``RedisStreamBroker``): a task stays in the
group's pending list until the worker that runs it has saved its result and acknowledged it.
What the stock broker lacks, this one adds:

- **A reclaim timer.** Every ``reclaim_interval`` seconds (1 s) each worker runs ``XAUTOCLAIM``
  with a minimum idle time of ``idle_timeout`` ms (5 s here; the stock default is 10 minutes)
  and runs what it claimed. The stock broker reclaims only after a read that returned new
  messages, so the tasks of a killed worker waited for new traffic that might never come.
- **A keep-alive.** Every ``keepalive_interval`` seconds (1 s) each worker re-claims the
  messages it holds (``XCLAIM ... JUSTID``: read but not yet acknowledged, queued or running),
  which resets their idle time. So the idle time can be short whatever a task's duration:
  only the messages of a worker that stopped renewing them (killed, frozen, cut off from
  Redis) go idle and are delivered again, a few seconds after it stopped.
- **Acknowledged means deleted.** An acknowledgement is ``XACK`` + ``XDEL`` in one
  transaction, so the stream holds only the tasks not yet done and never needs a ``MAXLEN``
  (trimming can drop a task nobody has run).

The trade-off: a worker whose event loop is blocked for longer than ``idle_timeout`` (a long
synchronous call) or that loses Redis for that long has its tasks run a second time by another
worker. For ``fetch_qr`` that is harmless: a second fetch saves the same file again, atomically
(temp file + rename), and sets the same result. Raise ``idle_timeout`` if your tasks can
block their loop that long; the price is that a dead worker's tasks wait that long.

Redis may restart (or fail over, or freeze): every Redis call of a worker goes through a
:class:`RedisOutage` that waits and tries again (0.1 s, doubling to 5 s at most) for as long as
Redis stays away, starting up included, and logs one line when the outage starts and one
when it ends, never a traceback. Tasks survive the restart if Redis keeps its data (an
append-only file, ``appendfsync always`` to lose no write): the workers carry on where they
were, and the reclaim hands a worker's tasks to another if it did not come back. A Redis
that comes back empty has lost the tasks it held (a worker says so, once, and makes the
consumer group again); the producer then waits for them until its ``--timeout``.

Retries are per process. Each worker's client has its own ``RetryBudget``: in a 502 storm
every process adds at most ``ratio`` (20%) retries over its own calls, so the fleet adds at most
20% too; but the reserve ``min_retries_per_second`` (2 by default) is per process, so N
processes may retry 2 x N times a second even when almost no call succeeds. Set
``WACHAT_MIN_RETRIES_PER_SECOND`` to the fleet-wide floor you accept divided by the number of
worker processes (for example 0.1 for 20 processes and a floor of 2 a second).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import AckableMessage, BrokerMessage, TaskiqEvents, TaskiqResult, TaskiqState
from taskiq.serializers import JSONSerializer
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from wachat_async import RetryBudget, WachatClient, WachatError

__all__ = [
    "RedisOutage",
    "ReclaimingStreamBroker",
    "ResultStore",
    "broker",
    "fetch_qr",
    "png_path",
]

log = logging.getLogger("examples.taskiq_fleet")

T = TypeVar("T")

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
#: The Redis stream the tasks travel on (and its consumer group has the same name).
QUEUE = "wachat-fleet"
#: How long a result waits in Redis for the producer to read it.
RESULT_TTL_SECONDS = 3600
#: For every connection: a command that fails on a connection Redis closed (a pooled one, from
#: before a restart) is sent again at once on a new one; only a second failure is an outage.
RECONNECT_ONCE = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
#: What a lost Redis looks like to redis-py: refused, reset, unknown host, or no answer within
#: ``socket_timeout`` (5 s by default in redis-py, so a frozen server ends a call too).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError)


class RedisOutage:
    """Retries Redis calls while Redis is unreachable, and says so once per outage.

    One object is shared by everything in a process that talks to Redis (the broker's reads,
    keep-alive, acknowledgements and sends, the result store), so an outage is one log line
    when it starts (``Redis unreachable (...)``) and one when it ends (``Redis reachable again
    after S s``), however many calls notice it. :meth:`call` runs an operation; when it fails
    with one of :data:`UNREACHABLE` it waits ``first_delay`` seconds, doubling up to
    ``max_delay``, and tries again. ``limit`` is how long (seconds) an outage may last before
    the call raises its last error instead; ``None`` (workers) waits for ever. Only idempotent
    operations go through it (or ones whose repetition is harmless, such as sending a task).
    """

    def __init__(
        self, *, first_delay: float = 0.1, max_delay: float = 5.0, limit: float | None = None
    ) -> None:
        if not 0 <= first_delay <= max_delay:
            raise ValueError("need 0 <= first_delay <= max_delay")
        self.first_delay, self.max_delay, self.limit = first_delay, max_delay, limit
        #: ``time.monotonic()`` when the current outage was first noticed; None while Redis answers.
        self.since: float | None = None
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # tests replace it

    def failed(self, exc: BaseException) -> float:
        """Note a failed call (logging the outage if it is new); seconds it has lasted."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
            until = "it is back" if self.limit is None else f"it is back, for {self.limit:g} s"
            log.warning(
                "Redis unreachable (%s: %s); retrying every %g s at most until %s",
                type(exc).__name__,
                exc,
                self.max_delay,
                until,
            )
        return now - self.since

    def succeeded(self, started: float) -> None:
        """Note a call begun at *started* (``time.monotonic()``) that went through.

        It ends the outage (logged) only if it began after the outage did: a reply that was
        already on its way when Redis went away says nothing about Redis now.
        """
        if self.since is not None and started >= self.since:
            log.warning("Redis reachable again after %.1f s", time.monotonic() - self.since)
            self.since = None

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """``await operation()``, again and again while Redis is unreachable (see the class)."""
        delay = self.first_delay
        while True:
            started = time.monotonic()
            try:
                result = await operation()
                _reraise_swallowed_cancel()
            except UNREACHABLE as exc:
                lasted = self.failed(exc)
                if self.limit is not None and lasted >= self.limit:
                    raise
                await self._sleep(delay)
                delay = min(2 * delay, self.max_delay)
            else:
                self.succeeded(started)
                return result


def _reraise_swallowed_cancel() -> None:
    """Raise ``CancelledError`` if this task was cancelled but the cancel did not arrive.

    redis-py sends every command through ``asyncio.wait_for(..., socket_timeout)``, and
    before Python 3.12 ``wait_for`` drops a cancel that comes as the send completes: the
    command returns and the task runs on as if never cancelled (a worker that never stops, a
    shutdown that waits for ever). ``Task.cancelling()`` (3.11+) still counts that cancel.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError


class ReclaimingStreamBroker(RedisStreamBroker):
    """A ``RedisStreamBroker`` that re-delivers a dead worker's tasks within seconds.

    ``idle_timeout`` (ms): a pending message idle this long belongs to a worker that stopped
    renewing it and may be claimed by another. ``reclaim_interval`` (s): how often each worker
    looks for such messages (``XAUTOCLAIM``, at most ``unacknowledged_batch_size`` a time).
    ``keepalive_interval`` (s, default a fifth of ``idle_timeout``): how often each worker
    renews the messages it holds. ``xread_block`` (ms) is capped at ``reclaim_interval``.
    ``outage``: how Redis calls ride out a Redis restart (:class:`RedisOutage`; in a worker
    every call waits for Redis as long as it takes, starting up included). Other arguments are
    ``RedisStreamBroker``'s; ``consumer_id`` defaults to ``"0"``, so a group created after
    tasks were sent still delivers them, and the default ``consumer_name`` is
    ``HOST-PID-RANDOM``, chosen when the process starts reading (``XINFO CONSUMERS`` then
    says which worker holds what).
    """

    def __init__(
        self,
        url: str,
        *,
        idle_timeout: int = 5000,
        reclaim_interval: float = 1.0,
        keepalive_interval: float | None = None,
        consumer_id: str = "0",
        outage: RedisOutage | None = None,
        **kwargs: Any,
    ) -> None:
        if keepalive_interval is None:
            keepalive_interval = idle_timeout / 1000 / 5
        if not 0 < keepalive_interval < idle_timeout / 1000:
            raise ValueError("keepalive_interval must be above 0 and below idle_timeout")
        if reclaim_interval <= 0:
            raise ValueError("reclaim_interval must be above 0")
        super().__init__(url, idle_timeout=idle_timeout, consumer_id=consumer_id, **kwargs)
        self._name_consumer = kwargs.get("consumer_name") is None
        self.block = min(self.block, max(1, int(reclaim_interval * 1000)))
        self.reclaim_interval = reclaim_interval
        self.keepalive_interval = keepalive_interval
        self.outage = outage or RedisOutage()
        #: Message ids this process holds (read or claimed, not yet acknowledged), per stream.
        self.held: dict[bytes, set[bytes]] = {}
        self._cursors: dict[bytes, bytes] = {}
        self._keepalive: asyncio.Task[None] | None = None
        self._stopping = False
        # One client object on the pool: building one per call costs ~0.5 ms.
        self._redis = Redis(connection_pool=self.connection_pool)

    def _streams(self) -> list[bytes]:
        return [_b(s) for s in (self.queue_name, *self.additional_streams)]

    def _hold(self, stream: bytes, msg_id: bytes, data: bytes) -> AckableMessage:
        self.held.setdefault(stream, set()).add(msg_id)
        return AckableMessage(data=data, ack=self._ack_generator(msg_id, stream))

    async def _declare_consumer_group(self) -> None:
        """Create the group on each stream (an existing one is kept); a worker waits for Redis.

        Outside a worker (the producer) an unreachable Redis raises at once: there it is a
        wrong ``REDIS_URL`` or a server that is not running, better said than waited for.
        """
        if self.is_worker_process:
            await self.outage.call(self._create_groups)
        else:
            await self._create_groups()

    async def _create_groups(self) -> None:
        for stream in self._streams():
            try:
                await self._redis.xgroup_create(
                    stream, self.consumer_group_name, id=self.consumer_id, mkstream=self.mkstream
                )
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):  # BUSYGROUP: it exists already
                    raise

    async def kick(self, message: BrokerMessage) -> None:
        """Append the task to the stream (``XADD``), riding out a Redis restart."""
        stream = message.labels.get("queue_name") or self.queue_name
        fields: dict[Any, Any] = {b"data": message.message}

        async def add() -> Any:
            return await self._redis.xadd(
                stream, fields, maxlen=self.maxlen, approximate=self.approximate
            )

        # A send whose reply was lost is sent again: the task may then run twice (harmless
        # for fetch_qr), never zero times.
        await self.outage.call(add)

    def _ack_generator(  # type: ignore[override]  # bytes from Redis, not str
        self, id: bytes, queue_name: bytes
    ) -> Callable[[], Awaitable[None]]:
        async def execute() -> Any:
            pipe = self._redis.pipeline(transaction=True)
            pipe.xack(queue_name, self.consumer_group_name, id)
            pipe.xdel(queue_name, id)
            return await pipe.execute()

        async def ack() -> None:
            await self.outage.call(execute)  # both commands can be repeated
            self.held.get(queue_name, set()).discard(id)

        return ack

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """New messages (``XREADGROUP``), and every ``reclaim_interval`` the idle ones."""
        if self._name_consumer:  # named here, in the process that reads (taskiq forks)
            self.consumer_name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._name_consumer = False
        if self._keepalive is None:
            self._keepalive = asyncio.create_task(self._keep_alive())
        loop = asyncio.get_running_loop()
        next_reclaim = loop.time()
        streams: dict[Any, Any] = {self.queue_name: ">", **self.additional_streams}

        async def read() -> Any:
            return await self._redis.xreadgroup(
                self.consumer_group_name,
                self.consumer_name,
                streams,
                block=self.block,
                count=self.count,
            )

        while True:
            if loop.time() >= next_reclaim:
                for stream in self._streams():

                    async def reclaim(stream: bytes = stream) -> list[AckableMessage]:
                        return await self._reclaim(stream)

                    # Yielded before anything else can fail: what is claimed is always run.
                    for message in await self._group_call(reclaim):
                        yield message
                next_reclaim = loop.time() + self.reclaim_interval
            fetched: Any = await self._group_call(read)  # redis-py's reply type is loose
            for stream, entries in fetched or []:
                for msg_id, fields in entries:
                    yield self._hold(_b(stream), msg_id, fields[b"data"])

    async def _group_call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """*operation* through :attr:`outage`; a consumer group gone with Redis's data is made
        again (Redis restarted without persistence: the tasks it held are lost with it)."""
        while True:
            try:
                return await self.outage.call(operation)
            except ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                log.warning(
                    "the consumer group %r is gone (Redis restarted without its data?); "
                    "creating it again: tasks sent before that are lost",
                    self.consumer_group_name,
                )
                self.held.clear()
                self._cursors.clear()
                await self.outage.call(self._create_groups)

    async def _reclaim(self, stream: bytes) -> list[AckableMessage]:
        """One ``XAUTOCLAIM`` step over *stream*, the scan resumed where the last one ended."""
        reply: Any = await self._redis.xautoclaim(
            stream,
            self.consumer_group_name,
            self.consumer_name,
            min_idle_time=self.idle_timeout,
            start_id=self._cursors.get(stream, b"0-0"),
            count=self.unacknowledged_batch_size,
        )
        self._cursors[stream] = reply[0]
        claimed = [(i, f) for i, f in reply[1] if f]  # Redis < 7 lists deleted entries as nil
        if claimed:
            log.warning("re-delivering %d unacknowledged task(s) from %r", len(claimed), stream)
        return [self._hold(stream, msg_id, fields[b"data"]) for msg_id, fields in claimed]

    async def _keep_alive(self) -> None:
        """Reset the idle time of every message this process holds, until :meth:`shutdown`."""
        while not self._stopping:
            await asyncio.sleep(self.keepalive_interval)
            started = time.monotonic()
            try:
                for stream, ids in list(self.held.items()):
                    batch: list[Any] = list(ids)
                    for start in range(0, len(batch), 1000):
                        await self._redis.xclaim(
                            stream,
                            self.consumer_group_name,
                            self.consumer_name,
                            min_idle_time=0,
                            message_ids=batch[start : start + 1000],
                            justid=True,
                        )
            except UNREACHABLE as exc:  # logged once per outage; the next tick tries again
                self.outage.failed(exc)
            except RedisError:  # NOGROUP after a restart without data: listen() makes it again
                pass
            else:
                self.outage.succeeded(started)

    async def shutdown(self) -> None:
        """Stop renewing held messages (another worker takes them over), then close.

        Bounded: the keep-alive is cancelled again every 0.1 s until it ends (a cancel can
        be lost inside redis-py, see :func:`_reraise_swallowed_cancel`), and it stops at its
        next tick anyway; after ``keepalive_interval`` + 5 s it is left behind, said once.
        """
        task, self._keepalive = self._keepalive, None
        if task is not None:
            self._stopping = True
            deadline = asyncio.get_running_loop().time() + self.keepalive_interval + 5
            while not task.done() and asyncio.get_running_loop().time() < deadline:
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)  # waits without cancelling anything
            if task.done():
                self._stopping = False
            else:
                log.warning("the keep-alive did not stop; closing without it")
        await super().shutdown()


class ResultStore(RedisAsyncResultBackend[Any]):
    """taskiq-redis's result backend, its calls riding out a Redis restart (``outage``).

    Results are kept when read (``keep_results=True``) and expire after ``result_ex_time``;
    :meth:`take_result` reads one and then deletes it, two calls that can each be repeated, so
    a reply lost in an outage never loses the result (a ``GETDEL`` could).
    """

    def __init__(self, redis_url: str, *, outage: RedisOutage, **kwargs: Any) -> None:
        super().__init__(redis_url, keep_results=True, **kwargs)
        self.outage = outage
        self._redis = Redis(connection_pool=self.redis_pool)

    async def set_result(self, task_id: str, result: TaskiqResult[Any]) -> None:
        """Store *result* (``SET ... EX``), waiting for Redis if it is away."""
        key = self._task_name(task_id)
        value = self.serializer.dumpb(result.model_dump(mode="json"))
        ex, px = self.result_ex_time, self.result_px_time
        await self.outage.call(lambda: self._redis.set(key, value, ex=ex, px=px))

    async def take_result(self, task_id: str) -> TaskiqResult[Any] | None:
        """The result of *task_id*, deleted from Redis once read; None if not there (yet)."""
        key = self._task_name(task_id)
        raw: Any = await self.outage.call(lambda: self._redis.get(key))
        if raw is None:
            return None
        await self.outage.call(lambda: self._redis.delete(key))
        return TaskiqResult[Any].model_validate(self.serializer.loadb(raw))


def _b(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


broker = ReclaimingStreamBroker(
    REDIS_URL,
    queue_name=QUEUE,
    consumer_group_name=QUEUE,
    xread_count=32,
    retry=RECONNECT_ONCE,
)
broker.with_result_backend(
    ResultStore(
        REDIS_URL,
        outage=broker.outage,
        retry=RECONNECT_ONCE,
        result_ex_time=RESULT_TTL_SECONDS,
        serializer=JSONSerializer(),  # not pickle: reading a result never runs code
        prefix_str=f"{QUEUE}:result",
    )
)


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def open_client(state: TaskiqState) -> None:
    """One client per worker process: one connection pool, one retry budget."""
    floor = float(os.environ.get("WACHAT_MIN_RETRIES_PER_SECOND", "2"))
    client = WachatClient(retry_budget=RetryBudget(min_retries_per_second=floor))
    state.wachat_client = await client.__aenter__()


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def close_client(state: TaskiqState) -> None:
    """Close this process's client (after its last task)."""
    client: WachatClient | None = state.data.pop("wachat_client", None)
    if client is not None:
        await client.aclose()


def png_path(out_dir: str | os.PathLike[str], instance_name: str) -> Path:
    """Where ``fetch_qr`` saves *instance_name*'s PNG: ``OUT_DIR/NAME.png``.

    ``%``, ``/`` and ``\\`` in the name are percent-encoded, so every name maps to its own file
    inside *out_dir* (``../x`` becomes ``..%2Fx.png``).
    """
    safe = "".join(f"%{ord(c):02X}" if c in "%/\\" else c for c in instance_name)
    return Path(out_dir) / f"{safe}.png"


@broker.task(task_name="wachat.fetch_qr")
async def fetch_qr(instance_name: str, out_dir: str) -> dict[str, Any]:
    """Save *instance_name*'s QR PNG into *out_dir*; return a JSON-able outcome.

    ``{"instance": name, "ok": True, "error": None, "file": "/abs/OUT_DIR/NAME.png"}``, or
    ``ok`` False with ``error`` (``"InstanceNotFoundError: ..."``, key redacted) and ``file``
    None. A re-delivered task saves the same file again, atomically. Outside a worker (a
    direct call) it opens a client for this call.
    """
    client: WachatClient | None = broker.state.data.get("wachat_client")
    try:
        target = png_path(out_dir, instance_name).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        if client is None:
            async with WachatClient() as own:
                await own.save_qr_image(instance_name, target)
        else:
            await client.save_qr_image(instance_name, target)
    except (WachatError, OSError) as exc:
        return {"instance": instance_name, "ok": False, "error": _describe(exc), "file": None}
    return {"instance": instance_name, "ok": True, "error": None, "file": str(target)}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
