"""QRStream (``_stream.py``): validation while reading, and exactly-once release."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from wachat_async import InvalidImageError, ResponseTooLargeError, RetryPolicy, WachatClient
from wachat_async.testing import FakeWachatServer, Fault

from .conftest import KEY, NAME, assert_no_connection_checked_out
from .hostile._raw_server import Close, RawServer, Send, chunked, http_response, make_png


async def read_all(client: WachatClient) -> bytes:
    """Stream the QR in 16-byte chunks and join them."""
    async with client.stream_qr_image(NAME, chunk_size=16) as stream:
        return b"".join([chunk async for chunk in stream])


async def test_stream_sets_dimensions_before_the_first_chunk(client: WachatClient) -> None:
    """width/height are known once the first chunk is handed over; the bytes add up."""
    async with client.stream_qr_image(NAME, chunk_size=16) as stream:
        first = await stream.__anext__()
        assert (stream.width > 0, stream.height > 0, len(first) >= 33) == (True, True, True)
        rest = await stream.read()
    assert stream.bytes_read == len(first) + len(rest)
    assert "done=True" in repr(stream)
    assert_no_connection_checked_out(client)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault(body=b"GIF89a" + b"\0" * 64), id="not-a-png"),
        pytest.param(Fault(truncate=True), id="cut-short"),
    ],
)
async def test_stream_raises_what_it_finds_and_releases(
    server: FakeWachatServer, client: WachatClient, fault: Fault
) -> None:
    """A bad header or a body cut short raises while iterating; the connection is released."""
    server.script(NAME, [fault])
    with pytest.raises(InvalidImageError):
        await read_all(client)
    assert_no_connection_checked_out(client)


async def test_stream_enforces_the_size_cap_while_reading(server: FakeWachatServer) -> None:
    """A body that passes max_image_bytes raises once the cap is crossed, while reading."""
    async with WachatClient(api_key=KEY, base_url=server.base_url, max_image_bytes=64) as small:
        with pytest.raises(ResponseTooLargeError):
            await read_all(small)
        assert_no_connection_checked_out(small)


# -- the size cap, to the byte ------------------------------------------------------------------

CAPPED_PNG = make_png(64, 64)
#: The same PNG framed three ways: a Content-Length, chunked (three chunks), neither (the body
#: ends when the server closes).
FRAMINGS = {
    "content-length": http_response(200, CAPPED_PNG),
    "chunked": http_response(
        200, b"", content_length=None, headers=[("Transfer-Encoding", "chunked")]
    )
    + chunked(CAPPED_PNG[:33], CAPPED_PNG[33:70], CAPPED_PNG[70:]),
    "close-delimited": http_response(200, CAPPED_PNG, content_length=None),
}


async def _streamed(client: WachatClient, _target: Path) -> bytes:
    async with client.stream_qr_image(NAME, chunk_size=16) as stream:
        return await stream.read()


async def _got(client: WachatClient, _target: Path) -> bytes:
    return (await client.get_qr_image(NAME)).data


async def _saved(client: WachatClient, target: Path) -> bytes:
    await client.save_qr_image(NAME, target)
    return target.read_bytes()


PATHS: dict[str, Callable[[WachatClient, Path], Awaitable[bytes]]] = {
    "stream": _streamed,
    "get": _got,
    "save": _saved,
}


@pytest.mark.parametrize("over", [0, 1], ids=["exactly-the-cap", "one-byte-over"])
@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("path", PATHS)
async def test_a_png_of_exactly_max_image_bytes_is_accepted_and_one_byte_more_refused(
    path: str, framing: str, over: int, tmp_path: Path
) -> None:
    """A PNG body of exactly ``max_image_bytes`` is the image, on every path and however it is
    framed; with the cap one byte lower it is ResponseTooLargeError, no file is written and
    the connection is not kept."""
    cap = len(CAPPED_PNG) - over
    target = tmp_path / "qr.png"
    async with (
        RawServer([Send(FRAMINGS[framing]), Close()]) as server,
        WachatClient(
            api_key=KEY,
            base_url=server.base_url,
            max_image_bytes=cap,
            retry=RetryPolicy(zero_wait=True),
        ) as client,
    ):
        if over:
            with pytest.raises(ResponseTooLargeError) as info:
                await PATHS[path](client, target)
            assert info.value.limit == cap
        else:
            assert await PATHS[path](client, target) == CAPPED_PNG
        assert_no_connection_checked_out(client)
    assert len(server.requests) == 1
    assert [p.name for p in tmp_path.iterdir()] == ([] if over or path != "save" else ["qr.png"])
