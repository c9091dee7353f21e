"""wachat_async.web paths, both frameworks: every path under the prefix answers JSON or a route.

The instance name is one path segment, percent-decoded (``%2F`` is a ``/`` in the name);
anything that is none of the three routes is a JSON 404, a wrong method a JSON 405, and a name
the routes do not pass on (empty, ``.``/``..``, control characters, longer than
``max_name_length``) a JSON 404 after ``authorize``. Requests go out on raw sockets, so no
client normalises ``..`` or re-encodes ``%2F`` on the way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest

from tests._web import (
    EVERY_FRAMEWORK,
    FRAMEWORKS,
    allow_all,
    png_url,
    raw_request,
    router_app,
    serve,
    serve_asgi,
    until,
    watch_tasks,
)
from tests.conftest import KEY, NAME, assert_no_key
from wachat_async import RetryPolicy, WachatClient
from wachat_async.testing import FakeWachatServer
from wachat_async.web import DEFAULT_MAX_NAME_LENGTH, hub_for, route_path

#: Every async test here runs on asyncio's loop and on uvloop (tests/conftest.py).
ON_EVERY_LOOP = True

QR = "/instance/qr/image"
ROUTES = {"png": "/qr/{}.png", "events": "/qr/{}/events", "page": "/qr/{}"}
ROUTE_PARAMS = [pytest.param(route, id=route) for route in ROUTES]
NOT_FOUND_PLAIN = ("text/plain", "text/html")  # what the frameworks would have answered


@pytest.fixture
async def fake() -> AsyncIterator[FakeWachatServer]:
    """A fake server that creates any instance it is asked about; QRs change only on demand."""
    async with FakeWachatServer(api_key=KEY, auto_create=True, qr_rotation=None) as server:
        yield server


@pytest.fixture
async def wachat(fake: FakeWachatServer) -> AsyncIterator[WachatClient]:
    async with WachatClient(
        api_key=KEY, base_url=fake.base_url, retry=RetryPolicy(zero_wait=True)
    ) as client:
        yield client


@pytest.fixture(params=EVERY_FRAMEWORK)
def framework(request: pytest.FixtureRequest) -> str:
    """Every path test runs on aiohttp.web, Starlette and FastAPI's qr_router: each answers
    the same statuses and bodies for the same requests."""
    return str(request.param)


class Recorder:
    """An authorize that lets everything through and remembers the names it was asked about."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, request: object, instance_name: str) -> bool:
        self.names.append(instance_name)
        return True


def assert_json_error(response: Any, status: int, fragment: str, instance: str) -> None:
    """A JSON error body with the documented shape: never the framework's own text."""
    assert response.status == status, (response.status, response.body[:200])
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    payload = json.loads(response.body)
    assert set(payload) == {"error", "instance"}
    assert fragment in payload["error"]
    assert payload["instance"] == instance


# Served: the decoded name reaches authorize and upstream as it is.
SERVED = [
    pytest.param("a%2Fb", "a/b", id="encoded-slash"),
    pytest.param("a%2fb%2F", "a/b/", id="encoded-slash-lowercase-trailing"),
    pytest.param("a%20b", "a b", id="inner-space"),
    pytest.param("%C3%A9t%C3%A9%20%E5%BA%97", "\u00e9t\u00e9 \u5e97", id="unicode"),
    pytest.param("%F0%9F%93%B1", "\U0001f4f1", id="astral"),
    pytest.param("a%25b", "a%b", id="percent"),
    pytest.param("a..b", "a..b", id="inner-dots"),
    pytest.param("...", "...", id="three-dots"),
    pytest.param("x" * DEFAULT_MAX_NAME_LENGTH, "x" * DEFAULT_MAX_NAME_LENGTH, id="at-the-cap"),
]


@pytest.mark.parametrize(("segment", "name"), SERVED)
@pytest.mark.parametrize("route", ROUTE_PARAMS)
async def test_a_name_is_one_percent_decoded_segment(
    framework: str,
    fake: FakeWachatServer,
    wachat: WachatClient,
    route: str,
    segment: str,
    name: str,
) -> None:
    """``%2F``, spaces, unicode, ``%25`` in one segment: the decoded name is served."""
    recorder = Recorder()
    async with serve(framework, wachat, authorize=recorder) as base:
        response = await raw_request(base, "GET", ROUTES[route].format(segment))
    assert response.status == 200, response.body[:300]
    assert recorder.names == [name]
    if route == "png":
        assert response.body.startswith(b"\x89PNG")
        assert [r.instance_name for r in fake.requests if r.path.endswith(QR)] == [name]
    elif route == "events":
        assert response.body.startswith(b"event: qr\ndata: ")
        data = json.loads(response.body.split(b"data: ", 1)[1])
        assert data["src"] == f"../{quote(name, safe='')}.png?v={data['sha256']}"
        await until(lambda: not watch_tasks(), "the watch ends with its viewer")
    else:
        assert response.headers["content-type"].startswith("text/html")
        assert f'data-events="./{quote(name, safe="")}/events"'.encode() in response.body
        assert fake.request_count() == 0


@pytest.mark.parametrize("name", ["a.png", "x.png.png", "a/b.png", "a.PNG", "plain"])
@pytest.mark.parametrize("route", ROUTE_PARAMS)
async def test_route_path_names_the_route_of_that_instance(
    framework: str, fake: FakeWachatServer, wachat: WachatClient, route: Any, name: str
) -> None:
    """route_path (what the examples link with) reaches *route* of *name*, a name ending in
    ``.png`` too (``/qr/a.png`` is the PNG of ``a``; the page of ``a.png`` is ``a%2Epng``), and
    the page's and the events' own links follow the same rule."""
    recorder = Recorder()
    async with serve(framework, wachat, authorize=recorder) as base:
        response = await raw_request(base, "GET", route_path(name, route))
        if route == "events":
            await until(lambda: not watch_tasks(), "the watch ends with its viewer")
    kind = response.headers["content-type"].split(";")[0]
    assert (response.status, recorder.names) == (200, [name])
    assert kind == {"png": "image/png", "events": "text/event-stream", "page": "text/html"}[route]
    if route == "page":
        events = route_path(name, "events").removeprefix("/qr/")
        assert f'data-events="./{events}"'.encode() in response.body
    if route == "events":
        src = json.loads(response.body.split(b"data: ", 1)[1])["src"]
        assert src.split("?")[0] == "../" + route_path(name, "png").removeprefix("/qr/")


# No route: a 404 without asking authorize (nothing upstream, nothing about an instance).
NO_ROUTE = [
    pytest.param("/qr/a/b.png", "a/b", id="slash-png"),
    pytest.param("/qr/a/b/events", "a/b", id="slash-events"),
    pytest.param("/qr/a/b", "a/b", id="slash-page"),
    pytest.param("/qr/a%2Fb/events/x", "a/b/events/x", id="below-events"),
    pytest.param("/qr/x/events/", "x", id="events-trailing-slash"),
    pytest.param("/qr/x/", "x", id="page-trailing-slash"),
    pytest.param("/qr/x.png/", "x", id="png-trailing-slash"),
    pytest.param("/qr/../x/events/y", "../x/events/y", id="dot-dot-deeper"),
]


@pytest.mark.parametrize(("target", "instance"), NO_ROUTE)
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
async def test_paths_that_are_no_route_are_a_json_404(
    framework: str,
    fake: FakeWachatServer,
    wachat: WachatClient,
    target: str,
    instance: str,
    method: str,
) -> None:
    """A raw ``/`` in the name, a trailing ``/``, a deeper path: JSON 404, whatever the
    method; authorize is not asked and upstream never hears of it."""
    recorder = Recorder()
    async with serve(framework, wachat, authorize=recorder) as base:
        response = await raw_request(base, method, target)
    assert response.status == 404
    assert response.headers["content-type"] == "application/json"
    if method != "HEAD":
        assert_json_error(response, 404, "no such route", instance)
        assert "%2F" in response.json()["error"]  # says how to write a '/'
    assert recorder.names == []
    assert fake.request_count() == 0


# Not passed on: a 404 names the problem, before authorize is asked (it never sees them).
REFUSED_NAMES = [
    pytest.param("", "", "must not be empty", id="empty"),
    pytest.param("%20", " ", "must not be empty or whitespace", id="space"),
    pytest.param("%20%09%20", " \t ", "must not", id="whitespace-and-tab"),
    pytest.param(".", ".", "'.' or '..'", id="dot"),
    pytest.param("..", "..", "'.' or '..'", id="dot-dot"),
    pytest.param("%2E", ".", "'.' or '..'", id="encoded-dot"),
    pytest.param("%2E%2e", "..", "'.' or '..'", id="encoded-dot-dot"),
    pytest.param("a%00b", "a\x00b", "control characters", id="nul"),
    pytest.param("a%0D%0Ab", "a\r\nb", "control characters", id="crlf"),
    pytest.param("a%1Bb", "a\x1bb", "control characters", id="escape"),
    pytest.param("a%7F", "a\x7f", "control characters", id="del"),
    pytest.param("a%C2%85", "a\x85", "control characters", id="c1-next-line"),
    pytest.param("a%ED%A0%80", None, "not percent-encoded UTF-8", id="encoded-surrogate"),
    pytest.param("a%FFb", None, "not percent-encoded UTF-8", id="not-utf8"),
    pytest.param("a%C3", None, "not percent-encoded UTF-8", id="cut-utf8"),
]


@pytest.mark.parametrize(("segment", "name", "fragment"), REFUSED_NAMES)
@pytest.mark.parametrize("route", ROUTE_PARAMS)
async def test_names_the_routes_do_not_pass_on_are_a_json_404(
    framework: str,
    fake: FakeWachatServer,
    wachat: WachatClient,
    route: str,
    segment: str,
    name: str | None,
    fragment: str,
) -> None:
    """Empty, whitespace, ``.``/``..`` (a browser would resolve them), control characters, text
    that is not UTF-8: a JSON 404 on every route and nothing sent upstream. authorize is not
    asked: the application's rule never sees such a name."""
    recorder = Recorder()
    async with serve(framework, wachat, authorize=recorder) as base:
        response = await raw_request(base, "GET", ROUTES[route].format(segment))
    payload = response.json()
    assert response.status == 404
    assert fragment in payload["error"]
    assert recorder.names == []
    if name is not None:
        assert payload["instance"] == name
    assert fake.request_count() == 0
    assert watch_tasks() == []


@pytest.mark.parametrize(
    "segment",
    [
        pytest.param("%FF", id="ff"),
        pytest.param("%ff", id="ff-lower-case-kept"),
        pytest.param("a%FFb%41", id="valid-escapes-kept-too"),
        pytest.param("%C3", id="cut-utf8"),
        pytest.param("%ED%A0%80", id="encoded-surrogate"),
        pytest.param("caf%C3%A9%E9", id="utf8-then-latin1"),
    ],
)
@pytest.mark.parametrize("route", ROUTE_PARAMS)
async def test_a_name_that_does_not_decode_is_shown_as_sent_by_both_frameworks(
    framework: str,
    fake: FakeWachatServer,
    wachat: WachatClient,
    route: str,
    segment: str,
) -> None:
    """The same JSON body on aiohttp and Starlette (each decodes such bytes its own way:
    ``%FF`` kept, or U+FFFD): ``instance`` is the raw segment as sent, escapes and their case
    kept, as docs/web.md's Paths table says."""
    async with serve(framework, wachat, authorize=Recorder()) as base:
        response = await raw_request(base, "GET", ROUTES[route].format(segment))
    assert response.status == 404
    assert response.json() == {
        "error": "the instance name is not percent-encoded UTF-8",
        "instance": segment,
    }
    assert fake.request_count() == 0


@pytest.mark.parametrize(
    ("route", "method", "allow"),
    [
        pytest.param("png", "POST", "GET, HEAD", id="png-post"),
        pytest.param("png", "DELETE", "GET, HEAD", id="png-delete"),
        pytest.param("page", "PUT", "GET, HEAD", id="page-put"),
        pytest.param("page", "OPTIONS", "GET, HEAD", id="page-options"),
        pytest.param("events", "HEAD", "GET, POST", id="events-head"),
        pytest.param("events", "PATCH", "GET, POST", id="events-patch"),
        pytest.param("events", "PROPFIND", "GET, POST", id="events-unknown-method"),
    ],
)
async def test_a_wrong_method_is_a_json_405_with_allow(
    framework: str,
    fake: FakeWachatServer,
    wachat: WachatClient,
    route: str,
    method: str,
    allow: str,
) -> None:
    """Any method a route does not answer: 405 with ``Allow`` and the JSON body (no authorize,
    nothing upstream, no watch). qr_router: any method FastAPI can route; another (PROPFIND)
    gets FastAPI's own 405, as docs/web.md says (still no authorize, nothing upstream)."""
    recorder = Recorder()
    async with serve(framework, wachat, authorize=recorder) as base:
        response = await raw_request(base, method, ROUTES[route].format("a%2Fb"))
    assert response.status == 405
    assert recorder.names == []
    assert fake.request_count() == 0
    if framework == "fastapi-router" and method == "PROPFIND":
        assert response.json() == {"detail": "Method Not Allowed"}  # FastAPI's, not ours
        return
    assert response.headers["allow"] == allow
    assert response.headers["content-type"] == "application/json"
    if method != "HEAD":
        assert_json_error(response, 405, "method not allowed", "a/b")
    assert watch_tasks() == []


# -- the name length cap ------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTE_PARAMS)
@pytest.mark.parametrize(
    ("char", "encoded", "length", "limit"),
    [
        pytest.param("\u00e9", "%C3%A9", DEFAULT_MAX_NAME_LENGTH + 1, None, id="cap-plus-one"),
        pytest.param("x", "x", 8000, None, id="huge"),
        pytest.param("\u5e97", "%E5%BA%97", 11, 10, id="own-cap"),
    ],
)
async def test_names_over_the_cap_are_a_json_404_after_authorize(
    framework: str,
    fake: FakeWachatServer,
    wachat: WachatClient,
    caplog: pytest.LogCaptureFixture,
    route: str,
    char: str,
    encoded: str,
    length: int,
    limit: int | None,
) -> None:
    """Longer than ``max_name_length`` (256 characters by default): 404 naming the length,
    before authorize is asked; the body's ``instance`` is cut to the cap, nothing goes upstream
    and no log line carries the whole name."""
    caplog.set_level(logging.DEBUG)
    name = char * length
    cap = DEFAULT_MAX_NAME_LENGTH if limit is None else limit
    options: dict[str, Any] = {} if limit is None else {"max_name_length": limit}
    recorder = Recorder()
    async with serve(framework, wachat, authorize=recorder, **options) as base:
        response = await raw_request(base, "GET", ROUTES[route].format(encoded * length))
    message = f"too long: {length} characters (at most {cap})"
    assert_json_error(response, 404, message, name[:cap] + "\u2026")
    assert recorder.names == []
    assert fake.request_count() == 0
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("wachat_async")]
    assert all(name not in m for m in ours)  # the frameworks' access logs are theirs


@pytest.mark.parametrize("route", ROUTE_PARAMS)
async def test_a_huge_name_never_reaches_authorize(
    framework: str, fake: FakeWachatServer, wachat: WachatClient, route: str
) -> None:
    """8,000 characters: a 404 before the application's rule runs, the name cut in the body."""
    asked: list[str] = []
    async with serve(framework, wachat, authorize=lambda r, n: asked.append(n)) as base:
        response = await raw_request(base, "GET", ROUTES[route].format("y" * 8000))
    message = f"too long: 8000 characters (at most {DEFAULT_MAX_NAME_LENGTH})"
    assert_json_error(response, 404, message, "y" * DEFAULT_MAX_NAME_LENGTH + "\u2026")
    assert asked == []
    assert fake.request_count() == 0


async def test_logs_of_a_huge_name_are_short(
    framework: str,
    fake: FakeWachatServer,
    wachat: WachatClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every wachat_async.web log line about a long name (an authorize that raises with it,
    an upstream error) shows the name shortened, never whole."""
    caplog.set_level(logging.DEBUG)
    long_name = "z" * 5000

    def explode(request: object, instance_name: str) -> bool:
        raise KeyError(instance_name)  # the exception's text is the whole name

    async with serve(framework, wachat, authorize=explode, max_name_length=10_000) as base:
        response = await raw_request(base, "GET", ROUTES["png"].format(long_name))
    assert response.status == 403
    web_records = [r for r in caplog.records if r.name == "wachat_async.web"]
    assert web_records
    assert "KeyError" in web_records[0].getMessage()
    assert "(5000 characters)" in web_records[0].getMessage()  # the name
    assert "(5002 characters)" in web_records[0].getMessage()  # the exception's text
    assert all(long_name not in r.getMessage() for r in web_records)
    assert all(len(r.getMessage()) < 2000 for r in web_records)
    assert_no_key(caplog.text)


async def test_upstream_error_logs_shorten_the_name(
    framework: str,
    fake: FakeWachatServer,
    wachat: WachatClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An upstream failure for a name at the cap is logged with the name shortened."""
    caplog.set_level(logging.DEBUG)
    name = "w" * DEFAULT_MAX_NAME_LENGTH
    fake.script(name, [404])
    async with serve(framework, wachat) as base:
        response = await raw_request(base, "GET", ROUTES["png"].format(name))
    assert_json_error(response, 404, "no such instance", name)
    messages = [r.getMessage() for r in caplog.records if r.name == "wachat_async.web"]
    assert any(f"({DEFAULT_MAX_NAME_LENGTH} characters)" in m for m in messages), messages
    assert all(name not in m for m in messages)


@pytest.mark.parametrize("framework_name", FRAMEWORKS)
@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(0, ValueError, id="zero"),
        pytest.param(-5, ValueError, id="negative"),
        pytest.param(10.0, TypeError, id="float"),
        pytest.param(True, TypeError, id="bool"),
        pytest.param("256", TypeError, id="str"),
    ],
)
def test_max_name_length_is_checked_when_the_routes_are_built(
    framework_name: str, value: object, error: type[Exception]
) -> None:
    """A bad ``max_name_length`` raises at ``qr_routes()``."""
    if framework_name == "aiohttp":
        from wachat_async.web.aiohttp import qr_routes
    else:
        from wachat_async.web.starlette import qr_routes  # type: ignore[assignment]
    client = WachatClient(api_key=KEY, base_url="http://127.0.0.1:9/api/v1")
    with pytest.raises(error, match="max_name_length"):
        qr_routes(client, authorize=lambda r, n: True, max_name_length=value)  # type: ignore[arg-type]


# -- the prefix and the rest of the application ---------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "ours"),
    [
        pytest.param("POST", "/login", False, id="post-one-segment"),
        pytest.param("DELETE", "/a/events", False, id="delete-events-shape"),
        pytest.param("HEAD", "/a/events", True, id="head-events-is-our-405"),
        pytest.param("GET", "/", False, id="root"),
        pytest.param("GET", "/app/status", False, id="deeper-path"),
        pytest.param("GET", "/a/b/c.png", False, id="deeper-png"),
        pytest.param("GET", "//events", False, id="empty-name-events"),
        pytest.param("GET", "/health", True, id="one-segment-is-a-page"),
        pytest.param("GET", f"/{NAME}.png", True, id="png"),
        pytest.param("GET", "/a%2Fb/events", True, id="encoded-slash-events"),
    ],
)
async def test_an_empty_prefix_leaves_the_rest_of_the_application_alone(
    framework: str,
    fake: FakeWachatServer,
    wachat: WachatClient,
    method: str,
    target: str,
    ours: bool,
) -> None:
    """With ``prefix=""`` the routes take GET and HEAD of ``/{name}``, ``/{name}.png`` and
    ``/{name}/events``; any other path or method is the application's (its own 404/405 here,
    in plain text). ``qr_router`` is meant to be included under a prefix (docs/web.md): at the
    root it takes every path and method of the application's routes included after it, and
    answers them as under a prefix (its routes, or its JSON 404/405)."""
    if framework == "fastapi-router":
        app = router_app(wachat, authorize=allow_all, prefix="")
        app.add_api_route("/{rest:path}", application_route, methods=ROUTABLE)  # after it
        async with serve_asgi(app) as base:
            response = await raw_request(base, method, target)
        assert response.body != APPLICATION
        if not ours:
            assert response.status in (404, 405)
            assert response.headers["content-type"] == "application/json"
            assert set(response.json()) == {"error", "instance"}
            return
    else:
        async with serve(framework, wachat, prefix="") as base:
            response = await raw_request(base, method, target)
    if ours:
        assert response.headers["content-type"] != "text/plain; charset=utf-8"
        assert response.status == (405 if method == "HEAD" else 200)
    else:
        assert response.status in (404, 405)
        assert response.headers["content-type"].startswith(NOT_FOUND_PLAIN)


async def test_routes_mounted_in_a_starlette_mount_and_fastapi_router(
    fake: FakeWachatServer, wachat: WachatClient
) -> None:
    """Under ``Mount`` and FastAPI's ``include_router`` the routes keep their JSON answers and
    ``%2F`` names (``include_router`` rebuilds the route; every method still reaches it)."""
    from fastapi import APIRouter, FastAPI
    from starlette.routing import Mount

    from wachat_async.web.starlette import qr_routes

    app = FastAPI(routes=[Mount("/mounted", routes=qr_routes(wachat, authorize=lambda r, n: True))])
    router = APIRouter(routes=qr_routes(wachat, prefix="/qr", authorize=lambda r, n: True))
    app.include_router(router, prefix="/included")
    async with serve_asgi(app) as base:
        for mount in ("/mounted", "/included"):
            png = await raw_request(base, "GET", f"{mount}/qr/a%2Fb.png")
            assert png.status == 200, (mount, png.body[:200])
            missing = await raw_request(base, "GET", f"{mount}/qr/a/b.png")
            assert_json_error(missing, 404, "no such route", "a/b")
            wrong = await raw_request(base, "POST", f"{mount}/qr/a%2Fb.png")
            assert_json_error(wrong, 405, "method not allowed", "a/b")
            events = await raw_request(base, "GET", f"{mount}/qr/a%2Fb/events")
            data = json.loads(events.body.split(b"data: ", 1)[1])
            assert data["src"] == f"../a%2Fb.png?v={data['sha256']}"
            image = await raw_request(base, "GET", png_url(f"{mount}/qr/a%2Fb/events", data["src"]))
            assert image.status == 200, (mount, image.body[:200])
    assert [r.instance_name for r in fake.requests if r.path.endswith(QR)].count("a/b") >= 2
    await until(lambda: hub_for(wachat).viewers() == {}, "the viewers are gone")


#: Every method a FastAPI route can list, and what the application's own route answers.
ROUTABLE = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
APPLICATION = b"the application's"


def application_route() -> Any:
    from fastapi.responses import PlainTextResponse

    return PlainTextResponse(APPLICATION)


@pytest.mark.parametrize(
    ("method", "target"),
    [("POST", "/login"), ("GET", "/login"), ("GET", "/app/status")],
    ids=["post-login", "get-login", "deeper"],
)
async def test_qr_router_at_the_root_leaves_the_routes_included_before_it_alone(
    fake: FakeWachatServer, wachat: WachatClient, method: str, target: str
) -> None:
    """The application's routes included before a root qr_router answer their paths."""
    from fastapi import FastAPI

    from wachat_async.web.fastapi import qr_router

    app = FastAPI()
    app.add_api_route("/{rest:path}", application_route, methods=ROUTABLE)
    app.include_router(qr_router(wachat, authorize=lambda instance_name: True))
    async with serve_asgi(app) as base:
        response = await raw_request(base, method, target)
    assert (response.status, response.body) == (200, APPLICATION)
    assert fake.request_count() == 0
