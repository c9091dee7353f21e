"""A stalled server fails within the default per-attempt timeout, which has no ``sock_read``.

``DEFAULT_TIMEOUT`` relies on its ``total`` alone to end a stall (see its comment in
``_client.py``). These tests run the default's *shape* scaled down 50 times (20 s -> 0.4 s):
every field the default sets, none it leaves out, so a stall before the headers, mid-body or
as a slowloris drip must end in a ``WachatTimeoutError`` from ``total`` alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import attrs
import pytest

from wachat_async import RetryPolicy, WachatClient, WachatTimeoutError
from wachat_async._client import DEFAULT_TIMEOUT

from ._raw_server import Action, Drip, Hang, RawServer, Send, http_response, make_png
from .conftest import Guard, hostile_client

PNG = make_png()
SCALE = 0.02
_FIELDS = ("total", "connect", "sock_connect", "sock_read")


def scaled(timeout: aiohttp.ClientTimeout) -> aiohttp.ClientTimeout:
    """*timeout* with every time field it sets multiplied by ``SCALE`` (unset ones stay unset)."""
    changes = {f: getattr(timeout, f) * SCALE for f in _FIELDS if getattr(timeout, f) is not None}
    return attrs.evolve(timeout, **changes)


def test_the_default_bounds_each_attempt_by_total_alone() -> None:
    """DEFAULT_TIMEOUT: a finite total under the default deadline, a connect limit, no
    sock_read (the documented choice: total already ends every stall)."""
    deadline = RetryPolicy().deadline
    assert deadline is not None
    assert DEFAULT_TIMEOUT.total is not None
    assert 0 < DEFAULT_TIMEOUT.total <= deadline
    assert DEFAULT_TIMEOUT.sock_connect is not None
    assert DEFAULT_TIMEOUT.sock_connect < DEFAULT_TIMEOUT.total
    assert DEFAULT_TIMEOUT.sock_read is None


def test_a_client_without_a_timeout_uses_the_default() -> None:
    """WachatClient() with no timeout argument runs on DEFAULT_TIMEOUT."""
    client = WachatClient(api_key="k", base_url="http://127.0.0.1:9/api/v1")
    assert client._transport.timeout == DEFAULT_TIMEOUT


STALLS: dict[str, list[Action]] = {
    "before-the-status-line": [Hang()],
    "after-the-headers": [Send(http_response(200, b"", content_length=len(PNG))), Hang()],
    "mid-body": [Send(http_response(200, PNG)[:-20]), Hang()],
    # Slowloris: a byte every 20 ms, far inside any read timeout; the body never ends.
    "endless-drip": [
        Send(http_response(200, b"", content_length=100_000)),
        Drip(PNG * 100, piece=1, delay=0.02),
    ],
}


async def _get(client: WachatClient) -> object:
    return await client.get_qr_image("t1_stall")


async def _stream(client: WachatClient) -> object:
    async with client.stream_qr_image("t1_stall") as stream:
        return await stream.read()


@pytest.mark.parametrize("script", STALLS.values(), ids=STALLS.keys())
@pytest.mark.parametrize("call", [_get, _stream], ids=["get", "stream"])
async def test_a_stalled_server_fails_within_the_default_timeouts_shape(
    script: list[Action], call: Callable[[WachatClient], Awaitable[object]], guard: Guard
) -> None:
    """Every kind of stall ends in WachatTimeoutError under the scaled default (no sock_read)."""
    async with (
        RawServer(script) as server,
        hostile_client(
            server.base_url, timeout=scaled(DEFAULT_TIMEOUT), retry=RetryPolicy.disabled()
        ) as client,
    ):
        with pytest.raises(WachatTimeoutError) as caught:
            await call(client)
        guard.exception(caught.value)
    assert len(server.requests) == 1
