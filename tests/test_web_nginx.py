"""The QR routes behind a real nginx that strips a prefix (``location /app/ { proxy_pass
http://app/; }``): the page, its event stream and the PNG each ``qr`` event names all resolve,
on both frameworks, because the events' ``src`` is relative.

nginx (Debian's package; ``/usr/sbin/nginx``) is started by the test, in the foreground, on a
free loopback port, with its config, logs and temporary folders in the test's ``tmp_path``.
Outside CI a missing nginx skips the test; with ``CI=true`` it fails (``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests._web import EventReader, png_url, serve
from tests.conftest import NAME
from wachat_async import WachatClient

CONFIG = """
daemon off;
master_process off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /app/ {{
            proxy_pass {app}/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def _nginx() -> str:
    for candidate in (os.environ.get("NGINX"), shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = "no nginx binary found (install Debian's 'nginx' package)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def nginx_binary() -> str:
    return _nginx()


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def nginx(binary: str, folder: Path, app: str) -> AsyncIterator[str]:
    port = _free_port()
    (folder / "nginx.conf").write_text(CONFIG.format(folder=folder, port=port, app=app))
    process = subprocess.Popen(  # noqa: S603 - our own nginx, from a fixed path
        [binary, "-p", str(folder), "-e", str(folder / "error.log"), "-c", "nginx.conf"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(1000):  # nginx listens within milliseconds
            assert process.poll() is None, "nginx exited; see error.log in " + str(folder)
            if await _listening(port):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("nginx never listened")
        yield f"http://127.0.0.1:{port}/app"
    finally:
        process.kill()
        process.wait()


async def test_a_prefix_stripping_nginx_serves_the_page_events_and_png(
    framework: str, client: WachatClient, nginx_binary: str, tmp_path: Path
) -> None:
    """Through nginx under /app/: the page names its stream relatively, the stream is not
    buffered (the first event arrives while it stays open), and the PNG the event names loads."""
    async with (
        serve(framework, client) as app,
        nginx(nginx_binary, tmp_path, app) as base,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{base}/qr/{NAME}") as page:
            html = await page.text()
        events_url = f"{base}/qr/{NAME}/events"
        async with http.get(events_url) as events:
            assert events.status == 200
            data = await EventReader(events).expect("qr")
            async with http.get(png_url(events_url, data["src"])) as png:
                image = await png.read()
                status = png.status
    assert page.status == 200
    assert f'data-events="./{NAME}/events"' in html
    assert status == 200
    assert image.startswith(b"\x89PNG")
    assert png_url(events_url, data["src"]).startswith(f"{base}/qr/{NAME}.png?v=")
