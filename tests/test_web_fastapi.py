"""wachat_async.web.fastapi.qr_router: the QR routes the FastAPI way.

The app's and the router's ``dependencies=`` run for every route (a user that the app's
``require_login`` refuses never gets a PNG), ``authorize`` is a dependency of its own
(``Depends(current_user)``) that runs after the name checks, the routes are in OpenAPI, and
the event stream and page are the same as everywhere else. Served by uvicorn on loopback.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests._web import EventReader, png_url, raw_request, serve_asgi
from tests.conftest import NAME
from wachat_async import WachatClient
from wachat_async.testing import FakeWachatServer

fastapi = pytest.importorskip("fastapi")
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException  # noqa: E402

from wachat_async.web.fastapi import qr_router  # noqa: E402

USERS = {"alice": {NAME}, "bob": set()}


def require_login(x_user: str | None = Header(default=None)) -> None:
    if x_user not in USERS:
        raise HTTPException(401, "log in first")


def current_user(x_user: str | None = Header(default=None)) -> set[str]:
    return USERS.get(x_user or "", set())


class Asked:
    """An authorize dependency that records the names it was asked about."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(
        self,
        instance_name: str,
        owned: set[str] = Depends(current_user),  # noqa: B008 - FastAPI's own syntax
    ) -> bool:
        self.names.append(instance_name)
        return instance_name in owned


@pytest.fixture
async def app_with(client: WachatClient) -> Any:
    def build(where: str, asked: Asked) -> FastAPI:
        if where == "app":
            app = FastAPI(dependencies=[Depends(require_login)])
            app.include_router(qr_router(client, authorize=asked), prefix="/qr")
        else:
            app = FastAPI()
            outer = APIRouter(dependencies=[Depends(require_login)])
            outer.include_router(qr_router(client, authorize=asked))
            app.include_router(outer, prefix="/qr")
        return app

    return build


@pytest.mark.parametrize("where", ["app", "router"])
async def test_app_and_router_dependencies_run_for_every_route(
    app_with: Any, server: FakeWachatServer, where: str
) -> None:
    """`FastAPI(dependencies=...)` and `APIRouter(dependencies=...)` guard the QR routes: no
    login, 401 on each (nothing upstream, authorize not asked); logged in, the PNG."""
    asked = Asked()
    async with serve_asgi(app_with(where, asked)) as base, aiohttp.ClientSession() as http:
        anonymous = []
        for path in (f"/qr/{NAME}.png", f"/qr/{NAME}/events", f"/qr/{NAME}"):
            async with http.get(base + path) as response:
                anonymous.append(response.status)
        sent = server.request_count()
        async with http.get(f"{base}/qr/{NAME}.png", headers={"X-User": "alice"}) as png:
            image = await png.read()
    assert anonymous == [401, 401, 401]
    assert sent == 0
    assert png.status == 200
    assert image.startswith(b"\x89PNG")
    assert asked.names == [NAME]


async def test_authorize_is_a_dependency_that_refuses_with_403(
    app_with: Any, server: FakeWachatServer
) -> None:
    """bob is logged in but does not own the instance: 403, nothing upstream."""
    asked = Asked()
    async with (
        serve_asgi(app_with("app", asked)) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/qr/{NAME}.png", headers={"X-User": "bob"}) as response,
    ):
        body = await response.json()
    assert response.status == 403
    assert body == {"error": "forbidden", "instance": NAME}  # as on the other frameworks
    assert server.request_count() == 0


@pytest.mark.parametrize(
    ("segment", "fragment"),
    [
        pytest.param("a%00b", "control characters", id="nul"),
        pytest.param("%2E%2E", "'.' or '..'", id="dot-dot"),
        pytest.param("y" * 8000, "too long", id="huge"),
        pytest.param("a/b", "no such route", id="raw-slash"),
    ],
)
async def test_names_are_checked_before_authorize(
    app_with: Any, server: FakeWachatServer, segment: str, fragment: str
) -> None:
    """The cheap checks come first: authorize never sees such a name; a 404 names why."""
    asked = Asked()
    async with serve_asgi(app_with("app", asked)) as base:
        response = await raw_request(base, "GET", f"/qr/{segment}.png", headers={"X-User": "alice"})
    assert response.status == 404
    assert fragment in response.json()["error"]
    assert asked.names == []
    assert server.request_count() == 0


async def test_events_and_page_follow_the_same_contract(
    app_with: Any, server: FakeWachatServer
) -> None:
    """The stream opens with `qr` whose relative src loads; the page names its stream."""
    alice = {"X-User": "alice"}
    async with (
        serve_asgi(app_with("router", Asked())) as base,
        aiohttp.ClientSession(headers=alice) as http,
    ):
        async with http.get(f"{base}/qr/{NAME}") as page:
            html = await page.text()
        events_url = f"{base}/qr/{NAME}/events"
        async with http.get(events_url) as events:
            data = await EventReader(events).expect("qr")
            async with http.get(png_url(events_url, data["src"])) as png:
                assert png.status == 200
    assert f'data-events="./{NAME}/events"' in html
    assert events.headers["Content-Type"] == "text/event-stream"


def test_the_routes_are_in_openapi(client: WachatClient) -> None:
    """Three GET operations with their media types; the instance name is a path parameter."""
    app = FastAPI()
    app.include_router(qr_router(client, authorize=Asked()), prefix="/qr", tags=["QR"])
    paths = app.openapi()["paths"]
    media = {path: set(op["get"]["responses"]["200"]["content"]) for path, op in paths.items()}
    assert media == {
        "/qr/{instance_name}.png": {"image/png"},
        "/qr/{instance_name}/events": {"text/event-stream"},
        "/qr/{instance_name}": {"text/html"},
    }
    operation = paths["/qr/{instance_name}.png"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"instance_name", "x-user"}
    assert operation["tags"] == ["QR"]


def test_bad_arguments_raise_at_once(client: WachatClient) -> None:
    with pytest.raises(TypeError, match="client must be"):
        qr_router(42, authorize=Asked())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="authorize must be"):
        qr_router(client, authorize=None)  # type: ignore[arg-type]
