"""TLS faults: servers that break the handshake, or close once it is done.

A raw loopback server reads the client's ClientHello and then misbehaves: closes, resets, answers
in plain text, sends half a TLS record, never answers, or completes the handshake (with a trusted
trustme certificate) and closes before any HTTP. Each is a :class:`WachatConnectionError` (or a
timeout) that is *not* a :class:`TLSVerificationError` (nothing was wrong with a certificate), is
retried with ``retry_transport_errors=True`` (it may heal), and leaves nothing behind and leaks
nothing (the ``guard`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import trustme

from wachat_async import (
    RetryPolicy,
    TLSVerificationError,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)

from .conftest import NAME, Guard, assert_pool_clean, hostile_client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_CA = trustme.CA()
_CERT = _CA.issue_cert("127.0.0.1")


def server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _CERT.configure_cert(context)
    return context


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    _CA.configure_trust(context)
    return context


async def read_hello(reader: asyncio.StreamReader) -> bytes:
    """Read the ClientHello's first record header (what every fault waits for)."""
    return await reader.read(5)


async def close_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_hello(reader)
    writer.close()


async def reset_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_hello(reader)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def plaintext_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_hello(reader)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


async def half_a_record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_hello(reader)
    writer.write(b"\x16\x03\x03\x40\x00" + b"\x02" * 20)  # a 16 KiB handshake record, cut
    await writer.drain()
    writer.close()


async def garbage_record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_hello(reader)
    writer.write(b"\x15\x03\x03\x00\x02\x02\x50")  # a fatal alert: internal_error
    await writer.drain()
    writer.close()


async def close_at_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


FAULTS = [
    pytest.param(close_at_accept, id="closed-before-hello"),
    pytest.param(close_after_hello, id="closed-after-client-hello"),
    pytest.param(reset_after_hello, id="reset-after-client-hello"),
    pytest.param(plaintext_answer, id="plain-http-answer"),
    pytest.param(half_a_record, id="server-hello-cut"),
    pytest.param(garbage_record, id="fatal-alert"),
]


class RawTLSFaultServer:
    """A loopback TCP server running *handler* for each connection; counts connections."""

    def __init__(self, handler: Handler, *, tls: bool = False) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait_for(self.handler(reader, writer), 5.0)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def __aenter__(self) -> RawTLSFaultServer:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=server_context() if self.tls else None
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/api/v1"


async def fetch_error(server: RawTLSFaultServer, guard: Guard, **kwargs: Any) -> WachatError:
    """The error a QR fetch from *server* raises (checked by the guard)."""
    kwargs.setdefault("ssl", client_context())
    client = hostile_client(server.base_url, **kwargs)
    async with client:
        with pytest.raises(WachatError) as info:
            await client.get_qr_image(NAME)
        assert_pool_clean(client)
    guard.exception(info.value)
    return info.value


@pytest.mark.parametrize("handler", FAULTS)
async def test_broken_handshake_is_a_connection_error_not_a_certificate_error(
    handler: Handler, guard: Guard
) -> None:
    """A handshake the server breaks: WachatConnectionError, one line, not TLSVerificationError."""
    async with RawTLSFaultServer(handler) as server:
        error = await fetch_error(server, guard, retry=RetryPolicy.disabled())
    assert isinstance(error, WachatConnectionError)
    assert not isinstance(error, TLSVerificationError)
    assert "\n" not in str(error)
    assert server.connections == 1


@pytest.mark.parametrize("handler", FAULTS)
async def test_broken_handshake_is_retried_with_retry_transport_errors(
    handler: Handler, guard: Guard
) -> None:
    """Unlike a certificate failure, a broken handshake may heal: every attempt is made."""
    policy = RetryPolicy(retry_transport_errors=True, zero_wait=True, max_attempts=3)
    async with RawTLSFaultServer(handler) as server:
        error = await fetch_error(server, guard, retry=policy)
    assert (error.attempts, server.connections) == (3, 3)


async def test_server_closing_after_the_handshake_is_a_connection_error(guard: Guard) -> None:
    """A complete, verified handshake and then a close before any HTTP answer."""

    async def close_after_request(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async with RawTLSFaultServer(close_after_request, tls=True) as server:
        error = await fetch_error(server, guard, retry=RetryPolicy.disabled())
    assert isinstance(error, WachatConnectionError)
    assert not isinstance(error, TLSVerificationError)


async def test_handshake_that_never_completes_is_a_timeout(guard: Guard) -> None:
    """A server that reads the ClientHello and never answers: the connect timeout ends it."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_hello(reader)
        await asyncio.sleep(5.0)  # the server side's bound; the client gives up long before

    async with RawTLSFaultServer(silent) as server:
        error = await fetch_error(
            server,
            guard,
            retry=RetryPolicy.disabled(),
            timeout=aiohttp.ClientTimeout(total=3.0, sock_connect=0.2, sock_read=0.2),
        )
    assert isinstance(error, WachatTimeoutError | WachatConnectionError)
    assert not isinstance(error, TLSVerificationError)


async def test_untrusted_certificate_is_never_retried(guard: Guard) -> None:
    """The same raw server with a certificate the client does not trust: one attempt only."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)

    policy = RetryPolicy(retry_transport_errors=True, zero_wait=True, max_attempts=3)
    async with RawTLSFaultServer(answer, tls=True) as server:
        error = await fetch_error(server, guard, retry=policy, ssl=ssl.create_default_context())
    assert isinstance(error, TLSVerificationError)
    assert error.attempts == 1  # (a failed handshake never reaches the server's handler)
