"""Live QR routes for Starlette and FastAPI: PNG proxy, change events and a page.

::

    from wachat_async.web.starlette import qr_routes

    def may_see(request: Request, instance_name: str) -> bool:
        return instance_name in request.session.get("instances", ())   # your app's rule

    app = FastAPI(routes=qr_routes(client, prefix="/qr", authorize=may_see))
    # or: app.router.routes.extend(qr_routes(...)); Starlette(routes=[*qr_routes(...), ...])

Needs Starlette (``pip install 'wachat-async[web-starlette]'``). The event stream listens for
the ASGI ``http.disconnect`` itself, whatever the server's ASGI version, so a browser that goes
away stops its share of the upstream watch at once. See :mod:`wachat_async.web`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

try:
    import anyio
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import BaseRoute, Route
    from starlette.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised by the packaging test
    raise ImportError(
        "wachat_async.web.starlette needs Starlette: pip install 'wachat-async[web-starlette]'"
    ) from exc

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

__all__ = ["EventStreamResponse", "qr_routes"]


def _response(answer: Answer) -> Response:
    return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that stops streaming as soon as the client leaves.

    Starlette's ``StreamingResponse`` listens for ``http.disconnect`` only under ASGI specs
    before 2.4; from 2.4 on it relies on ``send`` failing, which an idle stream (between two
    heartbeats) does not do. This one always listens, and closes its body iterator when done.
    """

    def __init__(self, content: AsyncIterator[bytes]) -> None:
        super().__init__(content, headers=dict(EVENT_HEADERS))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.body_iterator
        async with anyio.create_task_group() as tasks:

            async def stream() -> None:
                with contextlib.suppress(OSError):  # a send to a client that has gone
                    await self.stream_response(send)
                tasks.cancel_scope.cancel()

            tasks.start_soon(stream)
            await self.listen_for_disconnect(receive)
            tasks.cancel_scope.cancel()
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


def qr_routes(
    client: WachatClient | Callable[[Request], WachatClient],
    *,
    prefix: str = "/qr",
    authorize: Authorize[Request],
    interval: float = DEFAULT_INTERVAL,
    heartbeat: float = DEFAULT_HEARTBEAT,
) -> list[BaseRoute]:
    """The three QR routes for *client* (a :class:`WachatClient`, or a callable that returns the
    one to use for a request, such as ``lambda request: request.app[CLIENT]`` when the client is
    opened later, in the app's lifespan), for ``Starlette(routes=...)``/``FastAPI(routes=...)``.

    *authorize* (required) is called as ``authorize(request, instance_name)`` before anything
    else on every route; anything but ``True`` (or an awaitable of it) answers ``403`` and
    upstream never hears of the request. It may raise Starlette's (or FastAPI's)
    ``HTTPException``, which goes out as it is; any other exception is logged and refuses.
    *interval* is the upstream poll period of a watched instance (1 s at least); *heartbeat*
    the longest silence on an event stream.
    """
    base = check_route_options(prefix, authorize, interval, heartbeat)
    if not isinstance(client, WachatClient) and not callable(client):
        raise TypeError(
            f"client must be a WachatClient or a callable request -> WachatClient, not "
            f"{type(client).__name__}"
        )

    def client_for(request: Request) -> WachatClient:
        return client if isinstance(client, WachatClient) else client(request)

    async def admitted(request: Request) -> str | Response:
        name = request.path_params["name"]
        if not await is_authorized(authorize, request, name, (HTTPException,)):
            return _response(forbidden(name))
        checked = check_name(name)
        return _response(checked) if isinstance(checked, Answer) else checked

    async def png(request: Request) -> Response:
        name = await admitted(request)
        if isinstance(name, Response):
            return name
        wachat = client_for(request)
        answer = await png_answer(
            wachat, hub_for(wachat), name, request.headers.get("If-None-Match")
        )
        return _response(answer)

    async def events(request: Request) -> Response:
        if request.method != "GET":  # Starlette adds HEAD to a GET route; a stream has no head
            return Response(status_code=405, headers={"Allow": "GET"})
        name = await admitted(request)
        if isinstance(name, Response):
            return name
        raw = request.scope.get("raw_path")
        path = raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path
        png_path = path.split("?", 1)[0].removesuffix("/events") + ".png"
        stream = qr_events(
            hub_for(client_for(request)),
            name,
            png_path=png_path,
            interval=float(interval),
            heartbeat=float(heartbeat),
        )
        return EventStreamResponse(stream)

    async def page(request: Request) -> Response:
        name = await admitted(request)
        if isinstance(name, Response):
            return name
        return Response(page_html(name), headers=dict(PAGE_HEADERS))

    return [
        Route(f"{base}/{{name}}.png", png, methods=["GET", "HEAD"]),  # before the page route
        Route(f"{base}/{{name}}/events", events, methods=["GET"]),
        Route(f"{base}/{{name}}", page, methods=["GET", "HEAD"]),
    ]
