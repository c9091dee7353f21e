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
goes away cancels its handler at once; without it, the event route notices within a second.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from wachat_async import WachatClient

from ._core import (
    DEFAULT_HEARTBEAT,
    DEFAULT_INTERVAL,
    Answer,
    Authorize,
    check_name,
    check_route_options,
    forbidden,
    is_authorized,
    png_answer,
)
from ._hub import hub_for
from ._page import PAGE_HEADERS, page_html
from ._sse import EVENT_HEADERS, qr_events

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
) -> list[web.RouteDef]:
    """The three QR routes for *client* (a :class:`WachatClient`, or a callable that returns the
    one to use for a request, such as ``lambda request: request.app[CLIENT]`` when the client is
    opened later, in the app's lifespan), for ``app.add_routes``.

    *authorize* (required) is called as ``authorize(request, instance_name)`` before anything
    else on every route; anything but ``True`` (or an awaitable of it) answers ``403`` and
    upstream never hears of the request. It may raise an ``aiohttp.web.HTTPException`` (a
    redirect to your login page, say), which goes out as it is; any other exception is logged
    and refuses. *interval* is the upstream poll period of a watched instance (1 s at least:
    ``watch_qr`` never polls faster); *heartbeat* the longest silence on an event stream.
    """
    base = check_route_options(prefix, authorize, interval, heartbeat)
    if not isinstance(client, WachatClient) and not callable(client):
        raise TypeError(
            f"client must be a WachatClient or a callable request -> WachatClient, not "
            f"{type(client).__name__}"
        )

    def client_for(request: web.Request) -> WachatClient:
        return client if isinstance(client, WachatClient) else client(request)

    async def admitted(request: web.Request) -> str | web.Response:
        name = request.match_info["name"]
        if not await is_authorized(authorize, request, name, (web.HTTPException,)):
            return _response(forbidden(name))
        checked = check_name(name)
        return _response(checked) if isinstance(checked, Answer) else checked

    async def png(request: web.Request) -> web.StreamResponse:
        name = await admitted(request)
        if isinstance(name, web.Response):
            return name
        wachat = client_for(request)
        answer = await png_answer(
            wachat, hub_for(wachat), name, request.headers.get("If-None-Match")
        )
        return _response(answer)

    async def events(request: web.Request) -> web.StreamResponse:
        name = await admitted(request)
        if isinstance(name, web.Response):
            return name
        response = web.StreamResponse(headers=EVENT_HEADERS)
        await response.prepare(request)
        png_path = request.rel_url.raw_path.removesuffix("/events") + ".png"

        def gone() -> bool:
            transport = request.transport
            return transport is None or transport.is_closing()

        stream = qr_events(
            hub_for(client_for(request)),
            name,
            png_path=png_path,
            interval=float(interval),
            heartbeat=float(heartbeat),
            gone=gone,
        )
        async with contextlib.aclosing(stream):
            try:
                async for chunk in stream:
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionError:  # the browser went away mid-write
                pass
        return response

    async def page(request: web.Request) -> web.StreamResponse:
        name = await admitted(request)
        if isinstance(name, web.Response):
            return name
        return web.Response(body=page_html(name), headers=PAGE_HEADERS)

    return [
        web.get(f"{base}/{{name}}.png", png),  # before the page route, which would match too
        web.get(f"{base}/{{name}}/events", events, allow_head=False),
        web.get(f"{base}/{{name}}", page),
    ]
