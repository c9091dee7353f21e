"""examples/aiohttp_proxy.py and examples/fastapi_proxy.py against the fake Wachat server."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import EXAMPLES, load_example
from wachat_async import QRImage, RetryPolicy, WachatClient
from wachat_async.testing import FakeWachatServer

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
    assert resp.headers["ETag"] == f'"{QRImage.from_png(body, instance_name=OK).sha256}"'
    assert [(r.instance_name, r.auth_via) for r in fake.requests] == [(OK, "bearer")]
    _assert_keyless(str(resp.headers))


async def test_aiohttp_page_shows_keyless_img_tags_and_live_links(client: WachatClient) -> None:
    """The index has one escaped <img src="/qr/NAME.png"> and live-page link per instance."""
    app = aiohttp_proxy.create_app(client, instances=[OK, "a&b <x>"])
    async with TestClient(TestServer(app)) as http:
        resp = await http.get("/")
        page = await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert f'<img src="/qr/{OK}.png"' in page
    assert f'<a href="/qr/{OK}">' in page
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


@pytest.mark.parametrize(
    ("name", "status"),
    [(NOT_BAILEYS, 409), ("t1_nothere_store", 404)],
    ids=["not-baileys", "unknown"],
)
async def test_examples_map_api_errors_to_json(
    aio: TestClient[web.Request, web.Application],
    fast: httpx.AsyncClient,
    name: str,
    status: int,
) -> None:
    """Both examples answer upstream errors with the wachat_async.web JSON body."""
    from_aiohttp = await aio.get(_qr_path(name))
    from_fastapi = await fast.get(_qr_path(name))
    assert from_aiohttp.status == from_fastapi.status_code == status
    assert (await from_aiohttp.json())["instance"] == from_fastapi.json()["instance"] == name


@pytest.mark.parametrize("route", ["{}.png", "{}/events", "{}"], ids=["png", "events", "page"])
async def test_allow_lists_refuse_other_names_without_upstream_call(
    client: WachatClient, fake: FakeWachatServer, route: str
) -> None:
    """A name outside instances= is a 403 on every route and never reaches Wachat."""
    from urllib.parse import quote

    path = "/qr/" + route.format(quote("t1_other00_store"))
    async with TestClient(TestServer(aiohttp_proxy.create_app(client, instances=[OK]))) as http:
        resp = await http.get(path)
        await resp.read()
    settings = fastapi_proxy.Settings(api_key=KEY, base_url=fake.base_url, instances=(OK,))
    app = fastapi_proxy.create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy.test") as http2:
            blocked = await http2.get(path)
    assert (resp.status, blocked.status_code, fake.requests) == (403, 403, [])


async def test_aiohttp_live_page_follows_the_events(
    aio: TestClient[web.Request, web.Application], fake: FakeWachatServer
) -> None:
    """The live page and its event stream are served; the stream says connected once open."""
    page = await aio.get(f"/qr/{OK}")
    assert '<img id="wachat-qr"' in await page.text()
    events = await aio.get(f"/qr/{OK}/events")
    assert (await events.content.readuntil(b"\n\n")).startswith(b"retry: ")
    first = await events.content.readuntil(b"\n\n")
    fake.set_state(OK, "open")
    rest = await events.content.read()
    assert first.startswith(b"event: qr\n")
    assert rest.endswith(b'event: connected\ndata: {"instance":"' + OK.encode() + b'"}\n\n')


async def test_fastapi_qr_route_streams_the_png(
    fast: httpx.AsyncClient, fake: FakeWachatServer
) -> None:
    """The FastAPI route returns the PNG with no-store caching, fetched with Bearer auth."""
    resp = await fast.get(_qr_path(OK))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/png"
    assert resp.headers["cache-control"] == "no-store"
    assert QRImage.from_png(resp.content, instance_name=OK).height > 0
    assert [(r.instance_name, r.auth_via) for r in fake.requests] == [(OK, "bearer")]
    _assert_keyless(str(resp.headers))


async def test_fastapi_page_shows_keyless_img_tags(fake: FakeWachatServer) -> None:
    """The FastAPI index shows the allowed instances with key-less image URLs."""
    settings = fastapi_proxy.Settings(api_key=KEY, base_url=fake.base_url, instances=(OK,))
    app = fastapi_proxy.create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy.test") as http:
            page = await http.get("/")
            live = await http.get(f"/qr/{OK}")
    assert f'<img src="/qr/{OK}.png"' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert '<p id="wachat-status"' in live.text
    assert fake.requests == []
    _assert_keyless(page.text, str(page.headers), live.text)


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
        except TimeoutError:
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


# --- the listening port -----------------------------------------------------------------------


def test_aiohttp_default_port_is_not_the_fake_servers(capsys: pytest.CaptureFixture[str]) -> None:
    """The proxy's default port differs from `python -m wachat_async.testing`'s, so both run."""
    from wachat_async.testing.__main__ import main as fake_server_main

    assert fake_server_main(["--help"]) == 0
    fake_default = re.search(r"--port PORT.*?\(default:? (\d+)", capsys.readouterr().out, re.S)
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
