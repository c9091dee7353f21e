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
import re
from collections.abc import AsyncIterator, Awaitable, Callable

try:
    import anyio
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import BaseRoute, Match, Route
    from starlette.types import Receive, Scope, Send
except ImportError as _missing:  # pragma: no cover - exercised by the packaging test
    raise ImportError(
        "wachat_async.web.starlette needs Starlette: pip install 'wachat-async[web-starlette]'"
    ) from _missing

from wachat_async import WachatClient

from ._core import (
    DEFAULT_HEARTBEAT,
    DEFAULT_INTERVAL,
    RESTART_HEADER,
    Answer,
    Authorize,
    Options,
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
from ._paths import DEFAULT_MAX_NAME_LENGTH, EVENTS, PNG, Target, claims_root
from ._sse import EVENT_HEADERS, route_events

__all__ = ["EventStreamResponse", "qr_routes"]


def _response(answer: Answer) -> Response:
    return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))


def _raw_path(scope: Scope) -> str | None:
    """The request's raw path (ASGI ``raw_path``, no query), if the server gave one."""
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        return None
    try:
        return raw.decode("utf-8").split("?", 1)[0]
    except UnicodeDecodeError:
        return None


class _QRRoute(Route):
    """``{prefix}/{tail:path}`` for every method: the routes answer the whole prefix (JSON
    404/405, never Starlette's plain text). At the root (an empty prefix) it matches only GET
    and HEAD of ``/{name}`` and ``/{name}/events`` (and POST, a restart, of the latter), so the
    application keeps the rest."""

    def __init__(self, path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        super().__init__(path, endpoint)
        self.methods = None  # every method: the endpoint answers 405 itself, in JSON
        # `.*` of the path convertor, across newlines too: a %0A in a name gets the JSON 404.
        self.path_regex = re.compile(self.path_regex.pattern, re.DOTALL)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL and not self.path.removesuffix("/{tail:path}"):
            tail = child["path_params"]["tail"]
            methods = ("GET", "HEAD", "POST") if tail.endswith("/events") else ("GET", "HEAD")
            if scope.get("method") not in methods or not claims_root(_raw_path(scope), tail):
                return Match.NONE, {}
        return match, child


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
    max_name_length: int = DEFAULT_MAX_NAME_LENGTH,
    max_age: float = DEFAULT_MAX_AGE,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    max_qrs: int | None = DEFAULT_MAX_QRS,
    linking_timeout: float | None = DEFAULT_LINKING_TIMEOUT,
) -> list[BaseRoute]:
    """The three QR routes for *client* (a :class:`WachatClient`, or a callable that returns the
    one to use for a request, such as ``lambda request: request.app[CLIENT]`` when the client is
    opened later, in the app's lifespan), for ``Starlette(routes=...)``/``FastAPI(routes=...)``.

    *authorize* (required) is called as ``authorize(request, instance_name)`` before anything
    else on every route; it returns ``True`` or ``False`` or an awaitable of one, and anything
    but ``True`` answers ``403`` (upstream never hears of the request). It may raise
    Starlette's (or FastAPI's) ``HTTPException``, which goes out as it is; any other
    exception, or a result of another type, is logged as an error and refuses. *interval* is
    the upstream poll period of a watched instance (1 s at least); *heartbeat* the longest
    silence on an event stream; *max_name_length* the longest instance name passed on
    (longer: ``404``); *max_age* how old (since its last good poll) a watched QR may be and
    still be served (older: ``503`` and ``unavailable``); *max_backoff* the longest wait
    between two polls while they fail; *max_qrs* and *linking_timeout* stop a watch that
    many QRs or seconds without a link (``None``: no limit; then ``expired``, and ``POST
    {prefix}/{name}/events`` with the ``Wachat-Restart`` header starts it again).

    The routes are one Starlette route that answers every path under ``{prefix}/``, with the
    JSON error body when it is none of the three (``404``) or the method is wrong (``405``).
    With an empty *prefix* it takes only GET and HEAD of ``/{name}`` and ``/{name}/events``
    (a POST to ``/login`` is still the application's).
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
    base, checked, gate, client_for = route_kit(
        (HTTPException,), client, prefix, authorize, options
    )

    async def endpoint(request: Request) -> Response:
        raw_path = _raw_path(request.scope)
        tail = request.path_params["tail"]
        where = await gate.admit(request, request.method, raw_path, tail)
        if isinstance(where, Answer):
            return _response(where)
        return await _serve(request, where, client_for(request), checked)

    return [_QRRoute(f"{base}/{{tail:path}}", endpoint)]


async def _serve(
    request: Request, where: Target, wachat: WachatClient, options: Options
) -> Response:
    """Serve an admitted request (``qr_routes`` and ``qr_router`` both)."""
    if where.route == PNG:
        if_none_match = ",".join(request.headers.getlist("If-None-Match")) or None
        answer = await png_answer(hub_for(wachat), where.name, if_none_match, options.max_age)
        return _response(answer)
    if where.route == EVENTS and request.method == "POST":
        header = request.headers.get(RESTART_HEADER)
        return _response(restart_answer(hub_for(wachat), where.name, header))
    if where.route == EVENTS:
        refusal = events_refusal(wachat, where.name)
        if refusal is not None:
            return _response(refusal)
        return EventStreamResponse(route_events(hub_for(wachat), where.name, options))
    return Response(page_html(where.name), headers=dict(PAGE_HEADERS))
