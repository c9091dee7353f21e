"""The README's and docs/web.md's web snippets run as pasted: every name they use is defined,
the client opens in their lifespan (or cleanup context), authorization holds, and the routes
serve. Each block runs as a program would (``python app.py``; ``uvicorn app:app``) against the
fake server that WACHAT_BASE_URL/WACHAT_API_KEY point at; only aiohttp's ``web.run_app``, which
would serve forever on port 8080, is replaced by serving the app it was given on a free port.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests._web import serve_asgi
from tests.conftest import KEY, NAME
from tests.test_readme import README, ROOT, page_blocks
from wachat_async.testing import FakeWachatServer
from wachat_async.web import end_event_streams

PAGES = [README, ROOT / "docs" / "web.md"]


def _snippet(page: Any, framework: str) -> str:
    marker = "web.run_app(" if framework == "aiohttp" else "qr_router(client_of"
    found = [b.code for b in page_blocks(page) if b.lang == "python" and marker in b.code]
    assert len(found) == 1, (page, framework)
    return found[0]


@pytest.fixture
async def upstream(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeWachatServer]:
    async with FakeWachatServer(api_key=KEY, qr_rotation=None) as fake:
        fake.add_instance(NAME)
        monkeypatch.setenv("WACHAT_BASE_URL", fake.base_url)
        monkeypatch.setenv("WACHAT_API_KEY", KEY)
        yield fake


@pytest.mark.parametrize("page", PAGES, ids=["README", "docs-web"])
async def test_the_aiohttp_snippet_runs_as_pasted(
    page: Any, upstream: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its client opens in cleanup_ctx, on_shutdown ends the streams, authorize refuses a
    request without a user (no auth middleware here) and nothing reaches upstream."""
    given: list[web.Application] = []
    run_options: dict[str, Any] = {}
    monkeypatch.setattr(
        web, "run_app", lambda app, **options: (given.append(app), run_options.update(options))
    )
    exec(compile(_snippet(page, "aiohttp"), str(page), "exec"), {"__name__": "__main__"})  # noqa: S102
    (app,) = given
    assert end_event_streams in app.on_shutdown
    assert run_options["host"] == "127.0.0.1"  # not every interface, not the fake server's 8080
    assert run_options["port"] != 8080
    async with (
        TestServer(app) as server,
        aiohttp.ClientSession() as http,
        http.get(server.make_url(f"/qr/{NAME}.png")) as refused,
    ):
        body = await refused.json()
    assert refused.status == 403
    assert body == {"error": "forbidden", "instance": NAME}
    assert upstream.request_count() == 0


@pytest.mark.parametrize("page", PAGES, ids=["README", "docs-web"])
async def test_the_fastapi_snippet_runs_as_pasted(page: Any, upstream: FakeWachatServer) -> None:
    """Under its own lifespan: no login is a 401 on the QR routes (the app's dependency), the
    user who owns the instance gets the PNG and the events."""
    namespace: dict[str, Any] = {"__name__": "app"}
    exec(compile(_snippet(page, "fastapi"), str(page), "exec"), namespace)  # noqa: S102
    app = namespace["app"]
    alice = "Basic " + base64.b64encode(b"alice:change me").decode()
    async with (
        app.router.lifespan_context(app),
        serve_asgi(app) as base,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{base}/qr/{NAME}.png") as anonymous:
            assert anonymous.status == 401
        async with http.get(f"{base}/qr/{NAME}.png", headers={"Authorization": alice}) as png:
            image = await png.read()
        async with http.get(f"{base}/qr/{NAME}/events", headers={"Authorization": alice}) as ev:
            first = await ev.content.readuntil(b"event: qr")
    assert png.status == 200
    assert image.startswith(b"\x89PNG")
    assert first.startswith(b"retry: ")
