"""Live QR routes for FastAPI, the FastAPI way: an ``APIRouter`` whose routes honour the app's
and the router's ``dependencies=``, appear in OpenAPI, and take ``authorize`` as a dependency::

    from fastapi import Depends, FastAPI
    from wachat_async.web.fastapi import qr_router

    async def may_see(instance_name: str, user: User = Depends(current_user)) -> bool:
        return instance_name in user.instances          # your app's rule

    app = FastAPI(dependencies=[Depends(require_login)])
    app.include_router(qr_router(get_client, authorize=may_see), prefix="/qr")

The same routes, answers, page and events as :mod:`wachat_async.web.starlette` (see
:mod:`wachat_async.web`): the same statuses and JSON bodies for the same requests; needs the
``web-fastapi`` extra.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

try:
    from fastapi import APIRouter, Depends, Request
    from fastapi.dependencies.utils import get_typed_signature
    from fastapi.responses import Response
    from fastapi.routing import APIRoute
    from starlette.concurrency import run_in_threadpool
    from starlette.convertors import Convertor, register_url_convertor
    from starlette.exceptions import HTTPException
    from starlette.routing import Match
    from starlette.types import Scope
except ImportError as _missing:  # pragma: no cover - exercised by the packaging test
    raise ImportError(
        "wachat_async.web.fastapi needs FastAPI: pip install 'wachat-async[web-fastapi]'"
    ) from _missing

from wachat_async import WachatClient

from ._core import DEFAULT_HEARTBEAT, DEFAULT_INTERVAL, Answer, Gate, check_route_options
from ._hub import (
    DEFAULT_LINKING_TIMEOUT,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_QRS,
    hook_signals,
)
from ._paths import DEFAULT_MAX_NAME_LENGTH, Target
from .starlette import _raw_path, _response, _serve

__all__ = ["qr_router"]

_PNG = {200: {"content": {"image/png": {}}, "description": "The current QR code"}}
_EVENTS = {200: {"content": {"text/event-stream": {}}, "description": "qr, unavailable, ..."}}
_RESTART = {204: {"description": "The watch polls again (for every viewer)"}}
_PAGE = {200: {"content": {"text/html": {}}, "description": "The live QR page"}}
#: Answered by a hidden route with the JSON 405 (or HEAD as GET), never FastAPI's own (a
#: method outside this list gets FastAPI's 405: a route cannot take "any method").
_OTHER_METHODS = ["HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
_ADMITTED = "wachat_admitted_"  # the parameter of the guard that carries the checks' verdict


class _AnyText(Convertor[str]):
    """A path parameter that may span newlines too (a ``%0A`` in a name gets the JSON 404,
    not FastAPI's), registered as ``wachat_path``."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("wachat_path", _AnyText())


class _PNGRoute(APIRoute):
    """The PNG route only where the raw path ends in ``.png`` as written: ``a%2Epng`` is the
    page of the instance ``a.png`` (as on the other frameworks), never the PNG of ``a``."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        raw = _raw_path(scope)
        return (Match.NONE, {}) if raw is not None and not raw.endswith(".png") else (match, child)


def _guard(
    authorize: Callable[..., Any], max_name_length: int
) -> Callable[[str], Callable[..., Awaitable[Target | Answer]]]:
    """A dependency factory: the route and name checks for a path suffix, then *authorize*
    (with its own parameters and dependencies), through a :class:`Gate`, so that a raising
    rule is a 403 and a rate-limited log line, as on the other frameworks."""
    typed = get_typed_signature(authorize)  # string annotations resolved where it was written
    is_async = inspect.iscoroutinefunction(authorize) or inspect.iscoroutinefunction(
        getattr(authorize, "__call__", None)  # noqa: B004 - a callable object's async __call__
    )

    def call(arguments: dict[str, Any], name: str) -> Any:
        return authorize(**arguments) if is_async else run_in_threadpool(authorize, **arguments)

    gate: Gate[dict[str, Any]] = Gate(call, max_name_length, (HTTPException,))

    def for_suffix(suffix: str) -> Callable[..., Awaitable[Target | Answer]]:
        async def check(request: Request, instance_name: str) -> Target | Answer:
            hook_signals()  # on the loop, before authorize's awaits (its dependencies too)
            tail = instance_name + suffix
            return gate.check(request.method, _raw_path(request.scope), tail)

        async def guarded(**arguments: Any) -> Target | Answer:
            where: Target | Answer = arguments.pop(_ADMITTED)
            if isinstance(where, Target) and not await gate.is_authorized(arguments, where.name):
                return gate.json(403, "forbidden", where.name)
            return where

        first = inspect.Parameter(_ADMITTED, inspect.Parameter.KEYWORD_ONLY, default=Depends(check))
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in typed.parameters.values()]
        guarded.__signature__ = inspect.Signature([first, *rest])  # type: ignore[attr-defined]
        return guarded

    return for_suffix


def qr_router(
    client: WachatClient | Callable[..., WachatClient],
    *,
    authorize: Callable[..., bool | Awaitable[bool]],
    interval: float = DEFAULT_INTERVAL,
    heartbeat: float = DEFAULT_HEARTBEAT,
    max_name_length: int = DEFAULT_MAX_NAME_LENGTH,
    max_age: float = DEFAULT_MAX_AGE,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    max_qrs: int | None = DEFAULT_MAX_QRS,
    linking_timeout: float | None = DEFAULT_LINKING_TIMEOUT,
    **router_options: Any,
) -> APIRouter:
    """An ``APIRouter`` with ``GET /{instance_name}.png``, ``/{instance_name}/events`` (and
    ``POST``, a restart) and ``/{instance_name}`` (mount it with ``include_router(...,
    prefix="/qr")``: it answers every path under where it is mounted).

    *client* is a :class:`WachatClient` or a FastAPI dependency that returns one. *authorize*
    (required) is a FastAPI dependency: its ``instance_name`` parameter is the instance's
    name, and it may itself depend on anything (``user = Depends(current_user)``). It runs
    after the route and name checks (a name that is too long, holds control characters or is
    ``.``/``..`` is a 404 first) and only ``True`` lets a request through; anything else, an
    exception too (logged, once a minute per cause), is a 403, and Starlette's or FastAPI's
    ``HTTPException`` goes out as it is. Every answer, refusals included, has the status and
    JSON body of :func:`wachat_async.web.starlette.qr_routes` (``{"error": ..., "instance":
    ...}``); so do ``HEAD`` (as ``GET`` without a body) and other methods (405 with
    ``Allow``). The other options are those of :func:`wachat_async.web.starlette.qr_routes`;
    *router_options* go to ``APIRouter`` (``dependencies=``, ``tags=``, ``prefix=``...).
    """
    _, checked = check_route_options(
        "",
        authorize,
        interval,
        heartbeat,
        max_name_length,
        max_age,
        max_backoff,
        max_qrs,
        linking_timeout,
    )
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
    guard = _guard(authorize, checked.max_name_length)

    def endpoint(suffix: str) -> Callable[..., Awaitable[Response]]:
        async def serve(
            request: Request,
            where: Target | Answer = Depends(guard(suffix)),  # noqa: B008 - FastAPI's syntax
            wachat: WachatClient = Depends(client_dependency),  # noqa: B008
        ) -> Response:
            if isinstance(where, Answer):
                return _response(where)
            return await _serve(request, where, wachat, checked)

        return serve

    router = APIRouter(**router_options)
    for path, method, suffix, responses, summary in (
        (".png", "GET", ".png", _PNG, "The instance's current QR code (PNG)"),
        ("/events", "GET", "/events", _EVENTS, "Server-sent events as the QR changes"),
        ("/events", "POST", "/events", _RESTART, "Start polling again after `expired`"),
        ("", "GET", "", _PAGE, "A page that shows the live QR"),
    ):
        router.add_api_route(
            "/{instance_name:wachat_path}" + path,
            endpoint(suffix),
            methods=[method],
            response_class=Response,
            responses=responses,  # type: ignore[arg-type]
            summary=summary,
            route_class_override=_PNGRoute if suffix == ".png" else None,
        )
    router.add_api_route(  # last: whatever the routes above did not take, answered alike
        "/{instance_name:wachat_path}",
        endpoint(""),
        methods=_OTHER_METHODS,
        response_class=Response,
        include_in_schema=False,
    )
    return router
