"""The ``text/event-stream`` of one viewer: ``qr`` events, then ``connected`` or ``error``.

:func:`qr_events` is an async iterator of ``bytes`` that any framework can stream as it is
(Starlette's ``StreamingResponse``, aiohttp's ``StreamResponse.write``). Wire format::

    event: qr
    data: {"sha256": "...", "src": "/qr/NAME.png?v=..."}

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
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Final

from ._core import error_status
from ._hub import CONNECTED, QRHub

__all__ = ["LIVENESS_CHECK", "PING", "event", "qr_events"]

PING: Final = b": ping\n\n"
#: At most this many seconds between two checks that the browser is still there.
LIVENESS_CHECK: Final = 1.0

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
) -> AsyncGenerator[bytes, None]:
    """Follow *name*'s shared watch: a ``qr`` event now (once an image is known) and on every
    change, with ``src`` = ``{png_path}?v=<sha256>``; ``connected`` or ``error`` at the end.

    A ``: ping`` comment goes out after *heartbeat* seconds of silence. *gone*, when given, is
    asked at least every ``LIVENESS_CHECK`` seconds whether the browser has left (for servers
    that do not cancel the handler); a true answer ends the stream.
    """
    loop = asyncio.get_running_loop()
    tick = min(heartbeat, LIVENESS_CHECK)
    watch = hub.join(name, interval)
    try:
        seen = 0
        last_write = loop.time()
        while True:
            if watch.version != seen and watch.latest is not None:
                seen = watch.version
                digest = watch.latest.sha256
                yield event("qr", {"sha256": digest, "src": f"{png_path}?v={digest}"})
                last_write = loop.time()
            ended = watch.ended
            if ended is CONNECTED:
                yield event("connected", {"instance": name})
                return
            if isinstance(ended, BaseException):
                message = error_status(ended)[1]
                yield event("error", {"error": message, "instance": name})
                return
            # Wake for news, for the liveness check, or just in time for the heartbeat.
            due = heartbeat - (loop.time() - last_write)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(tick, due))):
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
