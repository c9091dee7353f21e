"""wachat_async.web routes, both frameworks: PNG proxy, ETag/304, error JSON, authorize, page."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests._web import (
    EVERY_FRAMEWORK,
    FRAMEWORKS,
    EventReader,
    png_url,
    raw_request,
    serve,
    until,
    watch_tasks,
)
from tests.conftest import KEY, NAME, assert_no_key
from wachat_async import RetryBudget, RetryPolicy, WachatClient
from wachat_async.testing import FakeWachatServer, Fault
from wachat_async.web import error_status

#: Every async test here runs on asyncio's loop and on uvloop (tests/conftest.py).
ON_EVERY_LOOP = True

QR = "/instance/qr/image"

REFUSED_ACCESS = "this QR code cannot be shown right now (the service refused the app's access)"


@pytest.fixture
async def still() -> AsyncIterator[FakeWachatServer]:
    """A fake server whose QR changes only when a test rotates it."""
    async with FakeWachatServer(api_key=KEY, qr_rotation=None) as fake:
        fake.add_instance(NAME)
        yield fake


@pytest.fixture
async def wachat(still: FakeWachatServer) -> AsyncIterator[WachatClient]:
    async with WachatClient(
        api_key=KEY, base_url=still.base_url, retry=RetryPolicy(zero_wait=True)
    ) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(params=EVERY_FRAMEWORK)
def every_framework(request: pytest.FixtureRequest) -> str:
    """aiohttp.web, Starlette and FastAPI's qr_router: they answer alike."""
    return str(request.param)


def assert_clean(response: aiohttp.ClientResponse, body: bytes) -> None:
    """Neither the headers nor the body of *response* carry the key."""
    assert_no_key(body.decode("latin-1"), *response.headers.values(), response.url)


# -- the PNG route ------------------------------------------------------------------------------


async def test_png_route_serves_the_qr_with_etag_and_no_store(
    framework: str, still: FakeWachatServer, wachat: WachatClient, http: aiohttp.ClientSession
) -> None:
    """GET {prefix}/{name}.png is the upstream PNG, ETag = its SHA-256 (quoted), no-store."""
    expected = await wachat.get_qr_image(NAME)
    async with (
        serve(framework, wachat, prefix="/qr") as base,
        http.get(f"{base}/qr/{NAME}.png") as response,
    ):
        body = await response.read()
    assert response.status == 200
    assert body == expected.data
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["ETag"] == f'"{expected.sha256}"'
    assert response.headers["Cache-Control"] == "no-store"
    assert still.requests[-1].auth_via == "bearer"
    assert_clean(response, body)


@pytest.mark.parametrize("method", ["HEAD", "PUT", "DELETE"])
async def test_events_route_answers_only_get_and_post(
    framework: str,
    still: FakeWachatServer,
    wachat: WachatClient,
    http: aiohttp.ClientSession,
    method: str,
) -> None:
    """Any method but GET and POST (a restart) on {prefix}/{name}/events is a 405 with
    Allow, and never reaches upstream."""
    async with serve(framework, wachat, prefix="/qr") as base:
        before = len(still.requests)
        async with http.request(method, f"{base}/qr/{NAME}/events") as response:
            await response.read()
    assert response.status == 405
    assert response.headers["Allow"] == "GET, POST"
    assert len(still.requests) == before


@pytest.mark.parametrize(
    ("header", "status"),
    [
        pytest.param('"{sha}"', 304, id="exact"),
        pytest.param('W/"{sha}"', 304, id="weak"),
        pytest.param('"other", "{sha}"', 304, id="in-a-list"),
        pytest.param("*", 304, id="star"),
        pytest.param('"other"', 200, id="other-tag"),
        pytest.param("{sha}", 200, id="unquoted"),
        pytest.param("", 200, id="empty"),
        pytest.param('W/"a", "{sha}"', 304, id="weak-then-ours-in-a-list"),
        pytest.param('W/"a", W/"{sha}"', 304, id="weak-list"),
        pytest.param('"a","{sha}"', 304, id="list-without-spaces"),
        pytest.param(' ,, "{sha}" ,', 304, id="list-with-empty-elements"),
        pytest.param('"a,b", "{sha}"', 304, id="comma-inside-a-tag"),
        pytest.param('"a", "b"', 200, id="list-without-ours"),
        pytest.param(" * ", 304, id="star-with-spaces"),
        pytest.param('*, "a"', 200, id="star-in-a-list-is-malformed"),
        pytest.param('w/"{sha}"', 200, id="lowercase-weak-is-malformed"),
        pytest.param('W/ "{sha}"', 200, id="space-after-weak-is-malformed"),
        pytest.param('"{sha}', 200, id="unterminated"),
        pytest.param('junk, "{sha}"', 200, id="ours-after-junk"),
        pytest.param('"{sha}" junk', 304, id="ours-before-junk"),
        pytest.param('"{sha}x"', 200, id="longer-tag"),
        pytest.param('""', 200, id="empty-tag"),
    ],
)
async def test_png_route_answers_304_on_a_matching_if_none_match(
    framework: str, wachat: WachatClient, http: aiohttp.ClientSession, header: str, status: int
) -> None:
    """If-None-Match naming the current ETag (weak comparison) gets 304 with the ETag."""
    sha = (await wachat.get_qr_image(NAME)).sha256
    headers = {"If-None-Match": header.format(sha=sha)}
    async with (
        serve(framework, wachat) as base,
        http.get(f"{base}/qr/{NAME}.png", headers=headers) as response,
    ):
        body = await response.read()
    assert response.status == status
    assert response.headers["ETag"] == f'"{sha}"'
    assert response.headers["Cache-Control"] == "no-store"
    assert (body == b"") is (status == 304)


async def test_if_none_match_on_several_header_lines_is_one_list(
    framework: str, wachat: WachatClient
) -> None:
    """Two ``If-None-Match`` lines are one list (RFC 9110 5.3): ours on the second is a 304."""
    sha = (await wachat.get_qr_image(NAME)).sha256
    async with serve(framework, wachat) as base:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET /qr/{NAME}.png HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f'If-None-Match: "other"\r\nIf-None-Match: W/"{sha}"\r\n\r\n'.encode()
        )
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 304 ")


@pytest.mark.parametrize(
    ("route", "status", "content_type"),
    [
        pytest.param("/qr/{}.png", 200, "image/png", id="png"),
        pytest.param("/qr/{}", 200, "text/html; charset=utf-8", id="page"),
        pytest.param("/qr/{}/events", 405, "application/json", id="events"),
    ],
)
async def test_head_on_every_route(
    every_framework: str,
    still: FakeWachatServer,
    wachat: WachatClient,
    route: str,
    status: int,
    content_type: str,
) -> None:
    """HEAD gets GET's status and headers without a body (the PNG's ETag and length, the
    page's CSP); on the event stream, which has no head, a JSON 405 that starts no watch (on
    every framework, qr_router too)."""
    async with serve(every_framework, wachat) as base:
        get = await raw_request(base, "GET", route.format(NAME)) if status == 200 else None
        before = still.request_count(NAME, path=QR)
        head = await raw_request(base, "HEAD", route.format(NAME))
        after = still.request_count(NAME, path=QR)
    assert head.status == status
    assert head.body == b""
    assert head.headers["content-type"] == content_type
    assert head.headers["cache-control"] == "no-store"
    if get is not None:
        assert head.headers["content-length"] == str(len(get.body))
        for field in ("etag", "content-security-policy", "x-content-type-options"):
            assert head.headers.get(field) == get.headers.get(field)
    if route.endswith(".png"):
        assert after == before + 1  # the ETag is the current image's: HEAD asks upstream too
    else:
        assert after == before
        assert watch_tasks() == []
    if status == 405:
        assert head.headers["allow"] == "GET, POST"


async def test_head_with_a_matching_etag_is_304(framework: str, wachat: WachatClient) -> None:
    """HEAD honours If-None-Match as GET does."""
    sha = (await wachat.get_qr_image(NAME)).sha256
    async with serve(framework, wachat) as base:
        head = await raw_request(base, "HEAD", f"/qr/{NAME}.png", {"If-None-Match": f'W/"{sha}"'})
    assert head.status == 304
    assert head.headers["etag"] == f'"{sha}"'


UPSTREAM_ERRORS = [
    pytest.param([400], 404, "no such instance", id="400"),
    pytest.param([404], 404, "no such instance", id="404"),
    pytest.param([409], 409, "this instance has no QR code", id="409"),
    pytest.param([502] * 4, 502, "the QR code service failed", id="502"),
    pytest.param([504] * 4, 502, "the QR code service failed", id="504"),
    pytest.param([401], 502, "the service refused the app", id="401-our-key"),
    pytest.param([403], 502, "the service refused the app", id="403-our-plan"),
    pytest.param([418], 502, "the QR code service failed", id="undocumented"),
    pytest.param([429], 503, "overloaded", id="429"),
    pytest.param(
        [Fault(body=b"<html>not a png</html>", content_type="image/png")],
        502,
        "the QR code service failed",
        id="invalid-image",
    ),
    pytest.param([Fault(truncate=True)] * 4, 502, "the QR code service failed", id="truncated"),
]


@pytest.mark.parametrize(("script", "status", "message"), UPSTREAM_ERRORS)
async def test_png_route_maps_upstream_errors_to_json(
    framework: str,
    still: FakeWachatServer,
    wachat: WachatClient,
    http: aiohttp.ClientSession,
    script: list[Any],
    status: int,
    message: str,
) -> None:
    """Each upstream failure becomes its status with {"error", "instance"}: never 500, no key."""
    still.script(NAME, script)
    async with serve(framework, wachat) as base, http.get(f"{base}/qr/{NAME}.png") as response:
        body = await response.read()
    assert response.status == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    payload = json.loads(body)
    assert set(payload) == {"error", "instance"}
    assert payload["instance"] == NAME
    assert message in payload["error"]
    assert_clean(response, body)


async def test_client_timeout_is_503(
    framework: str, still: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """Wachat hanging past the client's timeout answers 503 (WachatTimeoutError, not OSError)."""
    still.script(NAME, [Fault(hang=True)])
    async with (
        WachatClient(
            api_key=KEY, base_url=still.base_url, timeout=0.05, retry=RetryPolicy.disabled()
        ) as client,
        serve(framework, client) as base,
        http.get(f"{base}/qr/{NAME}.png") as response,
    ):
        payload = await response.json()
    assert response.status == 503
    assert payload == {"error": "the QR code service timed out; try again", "instance": NAME}


async def test_retry_budget_exhausted_is_503(
    framework: str, still: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """A 502 that the retry budget refuses to retry answers 503 (upstream overloaded)."""
    still.script(NAME, [502, 502])
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.0)
    async with (
        WachatClient(
            api_key=KEY,
            base_url=still.base_url,
            retry=RetryPolicy(zero_wait=True),
            retry_budget=budget,
        ) as client,
        serve(framework, client) as base,
        http.get(f"{base}/qr/{NAME}.png") as response,
    ):
        payload = await response.json()
    assert response.status == 503
    assert "overloaded" in payload["error"]
    assert still.request_count(NAME) == 1


async def test_connection_refused_upstream_is_502(
    framework: str, http: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    """Nothing listening upstream is a 502 JSON answer, not a 500."""
    async with (
        WachatClient(
            api_key=KEY,
            base_url=f"http://127.0.0.1:{unused_tcp_port}/api/v1",
            retry=RetryPolicy.disabled(),
        ) as client,
        serve(framework, client) as base,
        http.get(f"{base}/qr/{NAME}.png") as response,
    ):
        payload = await response.json()
    assert response.status == 502
    assert payload["instance"] == NAME


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "raw_name",
    [
        pytest.param("%20%20", id="whitespace"),
        pytest.param("a%09b", id="tab"),
        pytest.param("a%0Db", id="cr"),
        pytest.param("a%7Fb", id="del"),
        pytest.param("a%C2%85b", id="c1-control"),
    ],
)
@pytest.mark.parametrize("route", ["{}.png", "{}/events", "{}"], ids=["png", "events", "page"])
async def test_invalid_names_are_404_json_without_an_upstream_call(
    framework: str,
    still: FakeWachatServer,
    wachat: WachatClient,
    http: aiohttp.ClientSession,
    raw_name: str,
    route: str,
) -> None:
    """A name the client would refuse is a 404 JSON answer naming the problem; nothing is sent."""
    async with (
        serve(framework, wachat) as base,
        http.get(f"{base}/qr/" + route.format(raw_name)) as response,
    ):
        body = await response.read()
    assert response.status == 404
    payload = json.loads(body)
    assert "instance_name must" in payload["error"]
    assert set(payload) == {"error", "instance"}
    assert still.request_count() == 0


def test_error_status_table_is_never_500() -> None:
    """The documented table: upstream statuses, timeouts and bugs never map to 500."""
    from wachat_async import (
        DeadlineExceededError,
        InvalidImageError,
        WachatConnectionError,
        WachatTimeoutError,
    )

    cases = {
        WachatTimeoutError("slow"): 503,
        DeadlineExceededError("late", deadline=1.0): 503,
        WachatConnectionError("reset"): 502,
        InvalidImageError("no"): 502,
        RuntimeError("a bug"): 502,
    }
    assert {type(e).__name__: error_status(e)[0] for e in cases} == {
        type(e).__name__: s for e, s in cases.items()
    }


# -- authorize ------------------------------------------------------------------------------------


ROUTES = [
    pytest.param("/qr/{}.png", id="png"),
    pytest.param("/qr/{}/events", id="events"),
    pytest.param("/qr/{}", id="page"),
]


def refuse(request: object, instance_name: str) -> bool:
    return False


async def refuse_async(request: object, instance_name: str) -> bool:
    return False


def explode(request: object, instance_name: str) -> bool:
    raise RuntimeError(f"rule broke for {instance_name}")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "rule",
    [
        pytest.param(refuse, id="sync-false"),
        pytest.param(refuse_async, id="async-false"),
        pytest.param(explode, id="raises"),
        pytest.param(lambda r, n: None, id="none"),
        pytest.param(lambda r, n: "yes", id="truthy-str"),
        pytest.param(lambda r, n: 1, id="truthy-int"),
    ],
)
async def test_refusal_is_403_json_and_upstream_never_hears_of_it(
    framework: str,
    still: FakeWachatServer,
    wachat: WachatClient,
    http: aiohttp.ClientSession,
    route: str,
    rule: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Anything but True from authorize (or an exception in it) is 403 on every route."""
    async with (
        serve(framework, wachat, authorize=rule) as base,
        http.get(base + route.format(NAME)) as response,
    ):
        body = await response.read()
    assert response.status == 403
    assert json.loads(body) == {"error": "forbidden", "instance": NAME}
    assert still.request_count() == 0
    assert watch_tasks() == []
    assert_no_key(caplog.text)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_authorize_gets_the_framework_request_and_the_name_first(
    framework: str,
    still: FakeWachatServer,
    wachat: WachatClient,
    http: aiohttp.ClientSession,
    route: str,
    is_async: bool,
) -> None:
    """authorize(request, name) runs before anything else and True lets the request through."""
    seen: list[tuple[type, str, int]] = []

    def record(request: object, instance_name: str) -> bool:
        seen.append((type(request), instance_name, still.request_count()))
        return True

    async def record_async(request: object, instance_name: str) -> bool:
        return record(request, instance_name)

    async with (
        serve(framework, wachat, authorize=record_async if is_async else record) as base,
        http.get(base + route.format(NAME)) as response,
    ):
        if route.endswith("events"):
            await EventReader(response).expect("qr")
        else:
            await response.read()
    assert response.status == 200
    expected_type: type
    if framework == "aiohttp":
        expected_type = web.Request
    else:
        from starlette.requests import Request

        expected_type = Request
    assert len(seen) == 1
    request_type, name, upstream_before = seen[0]
    assert issubclass(request_type, expected_type)
    assert (name, upstream_before) == (NAME, 0)


async def test_framework_http_exceptions_from_authorize_go_out_as_they_are(
    framework: str, still: FakeWachatServer, wachat: WachatClient, http: aiohttp.ClientSession
) -> None:
    """authorize may redirect to a login page with the framework's own HTTP exception."""

    def to_login(request: object, instance_name: str) -> bool:
        if framework == "aiohttp":
            raise web.HTTPFound("/login")
        from starlette.exceptions import HTTPException

        raise HTTPException(status_code=302, headers={"Location": "/login"})

    async with (
        serve(framework, wachat, authorize=to_login) as base,
        http.get(f"{base}/qr/{NAME}.png", allow_redirects=False) as response,
    ):
        await response.read()
    assert response.status == 302
    assert response.headers["Location"] == "/login"
    assert still.request_count() == 0


@pytest.mark.parametrize("framework_name", FRAMEWORKS)
def test_authorize_is_a_required_keyword(framework_name: str) -> None:
    """qr_routes without authorize (or with a non-callable one) refuses to build."""
    qr_routes = _routes_factory(framework_name)
    client = WachatClient(api_key=KEY, base_url="http://127.0.0.1:9/api/v1")
    with pytest.raises(TypeError, match="authorize"):
        qr_routes(client)
    with pytest.raises(TypeError, match="authorize"):
        qr_routes(client, authorize=None)
    with pytest.raises(TypeError):
        qr_routes(client, "/qr", refuse)  # keyword only


def _routes_factory(framework: str) -> Any:
    if framework == "aiohttp":
        from wachat_async.web.aiohttp import qr_routes

        return qr_routes
    from wachat_async.web.starlette import qr_routes as starlette_routes

    return starlette_routes


@pytest.mark.parametrize("framework_name", FRAMEWORKS)
@pytest.mark.parametrize(
    ("options", "error"),
    [
        pytest.param({"prefix": "qr"}, ValueError, id="prefix-without-slash"),
        pytest.param({"prefix": "/q{x}"}, ValueError, id="prefix-with-braces"),
        pytest.param({"prefix": 5}, TypeError, id="prefix-not-str"),
        pytest.param({"interval": 0}, ValueError, id="zero-interval"),
        pytest.param({"interval": float("nan")}, ValueError, id="nan-interval"),
        pytest.param({"heartbeat": -1}, ValueError, id="negative-heartbeat"),
        pytest.param({"heartbeat": "15"}, TypeError, id="str-heartbeat"),
        pytest.param({"interval": True}, TypeError, id="bool-interval"),
        pytest.param({"max_age": 0}, ValueError, id="zero-max-age"),
        pytest.param({"max_age": float("inf")}, ValueError, id="inf-max-age"),
        pytest.param({"max_backoff": -1.0}, ValueError, id="negative-max-backoff"),
        pytest.param({"max_backoff": "10"}, TypeError, id="str-max-backoff"),
    ],
)
def test_route_options_are_checked_when_the_routes_are_built(
    framework_name: str, options: dict[str, Any], error: type[Exception]
) -> None:
    """Bad prefix/interval/heartbeat/max_age/max_backoff raise at qr_routes(), not at the
    first request."""
    client = WachatClient(api_key=KEY, base_url="http://127.0.0.1:9/api/v1")
    with pytest.raises(error):
        _routes_factory(framework_name)(client, authorize=refuse, **options)


@pytest.mark.parametrize("prefix", ["", "/", "/deep/er/"], ids=["root", "slash", "nested"])
async def test_any_prefix_serves_all_three_routes(
    framework: str, wachat: WachatClient, http: aiohttp.ClientSession, prefix: str
) -> None:
    """The routes live under the prefix (a trailing slash is dropped); src is relative."""
    base_path = prefix.rstrip("/")
    async with serve(framework, wachat, prefix=prefix) as base:
        async with http.get(f"{base}{base_path}/{NAME}.png") as png:
            assert png.status == 200
        async with http.get(f"{base}{base_path}/{NAME}") as page:
            assert page.status == 200
        async with http.get(f"{base}{base_path}/{NAME}/events") as events:
            data = await EventReader(events).expect("qr")
        async with http.get(png_url(str(events.url), data["src"])) as png:
            assert png.status == 200
    assert data["src"] == f"../{NAME}.png?v={data['sha256']}"


# -- the page -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [NAME, 'x"><b onmouseover=alert(1)>', "a:b c&d"],
    ids=["plain", "markup", "scheme-like"],
)
async def test_page_is_self_contained_and_keyless(
    framework: str,
    still: FakeWachatServer,
    wachat: WachatClient,
    http: aiohttp.ClientSession,
    name: str,
) -> None:
    """The page has the img and status elements, one inline script, a CSP, escapes the name."""
    from urllib.parse import quote

    async with (
        serve(framework, wachat) as base,
        http.get(f"{base}/qr/{quote(name, safe='')}") as response,
    ):
        text = await response.text()
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Cache-Control"] == "no-store"
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "'unsafe-inline'" not in csp
    assert '<img id="wachat-qr"' in text
    assert '<p id="wachat-status"' in text
    assert "<script src" not in text
    assert text.count("<script>") == 1
    assert "http://" not in text.replace("http-equiv", "")
    assert "https://" not in text
    assert "<b onmouseover" not in text
    assert_no_key(text, *response.headers.values())
    assert still.request_count() == 0  # the page itself never calls upstream


# -- logs -------------------------------------------------------------------------------------


async def test_no_key_in_any_log_record(
    framework: str,
    still: FakeWachatServer,
    wachat: WachatClient,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Errors on every route are logged by class and status only: never with the key."""
    caplog.set_level(logging.DEBUG)
    still.script(NAME, [401, 401])
    async with serve(framework, wachat) as base:
        async with http.get(f"{base}/qr/{NAME}.png") as response:
            assert response.status == 502
        async with http.get(f"{base}/qr/{NAME}/events") as response:
            events = await EventReader(response).rest()
    assert events == [
        (
            "failed",
            {"error": REFUSED_ACCESS, "instance": NAME, "status": 502},
        )
    ]
    assert "try again" not in REFUSED_ACCESS
    assert any(r.name == "wachat_async.web" for r in caplog.records)
    assert_no_key(caplog.text, *(r.getMessage() for r in caplog.records))
    await until(lambda: not watch_tasks(), "the watch task ends")


# -- packaging ------------------------------------------------------------------------------------


def test_aiohttp_routes_need_nothing_beyond_the_core() -> None:
    """wachat_async.web.aiohttp imports without Starlette; the Starlette module says what to do."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['starlette'] = None; sys.modules['anyio'] = None\n"
        "from wachat_async.web.aiohttp import qr_routes\n"
        "import wachat_async.web\n"
        "try:\n"
        "    import wachat_async.web.starlette\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "pip install 'wachat-async[web-starlette]'" in out


def test_the_core_never_imports_the_web_package() -> None:
    """Importing wachat_async loads neither wachat_async.web nor any web framework."""
    import subprocess
    import sys

    code = (
        "import sys, wachat_async\n"
        "print(sorted(m for m in sys.modules if m.startswith(('wachat_async.web', 'starlette'))))"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"
