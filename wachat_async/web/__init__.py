"""Live QR codes for async web backends (aiohttp.web, Starlette, FastAPI).

A WhatsApp QR rotates about every 20 seconds and the page must learn when the phone is linked.
:func:`wachat_async.web.aiohttp.qr_routes` and :func:`wachat_async.web.starlette.qr_routes`
serve, for an instance name ``{name}``:

* ``GET {prefix}/{name}.png``: the current QR PNG, fetched with header auth (the key never
  reaches the browser); ``ETag`` (its SHA-256), ``Cache-Control: no-store``, ``304`` on a
  matching ``If-None-Match``. Upstream errors become ``{"error": "...", "instance": "..."}``
  with 404 (400/404 upstream, invalid names), 409, 502 (502, 504, an invalid image, our key
  refused...) or 503 (timeouts, retry budget exhausted, a watched QR older than ``max_age``
  or whose polls fail); never 500, never the key.
* ``GET {prefix}/{name}/events``: ``text/event-stream``. ``retry:`` (jittered); ``event: qr``
  with ``data: {"sha256": ..., "src": "../{name}.png?v=<sha256>"}`` (relative to the stream)
  at once and on every change; ``event: unavailable`` (why, ``retry_in``) while polls fail;
  ``event: connected`` once ``GET /instance/state`` says ``open`` or ``event: failed`` with
  the JSON above and its ``status`` on a terminal upstream error (then the stream ends); a
  ``: ping`` comment after 15 s of silence; ``event: expired`` (``qrs_shown``, ``elapsed``)
  once the watch stopped after ``max_qrs`` QRs or ``linking_timeout`` seconds
  (:data:`DEFAULT_MAX_QRS`, :data:`DEFAULT_LINKING_TIMEOUT`) without a link. On SIGINT/SIGTERM
  (and :func:`end_event_streams`) every stream ends cleanly and PNG requests waiting on
  upstream answer 503, so a server can stop at once; from then on, for good, the routes
  answer 503 (with ``Retry-After``) and a stream that starts anyway (its ``authorize`` was
  still running) ends at once. While the client is closed the route answers 503 too.
* ``POST {prefix}/{name}/events`` with ``Wachat-Restart: 1`` (or ``true``; any other value
  is a 400): an expired watch polls again, for all its viewers (``204``; the PNG route
  answers ``410`` while expired). An expired watch stays so for a while after its last viewer
  left, so a reconnect sees ``expired`` again (:func:`route_path` builds links to the routes).
* ``GET {prefix}/{name}``: a self-contained page (no external scripts, a strict CSP) with
  ``<img id="wachat-qr">`` following the events and ``<p id="wachat-status">`` whose
  ``data-state`` says what it shows (``connected`` once linked).

**Whoever scans the QR links a phone to the instance**, so ``authorize(request, name)`` is a
required keyword, called on every route before anything is sent upstream. It returns ``True`` or
``False`` or an awaitable of one; anything but ``True`` (another type, an awaitable of an
awaitable, an exception) answers the same 403, is logged as an error, and nothing is sent
upstream. The usual rule: the session's user owns the instance.

Every path under ``{prefix}/`` answers a route or the JSON body above, never the framework's
plain text: the name is one path segment, percent-decoded (``%2F`` for a ``/`` in it); other
paths are a 404, other methods a 405, and names that are empty, ``.``/``..``, hold control
characters or exceed ``max_name_length`` (:data:`DEFAULT_MAX_NAME_LENGTH` characters) a 404,
all without asking ``authorize``. Log lines show names shortened.

**One upstream watch per instance** (per client and event loop), whatever the number of
viewers: it starts with the first event stream and stops when the last one leaves; while it
runs the PNG route answers from its latest image (:data:`DEFAULT_MAX_AGE` seconds old at
most). While polls fail it waits up to ``max_backoff`` (:data:`DEFAULT_MAX_BACKOFF`) between
two, and a new viewer makes it try at once. ``wachat_async.web.aiohttp`` needs nothing
beyond the core install; ``wachat_async.web.starlette`` needs the ``web-starlette`` extra;
:func:`wachat_async.web.fastapi.qr_router` (the routes as an ``APIRouter`` that honours
``dependencies=``, with ``authorize`` as a dependency) the ``web-fastapi`` extra.

The pieces are framework-neutral and public here for other frameworks: :func:`qr_events` is
the event stream as an async iterator of ``bytes`` (hand it to any streaming response) and
:func:`error_status` the error table.
"""

from __future__ import annotations

from ._core import DEFAULT_HEARTBEAT, DEFAULT_INTERVAL, Authorize
from ._hub import (
    DEFAULT_LINKING_TIMEOUT,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_QRS,
    WATCH_TASK_PREFIX,
    QRHub,
    end_event_streams,
    error_status,
    hub_for,
)
from ._paths import DEFAULT_MAX_NAME_LENGTH, route_path
from ._sse import qr_events

__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_INTERVAL",
    "DEFAULT_LINKING_TIMEOUT",
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_NAME_LENGTH",
    "DEFAULT_MAX_QRS",
    "WATCH_TASK_PREFIX",
    "Authorize",
    "QRHub",
    "end_event_streams",
    "error_status",
    "hub_for",
    "qr_events",
    "route_path",
]
