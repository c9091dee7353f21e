"""Live QR routes for :mod:`aiohttp.web`: PNG proxy, change events and a page that follows them.

::

    from wachat_async.web.aiohttp import qr_routes

    async def may_see(request: web.Request, instance_name: str) -> bool:
        user = await current_user(request)          # your session / auth
        return user is not None and instance_name in user.instances

    app.add_routes(qr_routes(client, prefix="/qr", authorize=may_see))

Serves ``GET {prefix}/{name}.png``, ``GET {prefix}/{name}/events`` (``text/event-stream``) and
``GET {prefix}/{name}`` (the page). Needs nothing beyond the core install. See
:mod:`wachat_async.web` for the contract. Run the app with ``handler_cancellation=True``
(``web.run_app(..., handler_cancellation=True)`` or ``web.AppRunner(...)``) so a browser that
goes away cancels its handler at once; without it, the event route notices within 5 seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from wachat_async import WachatClient

from ._core import (
    DEFAULT_HEARTBEAT,
    DEFAULT_INTERVAL,
    RESTART_HEADER,
    Answer,
    Authorize,
    events_refusal,
    png_answer,
    restart_answer,
    route_kit,
)
from ._hub import (
    DEFAULT_LINKING_TIMEOUT,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_QRS,
    hub_for,
)
from ._page import PAGE_HEADERS, page_html
from ._paths import DEFAULT_MAX_NAME_LENGTH, EVENTS, PNG, Target
from ._sse import EVENT_HEADERS, route_events

__all__ = ["qr_routes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _response(answer: Answer) -> web.Response:
    return web.Response(status=answer.status, headers=answer.headers, body=answer.body or None)


def qr_routes(
    client: WachatClient | Callable[[web.Request], WachatClient],
    *,
    prefix: str = "/qr",
    authorize: Authorize[web.Request],
    interval: float = DEFAULT_INTERVAL,
    heartbeat: float = DEFAULT_HEARTBEAT,
    max_name_length: int = DEFAULT_MAX_NAME_LENGTH,
    max_age: float = DEFAULT_MAX_AGE,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    max_qrs: int | None = DEFAULT_MAX_QRS,
    linking_timeout: float | None = DEFAULT_LINKING_TIMEOUT,
) -> list[web.RouteDef]:
    """The three QR routes for *client* (a :class:`WachatClient`, or a callable that returns the
    one to use for a request, such as ``lambda request: request.app[CLIENT]`` when the client is
    opened later, in the app's lifespan), for ``app.add_routes``.

    *authorize* (required) is called as ``authorize(request, instance_name)`` before anything
    else on every route; it returns ``True`` or ``False`` or an awaitable of one, and anything
    but ``True`` answers ``403`` (upstream never hears of the request). It may raise an
    ``aiohttp.web.HTTPException`` (a redirect to your login page, say), which goes out as it
    is; any other exception, or a result of another type, is logged as an error and refuses.
    *interval* is the upstream poll period of a watched instance (1 s at least: ``watch_qr``
    never polls faster); *heartbeat* the longest silence on an event stream;
    *max_name_length* the longest instance name passed on (longer: ``404``); *max_age* how old
    (since its last good poll) a watched QR may be and still be served (older: ``503`` and
    ``unavailable``); *max_backoff* the longest wait between two polls while they fail;
    *max_qrs* and *linking_timeout* stop a watch that many QRs or seconds without a link
    (``None``: no limit; then ``expired``, and ``POST {prefix}/{name}/events`` with the
    ``Wachat-Restart`` header starts it again).

    Every path under ``{prefix}/`` is answered by these routes, with the JSON error body when
    it is none of them (``404``) or the method is wrong (``405``). With an empty *prefix* they
    take only GET and HEAD of ``/{name}`` and ``/{name}/events`` (a POST to ``/login`` is still
    the application's).
    """
    options = {
        "interval": interval,
        "heartbeat": heartbeat,
        "max_name_length": max_name_length,
        "max_age": max_age,
        "max_backoff": max_backoff,
        "max_qrs": max_qrs,
        "linking_timeout": linking_timeout,
    }
    kit = route_kit((web.HTTPException,), client, prefix, authorize, options)
    base, checked, gate, client_for = kit

    async def serve(request: web.Request, tail: str) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        where = await gate.admit(request, request.method, raw_path, tail)
        if isinstance(where, Answer):
            return _response(where)
        if where.route == PNG:
            return await png(request, where)
        if where.route == EVENTS and request.method == "POST":
            hub = hub_for(client_for(request))
            return _response(restart_answer(hub, where.name, request.headers.get(RESTART_HEADER)))
        if where.route == EVENTS:
            return await events(request, where)
        return web.Response(body=page_html(where.name), headers=PAGE_HEADERS)

    async def png(request: web.Request, where: Target) -> web.StreamResponse:
        wachat = client_for(request)
        if_none_match = ",".join(request.headers.getall("If-None-Match", ())) or None
        answer = await png_answer(hub_for(wachat), where.name, if_none_match, checked.max_age)
        return _response(answer)

    async def events(request: web.Request, where: Target) -> web.StreamResponse:
        wachat = client_for(request)
        refusal = events_refusal(wachat, where.name)
        if refusal is not None:
            return _response(refusal)
        response = web.StreamResponse(headers=EVENT_HEADERS)
        await response.prepare(request)

        def gone() -> bool:
            transport = request.transport
            return transport is None or transport.is_closing()

        stream = route_events(hub_for(wachat), where.name, checked, gone)
        async with contextlib.aclosing(stream):
            try:
                async for chunk in stream:
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionError:  # the browser went away mid-write
                pass
        return response

    async def under_prefix(request: web.Request) -> web.StreamResponse:
        return await serve(request, request.match_info["tail"])

    async def one_segment(request: web.Request) -> web.StreamResponse:
        return await serve(request, request.match_info["name"])

    async def event_path(request: web.Request) -> web.StreamResponse:
        return await serve(request, request.match_info["name"] + "/events")

    if base:  # everything under the prefix: never aiohttp's plain-text 404/405
        return [web.route("*", rf"{base}/{{tail:[\s\S]*}}", under_prefix)]  # \n too
    return [  # at the root, only the routes' own shapes and methods: the rest is the app's
        web.get("/{name}/events", event_path),  # HEAD too, answered 405 in JSON
        web.post("/{name}/events", event_path),
        web.get("/{name}", one_segment),
    ]
