"""The ``text/event-stream`` of one viewer: ``qr`` and ``unavailable`` events, then
``connected`` or ``failed``.

:func:`qr_events` is an async iterator of ``bytes`` that any framework can stream as it is
(Starlette's ``StreamingResponse``, aiohttp's ``StreamResponse.write``). Wire format::

    retry: 2718

    event: qr
    data: {"sha256": "...", "src": "../NAME.png?v=..."}

    event: unavailable
    data: {"instance": "NAME", "error": "...", "retry_in": 4.2}

    event: expired
    data: {"instance": "NAME", "qrs_shown": 6, "elapsed": 118.4}

    : ping

    event: connected
    data: {"instance": "NAME"}

Never imports a web framework. Closing the iterator (or cancelling its consumer) counts the
viewer out of the hub, which stops the upstream watch when it was the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Final

from wachat_async import QRExpiredError, QRImage

from ._core import Options
from ._hub import (
    CLOSED,
    CONNECTED,
    DEFAULT_LINKING_TIMEOUT,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_QRS,
    QRHub,
    error_status,
    stopping,
)
from ._paths import png_from_events

__all__ = ["FINAL", "LIVENESS_CHECK", "PING", "RECONNECT_MS", "event", "qr_events"]

PING: Final = b": ping\n\n"
#: The terminal event (not ``error``: EventSource fires its own ``error`` on every reconnect).
FINAL: Final = "failed"
#: At most this many seconds between two checks that the browser is still there (only where
#: the framework does not say so itself).
LIVENESS_CHECK: Final = 5.0
#: The ``retry:`` a stream opens with (ms), drawn from this range, so that pages cut off
#: together (a deploy) come back spread out.
RECONNECT_MS: Final = (1000, 4000)

EVENT_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
    "X-Content-Type-Options": "nosniff",
}


def event(kind: str, data: object) -> bytes:
    """One SSE event; the JSON has no newline, so it is one ``data:`` line."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def qr_events(
    hub: QRHub,
    name: str,
    *,
    png_path: str,
    interval: float,
    heartbeat: float,
    gone: Callable[[], bool | Awaitable[bool]] | None = None,
    max_age: float = DEFAULT_MAX_AGE,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    max_qrs: int | None = DEFAULT_MAX_QRS,
    linking_timeout: float | None = DEFAULT_LINKING_TIMEOUT,
) -> AsyncGenerator[bytes, None]:
    """Follow *name*'s shared watch: ``retry:`` first; a ``qr`` event (``src`` =
    ``{png_path}?v=<sha256>``) once an image is known and on every change; ``unavailable``
    (why, and ``retry_in`` seconds) while polls fail or the QR is older than *max_age*;
    ``expired`` (``qrs_shown``, ``elapsed`` seconds) once the watch stopped polling after
    *max_qrs* QRs or *linking_timeout* seconds (``None``: no limit) without a link, until
    :meth:`QRHub.restart` (then ``qr`` again); at the end ``connected`` or ``failed``, or
    nothing when the app stops (the browser reconnects): once it began stopping, a stream
    that starts ends at once, before joining the watch.

    A ``: ping`` comment goes out after *heartbeat* seconds of silence. *gone*, when given, is
    asked at least every ``LIVENESS_CHECK`` seconds whether the browser has left (for servers
    that do not cancel the handler); a true answer ends the stream.
    """
    loop = asyncio.get_running_loop()
    if stopping():  # no await between this check and join: a later shutdown ends the watch
        return
    watch = hub.join(name, interval, max_backoff, (max_qrs, linking_timeout))
    try:
        yield f"retry: {random.randint(*RECONNECT_MS)}\n\n".encode()  # noqa: S311 - not a secret
        told: object = None
        last_write = loop.time()
        while True:
            seen = watch.version
            ended = watch.ended
            if ended is CLOSED:
                return
            if ended is CONNECTED:
                yield event("connected", {"instance": name})
                return
            if isinstance(ended, BaseException):
                status, message = error_status(ended)
                yield event(FINAL, {"error": message, "instance": name, "status": status})
                return
            now = loop.time()
            state = watch.state(now, max_age)
            key = state.sha256 if isinstance(state, QRImage) else state
            if key != told:
                told = key
                if isinstance(state, QRImage):
                    yield event("qr", {"sha256": key, "src": f"{png_path}?v={key}"})
                elif isinstance(state, QRExpiredError):
                    elapsed = round(state.elapsed, 1)
                    data = {"instance": name, "qrs_shown": state.qrs_shown, "elapsed": elapsed}
                    yield event("expired", data)
                elif state is not None:
                    at = state.retry_at
                    retry_in = None if at is None else round(max(0.0, at - now), 1)
                    data = {"instance": name, "error": state.message, "retry_in": retry_in}
                    yield event("unavailable", data)
                last_write = now = loop.time()
            # Wake for news, for the heartbeat, when the QR grows too old, for the check.
            due = last_write + heartbeat
            if isinstance(state, QRImage):
                due = min(due, watch.confirmed + max_age + 0.001)
            if gone is not None:
                due = min(due, now + LIVENESS_CHECK)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - now)):
                    await watch.wait(seen)
            if gone is not None:
                left = gone()
                if not isinstance(left, bool):
                    left = await left
                if left:
                    return
            if loop.time() - last_write >= heartbeat:
                yield PING
                last_write = loop.time()
    finally:
        hub.leave(watch)


def route_events(
    hub: QRHub,
    name: str,
    options: Options,
    gone: Callable[[], bool | Awaitable[bool]] | None = None,
) -> AsyncGenerator[bytes, None]:
    """:func:`qr_events` as the routes call it, with their checked *options*."""
    return qr_events(
        hub,
        name,
        png_path=png_from_events(name),
        interval=options.interval,
        heartbeat=options.heartbeat,
        gone=gone,
        max_age=options.max_age,
        max_backoff=options.max_backoff,
        max_qrs=options.max_qrs,
        linking_timeout=options.linking_timeout,
    )
