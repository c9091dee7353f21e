"""Live QR routes for FastAPI, the FastAPI way: an ``APIRouter`` whose routes honour the app's
and the router's ``dependencies=``, appear in OpenAPI, and take ``authorize`` as a dependency::

    from fastapi import Depends, FastAPI
    from wachat_async.web.fastapi import qr_router

    async def may_see(instance_name: str, user: User = Depends(current_user)) -> bool:
        return instance_name in user.instances          # your app's rule

    app = FastAPI(dependencies=[Depends(require_login)])
    app.include_router(qr_router(get_client, authorize=may_see), prefix="/qr")

The same three routes, page and events as :mod:`wachat_async.web.starlette` (see
:mod:`wachat_async.web`); needs the ``web-fastapi`` extra.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

try:
    from fastapi import APIRouter, Depends, HTTPException, Request
    from fastapi.responses import Response
except ImportError as _missing:  # pragma: no cover - exercised by the packaging test
    raise ImportError(
        "wachat_async.web.fastapi needs FastAPI: pip install 'wachat-async[web-fastapi]'"
    ) from _missing

from wachat_async import WachatClient

from ._core import DEFAULT_HEARTBEAT, DEFAULT_INTERVAL, Gate, check_route_options, png_answer
from ._hub import DEFAULT_MAX_AGE, DEFAULT_MAX_BACKOFF, hub_for
from ._page import PAGE_HEADERS, page_html
from ._paths import DEFAULT_MAX_NAME_LENGTH, Miss, body_name, locate, png_from_events
from ._sse import qr_events
from .starlette import EventStreamResponse, _raw_path

__all__ = ["qr_router"]

_PNG = {200: {"content": {"image/png": {}}, "description": "The current QR code"}}
_EVENTS = {200: {"content": {"text/event-stream": {}}, "description": "qr, unavailable, ..."}}
_PAGE = {200: {"content": {"text/html": {}}, "description": "The live QR page"}}


def qr_router(
    client: WachatClient | Callable[..., WachatClient],
    *,
    authorize: Callable[..., bool | Awaitable[bool]],
    interval: float = DEFAULT_INTERVAL,
    heartbeat: float = DEFAULT_HEARTBEAT,
    max_name_length: int = DEFAULT_MAX_NAME_LENGTH,
    max_age: float = DEFAULT_MAX_AGE,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    **router_options: Any,
) -> APIRouter:
    """An ``APIRouter`` with ``GET /{instance_name}.png``, ``/{instance_name}/events`` and
    ``/{instance_name}`` (mount it with ``include_router(..., prefix="/qr")``).

    *client* is a :class:`WachatClient` or a FastAPI dependency that returns one. *authorize*
    (required) is a FastAPI dependency: its ``instance_name`` parameter is the instance's
    name, and it may itself depend on anything (``user = Depends(current_user)``). It runs
    after the name checks (a name that is too long, holds control characters or is
    ``.``/``..`` is a 404 first) and only ``True`` lets a request through (anything else:
    403). Refusals are ``HTTPException`` s with ``detail={"error": ..., "instance": ...}``;
    upstream failures the JSON of :func:`~wachat_async.web.error_status`. The other options
    are those of :func:`wachat_async.web.starlette.qr_routes`; *router_options* go to
    ``APIRouter`` (``dependencies=``, ``tags=``, ``prefix=``...).
    """
    check_route_options("", authorize, interval, heartbeat, max_name_length, max_age, max_backoff)
    gate: Gate[Request] = Gate(lambda request, name: True, max_name_length)
    if isinstance(client, WachatClient):
        instance = client

        def client_dependency() -> WachatClient:
            return instance

    elif callable(client):
        client_dependency = client
    else:
        raise TypeError(
            f"client must be a WachatClient or a dependency returning one, not "
            f"{type(client).__name__}"
        )

    def refuse(status: int, message: str, name: str) -> HTTPException:
        detail = {"error": message, "instance": body_name(name, max_name_length)}
        return HTTPException(status, detail=detail)

    def checked(suffix: str) -> Callable[[Request, str], str]:
        def check(request: Request, instance_name: str) -> str:
            where = locate(_raw_path(request.scope), instance_name + suffix)
            if isinstance(where, Miss):
                raise refuse(404, where.message, where.name)
            problem = gate.name_problem(where.name)
            if problem is not None:
                raise refuse(404, problem, where.name)
            return where.name

        return check

    def verdict(name: str, allowed: object) -> None:
        if allowed is not True:
            raise refuse(403, "forbidden", name)

    async def png(
        request: Request,
        name: str = Depends(checked(".png")),
        allowed: object = Depends(authorize),
        wachat: WachatClient = Depends(client_dependency),  # noqa: B008 - FastAPI's own syntax
    ) -> Response:
        verdict(name, allowed)
        if_none_match = ",".join(request.headers.getlist("If-None-Match")) or None
        answer = await png_answer(hub_for(wachat), name, if_none_match, max_age)
        return Response(answer.body, answer.status, dict(answer.headers))

    async def events(
        name: str = Depends(checked("/events")),
        allowed: object = Depends(authorize),
        wachat: WachatClient = Depends(client_dependency),  # noqa: B008 - FastAPI's own syntax
    ) -> Response:
        verdict(name, allowed)
        stream = qr_events(
            hub_for(wachat),
            name,
            png_path=png_from_events(name),
            interval=float(interval),
            heartbeat=float(heartbeat),
            max_age=float(max_age),
            max_backoff=float(max_backoff),
        )
        return EventStreamResponse(stream)

    async def page(
        name: str = Depends(checked("")), allowed: object = Depends(authorize)
    ) -> Response:
        verdict(name, allowed)
        return Response(page_html(name), headers=dict(PAGE_HEADERS))

    router = APIRouter(**router_options)
    for path, endpoint, responses, summary in (
        ("/{instance_name:path}.png", png, _PNG, "The instance's current QR code (PNG)"),
        ("/{instance_name:path}/events", events, _EVENTS, "Server-sent events as the QR changes"),
        ("/{instance_name:path}", page, _PAGE, "A page that shows the live QR"),
    ):
        router.add_api_route(
            path,
            endpoint,
            methods=["GET"],
            response_class=Response,
            responses=responses,  # type: ignore[arg-type]
            summary=summary,
        )
    return router
