"""A real headless Chromium shows the QR three ways and never sends the key to the proxy.

Chromium is driven over the DevTools protocol with aiohttp's websocket client (no extra
dependencies). Everything is on loopback: the fake Wachat server, the aiohttp proxy example and a
page server. Outside CI the test skips when no Chromium binary is found; with CI=true a missing
Chromium fails the test (``.ci/run`` installs Debian's ``chromium`` package).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import load_example
from wachat_async import ApiKeyExposureWarning, WachatClient, qr_img_tag
from wachat_async.testing import FakeWachatServer

pytestmark = pytest.mark.browser

KEY = "wk_browser_S3CRET_9876"
OK = "t1_mq9r2jov_jakarta_store"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)
STARTUP_LIMIT = 60.0  # seconds; bounds for waits, never asserted on
PAGE_LIMIT = 30.0


aiohttp_proxy = load_example("aiohttp_proxy")


def find_chromium() -> str | None:
    """$CHROMIUM, else the first Chromium/Chrome on PATH, else Debian's /usr/bin/chromium."""
    candidates = [os.environ.get("CHROMIUM", "")]
    candidates += [
        shutil.which(name) or ""
        for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    ]
    candidates.append("/usr/bin/chromium")
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def require_chromium() -> str:
    """The Chromium to use; skip without one, except in CI (CI=true), where that is a failure."""
    path = find_chromium()
    if path is None:
        message = "no Chromium binary found (install Debian's 'chromium' package or set $CHROMIUM)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true, so this is a failure, not a skip")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def chromium_path() -> str:
    return require_chromium()


def test_missing_chromium_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Chromium and without CI=true the browser test is skipped with a reason."""
    monkeypatch.setattr(sys.modules[__name__], "find_chromium", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium binary found"):
        require_chromium()


def test_missing_chromium_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CI=true a missing Chromium is a failure, never a silent skip."""
    monkeypatch.setattr(sys.modules[__name__], "find_chromium", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_chromium()


def test_chromium_override_from_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """$CHROMIUM names the binary to use when it is an executable file."""
    fake_binary = tmp_path / "my-chromium"
    fake_binary.write_text("#!/bin/sh\n")
    fake_binary.chmod(0o755)
    monkeypatch.setenv("CHROMIUM", str(fake_binary))
    assert find_chromium() == str(fake_binary)


# --- a minimal DevTools protocol client -------------------------------------------------------


class CDPError(RuntimeError):
    pass


class CDP:
    """One websocket to the browser; commands are matched to replies by id, events queued."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._event_added = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "id" in data:
                    future = self._pending.pop(data["id"], None)
                    if future is not None and not future.done():
                        future.set_result(data)
                else:
                    self.events.append(data)
                    self._event_added.set()
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CDPError("DevTools connection closed"))

    async def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        await self._ws.send_json(message)
        reply = await asyncio.wait_for(future, PAGE_LIMIT)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def wait_event(self, method: str, session: str) -> dict[str, Any]:
        async def scan() -> dict[str, Any]:
            while True:
                for event in self.events:
                    if event.get("method") == method and event.get("sessionId") == session:
                        return event
                self._event_added.clear()
                await self._event_added.wait()

        return await asyncio.wait_for(scan(), PAGE_LIMIT)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def chromium(path: str) -> AsyncIterator[CDP]:
    """Start headless Chromium with a throw-away profile and connect to its DevTools socket."""
    with tempfile.TemporaryDirectory(prefix="wachat-chromium-") as profile:
        log_path = Path(profile) / "chromium.log"
        with open(log_path, "wb") as log:
            proc = await asyncio.create_subprocess_exec(
                path,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its helpers share our child's process group
            )
        try:
            endpoint = await _devtools_endpoint(proc, Path(profile), log_path)
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(endpoint, max_msg_size=0) as ws,
            ):
                cdp = CDP(ws)
                try:
                    yield cdp
                finally:
                    with contextlib.suppress(Exception):
                        await cdp.call("Browser.close")
                    await cdp.close()
        finally:
            await _stop_process_group(proc)


async def _devtools_endpoint(
    proc: asyncio.subprocess.Process, profile: Path, log_path: Path
) -> str:
    """Read the port Chromium chose from DevToolsActivePort (bounded wait)."""
    port_file = profile / "DevToolsActivePort"

    async def wait() -> str:
        while True:
            if proc.returncode is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise AssertionError(f"Chromium exited with {proc.returncode}:\n{tail}")
            if port_file.exists():
                lines = port_file.read_text().split()
                if len(lines) == 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(wait(), STARTUP_LIMIT)


async def _stop_process_group(proc: asyncio.subprocess.Process) -> None:
    """End the Chromium we started (its process group), politely first."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.returncode is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)


async def load_and_measure(cdp: CDP, url: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Open *url* in a new tab; return each <img>'s decode result and the URLs requested."""
    target = await cdp.call("Target.createTarget", {"url": "about:blank"})
    attached = await cdp.call(
        "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
    )
    session = attached["sessionId"]
    await cdp.call("Page.enable", session=session)
    await cdp.call("Network.enable", session=session)
    await cdp.call("Page.navigate", {"url": url}, session=session)
    await cdp.wait_event("Page.loadEventFired", session)
    # img.decode() settles once the image has loaded and decoded (or failed to).
    script = """
        Promise.all(Array.from(document.images, img => {
            const id = img.closest("figure") ? img.closest("figure").id : "";
            const measure = error => ({id, width: img.naturalWidth, height: img.naturalHeight,
                                       error});
            return img.decode().then(() => measure(null), err => measure(String(err)));
        }))
    """
    result = await cdp.call(
        "Runtime.evaluate",
        {"expression": script, "awaitPromise": True, "returnByValue": True},
        session=session,
    )
    images: list[dict[str, Any]] = result["result"]["value"]
    requested = [
        e["params"]["request"]["url"]
        for e in cdp.events
        if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session
    ]
    await cdp.call("Target.closeTarget", {"targetId": target["targetId"]})
    return images, requested


# --- the servers ------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _recorder(log: list[tuple[str, dict[str, str]]]) -> Any:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        log.append((request.path_qs, dict(request.headers)))
        return await handler(request)

    return record


# Chromium's start and each page have their own bounds (STARTUP_LIMIT, PAGE_LIMIT): they fail
# first, saying which.
@pytest.mark.timeout(180)
async def test_chromium_shows_the_qr_three_ways_and_the_proxy_never_sees_the_key(
    chromium_path: str,
) -> None:
    """apiKey URL, proxy route and data URI all decode in Chromium; only the first carries a key."""
    proxy_log: list[tuple[str, dict[str, str]]] = []
    async with (
        FakeWachatServer(api_key=KEY, qr_rotation=None) as fake,
        WachatClient(api_key=KEY, base_url=fake.base_url) as client,
    ):
        fake.add_instance(OK)
        qr = await client.get_qr_image(OK)
        with pytest.warns(ApiKeyExposureWarning):
            exposed_url = client.qr_image_url(OK, expose_api_key=True)

        proxy_app = aiohttp_proxy.create_app(client, instances=[OK])
        proxy_app.middlewares.append(_recorder(proxy_log))
        async with TestServer(proxy_app) as proxy:
            proxy_src = str(proxy.make_url(f"/qr/{OK}.png"))

            async def page(request: web.Request) -> web.Response:
                figures = "".join(
                    f'<figure id="{way}">{qr_img_tag(src, alt=way)}</figure>'
                    for way, src in (
                        ("apikey", exposed_url),
                        ("proxy", proxy_src),
                        ("data", qr.to_data_uri()),
                    )
                )
                body = f"<!doctype html><html><body>{figures}</body></html>"
                return web.Response(text=body, content_type="text/html")

            page_app = web.Application()
            page_app.router.add_get("/", page)
            async with TestServer(page_app) as page_server:
                fake.reset_log()
                async with chromium(chromium_path) as cdp:
                    images, requested = await load_and_measure(cdp, str(page_server.make_url("/")))
                    example_images, _ = await load_and_measure(cdp, str(proxy.make_url("/")))

        browser_hits = [r for r in fake.requests if r.auth_via == "query"]
        server_hits = [r for r in fake.requests if r.auth_via == "bearer"]

    # Every image decoded to the QR's real size.
    decoded = {i["id"]: (i["width"], i["height"], i["error"]) for i in images}
    assert decoded == dict.fromkeys(("apikey", "proxy", "data"), (qr.width, qr.height, None))
    assert qr.width > 0
    assert [(i["width"], i["error"]) for i in example_images] == [(qr.width, None)]
    # The browser fetched the apiKey URL from Wachat itself, without a Referer (no-referrer).
    assert exposed_url in requested
    assert [(r.instance_name, r.headers.get("Referer")) for r in browser_hits] == [(OK, None)]
    assert all("HeadlessChrome" in (r.user_agent or "") for r in browser_hits)
    # The proxy fetched upstream with the Authorization header only.
    assert server_hits
    assert all("HeadlessChrome" not in (r.user_agent or "") for r in server_hits)
    # What the browser sent to the proxy app: the image route and the example page, no key.
    assert proxy_src in requested
    pages_and_images = sorted(path for path, _ in proxy_log if path != "/favicon.ico")
    assert pages_and_images == ["/", f"/qr/{OK}.png", f"/qr/{OK}.png"]
    for path, headers in proxy_log:
        assert KEY not in path
        assert "apiKey" not in path
        assert not any(KEY in value for value in headers.values())
        assert "Authorization" not in headers
