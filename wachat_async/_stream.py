"""``QRStream``: the body of one QR image response, as an async iterator of ``bytes`` chunks.

It validates while it reads: the PNG header before the first chunk is handed over, the size cap
on every read, the chunk structure as the chunks arrive (``check_png_chunks``' rule, walked
piece by piece) and the ``IEND`` trailer at the end. It owns the response it was given (and the
connection slot, when it holds one) and releases both exactly once, on every path.

It knows nothing of requests, retries or the client: the transport opens the response and
hands over what the stream needs (the size cap, how to map a transport exception). Never
imports the client, the retry loop or the transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from ._errors import InvalidImageError, ResponseTooLargeError, WachatError, raise_clean
from ._models import _unpack_chunk, check_png_end, png_dimensions, walked_chunks_error
from ._slots import Slots

__all__ = ["CHUNK_SIZE", "TRANSPORT_ERRORS", "QRStream"]

#: Default read size of a stream (and of every body the transport reads in chunks).
CHUNK_SIZE = 64 * 1024

#: What aiohttp and the OS raise when an exchange fails on the wire (reading a body included).
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)

#: Maps a transport exception raised while reading to our error: ``(exc, instance_name)``.
MapError = Callable[[BaseException, str], WachatError]


class QRStream:
    """The body of a QR image response, as an async iterator of ``bytes`` chunks.

    Obtained from :meth:`WachatClient.stream_qr_image`. The PNG header is validated before the
    first chunk is yielded (``width``/``height`` are set then), the size cap while reading, and
    the chunk structure and the ``IEND`` trailer at the end (the rules of :class:`QRImage`), so
    a stream that finishes without error was a whole PNG.

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
        slot: Slots | None = None,
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
        # The chunk walk (check_png_chunks' rule, piece by piece): where the next chunk starts,
        # the start of its header when a read ended inside it, whether an IDAT came, where the
        # first IEND starts (-1: not yet).
        self._walk_at = 33
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
        if not self.width:
            head = await self._read()
            while head and len(head) < 33 and (more := await self._read()):
                head += more
            try:
                self.width, self.height = png_dimensions(head, instance_name=self.instance_name)
            except InvalidImageError:
                self.close()
                raise
            chunk = head
        else:
            chunk = await self._read()
            if not chunk:
                self._done = True
                self.close()
                check_png_end(self._tail, instance_name=self.instance_name)
                error = walked_chunks_error(self._iend_at, self.bytes_read, self._idat)
                if error is not None:
                    raise InvalidImageError(f"not a PNG: {error}", instance_name=self.instance_name)
                raise StopAsyncIteration
        if self._iend_at < 0:
            self._walk(chunk, self.bytes_read - len(chunk))
        self._tail = (self._tail + chunk)[-12:]
        return chunk

    def _walk(self, chunk: bytes, start: int) -> None:
        """Follow the chunk lengths through *chunk* (at offset *start* of the body) up to the
        first ``IEND``: one unpack per chunk header, the chunks' contents skipped."""
        if self._carry:
            chunk = self._carry + chunk
            start -= len(self._carry)
        i = self._walk_at - start
        size = len(chunk)
        while i + 8 <= size:
            length, kind = _unpack_chunk(chunk, i)
            if kind == b"IDAT":
                self._idat = True
            elif kind == b"IEND":
                self._iend_at = start + i
                self._carry = b""
                return
            i += length + 12
        self._walk_at = start + i
        self._carry = chunk[i:] if i < size else b""

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
            failure = ResponseTooLargeError(
                f"QR image is over max_image_bytes={self._limit} (stopped reading at "
                f"{self.bytes_read} bytes)",
                instance_name=self.instance_name,
                limit=self._limit,
                content_length=self.content_length,
            )
        self._done = True
        self.close()
        raise_clean(failure)

    def close(self) -> None:
        """Release the connection: back to the pool if the body was read to its end, else
        closed (a half-read connection is never reused). Idempotent."""
        if self._resp.content.is_eof():
            self._resp.release()
        else:
            self._resp.close()
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()  # the client's connection slot, held since the stream was opened
