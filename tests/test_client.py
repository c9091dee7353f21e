"""WachatClient against the fake Wachat server on real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import traceback
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import zxingcpp
from aiohttp import web
from PIL import Image

import wachat_async
from wachat_async import (
    APIStatusError,
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    InstanceNotFoundError,
    InvalidImageError,
    InvalidResponseError,
    QRImage,
    QRNotSupportedError,
    ResponseTooLargeError,
    RetryPolicy,
    SubscriptionRestrictedError,
    UnexpectedStatusError,
    WachatClient,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)
from wachat_async.testing import FakeWachatServer, Fault

from .conftest import (
    KEY,
    NAME,
    assert_no_connection_checked_out,
    assert_no_key,
    exception_texts,
    status_cases,
    until,
)

#: The client's lifecycle tests run on asyncio's loop and on uvloop (tests/conftest.py).
ON_EVERY_LOOP = {
    "test_borrowed_session_is_used_and_left_open",
    "test_every_use_of_a_closed_client_raises_client_closed_error",
    "test_a_client_closed_before_its_first_call_refuses_it",
    "test_client_opens_lazily_without_async_with",
    "test_garbage_collected_open_client_warns",
}

#: A 1x1 transparent RGBA PNG (its IDAT's length chains to IEND; Pillow decodes it).
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000b49444154789c6360000200000500017a5eab3f0000000049454e44ae42"
    "6082"
)


def decode_qr(data: bytes) -> str:
    """The text encoded in a QR PNG."""
    import io

    results = zxingcpp.read_barcodes(Image.open(io.BytesIO(data)))
    assert len(results) == 1
    return results[0].text


async def fetch_via(client: WachatClient, how: str, path: Path) -> None:
    """Fetch NAME through one of the three public APIs, reading the whole body."""
    if how == "get":
        await client.get_qr_image(NAME)
    elif how == "stream":
        async with client.stream_qr_image(NAME) as stream:
            async for _ in stream:
                pass
    else:
        await client.save_qr_image(NAME, path)


# -- success ------------------------------------------------------------------------------


async def test_get_qr_image_returns_the_servers_scannable_png(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """A 200 becomes a QRImage whose PNG decodes to the server's current payload."""
    qr = await client.get_qr_image(NAME)
    assert qr.instance_name == NAME
    assert qr.content_type == "image/png"
    assert decode_qr(qr.data) == server.qr_payload(NAME)
    with Image.open(__import__("io").BytesIO(qr.data)) as img:
        assert (qr.width, qr.height) == img.size


async def test_request_carries_bearer_key_user_agent_and_no_query_key(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """The key travels only in the Authorization header; the User-Agent names the library."""
    await client.get_qr_image(NAME)
    request = server.requests[-1]
    assert request.auth_via == "bearer"
    assert request.key_valid
    assert "apiKey" not in request.query
    assert request.user_agent.startswith(f"wachat-async/{wachat_async.__version__}")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("store&apiKey=stolen", id="ampersand"),
        pytest.param("store#fragment", id="hash"),
        pytest.param("my store 1", id="spaces"),
        pytest.param("t1_abc_tokó-ジャカルタ", id="unicode"),
        pytest.param("a/b?c=d%20e", id="slash-question-percent"),
        pytest.param("plus+sign", id="plus"),
    ],
)
async def test_hostile_instance_names_reach_the_server_intact(
    server: FakeWachatServer, client: WachatClient, name: str
) -> None:
    """Query encoding is exact: the server sees the very name the caller passed."""
    server.add_instance(name)
    qr = await client.get_qr_image(name)
    assert server.requests[-1].instance_name == name
    assert decode_qr(qr.data) == server.qr_payload(name)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="whitespace"),
        pytest.param("a\r\nX-Injected: 1", id="crlf"),
        pytest.param("a\x00b", id="null-byte"),
        pytest.param("\ud800", id="lone-surrogate"),
    ],
)
async def test_invalid_instance_names_are_rejected_before_any_request(
    server: FakeWachatServer, client: WachatClient, name: str
) -> None:
    """Names that can never be valid raise ValueError and send nothing."""
    with pytest.raises(ValueError, match="instance_name"):
        await client.get_qr_image(name)
    assert server.request_count() == 0


async def test_non_string_instance_name_is_a_type_error(client: WachatClient) -> None:
    """Passing bytes or None is a programming error, reported as TypeError."""
    with pytest.raises(TypeError):
        await client.get_qr_image(b"name")  # type: ignore[arg-type]


# -- statuses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc_type"),
    status_cases(400, 401, 403, 404, 409, 502, 504, 500, 429, 302),
)
async def test_every_status_maps_to_its_exception(
    server: FakeWachatServer, status: int, exc_type: type[APIStatusError]
) -> None:
    """Each documented status raises its own APIStatusError subclass with the status on it."""
    server.script(NAME, [status])
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, retry=RetryPolicy.disabled()
    ) as client:
        with pytest.raises(exc_type) as info:
            await client.get_qr_image(NAME)
        assert_no_connection_checked_out(client)
    assert type(info.value) is exc_type
    assert info.value.status == status
    assert info.value.instance_name == NAME
    assert str(status) in str(info.value)


async def test_real_404_409_401_403_from_server_semantics(server: FakeWachatServer) -> None:
    """The server's own checks (not scripts) map to the documented exceptions."""
    server.add_instance("not-baileys", integration="WHATSAPP-BUSINESS")
    server.add_api_key("restricted-key", restricted=True)
    server.add_instance("restricted-instance", api_key="restricted-key")
    policy = RetryPolicy(zero_wait=True)
    async with WachatClient(api_key=KEY, base_url=server.base_url, retry=policy) as client:
        with pytest.raises(InstanceNotFoundError):
            await client.get_qr_image("nobody")
        with pytest.raises(QRNotSupportedError):
            await client.get_qr_image("not-baileys")
    async with WachatClient(api_key="wrong-key", base_url=server.base_url) as client:
        with pytest.raises(AuthenticationError):
            await client.get_qr_image(NAME)
    async with WachatClient(api_key="restricted-key", base_url=server.base_url) as client:
        with pytest.raises(SubscriptionRestrictedError):
            await client.get_qr_image("restricted-instance")


async def test_status_error_body_is_the_json_message(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """The .body of a status error is the JSON message field, not the raw JSON."""
    with pytest.raises(InstanceNotFoundError) as info:
        await client.get_qr_image("no-such-instance")
    assert info.value.body
    assert "{" not in info.value.body


async def test_long_html_error_body_is_cut_to_one_short_line(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """A proxy's HTML error page becomes a one-line excerpt of at most 500 characters."""
    page = b"<html>\r\n<body>" + b"Bad gateway\n" * 500 + b"</body></html>"
    server.script(NAME, [Fault(status=500, content_type="text/html", body=page)])
    with pytest.raises(UnexpectedStatusError) as info:
        await client.get_qr_image(NAME)
    assert len(info.value.body) <= 500
    assert "\n" not in info.value.body
    assert "\r" not in info.value.body


# -- invalid bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "exc_type"),
    [
        pytest.param(
            Fault(content_type="text/html", body=b"<h1>Login</h1>"),
            InvalidImageError,
            id="captive-portal-html",
        ),
        pytest.param(
            Fault(body=b"GIF89a not a png at all, sorry"),
            InvalidImageError,
            id="image-png-but-not-png",
        ),
        pytest.param(Fault(body=b""), InvalidImageError, id="empty-200"),
        pytest.param(Fault(body=PNG_1X1[:-12]), InvalidImageError, id="png-without-iend"),
        pytest.param(Fault(body=PNG_1X1[:20]), InvalidImageError, id="png-shorter-than-header"),
        pytest.param(Fault(truncate=True), InvalidImageError, id="connection-closed-mid-body"),
    ],
)
@pytest.mark.parametrize("how", ["get", "stream", "save"])
async def test_bad_bodies_raise_and_leave_nothing_behind(
    server: FakeWachatServer,
    client: WachatClient,
    tmp_path: Path,
    fault: Fault,
    exc_type: type[WachatError],
    how: str,
) -> None:
    """Each invalid 200 raises its error in every API and leaves no connection or file."""
    server.script(NAME, [fault])
    with pytest.raises(exc_type):
        await fetch_via(client, how, tmp_path / "qr.png")
    assert list(tmp_path.iterdir()) == []
    assert_no_connection_checked_out(client)


async def test_truncated_body_is_flagged_truncated(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """A body cut short by the connection is an InvalidImageError with truncated=True."""
    server.script(NAME, [Fault(truncate=True)])
    with pytest.raises(InvalidImageError) as info:
        await client.get_qr_image(NAME)
    assert info.value.truncated


async def test_content_length_over_cap_fails_before_reading(server: FakeWachatServer) -> None:
    """A Content-Length above max_image_bytes raises ResponseTooLargeError at once."""
    big = PNG_1X1[:-12] + b"\x00" * 10_000 + PNG_1X1[-12:]
    server.script(NAME, [Fault(body=big)])
    async with WachatClient(api_key=KEY, base_url=server.base_url, max_image_bytes=1000) as c:
        with pytest.raises(ResponseTooLargeError) as info:
            await c.get_qr_image(NAME)
        assert_no_connection_checked_out(c)
    assert info.value.limit == 1000
    assert info.value.content_length == len(big)


# -- streaming and saving -----------------------------------------------------------------


async def test_stream_yields_chunks_that_join_to_the_png(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """Chunks from stream_qr_image join to the same PNG get_qr_image returns."""
    whole = await client.get_qr_image(NAME)
    async with client.stream_qr_image(NAME, chunk_size=7) as stream:
        chunks = [chunk async for chunk in stream]
        assert (stream.width, stream.height) == (whole.width, whole.height)
        assert stream.bytes_read == len(whole.data)
    assert len(chunks) > 1
    assert b"".join(chunks) == whole.data


async def test_stream_checks_status_before_yielding(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """A 404 is raised by entering the context, before any chunk exists."""
    entered = False
    with pytest.raises(InstanceNotFoundError):
        async with client.stream_qr_image("nobody"):
            entered = True
    assert not entered


async def test_leaving_a_stream_early_releases_the_connection(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """Breaking out after the first chunk closes the half-read connection."""
    async with client.stream_qr_image(NAME, chunk_size=8) as stream:
        async for _ in stream:
            break
    assert_no_connection_checked_out(client)
    assert (await client.get_qr_image(NAME)).data


async def test_stream_iteration_after_exhaustion_stops(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """An exhausted stream keeps raising StopAsyncIteration, and read() is empty."""
    async with client.stream_qr_image(NAME) as stream:
        assert await stream.read()
        assert await stream.read() == b""
        assert "done=True" in repr(stream)


async def test_stream_rejects_bad_chunk_size(client: WachatClient) -> None:
    """chunk_size must be a positive int."""
    with pytest.raises(ValueError, match="chunk_size"):
        async with client.stream_qr_image(NAME, chunk_size=0):
            pass


async def test_save_writes_the_png_atomically(
    server: FakeWachatServer, client: WachatClient, tmp_path: Path
) -> None:
    """save_qr_image leaves exactly the PNG at the path, no temp file."""
    target = tmp_path / "qr.png"
    result = await client.save_qr_image(NAME, str(target))
    assert result == target
    assert decode_qr(target.read_bytes()) == server.qr_payload(NAME)
    assert [p.name for p in tmp_path.iterdir()] == ["qr.png"]


async def test_failed_save_keeps_the_previous_file(
    server: FakeWachatServer, client: WachatClient, tmp_path: Path
) -> None:
    """A failed save leaves an existing file untouched."""
    target = tmp_path / "qr.png"
    target.write_bytes(b"previous")
    server.script(NAME, [Fault(truncate=True)])
    with pytest.raises(InvalidImageError):
        await client.save_qr_image(NAME, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["qr.png"]


async def test_save_retries_start_a_fresh_file(
    server: FakeWachatServer, client: WachatClient, tmp_path: Path
) -> None:
    """A 502 then a 200 saves only the good PNG."""
    server.script(NAME, [502, 200])
    target = await client.save_qr_image(NAME, tmp_path / "qr.png")
    assert decode_qr(target.read_bytes()) == server.qr_payload(NAME)


async def test_save_into_missing_folder_fails_without_a_request(
    server: FakeWachatServer, client: WachatClient, tmp_path: Path
) -> None:
    """A folder that does not exist fails fast with FileNotFoundError, before the network."""
    with pytest.raises(FileNotFoundError):
        await client.save_qr_image(NAME, tmp_path / "missing" / "qr.png")
    assert server.request_count() == 0


@pytest.fixture
async def stalling_server() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A server that sends half a PNG, then waits until released."""
    release = asyncio.Event()
    started = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(PNG_1X1)
        await response.prepare(request)
        await response.write(PNG_1X1[:40])
        started.set()
        await release.wait()
        return response

    app = web.Application()
    app.router.add_get("/api/v1/instance/qr/image", handler)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/api/v1", started
    finally:
        release.set()
        await runner.cleanup()


async def test_cancelled_save_leaves_no_file_and_no_connection(
    stalling_server: tuple[str, asyncio.Event], tmp_path: Path
) -> None:
    """Cancelling save_qr_image mid-body leaves no file and frees the connection."""
    base_url, started = stalling_server
    async with WachatClient(api_key=KEY, base_url=base_url) as client:
        task = asyncio.create_task(client.save_qr_image(NAME, tmp_path / "qr.png"))
        await started.wait()  # half the body is sent; the rest never comes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_no_connection_checked_out(client)
    assert list(tmp_path.iterdir()) == []


async def test_cancelled_stream_releases_the_connection(
    stalling_server: tuple[str, asyncio.Event],
) -> None:
    """Cancelling a consumer blocked inside a stream closes its connection."""
    base_url, _ = stalling_server
    first_bytes = asyncio.Event()
    async with WachatClient(api_key=KEY, base_url=base_url) as client:

        async def consume() -> None:
            async with client.stream_qr_image(NAME) as stream:
                async for _ in stream:
                    first_bytes.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first_bytes.wait(), 10)  # blocked mid-body now: the rest never comes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_no_connection_checked_out(client)


# -- instance state -----------------------------------------------------------------------


async def test_instance_state_follows_the_server(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """get_instance_state reports the state string and is_connected once it is open."""
    before = await client.get_instance_state(NAME)
    assert not before.is_connected
    server.set_state(NAME, "open")
    after = await client.get_instance_state(NAME)
    assert after.state == "open"
    assert after.is_connected
    assert after.integration == "WHATSAPP-BAILEYS"


async def test_unknown_state_is_kept(server: FakeWachatServer, client: WachatClient) -> None:
    """A state the docs do not mention is passed through, not rejected."""
    server.set_state(NAME, "qr-pending-v2")
    state = await client.get_instance_state(NAME)
    assert state.state == "qr-pending-v2"
    assert not state.is_connected


async def test_instance_state_404(server: FakeWachatServer, client: WachatClient) -> None:
    """An unknown instance raises InstanceNotFoundError from the state route too."""
    with pytest.raises(InstanceNotFoundError):
        await client.get_instance_state("nobody")


@pytest.fixture
async def json_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A state route that serves whatever body the test puts first in the list."""
    bodies: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=bodies.pop(0), content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/instance/state", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1", bodies
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[1, 2]", id="json-list"),
        pytest.param(b'{"success": true}', id="no-state"),
        pytest.param(b'{"instance": {"state": 5}}', id="state-not-string"),
        pytest.param(b"", id="empty"),
    ],
)
async def test_malformed_state_body_is_invalid_response(
    json_server: tuple[str, list[bytes]], body: bytes
) -> None:
    """A state body without a state string raises InvalidResponseError, key-free."""
    base_url, bodies = json_server
    bodies.append(body + KEY.encode())
    async with WachatClient(api_key=KEY, base_url=base_url) as client:
        with pytest.raises(InvalidResponseError) as info:
            await client.get_instance_state(NAME)
    assert_no_key(*exception_texts(info.value))


async def test_state_from_nested_data_only(json_server: tuple[str, list[bytes]]) -> None:
    """The state is also found under data.instance when the top-level instance is absent."""
    base_url, bodies = json_server
    bodies.append(b'{"success": true, "data": {"instance": {"state": "open"}}}')
    async with WachatClient(api_key=KEY, base_url=base_url) as client:
        state = await client.get_instance_state(NAME)
    assert state.is_connected
    assert state.integration is None


async def test_oversized_state_body_is_rejected(json_server: tuple[str, list[bytes]]) -> None:
    """A state body over 1 MiB is refused instead of parsed."""
    base_url, bodies = json_server
    bodies.append(b'{"instance": {"state": "open", "pad": "' + b"x" * (1024**2 + 10) + b'"}}')
    async with WachatClient(api_key=KEY, base_url=base_url) as client:
        with pytest.raises(InvalidResponseError, match="over"):
            await client.get_instance_state(NAME)
        assert_no_connection_checked_out(client)


# -- lifecycle and configuration ----------------------------------------------------------


def test_missing_key_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """No api_key and no WACHAT_API_KEY: a ConfigurationError (a ValueError) at once."""
    monkeypatch.delenv("WACHAT_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="WACHAT_API_KEY"):
        WachatClient()
    with pytest.raises(ValueError, match="API key"):
        WachatClient(api_key="   ")


def test_key_and_base_url_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """WACHAT_API_KEY and WACHAT_BASE_URL are used when no arguments are given."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    monkeypatch.setenv("WACHAT_BASE_URL", "https://example.test/api/v2")
    client = WachatClient()
    assert client.base_url == "https://example.test/api/v2"
    assert client.qr_image_url(NAME).startswith("https://example.test/api/v2/instance/qr/image?")


def test_default_base_url_is_production(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without argument or env var the production base URL is used."""
    monkeypatch.delenv("WACHAT_BASE_URL", raising=False)
    assert WachatClient(api_key=KEY).base_url == "https://app.wachat.net/api/v1"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"base_url": "http://example.com/api/v1"}, "clear text", id="http-remote"),
        pytest.param({"base_url": "ftp://example.com/"}, "http", id="ftp"),
        pytest.param({"base_url": "https://u:p@example.com/"}, "user info", id="userinfo"),
        pytest.param({"api_key": "has\nnewline"}, "control", id="key-with-newline"),
        pytest.param({"api_key": 123}, "str", id="key-not-str"),
        pytest.param({"timeout": -1}, "timeout", id="negative-timeout"),
        pytest.param({"timeout": aiohttp.ClientTimeout()}, "timeout", id="timeout-without-limit"),
        pytest.param({"max_connections": 0}, "max_connections", id="zero-connections"),
        pytest.param({"max_connections": 1.5}, "max_connections", id="float-connections"),
        pytest.param({"max_image_bytes": 10}, "max_image_bytes", id="tiny-cap"),
        pytest.param({"max_image_bytes": "5"}, "max_image_bytes", id="cap-not-int"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], match: str) -> None:
    """Misconfiguration raises ConfigurationError naming the problem, never the key."""
    kwargs.setdefault("api_key", KEY)
    with pytest.raises(ConfigurationError, match=match) as info:
        WachatClient(**kwargs)  # type: ignore[arg-type]
    assert_no_key(*exception_texts(info.value))


#: Constructions that fail after the key was read (or while it is checked), by what is wrong.
FAILING_CONFIGURATIONS = [
    pytest.param({"base_url": "http://wachat.example.com/api/v1"}, id="http-remote"),
    pytest.param({"base_url": f"https://example.com/{KEY}/api/v1"}, id="key-in-base-url"),
    pytest.param({"base_url": "https://u:p@example.com/"}, id="userinfo"),
    pytest.param({"max_connections": 0}, id="zero-connections"),
    pytest.param({"timeout": "soon"}, id="bad-timeout"),
    pytest.param({"retry": object()}, id="bad-retry"),
    pytest.param({"user_agent": "a\r\nb"}, id="bad-user-agent"),
    pytest.param({"key_suffix": " "}, id="key-with-trailing-space"),
    pytest.param({"key_suffix": "\n"}, id="key-with-newline"),
]


def _locals_rendered(exc: BaseException) -> str:
    """*exc*'s traceback below the test's own frame (which holds the key the test passed), as
    tools that show locals render it: the standard library's capture_locals, and rich's
    show_locals (what rich.traceback.install gives)."""
    import io

    from rich.console import Console
    from rich.traceback import Traceback

    assert exc.__traceback__ is not None
    below = exc.__traceback__.tb_next  # the library's frames only
    assert below is not None
    text = "".join(
        traceback.TracebackException(type(exc), exc, below, capture_locals=True).format()
    )
    console = Console(file=io.StringIO(), width=300)
    console.print(Traceback.from_exception(type(exc), exc, below, show_locals=True))
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return text + output


@pytest.mark.parametrize("source", ["argument", "environment"])
@pytest.mark.parametrize("kwargs", FAILING_CONFIGURATIONS)
def test_a_failing_construction_shows_no_key_in_traceback_locals(
    kwargs: dict[str, object], source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever makes WachatClient() fail, a traceback rendered with every frame's locals
    (rich, pytest --showlocals, capture_locals) shows neither the key (read from the argument
    or from WACHAT_API_KEY) nor a crash in repr() of the half-built client."""
    kwargs = dict(kwargs)
    key = KEY + str(kwargs.pop("key_suffix", ""))
    if source == "environment":
        monkeypatch.setenv("WACHAT_API_KEY", key)
    else:
        kwargs["api_key"] = key
    with pytest.raises(ConfigurationError) as info:
        WachatClient(**kwargs)  # type: ignore[arg-type]
    rendered = _locals_rendered(info.value)
    assert "WachatClient" in rendered  # the frames and their locals were rendered
    assert_no_key(rendered)


@pytest.mark.parametrize(
    "api_key",
    [
        pytest.param(KEY.encode(), id="bytes"),
        pytest.param(bytearray(KEY.encode()), id="bytearray"),
        pytest.param([KEY], id="list"),
    ],
)
def test_a_key_of_the_wrong_type_is_not_shown_either(api_key: object) -> None:
    """A key passed as bytes (or any non-str) is refused by type, and is not left in the
    locals a traceback shows (the client's frame or build_qr_image_url's)."""
    with pytest.raises(ConfigurationError, match="must be a str, not") as info:
        WachatClient(api_key=api_key)  # type: ignore[arg-type]
    assert_no_key(_locals_rendered(info.value), *exception_texts(info.value))
    with pytest.raises(TypeError, match="must be a str, not") as refused:
        wachat_async.build_qr_image_url(NAME, api_key=api_key)  # type: ignore[arg-type]
    assert_no_key(_locals_rendered(refused.value), *exception_texts(refused.value))


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="no-opt-in"),
        pytest.param({"base_url": "ftp://example.com"}, id="bad-base-url"),
    ],
)
def test_build_qr_image_url_refusals_show_no_key_in_locals(kwargs: dict[str, object]) -> None:
    """build_qr_image_url's refusals, rendered with locals, do not show the key it was given."""
    with pytest.raises(ValueError, match=r"API key|base_url") as info:
        wachat_async.build_qr_image_url(NAME, api_key=KEY, **kwargs)  # type: ignore[arg-type]
    assert_no_key(_locals_rendered(info.value))


def test_repr_of_a_half_built_client_does_not_raise() -> None:
    """A client whose __init__ raised (what a traceback with locals shows as ``self``) has a
    repr."""
    client = WachatClient.__new__(WachatClient)
    assert repr(client) == "<WachatClient state=unconfigured>"


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:1/api/v1", "http://localhost/api/v1", "http://[::1]:8080/api/v1"],
)
def test_plain_http_is_allowed_to_loopback(base_url: str) -> None:
    """Loopback URLs may use http:// (the fake server does)."""
    assert WachatClient(api_key=KEY, base_url=base_url).base_url == base_url


def test_plain_http_to_remote_host_with_explicit_opt_in() -> None:
    """allow_insecure_http=True lifts the http:// refusal."""
    client = WachatClient(
        api_key=KEY, base_url="http://gw.internal/api/v1", allow_insecure_http=True
    )
    assert client.base_url == "http://gw.internal/api/v1"


async def test_borrowed_session_is_used_and_left_open(server: FakeWachatServer) -> None:
    """A caller's session serves the requests and is still open after the client closes."""
    async with aiohttp.ClientSession() as session:
        async with WachatClient(api_key=KEY, base_url=server.base_url, session=session) as c:
            await c.get_qr_image(NAME)
        assert c.closed
        assert not session.closed
        async with session.get(server.url + "/api/v1/instance/state") as response:
            assert response.status == 401


async def _use(client: WachatClient, how: str, tmp_path: Path) -> object:
    """One public call of kind *how* on NAME, reading whatever it returns to the end."""
    if how == "get":
        return await client.get_qr_image(NAME)
    if how == "stream":
        async with client.stream_qr_image(NAME) as stream:
            return await stream.read()
    if how == "save":
        return await client.save_qr_image(NAME, tmp_path / "qr.png")
    if how == "state":
        return await client.get_instance_state(NAME)
    if how == "watch":
        async for qr in client.watch_qr(NAME):
            return qr
    if how == "fetch_many":
        async with client.fetch_many([NAME, f"{NAME}_2"]) as results:
            return [r async for r in results]
    async with client:  # "enter"
        return None  # pragma: no cover - a closed client cannot be entered


USES = [
    pytest.param(how, id=how)
    for how in ("get", "stream", "save", "state", "watch", "fetch_many", "enter")
]


@pytest.mark.parametrize("borrowed", [False, True], ids=["own-session", "borrowed-session"])
@pytest.mark.parametrize("how", USES)
async def test_every_use_of_a_closed_client_raises_client_closed_error(
    server: FakeWachatServer, how: str, borrowed: bool, tmp_path: Path
) -> None:
    """After aclose(), every call (and ``async with``) raises ClientClosedError: a WachatError
    (so ``except WachatError`` handles it) and a RuntimeError (what it was before), with
    attempts == 0 and nothing sent."""
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession()) if borrowed else None
        client = WachatClient(api_key=KEY, base_url=server.base_url, session=session)
        async with client:
            await client.get_qr_image(NAME)
        assert client.closed
        server.reset_log()
        with pytest.raises(ClientClosedError, match="closed") as info:
            await _use(client, how, tmp_path)
    assert isinstance(info.value, WachatError)
    assert isinstance(info.value, RuntimeError)
    assert info.value.attempts == 0
    assert server.request_count() == 0
    assert not (tmp_path / "qr.png").exists()


async def test_a_client_closed_before_its_first_call_refuses_it(server: FakeWachatServer) -> None:
    """aclose() on a client that never made a call closes it all the same."""
    client = WachatClient(api_key=KEY, base_url=server.base_url)
    await client.aclose()
    assert "state=closed" in repr(client)
    with pytest.raises(ClientClosedError):
        await client.get_qr_image(NAME)
    assert server.request_count() == 0


async def test_client_opens_lazily_without_async_with(server: FakeWachatServer) -> None:
    """Without async with, the session is created at the first call, inside the loop."""
    client = WachatClient(api_key=KEY, base_url=server.base_url)
    assert "unopened" in repr(client)
    await client.get_qr_image(NAME)
    assert "state=open" in repr(client)
    await client.aclose()
    await client.aclose()  # idempotent
    assert "closed" in repr(client)


async def test_garbage_collected_open_client_warns(server: FakeWachatServer) -> None:
    """Dropping an open client emits a ResourceWarning; asyncio's async-generator finaliser
    then closes its session in the loop that still runs."""
    client = WachatClient(api_key=KEY, base_url=server.base_url)
    view = client.with_options(timeout=3.0)
    await view.get_qr_image(NAME)
    session = client._state.session
    assert session is not None
    del client
    gc.collect()  # the view still holds the shared state: nothing to say yet
    with pytest.warns(ResourceWarning, match="Unclosed WachatClient"):
        del view  # the last holder of the shared state
    await until(lambda: session.closed)


async def test_connection_refused_is_a_connection_error() -> None:
    """Nobody listening: WachatConnectionError with the aiohttp cause chained."""
    async with WachatClient(api_key=KEY, base_url="http://127.0.0.1:9/api/v1") as client:
        with pytest.raises(WachatConnectionError) as info:
            await client.get_qr_image(NAME)
    assert isinstance(info.value.__cause__, aiohttp.ClientError)
    assert_no_key(*exception_texts(info.value))


async def test_per_request_timeout_is_a_timeout_error(server: FakeWachatServer) -> None:
    """A server slower than the request timeout raises WachatTimeoutError."""
    server.script(NAME, [Fault(hang=True)])
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, timeout=0.05, retry=RetryPolicy.disabled()
    ) as client:
        with pytest.raises(WachatTimeoutError, match="timed out"):
            await client.get_qr_image(NAME)
        assert_no_connection_checked_out(client)


# -- secrets ------------------------------------------------------------------------------


async def test_key_never_appears_in_reprs_errors_or_logs(
    server: FakeWachatServer, all_logs: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Across successes, every error kind and retries, no repr, error or log line has the key."""
    server.add_instance("other", integration="WHATSAPP-BUSINESS")
    echo = f"bad key {KEY} apiKey={KEY} Authorization: Bearer {KEY}".encode()
    server.script(NAME, [502, Fault(status=500, body=echo, content_type="text/plain")])
    seen: list[object] = []
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, retry=RetryPolicy(zero_wait=True)
    ) as client:
        seen += [repr(client), str(client), client.retry_policy, client.retry_budget]
        for name in (NAME, NAME, "missing", "other"):
            try:
                seen.append(await client.get_qr_image(name))
            except WachatError as exc:
                seen += list(exception_texts(exc))
        async with client.stream_qr_image(NAME) as stream:
            seen.append(repr(stream))
        seen.append(await client.get_instance_state(NAME))
    bad = WachatClient(api_key=KEY, base_url="http://127.0.0.1:9/api/v1")
    try:
        await bad.get_qr_image(NAME)
    except WachatError as exc:
        seen += list(exception_texts(exc))
    await bad.aclose()
    seen += [record.getMessage() for record in all_logs.records]
    seen += [repr(request) for request in server.requests]
    assert len(seen) > 10
    assert_no_key(*seen)
    assert any("[REDACTED]" in str(text) for text in seen)


def test_gc_of_unopened_client_is_silent() -> None:
    """A client that never opened a session warns about nothing when collected."""
    client = WachatClient(api_key=KEY)
    del client
    gc.collect()


def test_environment_is_not_mutated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constructing a client reads the environment but never writes to it."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    before = dict(os.environ)
    WachatClient()
    assert dict(os.environ) == before


def test_qr_image_is_exported_and_repr_safe() -> None:
    """QRImage's repr summarises the image without the bytes."""
    qr = QRImage.from_png(PNG_1X1, instance_name=NAME)
    assert "1x1 PNG" in repr(qr)
    assert "\\x89" not in repr(qr)


@pytest.fixture
async def encoding_server() -> AsyncIterator[str]:
    """Serves PNG_1X1 chunked (/chunked), gzip-encoded (/gzip) and chunked-and-huge (/huge)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        mode = request.query["instanceName"]
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        if mode == "gzip":
            response.enable_compression(web.ContentCoding.gzip)
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        if mode == "huge":
            for _ in range(64):
                await response.write(b"\x00" * 1024)
        else:
            await response.write(PNG_1X1[:10])
            await response.write(PNG_1X1[10:])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/api/v1/instance/qr/image", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("mode", ["chunked", "gzip"])
async def test_bodies_without_plain_length_are_read_and_validated(
    encoding_server: str, mode: str
) -> None:
    """Chunked and gzip-encoded PNGs take the capped streaming path and decode exactly."""
    async with WachatClient(api_key=KEY, base_url=encoding_server) as client:
        qr = await client.get_qr_image(mode)
        assert_no_connection_checked_out(client)
    assert qr.data == PNG_1X1


async def test_chunked_body_over_the_cap_stops_reading(encoding_server: str) -> None:
    """A chunked body that grows past max_image_bytes raises ResponseTooLargeError."""
    async with WachatClient(api_key=KEY, base_url=encoding_server, max_image_bytes=4096) as c:
        with pytest.raises(ResponseTooLargeError) as info:
            await c.get_qr_image("huge")
        assert_no_connection_checked_out(c)
    assert info.value.content_length is None


async def test_state_body_cut_short_is_an_invalid_response_not_an_image_error() -> None:
    """A JSON state body cut short is InvalidResponseError (there is no image involved)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"instance": '
        )
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        async with WachatClient(api_key=KEY, base_url=f"http://127.0.0.1:{port}/api/v1") as c:
            with pytest.raises(InvalidResponseError, match="cut short") as info:
                await c.get_instance_state(NAME)
            assert_no_connection_checked_out(c)
    finally:
        raw.close()
        await raw.wait_closed()
    assert not isinstance(info.value, InvalidImageError)
