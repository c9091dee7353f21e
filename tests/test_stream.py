"""QRStream (``_stream.py``): validation while reading, and exactly-once release."""

from __future__ import annotations

import pytest

from wachat_async import InvalidImageError, ResponseTooLargeError, WachatClient
from wachat_async.testing import FakeWachatServer, Fault

from .conftest import KEY, NAME, assert_no_connection_checked_out


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
