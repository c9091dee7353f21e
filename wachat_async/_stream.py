"""``QRStream``: the body of one QR image response, as chunks checked by the PNG rules."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from ._errors import InvalidImageError, ResponseTooLargeError, WachatError, raise_clean
from ._models import (
    PNG_HEADER_SIZE,
    check_chunk_walk,
    check_png_end,
    png_dimensions,
    walk_chunks,
)
from ._slots import ConnectionQueue

__all__ = ["CHUNK_SIZE", "TRANSPORT_ERRORS", "QRStream", "too_large"]

#: Default read size of a stream (and of every body the transport reads in chunks).
CHUNK_SIZE = 64 * 1024

#: What aiohttp and the OS raise when an exchange fails on the wire (reading a body included).
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)

#: Maps a transport exception raised while reading to our error: ``(exc, instance_name)``.
MapError = Callable[[BaseException, str], WachatError]


def too_large(limit: int, read: int, content_length: int | None, name: str) -> WachatError:
    """The error for a QR image body that passed *limit* bytes while being read."""
    return ResponseTooLargeError(
        f"QR image is over max_image_bytes={limit} (stopped reading at {read} bytes)",
        instance_name=name,
        limit=limit,
        content_length=content_length,
    )


class QRStream:
    """The body of a QR image response (:meth:`WachatClient.stream_qr_image`), as an async
    iterator of ``bytes`` chunks checked by :class:`QRImage`'s rules as they come: a stream that
    finishes without error was a whole PNG.

    :ivar instance_name: The instance whose QR this is.
    :ivar content_type: The media type, ``image/png`` (checked before the stream is handed over).
    :ivar content_length: The ``Content-Length`` the server announced, or ``None``.
    :ivar bytes_read: Body bytes read so far (counted against ``max_image_bytes``).
    :ivar width: The PNG's width in pixels, from its header; ``0`` until the first chunk.
    :ivar height: The PNG's height in pixels, from its header; ``0`` until the first chunk.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        instance_name: str,
        limit: int,
        chunk_size: int,
        map_error: MapError,
        slot: ConnectionQueue | None = None,
    ) -> None:
        self._resp = response
        self._slot = slot
        self._map_error = map_error
        self._chunk_size = chunk_size
        self._limit = limit
        self._tail = b""
        self._done = False
        self.instance_name = instance_name
        self.content_type: str = response.content_type
        self.content_length: int | None = response.content_length
        self.bytes_read: int = 0
        self.width: int = 0
        self.height: int = 0
        # The chunk walk (walk_chunks): where the next chunk starts in the body, the bytes of a
        # chunk header that a read cut in two, whether an IDAT came, where IEND starts.
        self._walk_at = PNG_HEADER_SIZE
        self._carry = b""
        self._idat = False
        self._iend_at = -1

    def __repr__(self) -> str:
        return (
            f"<QRStream instance_name={self.instance_name!r} bytes_read={self.bytes_read} "
            f"content_length={self.content_length} done={self._done}>"
        )

    def __aiter__(self) -> QRStream:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        name = self.instance_name
        if not self.width:
            chunk = await self._read()
            while chunk and len(chunk) < PNG_HEADER_SIZE and (more := await self._read()):
                chunk += more
            try:
                self.width, self.height = png_dimensions(chunk, instance_name=name)
            except InvalidImageError:
                self.close()
                raise
        else:
            chunk = await self._read()
            if not chunk:
                self._done = True
                self.close()
                check_png_end(self._tail, instance_name=name)
                check_chunk_walk(self._iend_at, self.bytes_read, self._idat, name)
                raise StopAsyncIteration
        if self._iend_at < 0:
            # Resume the walk where it stopped: the cut chunk header first, if any.
            data = self._carry + chunk
            start = self.bytes_read - len(data)
            pos, self._idat, iend = walk_chunks(data, self._walk_at - start, self._idat)
            self._walk_at = start + pos
            self._iend_at = iend if iend < 0 else start + iend
            self._carry = data[pos:]
        self._tail = (self._tail + chunk)[-12:]
        return chunk

    async def read(self) -> bytes:
        """Read the rest of the body and return it (validated like the iteration)."""
        return b"".join([chunk async for chunk in self])

    async def _read(self) -> bytes:
        failure: BaseException
        try:
            chunk = await self._resp.content.read(self._chunk_size)
        except TRANSPORT_ERRORS as exc:
            failure = self._map_error(exc, self.instance_name)
        else:
            self.bytes_read += len(chunk)
            if self.bytes_read <= self._limit:
                return chunk
            failure = too_large(
                self._limit, self.bytes_read, self.content_length, self.instance_name
            )
        self._done = True
        self.close()
        raise_clean(failure)

    def close(self) -> None:
        """Release the response (aiohttp reuses its connection only if the body was read to
        its end) and the connection slot. Idempotent."""
        self._resp.release()
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()
