"""One upstream watch per instance, shared by every viewer: the fan-out behind the event routes.

A :class:`QRHub` belongs to one :class:`~wachat_async.WachatClient` and one event loop
(:func:`hub_for` finds or makes it). ``join(name, interval)`` counts a viewer in and starts the
instance's watch (``client.watch_qr(name, until_connected=True)``) if none runs yet; ``leave``
counts it out and cancels the watch when the last viewer has gone. Fifty viewers of one instance
therefore cost one upstream poll per interval, not fifty.

Viewers never queue images: each remembers the last version it has seen and reads the watch's
``latest`` when woken, so a slow viewer skips QR codes that are already stale instead of
buffering them. This module never imports a web framework; it uses only public names.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Final

from wachat_async import QRImage, WachatClient, WachatError

from ._paths import shown_name

__all__ = ["CONNECTED", "WATCH_TASK_PREFIX", "Connected", "QRHub", "Watch", "hub_for"]

logger = logging.getLogger("wachat_async.web")

#: Name prefix of the watch tasks (``asyncio.all_tasks()``), followed by ``:`` and the name.
WATCH_TASK_PREFIX: Final = "wachat-web-watch"


class Connected:
    """How a watch ends when the phone is linked (``GET /instance/state`` said ``open``)."""

    def __repr__(self) -> str:
        return "CONNECTED"


CONNECTED: Final = Connected()


class Watch:
    """The one upstream watch of an instance, its latest image and its viewers."""

    __slots__ = (
        "_changed",
        "_hub",
        "ended",
        "interval",
        "latest",
        "name",
        "task",
        "version",
        "viewers",
    )

    def __init__(self, hub: QRHub, client: WachatClient, name: str, interval: float) -> None:
        self._hub = hub
        self.name: str = name
        self.interval: float = interval
        self.viewers: int = 0
        self.latest: QRImage | None = None
        #: Bumped on every new image, so viewers know what they have not seen yet.
        self.version: int = 0
        #: ``CONNECTED``, or the terminal error (a ``WachatError``, or a bug); ``None`` while on.
        self.ended: Connected | BaseException | None = None
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._run(client), name=f"{WATCH_TASK_PREFIX}:{name}"
        )

    async def _run(self, client: WachatClient) -> None:
        try:
            watch = client.watch_qr(self.name, interval=self.interval, until_connected=True)
            async with watch:
                async for qr in watch:
                    self.latest = qr
                    self.version += 1
                    self._notify()
            self.ended = CONNECTED
        except WachatError as exc:  # terminal (watch_qr rides out the transient ones)
            status = getattr(exc, "status", None) or type(exc).__name__
            logger.warning("Watch of instance %s ended: %s", shown_name(self.name), status)
            self.ended = exc
        except Exception as exc:  # a bug: viewers get a 502-style error event, never a hang
            logger.exception("Watch of instance %s failed", shown_name(self.name))
            self.ended = exc
        finally:
            self._hub._forget(self)
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, seen: int) -> None:
        """Return once there is news for a viewer that has seen *seen*."""
        if self.version == seen and self.ended is None:
            await self._changed.wait()


class QRHub:
    """The watches of one client on one event loop, keyed by instance name and interval."""

    def __init__(self, client: WachatClient) -> None:
        # Weak: the hub lives in a registry keyed by the client, and must not keep it alive.
        self._client = weakref.ref(client)
        self._watches: dict[tuple[str, float], Watch] = {}

    def join(self, name: str, interval: float) -> Watch:
        """Count one viewer in; start the instance's watch if it is not running."""
        watch = self._watches.get((name, interval))
        if watch is None:
            client = self._client()
            assert client is not None  # the routes hold the client
            watch = self._watches[name, interval] = Watch(self, client, name, interval)
        watch.viewers += 1
        return watch

    def leave(self, watch: Watch) -> None:
        """Count one viewer out; the last one out stops the upstream watch."""
        watch.viewers -= 1
        if watch.viewers <= 0 and watch.ended is None:
            self._forget(watch)
            watch.task.cancel()

    def latest(self, name: str) -> QRImage | None:
        """The newest image a running watch of *name* has announced, if any."""
        images = [w.latest for (n, _), w in self._watches.items() if n == name and w.latest]
        return max(images, key=lambda qr: qr.fetched_at) if images else None

    def viewers(self) -> dict[str, int]:
        """Instance name -> viewers, for the instances being watched right now."""
        counts: dict[str, int] = {}
        for (name, _), watch in self._watches.items():
            counts[name] = counts.get(name, 0) + watch.viewers
        return counts

    def _forget(self, watch: Watch) -> None:
        key = (watch.name, watch.interval)
        if self._watches.get(key) is watch:
            del self._watches[key]


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
