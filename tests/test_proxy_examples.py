"""examples/aiohttp_proxy.py and examples/fastapi_proxy.py against the fake Wachat server."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import ModuleType
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import EXAMPLES, load_example
from wachat_async import QRImage, RetryPolicy, WachatClient, WachatError, WachatTimeoutError
from wachat_async.testing import FakeWachatServer, Fault

KEY = "wk_test_proxy_S3CRET_4242"
OK = "t1_mq9r2jov_jakarta_store"
NOT_BAILEYS = "t1_cloud001_business"
HOSTILE = "t1_x&apiKey=stolen #1 é"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


aiohttp_proxy = load_example("aiohttp_proxy")
fastapi_proxy = load_example("fastapi_proxy")


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until *condition* holds, polling every few milliseconds."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout=10)


@pytest.fixture
async def fake() -> AsyncIterator[FakeWachatServer]:
    async with FakeWachatServer(api_key=KEY, qr_rotation=None) as server:
        server.add_instance(OK)
        server.add_instance(HOSTILE)
        server.add_instance(NOT_BAILEYS, integration="WHATSAPP-BUSINESS")
        yield server


def _client(fake: FakeWachatServer, **kwargs: Any) -> WachatClient:
    options: dict[str, Any] = {"retry": RetryPolicy().without_waits(), "timeout": 10.0}
    options.update(kwargs)
    return WachatClient(api_key=options.pop("api_key", KEY), base_url=fake.base_url, **options)


@pytest.fixture
async def client(fake: FakeWachatServer) -> AsyncIterator[WachatClient]:
    async with _client(fake) as c:
        yield c


@pytest.fixture
async def aio(client: WachatClient) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = aiohttp_proxy.create_app(client, instances=None)
    async with TestClient(TestServer(app)) as http:
        yield http


@pytest.fixture
async def fast(fake: FakeWachatServer) -> AsyncIterator[httpx.AsyncClient]:
    settings = fastapi_proxy.Settings(
        api_key=KEY, base_url=fake.base_url, retry=RetryPolicy().without_waits()
    )
    app = fastapi_proxy.create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy.test") as http:
            yield http


def _qr_path(name: str) -> str:
    from urllib.parse import quote

    return f"/qr/{quote(name, safe='')}.png"


def _assert_keyless(*texts: str) -> None:
    for text in texts:
        assert KEY not in text
        assert "apiKey" not in text


# --- aiohttp: happy path ----------------------------------------------------------------------


async def test_aiohttp_qr_route_streams_the_png(
    aio: TestClient[web.Request, web.Application], fake: FakeWachatServer
) -> None:
    """The route returns the instance's PNG with no-store caching, fetched with Bearer auth."""
    resp = await aio.get(_qr_path(OK))
    body = await resp.read()
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["Cache-Control"] == "no-store"
    assert QRImage.from_png(body, instance_name=OK).width > 0
    assert [(r.instance_name, r.auth_via) for r in fake.requests] == [(OK, "bearer")]
    _assert_keyless(str(resp.headers))


async def test_aiohttp_page_shows_keyless_img_tags(client: WachatClient) -> None:
    """The page has one escaped <img src="/qr/NAME.png"> per instance and no key anywhere."""
    app = aiohttp_proxy.create_app(client, instances=[OK, "a&b <x>"])
    async with TestClient(TestServer(app)) as http:
        resp = await http.get("/")
        page = await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert f'<img src="/qr/{OK}.png"' in page
    assert '<img src="/qr/a%26b%20%3Cx%3E.png" alt="QR code for a&amp;b &lt;x&gt;"' in page
    assert 'referrerpolicy="no-referrer"' in page
    _assert_keyless(page, str(resp.headers))


async def test_aiohttp_hostile_name_reaches_upstream_verbatim(
    aio: TestClient[web.Request, web.Application], fake: FakeWachatServer
) -> None:
    """A name with &, #, spaces and unicode is one instanceName upstream; no key in the query."""
    resp = await aio.get(_qr_path(HOSTILE))
    await resp.read()
    assert resp.status == 200
    assert [(r.instance_name, r.auth_via) for r in fake.requests] == [(HOSTILE, "bearer")]
    assert dict(fake.requests[0].query) == {"instanceName": HOSTILE}


async def test_aiohttp_transient_502_is_retried_and_served(
    aio: TestClient[web.Request, web.Application], fake: FakeWachatServer
) -> None:
    """One upstream 502 is retried by the client; the browser still gets the image."""
    fake.script(OK, [502])
    resp = await aio.get(_qr_path(OK))
    await resp.read()
    assert (resp.status, fake.request_count(OK)) == (200, 2)


# --- error mapping (both examples) ------------------------------------------------------------

SCRIPTED = [
    pytest.param(OK, [400], 400, id="400-stays-400"),
    pytest.param("t1_nobody01_store", [], 404, id="unknown-instance-404"),
    pytest.param(NOT_BAILEYS, [], 409, id="not-baileys-409"),
    pytest.param(OK, [502] * 10, 502, id="502-after-retries"),
    pytest.param(OK, [504] * 10, 504, id="504-after-retries"),
    pytest.param(OK, [401], 500, id="401-hidden-as-500"),
    pytest.param(OK, [403], 500, id="403-hidden-as-500"),
    pytest.param(OK, [418], 502, id="undocumented-status-502"),
    pytest.param(OK, [Fault(content_type="text/html", body=b"<h1>x</h1>")], 502, id="not-png-502"),
    pytest.param(OK, [Fault(drop=True)] * 10, 502, id="connection-dropped-502"),
]


@pytest.mark.parametrize(("name", "script", "expected"), SCRIPTED)
async def test_aiohttp_maps_api_errors(
    aio: TestClient[web.Request, web.Application],
    fake: FakeWachatServer,
    name: str,
    script: list[int | Fault],
    expected: int,
) -> None:
    """Upstream failures become the documented browser statuses, with no-store and no details."""
    fake.script(name, script)
    resp = await aio.get(_qr_path(name))
    text = await resp.text()
    assert (resp.status, resp.headers["Cache-Control"]) == (expected, "no-store")
    assert resp.headers["Content-Type"].startswith("text/plain")
    _assert_keyless(text, str(resp.headers))
    if expected == 500:
        assert text == "Internal server error."


@pytest.mark.parametrize(("name", "script", "expected"), SCRIPTED)
async def test_fastapi_maps_api_errors(
    fast: httpx.AsyncClient,
    fake: FakeWachatServer,
    name: str,
    script: list[int | Fault],
    expected: int,
) -> None:
    """The FastAPI example maps upstream failures exactly like the aiohttp one."""
    fake.script(name, script)
    resp = await fast.get(_qr_path(name))
    assert (resp.status_code, resp.headers["cache-control"]) == (expected, "no-store")
    _assert_keyless(resp.text, str(resp.headers))
    if expected == 500:
        assert resp.text == "Internal server error."


async def test_aiohttp_wrong_key_is_a_bare_500_logged_without_key(
    fake: FakeWachatServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A real 401 becomes a bare 500; the server-side log explains it without any key."""
    async with (
        _client(fake, api_key="wk_wrong_key_0000") as client,
        TestClient(TestServer(aiohttp_proxy.create_app(client))) as http,
    ):
        with caplog.at_level(logging.WARNING, logger="wachat_proxy"):
            resp = await http.get(_qr_path(OK))
            text = await resp.text()
    assert (resp.status, text) == (500, "Internal server error.")
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "401" in caplog.text
    assert "wk_wrong_key_0000" not in caplog.text


async def test_aiohttp_client_timeout_is_504(fake: FakeWachatServer) -> None:
    """When Wachat hangs past the client's timeout, the browser gets 504."""
    fake.script(OK, [Fault(hang=True)] * 10)
    async with (
        _client(fake, timeout=0.05, retry=RetryPolicy.disabled()) as client,
        TestClient(TestServer(aiohttp_proxy.create_app(client))) as http,
    ):
        resp = await http.get(_qr_path(OK))
        await resp.read()
    assert resp.status == 504


async def test_aiohttp_restricted_subscription_is_a_bare_500(fake: FakeWachatServer) -> None:
    """A key whose plan forbids QR codes (real 403) gives the browser a 500 without details."""
    fake.add_api_key("wk_restricted_0001", restricted=True)
    fake.add_instance("t1_restrict_store", api_key="wk_restricted_0001")
    async with (
        _client(fake, api_key="wk_restricted_0001") as client,
        TestClient(TestServer(aiohttp_proxy.create_app(client))) as http,
    ):
        resp = await http.get(_qr_path("t1_restrict_store"))
        text = await resp.text()
    assert (resp.status, text) == (500, "Internal server error.")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(WachatTimeoutError("deadline"), 504, id="client-timeout"),
        pytest.param(ValueError("bad name"), 400, id="invalid-name"),
        pytest.param(WachatError("anything else"), 502, id="other-wachat-error"),
    ],
)
@pytest.mark.parametrize("example", [aiohttp_proxy, fastapi_proxy], ids=["aiohttp", "fastapi"])
def test_error_status_table(example: ModuleType, exc: Exception, expected: int) -> None:
    """The pure mapping agrees between both examples for errors that are hard to provoke."""
    assert example.error_status(exc)[0] == expected


# --- allow-list and input checks ---------------------------------------------------------------


async def test_aiohttp_allow_list_blocks_other_names_without_upstream_call(
    client: WachatClient, fake: FakeWachatServer
) -> None:
    """With instances=..., other names are 404 and never reach Wachat."""
    app = aiohttp_proxy.create_app(client, instances=[OK])
    async with TestClient(TestServer(app)) as http:
        resp = await http.get(_qr_path(NOT_BAILEYS))
        await resp.read()
    assert (resp.status, fake.requests) == (404, [])


@pytest.mark.parametrize(
    "raw_path",
    [
        pytest.param("/qr/%20%20.png", id="whitespace-name"),
        pytest.param("/qr/t1%0Ax.png", id="newline-in-name"),
        pytest.param("/qr/t1%00x.png", id="null-byte-in-name"),
    ],
)
async def test_aiohttp_invalid_names_are_400_without_upstream_call(
    aio: TestClient[web.Request, web.Application], fake: FakeWachatServer, raw_path: str
) -> None:
    """Names the client refuses become 400 and never reach Wachat."""
    resp = await aio.get(raw_path)
    await resp.read()
    assert (resp.status, fake.requests) == (400, [])


@pytest.mark.parametrize(
    "raw_path",
    [
        pytest.param("/qr/%20%20.png", id="whitespace-name"),
        pytest.param("/qr/t1%0Ax.png", id="newline-in-name"),
    ],
)
async def test_fastapi_invalid_names_are_400_without_upstream_call(
    fast: httpx.AsyncClient, fake: FakeWachatServer, raw_path: str
) -> None:
    """The FastAPI example refuses unusable names before calling Wachat."""
    resp = await fast.get(raw_path)
    assert (resp.status_code, fake.requests) == (400, [])


# --- mid-body failure and cancellation --------------------------------------------------------


async def test_aiohttp_truncated_upstream_is_not_passed_off_as_complete(
    aio: TestClient[web.Request, web.Application], fake: FakeWachatServer
) -> None:
    """An upstream break after the headers went out drops the connection (no clean ending)."""
    fake.script(OK, [Fault(truncate=True)])
    resp = await aio.get(_qr_path(OK))
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def test_aiohttp_browser_leaving_cancels_the_upstream_fetch(
    client: WachatClient, fake: FakeWachatServer
) -> None:
    """Closing the browser connection while Wachat hangs cancels the proxy handler."""
    fake.script(OK, [Fault(hang=True)])
    outcome: list[str] = []

    @web.middleware
    async def spy(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    app = aiohttp_proxy.create_app(client)
    app.middlewares.append(spy)
    async with TestServer(app) as server:  # handler_cancellation=True, like main()
        _reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(f"GET {_qr_path(OK)} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
        await writer.drain()
        await _until(lambda: fake.request_count(OK) == 1)
        writer.close()
        await writer.wait_closed()
        await _until(lambda: bool(outcome))
    assert outcome == ["cancelled"]


async def test_fastapi_browser_leaving_cancels_the_upstream_fetch(
    fake: FakeWachatServer,
) -> None:
    """An http.disconnect while Wachat hangs ends the ASGI call without sending a response."""
    fake.script(OK, [Fault(hang=True)])
    app = fastapi_proxy.create_app(fastapi_proxy.Settings(api_key=KEY, base_url=fake.base_url))
    disconnect = asyncio.Event()
    sent: list[dict[str, Any]] = []
    requested: list[bool] = []

    async def receive() -> dict[str, Any]:
        if not requested:
            requested.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/qr/{OK}.png",
        "raw_path": f"/qr/{OK}.png".encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"proxy.test")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    async with app.router.lifespan_context(app):
        call = asyncio.ensure_future(app(scope, receive, send))
        await _until(lambda: fake.request_count(OK) == 1)
        assert not call.done()
        disconnect.set()
        await asyncio.wait_for(call, timeout=10)
    assert sent == []


# --- FastAPI: happy path ----------------------------------------------------------------------


async def test_fastapi_qr_route_streams_the_png(
    fast: httpx.AsyncClient, fake: FakeWachatServer
) -> None:
    """The FastAPI route returns the PNG with no-store caching, fetched with Bearer auth."""
    resp = await fast.get(_qr_path(OK))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/png"
    assert resp.headers["cache-control"] == "no-store"
    assert "content-length" not in resp.headers or resp.headers["content-length"] != "0"
    assert resp.content.startswith(PNG_SIGNATURE)
    assert QRImage.from_png(resp.content, instance_name=OK).height > 0
    assert [(r.instance_name, r.auth_via) for r in fake.requests] == [(OK, "bearer")]
    _assert_keyless(str(resp.headers))


async def test_fastapi_page_shows_keyless_img_tags(fake: FakeWachatServer) -> None:
    """The FastAPI page lists the allowed instances as <img src="/qr/NAME.png"> without a key."""
    settings = fastapi_proxy.Settings(api_key=KEY, base_url=fake.base_url, instances=(OK,))
    app = fastapi_proxy.create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy.test") as http:
            page = await http.get("/")
            blocked = await http.get(_qr_path(NOT_BAILEYS))
    assert f'<img src="/qr/{OK}.png"' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert blocked.status_code == 404
    assert fake.requests == []
    _assert_keyless(page.text, str(page.headers))


async def test_fastapi_settings_repr_hides_the_key() -> None:
    """Settings holds the key but never shows it."""
    assert KEY not in repr(fastapi_proxy.Settings(api_key=KEY))


async def test_fastapi_demo_mode_serves_from_the_embedded_fake_server() -> None:
    """Settings(demo=True) starts a fake server in the lifespan; its QR comes through."""
    settings = fastapi_proxy.Settings(demo=True, instances=(fastapi_proxy.DEMO_INSTANCE,))
    app = fastapi_proxy.create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy.test") as http:
            resp = await http.get(_qr_path(fastapi_proxy.DEMO_INSTANCE))
    assert (resp.status_code, resp.content[:8]) == (200, PNG_SIGNATURE)


# --- runnable as scripts ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def script_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WACHAT_API_KEY", "WACHAT_BASE_URL")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _run_script(
    args: list[str], env: dict[str, str], ready: re.Pattern[str]
) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen: list[str] = []

    async def wait_ready() -> str:
        assert proc.stdout is not None
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError("script exited early:\n" + "".join(seen))
            seen.append(line)
            if match := ready.search(line):
                return match.group(1)

    try:
        url = await asyncio.wait_for(wait_ready(), timeout=60)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, url


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


async def test_aiohttp_example_runs_as_a_script_with_the_fake_server(
    script_env: dict[str, str],
) -> None:
    """`python examples/aiohttp_proxy.py` without WACHAT_API_KEY serves a demo QR."""
    proc, url = await _run_script(
        [str(EXAMPLES / "aiohttp_proxy.py"), "--port", "0"],
        script_env,
        re.compile(r"Open (http://\S+/)"),
    )
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as resp:
                page = await resp.text()
            src = re.search(r'<img src="([^"]+)"', page)
            assert src is not None
            async with http.get(url.rstrip("/") + src.group(1)) as resp:
                body = await resp.read()
    finally:
        await _stop(proc)
    assert body.startswith(PNG_SIGNATURE)


async def test_fastapi_example_runs_as_a_script_with_the_fake_server(
    script_env: dict[str, str],
) -> None:
    """`python examples/fastapi_proxy.py` without WACHAT_API_KEY serves a demo QR (uvicorn)."""
    pytest.importorskip("uvicorn", reason="the FastAPI example runs under uvicorn")
    port = _free_port()
    proc, _ = await _run_script(
        [str(EXAMPLES / "fastapi_proxy.py"), "--port", str(port)],
        script_env,
        re.compile(r"Uvicorn running on (http://\S+)"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/") as resp:
                page = await resp.text()
            src = re.search(r'<img src="([^"]+)"', page)
            assert src is not None
            async with http.get(url + src.group(1)) as resp:
                body = await resp.read()
    finally:
        await _stop(proc)
    assert body.startswith(PNG_SIGNATURE)


async def test_fastapi_truncated_upstream_fails_the_asgi_call(
    fast: httpx.AsyncClient, fake: FakeWachatServer
) -> None:
    """A mid-body upstream failure escapes the ASGI app, so the server drops the connection."""
    fake.script(OK, [Fault(truncate=True)])
    with pytest.raises(WachatError):
        await fast.get(_qr_path(OK))


# --- the listening port -----------------------------------------------------------------------


def test_aiohttp_default_port_is_not_the_fake_servers(capsys: pytest.CaptureFixture[str]) -> None:
    """The proxy's default port differs from `python -m wachat_async.testing`'s, so both run."""
    from wachat_async.testing.__main__ import main as fake_server_main

    assert fake_server_main(["--help"]) == 0
    fake_default = re.search(r"--port PORT.*?\(default (\d+)", capsys.readouterr().out, re.S)
    assert fake_default is not None
    assert int(fake_default.group(1)) != aiohttp_proxy.DEFAULT_PORT
    assert aiohttp_proxy.DEFAULT_PORT == 8081


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held by a real listening socket for the test's duration."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("api_key", [None, KEY], ids=["demo-mode", "with-api-key"])
async def test_aiohttp_example_taken_port_is_a_one_line_error(
    script_env: dict[str, str], taken_port: int, api_key: str | None
) -> None:
    """A port already in use: exit 1 and one line on stderr naming it, no traceback, no key."""
    if api_key is not None:
        script_env["WACHAT_API_KEY"] = api_key
        script_env["WACHAT_BASE_URL"] = "http://127.0.0.1:9/api/v1"  # never contacted
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "aiohttp_proxy.py"),
        "--port",
        str(taken_port),
        env=script_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 1
    assert err.decode() == (
        f"aiohttp_proxy.py: error: cannot listen on 127.0.0.1:{taken_port}: Address already in"
        " use (another program uses it: choose a port with --port)\n"
    )
    assert "Traceback" not in out.decode()
    _assert_keyless(out.decode(), err.decode())


async def test_fastapi_example_taken_port_exits_nonzero_without_traceback(
    script_env: dict[str, str], taken_port: int
) -> None:
    """Under uvicorn a port in use is uvicorn's one ERROR line and a non-zero exit."""
    pytest.importorskip("uvicorn", reason="the FastAPI example runs under uvicorn")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "fastapi_proxy.py"),
        "--port",
        str(taken_port),
        env=script_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = out.decode()
    assert proc.returncode not in (0, None)
    errors = [line for line in text.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1
    assert str(taken_port) in errors[0]
    assert "address already in use" in errors[0]
    assert "Traceback" not in text
