"""FakeWachatServer(admin=True) and ``--admin``: link a phone, rotate a QR and script faults
over HTTP, so end-to-end tests in any language (a shell, a browser test runner) reach every
state of a QR page."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from wachat_async.testing import FakeWachatServer

from ._support import KEY, NAME

BEARER = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def admin() -> AsyncIterator[FakeWachatServer]:
    async with FakeWachatServer(KEY, qr_rotation=None, admin=True) as server:
        server.add_instance(NAME)
        yield server


def _origin(server: FakeWachatServer) -> str:
    return server.base_url.removesuffix("/api/v1")


async def test_state_rotate_and_script_do_what_the_methods_do(
    admin: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """`state` (open: linked), `rotate` (a new QR), `script` (the next QR answers); the admin
    requests are not in the request log."""
    base = f"{_origin(admin)}/_fake/{NAME}"
    before = admin.qr_payload(NAME)
    async with http.post(f"{base}/rotate", headers=BEARER) as rotated:
        assert rotated.status == 200
    async with http.post(f"{base}/script", headers=BEARER, data="502, 502 200") as scripted:
        assert await scripted.json() == {"instance": NAME, "done": "script"}
    async with http.post(f"{base}/state", headers=BEARER, data="open") as state:
        assert state.status == 200
    assert admin.qr_payload(NAME) != before
    assert [fault.status for fault in admin.pending_script(NAME)] == [502, 502, 200]
    assert admin.instances[NAME].state == "open"
    assert admin.request_count() == 0


@pytest.mark.parametrize(
    ("path", "headers", "body", "status"),
    [
        pytest.param(f"/_fake/{NAME}/state", {}, "open", 401, id="no-key"),
        pytest.param(
            f"/_fake/{NAME}/state", {"Authorization": "Bearer nope"}, "open", 401, id="wrong-key"
        ),
        pytest.param(f"/_fake/{NAME}/state", BEARER, "", 400, id="no-state"),
        pytest.param(f"/_fake/{NAME}/script", BEARER, "5o2", 400, id="not-a-status"),
        pytest.param("/_fake/t1_nosuch00_store/state", BEARER, "open", 404, id="no-instance"),
        pytest.param(f"/_fake/{NAME}/frob", BEARER, "", 404, id="no-action"),
    ],
)
async def test_refusals_are_json_and_change_nothing(
    admin: FakeWachatServer,
    http: aiohttp.ClientSession,
    path: str,
    headers: dict[str, str],
    body: str,
    status: int,
) -> None:
    async with http.post(_origin(admin) + path, headers=headers, data=body) as response:
        assert response.status == status
        assert "error" in await response.json()
    assert admin.instances[NAME].state != "open"
    assert admin.pending_script(NAME) == ()


async def test_without_admin_the_path_is_an_ordinary_404(
    fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    url = f"{fake.base_url.removesuffix('/api/v1')}/_fake/{NAME}/state"
    async with http.post(url, headers=BEARER, data="open") as response:
        assert response.status == 404
    assert fake.instances[NAME].state != "open"


def test_admin_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="admin must be a bool"):
        FakeWachatServer(KEY, admin=1)  # type: ignore[arg-type]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_the_program_serves_the_admin_route_with_admin(
    http: aiohttp.ClientSession,
) -> None:
    """`python -m wachat_async.testing --admin` says how to use it, and it works."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wachat_async.testing", "--port", "0", "--admin"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
        while not lines[-1].startswith("Admin:"):
            lines.append(proc.stdout.readline())
        origin = lines[0].rsplit(" ", 1)[-1].strip().removesuffix("/api/v1")
        url = f"{origin}/_fake/t1_demo0001_store/state"
        async with http.post(url, headers={"Authorization": "Bearer demo"}, data="open") as r:
            status = r.status
        state_url = f"{origin}/api/v1/instance/state?instanceName=t1_demo0001_store"
        async with http.get(state_url, headers={"Authorization": "Bearer demo"}) as r:
            state = await r.json()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert status == 200
    assert "open" in str(state)
    assert "/_fake/NAME/state" in lines[-1]
