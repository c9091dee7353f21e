"""Helpers shared by the fake server's tests: plain HTTP clients and a QR reader."""

from __future__ import annotations

import asyncio
import io
import urllib.request
from typing import Any

import aiohttp
import zxingcpp
from multidict import CIMultiDictProxy
from PIL import Image

from wachat_async.testing import FakeWachatServer

KEY = "fake-KEY-5f3c9a1e7b"
OTHER_KEY = "other-KEY-0c8d2b"
NAME = "t1_mq9r2jov_jakarta_store"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Clock:
    """A hand-driven clock for rotation tests."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def get(
    http: aiohttp.ClientSession,
    server: FakeWachatServer,
    name: str | None = NAME,
    *,
    key: str | None = KEY,
    via: str = "bearer",
    route: str = "/instance/qr/image",
    **kwargs: Any,
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    """GET a route and return (status, headers, body)."""
    params = {} if name is None else {"instanceName": name}
    headers = dict(kwargs.pop("headers", {}))
    if key is not None and via == "bearer":
        headers["Authorization"] = f"Bearer {key}"
    elif key is not None:
        params["apiKey"] = key
    async with http.get(server.base_url + route, params=params, headers=headers, **kwargs) as r:
        return r.status, r.headers, await r.read()


def sync_get(url: str, key: str | None = None) -> tuple[int, bytes]:
    """GET *url* with urllib (blocking), optionally with a Bearer key."""
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback http only
    with urllib.request.urlopen(request) as response:  # noqa: S310
        return response.status, response.read()


def decode_qr(png: bytes) -> str:
    """The text of the single QR code in *png*."""
    result = zxingcpp.read_barcode(Image.open(io.BytesIO(png)))
    assert result is not None, "no QR code found"
    return result.text


async def wait_for_requests(server: FakeWachatServer, count: int) -> None:
    """Yield to the loop (never sleeping) until the server has logged *count* requests."""
    for _ in range(100_000):
        if server.request_count() >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"server logged {server.request_count()} requests, wanted {count}")
