"""One upstream poll loop per instance, shared by every viewer: the fan-out behind the event routes.

A :class:`QRHub` belongs to one :class:`~wachat_async.WachatClient` and one event loop
(:func:`hub_for` finds or makes it). ``join`` counts a viewer in and starts the instance's
:class:`Watch` if none runs yet; ``leave`` counts it out and stops the watch when the last viewer
has gone. Fifty viewers of one instance therefore cost one upstream poll per interval, not fifty.

A watch polls ``GET /instance/state`` then the QR, every *interval*; while polls fail it says so
(:class:`Outage`: why, and when the next try is) and waits twice as long after each failure, up
to *max_backoff*; a viewer that joins cuts that wait short. After *max_qrs* QRs or
*linking_timeout* seconds without a link it stops polling and says so (``QRExpiredError``) but
keeps its viewers, until :meth:`QRHub.restart` starts it again for all of them. Viewers never
queue images: each reads the watch's state when woken. On SIGINT or SIGTERM, and on
:func:`end_event_streams`, every stream of the loop ends cleanly (browsers reconnect to the next
process) and PNG fetches are cancelled. This module never imports a web framework; it uses only
public names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

import attrs

from wachat_async import (
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    InstanceNotFoundError,
    InvalidInstanceNameError,
    QRExpiredError,
    QRImage,
    QRNotSupportedError,
    SubscriptionRestrictedError,
    UnexpectedStatusError,
    WachatClient,
    WachatError,
    WachatTimeoutError,
)

from ._paths import shown_name

__all__ = [
    "CLIENT_CLOSED",
    "CLOSED",
    "CONNECTED",
    "KEEP_EXPIRED",
    "STOPPING",
    "DEFAULT_LINKING_TIMEOUT",
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_QRS",
    "WATCH_TASK_PREFIX",
    "Outage",
    "QRHub",
    "Unavailable",
    "Watch",
    "end_event_streams",
    "error_status",
    "hook_signals",
    "hub_for",
    "stopping",
    "stopping_message",
]

logger = logging.getLogger("wachat_async.web")

#: Name prefix of the watch tasks (``asyncio.all_tasks()``), followed by ``:`` and the name.
WATCH_TASK_PREFIX: Final = "wachat-web-watch"
#: Longest wait (seconds, before jitter) between two polls of a watch whose polls fail.
DEFAULT_MAX_BACKOFF: Final = 10.0
#: The routes' watch limits: a page left open stops polling after this many QRs (WAHA's 6)...
DEFAULT_MAX_QRS: Final = 6
#: ... or this many seconds without the phone being linked, whichever comes first.
DEFAULT_LINKING_TIMEOUT: Final = 180.0
#: Waits vary by up to this fraction, so watches started together do not poll in step.
JITTER: Final = 0.1
#: A viewer that joins makes a failing watch poll at once, but at most once per this many seconds.
WAKE_GAP: Final = 1.0
#: Statuses (of :func:`error_status`) that end a watch: no such instance, or no QR ever.
TERMINAL: Final = frozenset({404, 409})
#: Failures that end a watch too: our key or plan refused (polling again cannot fix them).
_OURS: Final = (AuthenticationError, SubscriptionRestrictedError)
_BUDGET_NOTE: Final = "retry budget exhausted"
#: What a browser reads while the app stops (SIGINT/SIGTERM, :func:`end_event_streams`)...
STOPPING: Final = "the server is stopping; try again"
#: ... and while the routes' client is closed without a shutdown (``client.aclose()``).
CLIENT_CLOSED: Final = "the QR code service is not available (client closed); try again"
#: How long (seconds) a hub remembers an expired watch once its last viewer left, so that a
#: reconnect sees ``expired`` again instead of a new watch; at most ``KEEP_EXPIRED_MAX`` of them.
KEEP_EXPIRED: Final = 300.0
KEEP_EXPIRED_MAX: Final = 10_000


def error_status(exc: BaseException) -> tuple[int, str]:
    """The status and message a browser gets for an upstream failure.

    * invalid name, 400, 404: 404 (no such QR here);
    * a watch limit reached (:class:`~wachat_async.QRExpiredError`): 410 (ask for a new QR);
    * 409 (not a Baileys instance): 409 (this instance has no QR);
    * client-side timeout, deadline, the client closed (the app is stopping): 503 (try again);
    * retry budget exhausted, 429, 503: 503 (upstream overloaded: try later);
    * 502, 504, an invalid or oversized image, 401, 403 (*our* key or plan is wrong), connection
      errors, any other status: 502 (the gateway failed).

    Never 500, and the message is fixed text: never the exception's own text, which may quote
    an upstream body.
    """
    if isinstance(exc, InvalidInstanceNameError):
        return 404, "invalid instance name"
    if isinstance(exc, (BadRequestError, InstanceNotFoundError)):
        return 404, "no such instance"
    if isinstance(exc, QRExpiredError):
        return 410, "this QR code expired before the phone was linked; ask for a new one"
    if isinstance(exc, QRNotSupportedError):
        return 409, "this instance has no QR code (only WhatsApp Baileys instances have one)"
    if isinstance(exc, WachatTimeoutError):  # before OSError: it is also a TimeoutError
        return 503, "the QR code service timed out; try again"
    if isinstance(exc, ClientClosedError):
        return 503, stopping_message()
    if any(_BUDGET_NOTE in note for note in getattr(exc, "__notes__", ())) or (
        isinstance(exc, UnexpectedStatusError) and exc.status in (429, 503)
    ):
        return 503, "the QR code service is overloaded; try again later"
    if isinstance(exc, _OURS):  # final: no "try again"
        return 502, "this QR code cannot be shown right now (the service refused the app's access)"
    return 502, "the QR code service failed; try again"


def stopping() -> bool:
    """Whether the running loop's app is shutting down (a signal or :func:`end_event_streams`
    came): from then on no stream starts and no PNG is fetched, for good."""
    return asyncio.get_running_loop() in _stopping


def stopping_message() -> str:
    """Why the routes answer 503 without upstream: the app stops, or its client is closed."""
    return STOPPING if stopping() else CLIENT_CLOSED


def being_cancelled() -> bool:
    """Whether the running task itself is being cancelled (not merely something it awaited)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _jitter() -> float:
    return random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - spreading load, not security


class _End:
    """The end of a watch, as the hub's streams see it."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: How a watch ends when the phone is linked (``GET /instance/state`` said ``open``).
CONNECTED: Final = _End("CONNECTED")
#: How a watch ends when the app stops or closes its client: streams end without an event.
CLOSED: Final = _End("CLOSED")


#: How old the watch's QR may be (since its last good poll) and still be served as current.
DEFAULT_MAX_AGE: Final = 15.0
_SLOW: Final = "the QR code service is slow to answer; still trying"


@attrs.frozen
class Unavailable:
    """What viewers and the PNG route say while a watch has no current QR: *message*, and the
    next try (the loop's clock; ``None``: a poll is under way)."""

    message: str
    retry_at: float | None


@attrs.frozen
class Outage:
    """Why a watch has no current QR: its last poll failed with *error*; the next try is at
    *retry_at* (the event loop's clock)."""

    error: BaseException
    retry_at: float


class Watch:
    """The one upstream poll loop of an instance, what it last saw, and its viewers.

    *limits*: ``(max_qrs, linking_timeout)``, each ``None`` for no limit.
    """

    __slots__ = (
        "_changed",
        "_hub",
        "_wake",
        "confirmed",
        "ended",
        "expired",
        "interval",
        "latest",
        "limits",
        "max_backoff",
        "name",
        "outage",
        "polled",
        "task",
        "version",
        "viewers",
    )

    def __init__(
        self,
        hub: QRHub,
        client: WachatClient,
        name: str,
        interval: float,
        max_backoff: float,
        limits: tuple[int | None, float | None] = (None, None),
    ) -> None:
        self._hub = hub
        self.name: str = name
        self.interval: float = interval
        self.max_backoff: float = max_backoff
        self.limits: tuple[int | None, float | None] = limits
        self.viewers: int = 0
        #: The newest image, current as of ``confirmed`` (the loop time of the last good poll).
        self.latest: QRImage | None = None
        self.confirmed: float = float("-inf")
        #: Set while polls fail; ``None`` once one succeeds.
        self.outage: Outage | None = None
        #: Set once a limit stopped the polls (the watch keeps its viewers); ``None`` again on
        #: :meth:`restart`.
        self.expired: QRExpiredError | None = None
        #: Bumped on every change viewers must hear of (an image, an outage, the end).
        self.version: int = 0
        #: ``CONNECTED``, ``CLOSED``, or the terminal error (a ``WachatError``, or a bug).
        self.ended: _End | BaseException | None = None
        self.polled: float = float("-inf")  # loop time the last poll started
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] = self._start(client)

    @property
    def key(self) -> tuple[float, float, int | None, float | None]:
        """What tells this watch from another of the same instance in the hub."""
        return (self.interval, self.max_backoff, *self.limits)

    def _start(self, client: WachatClient) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(
            self._run(client), name=f"{WATCH_TASK_PREFIX}:{self.name}"
        )

    async def _run(self, client: WachatClient) -> None:
        loop = asyncio.get_running_loop()
        started, shown = loop.time(), [0]
        try:
            async with asyncio.timeout(self.limits[1]) as limit:
                await self._poll(client, shown)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) and limit.expired()):  # a bug: viewers get
                logger.exception("Watch of instance %s failed", shown_name(self.name))
                self.ended = exc  # a 502-style final event, never a hang
        finally:
            if self.ended is None and not being_cancelled():  # a limit, not leave()/end()
                self.expired = QRExpiredError(
                    instance_name=self.name, qrs_shown=shown[0], elapsed=loop.time() - started
                )
                self.latest = self.outage = None
                logger.info(
                    "Watch of instance %s stopped: not linked after %d QR codes / %.0f s",
                    shown_name(self.name),
                    shown[0],
                    self.expired.elapsed,
                )
            else:
                self._hub._forget(self)
            self._notify()

    async def _poll(self, client: WachatClient, shown: list[int]) -> None:
        """Poll until the phone is linked, a terminal failure, or *max_qrs* (then return
        with ``ended`` unset); *shown* counts the QRs announced."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            self.polled = loop.time()
            try:
                if (await client.get_instance_state(self.name)).is_connected:
                    self.ended = CONNECTED
                    return
                image = await client.get_qr_image(self.name)
            except ClientClosedError:
                self.ended = CLOSED  # the app is stopping: not the instance's fault
                return
            except WachatError as exc:
                status = getattr(exc, "status", None) or type(exc).__name__
                if error_status(exc)[0] in TERMINAL or isinstance(exc, _OURS):
                    logger.warning("Watch of instance %s ended: %s", shown_name(self.name), status)
                    self.ended = exc
                    return
                failures += 1
                wait = min(self.interval * 2.0 ** min(failures, 32), self.max_backoff)
                wait = max(wait, self.interval) * _jitter()
                if self.outage is None:
                    logger.warning(
                        "QR of instance %s unavailable (%s); retrying every %g s at most",
                        shown_name(self.name),
                        status,
                        max(self.max_backoff, self.interval),
                    )
                self.outage = Outage(exc, loop.time() + wait)
                self._notify()
            else:
                failures = 0
                wait = self.interval * _jitter()
                self.confirmed = loop.time()
                news = self.latest is None or self.latest.sha256 != image.sha256
                if news and shown[0] == self.limits[0]:
                    return  # the last QR allowed has been replaced: expired
                if news or self.outage is not None:
                    if self.outage is not None:
                        logger.info("QR of instance %s is back", shown_name(self.name))
                    if news:
                        shown[0] += 1
                    self.latest, self.outage = image, None
                    self._notify()
            await self._pause(wait, client.retry_policy.zero_wait)

    def state(self, now: float, max_age: float) -> QRImage | Unavailable | QRExpiredError | None:
        """What a viewer sees at loop time *now*: the current QR (polled at most *max_age*
        seconds ago), why there is none, the limit that stopped the watch, or ``None`` before
        the first poll ends."""
        if self.expired is not None:
            return self.expired
        if self.outage is not None:
            return Unavailable(error_status(self.outage.error)[1], self.outage.retry_at)
        if self.latest is None:
            return None
        if now - self.confirmed > max_age:
            return Unavailable(_SLOW, None)
        return self.latest

    async def _pause(self, seconds: float, zero_wait: bool) -> None:
        """Wait *seconds*, or until :meth:`wake` (the client's zero-wait mode, for tests, only
        yields)."""
        self._wake.clear()
        if zero_wait:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    def wake(self) -> None:
        """Poll now if polls are failing (a viewer is waiting), at most once per ``WAKE_GAP``."""
        if self.outage is not None and asyncio.get_running_loop().time() - self.polled >= WAKE_GAP:
            self._wake.set()

    def restart(self) -> bool:
        """Start polling again after a limit stopped the watch (for all its viewers; one that
        has none is forgotten: the next viewer starts a new watch); whether it did (``False``:
        it was not expired)."""
        if self.expired is None or self.ended is not None:
            return False
        if not self.viewers:
            self._hub._forget(self)
            return True
        self.expired, self.confirmed = None, float("-inf")
        self.task = self._start(self._hub._client_now())
        self._notify()
        return True

    def end(self, how: _End) -> None:
        """Stop polling; viewers end their streams as *how* says."""
        if self.ended is None:
            self.ended = how
            self.task.cancel()
            self._hub._forget(self)
            self._notify()

    def _notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, seen: int) -> None:
        """Return once there is news for a viewer that has seen version *seen*."""
        if self.version == seen and self.ended is None:
            await self._changed.wait()


class QRHub:
    """The watches of one client on one event loop, by instance name (then ``Watch.key``)."""

    def __init__(self, client: WachatClient) -> None:
        # Weak: the hub lives in a registry keyed by the client, and must not keep it alive.
        self._client = weakref.ref(client)
        self._watches: dict[str, dict[tuple[float, float, int | None, float | None], Watch]] = {}
        self._fetches: dict[str, asyncio.Task[QRImage]] = {}
        self._kept: dict[Watch, asyncio.TimerHandle] = {}  # expired, no viewer: forget when

    def _client_now(self) -> WachatClient:
        client = self._client()
        assert client is not None  # the routes hold the client
        return client

    def join(
        self,
        name: str,
        interval: float,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        limits: tuple[int | None, float | None] = (None, None),
    ) -> Watch:
        """Count one viewer in; start the instance's watch if it is not running, or make a
        failing one try again now. *limits*: ``(max_qrs, linking_timeout)``, ``None`` for
        none. An expired watch stays expired, for ``KEEP_EXPIRED`` seconds after its last
        viewer left too (:meth:`restart` starts it again)."""
        hook_signals()
        interval = max(interval, 1.0)  # as watch_qr: never faster than once a second
        per_name = self._watches.setdefault(name, {})
        watch = per_name.get((interval, max_backoff, *limits))
        if watch is None:
            watch = Watch(self, self._client_now(), name, interval, max_backoff, limits)
            per_name[watch.key] = watch
        else:
            if (kept := self._kept.pop(watch, None)) is not None:
                kept.cancel()
            watch.wake()
        watch.viewers += 1
        return watch

    def leave(self, watch: Watch) -> None:
        """Count one viewer out; the last one out stops the upstream watch. An expired one is
        remembered ``KEEP_EXPIRED`` seconds (a reconnect finds it still expired, no poll)."""
        watch.viewers -= 1
        if watch.viewers > 0 or watch.ended is not None:
            return
        if watch.expired is None:
            self._forget(watch)
            watch.task.cancel()
            return
        self._kept[watch] = asyncio.get_running_loop().call_later(KEEP_EXPIRED, self._forget, watch)
        if len(self._kept) > KEEP_EXPIRED_MAX:
            self._forget(next(iter(self._kept)))  # the oldest

    def restart(self, name: str) -> bool:
        """Start polling again every watch of *name* that a limit stopped, for all its
        viewers; whether one was (``False``: none was expired, nothing to do)."""
        restarted = [watch.restart() for watch in self.watches(name)]  # each one, no shortcut
        return any(restarted)

    def watches(self, name: str) -> list[Watch]:
        """The running watches of *name* (usually one)."""
        return list(self._watches.get(name, {}).values())

    def latest(self, name: str) -> QRImage | None:
        """The newest image a running watch of *name* has announced, if any."""
        images = [w.latest for w in self._watches.get(name, {}).values() if w.latest]
        return max(images, key=lambda qr: qr.fetched_at) if images else None

    def viewers(self) -> dict[str, int]:
        """Instance name -> viewers, for the instances being watched right now."""
        counts = {name: sum(w.viewers for w in per.values()) for name, per in self._watches.items()}
        return {name: count for name, count in counts.items() if count}

    async def fetch(self, name: str) -> QRImage:
        """``client.get_qr_image(name)``, one request for every concurrent caller (a caller
        that leaves does not cancel it for the others)."""
        task = self._fetches.get(name)
        if task is None:
            hook_signals()  # a shutdown cancels it (close): a hung upstream never holds it up
            task = asyncio.get_running_loop().create_task(self._client_now().get_qr_image(name))
            self._fetches[name] = task

            def done(finished: asyncio.Task[QRImage]) -> None:
                if self._fetches.get(name) is finished:
                    del self._fetches[name]
                if not finished.cancelled():
                    finished.exception()  # retrieved: every caller may have left

            task.add_done_callback(done)
        return await asyncio.shield(task)

    def close(self) -> None:
        """End every stream of this hub cleanly (no event: browsers reconnect), stop its
        watches and cancel its PNG fetches (their callers answer 503). The hub stays usable:
        a later viewer starts a new watch."""
        for task in list(self._fetches.values()):
            task.cancel()
        for per_name in list(self._watches.values()):
            for watch in list(per_name.values()):
                watch.end(CLOSED)

    def _forget(self, watch: Watch) -> None:
        if (kept := self._kept.pop(watch, None)) is not None:
            kept.cancel()
        per_name = self._watches.get(watch.name, {})
        if per_name.get(watch.key) is watch:
            del per_name[watch.key]
        if not per_name:
            self._watches.pop(watch.name, None)


_HUBS: weakref.WeakKeyDictionary[
    WachatClient, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, QRHub]
] = weakref.WeakKeyDictionary()


def hub_for(client: WachatClient) -> QRHub:
    """The hub of *client* on the running event loop (made on first use)."""
    loop = asyncio.get_running_loop()
    per_loop = _HUBS.get(client)
    if per_loop is None:
        per_loop = _HUBS[client] = weakref.WeakKeyDictionary()
    hub = per_loop.get(loop)
    if hub is None:
        hub = per_loop[loop] = QRHub(client)
    return hub


async def end_event_streams(*_: object) -> None:
    """End every event stream on the running loop cleanly (no event: the browser reconnects,
    to the next process after a deploy) and stop the upstream watches.

    Called on SIGINT and SIGTERM by itself; call it yourself when the app stops any other way
    (``app.on_shutdown.append(end_event_streams)`` takes it as it is).
    """
    _end_streams_now()


# -- SIGINT / SIGTERM ------------------------------------------------------------------------------
# Servers stop on these signals but wait for open responses first: uvicorn forever (an event
# stream never ends by itself), aiohttp up to shutdown_timeout twice. No ASGI message tells an
# app that the server is stopping, so the first event stream chains a handler in front of the
# one in place (the server's: uvicorn's, asyncio's), through the public signal module.

_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_stopping: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()  # for good


class _Chained:
    """A signal handler that ends the streams of every hooked loop, then calls *previous*."""

    def __init__(self, previous: Callable[[int, FrameType | None], Any]) -> None:
        self.previous = previous

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        for loop in list(_loops):
            with contextlib.suppress(RuntimeError):  # a loop that has closed since
                loop.call_soon_threadsafe(_end_streams_now)
        self.previous(sig, frame)


def _end_streams_now() -> None:
    loop = asyncio.get_running_loop()
    _stopping.add(loop)
    for per_loop in list(_HUBS.values()):
        hub = per_loop.get(loop)
        if hub is not None:
            hub.close()


def hook_signals() -> None:
    """Chain a :class:`_Chained` before the handlers of SIGINT and SIGTERM, unless one is
    there. Only from the main thread (the only one that may); a default or ignored signal
    is left as it is (SIGTERM's default already ends the process)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _loops.add(asyncio.get_running_loop())
    for sig in _SIGNALS:
        current = signal.getsignal(sig)
        if callable(current) and not isinstance(current, _Chained):
            signal.signal(sig, _Chained(current))
