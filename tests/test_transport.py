"""The transport (``_transport.py``): one attempt on the wire, its error mapping and its parsers.

Behaviour of a whole call (retries included) is specified in test_client.py and test_retry.py;
here one attempt is driven directly, so "never retries" and "always releases" are visible
without a retry loop around it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from wachat_async import (
    ClientClosedError,
    InstanceNotFoundError,
    InvalidResponseError,
    QRFetchFailedError,
    RetryPolicy,
    WachatClient,
    WachatConnectionError,
    WachatTimeoutError,
)
from wachat_async._redact import Secret
from wachat_async._slots import ConnectionQueue
from wachat_async._transport import (
    DEFAULT_TIMEOUT,
    Transport,
    parse_retry_after,
    transport_error,
)
from wachat_async.testing import FakeWachatServer, Fault

from .conftest import KEY, NAME, assert_no_key, exception_texts

# -- Retry-After --------------------------------------------------------------------------


NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("3", 3.0, id="seconds"),
        pytest.param(" 7 ", 7.0, id="seconds-padded"),
        pytest.param("1.5", 1.5, id="fractional"),
        pytest.param("-5", None, id="negative"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("1e309", None, id="overflowing-exponent"),
        pytest.param("9" * 400, math.inf, id="huge-integer-is-infinite"),
        pytest.param(format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0, id="date"),
        pytest.param(format_datetime(NOW - timedelta(hours=1), usegmt=True), 0.0, id="past-date"),
        pytest.param("Wed, 25 Nov 2026 12:00:10", 10.0, id="date-without-zone"),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    """Retry-After is read as delta-seconds or HTTP-date; anything unusable is None."""
    assert parse_retry_after(header, now=NOW) == expected


def test_parse_retry_after_uses_the_current_time() -> None:
    """Without an explicit now, a date a minute ahead is about 60 seconds away."""
    ahead = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    wait = parse_retry_after(ahead)
    assert wait is not None
    assert 0 < wait <= 60


# -- mapping transport exceptions -----------------------------------------------------------


class _Quoting(Exception):
    """An exception whose repr, unlike its str, quotes what it was given (as aiohttp's do)."""

    def __init__(self, text: str, quoted: str) -> None:
        super().__init__(text)
        self.quoted = quoted

    def __repr__(self) -> str:
        return f"_Quoting({self.quoted!r})"


def _chained(where: str) -> BaseException:
    """A connection error with the key at *where* in it or in its chain."""
    error = aiohttp.ClientConnectionError("connection lost")
    if where == "str":
        error = aiohttp.ClientConnectionError(f"connection lost: {KEY}")
    elif where == "repr-only":
        error = aiohttp.ClientConnectionError(_Quoting("bytes", KEY))
    elif where == "cause":
        error.__cause__ = ValueError(f"parser saw {KEY}")
    elif where == "context":
        error.__context__ = ValueError(f"parser saw {KEY}")
    elif where == "deep-context":
        inner = ValueError("outer")
        inner.__context__ = OSError(f"echo {KEY}")
        error.__cause__ = inner
    elif where == "cycle":
        other = ValueError(f"echo {KEY}")
        other.__context__ = error
        error.__context__ = other
    return error


@pytest.mark.parametrize("where", ["str", "repr-only", "cause", "context", "deep-context", "cycle"])
def test_transport_error_sanitises_a_chain_that_quotes_the_key(where: str) -> None:
    """Wherever in an aiohttp exception's chain the key is, the mapped error does not carry it:
    its cause is replaced by a sanitised stand-in."""
    error = transport_error(_chained(where), NAME, [KEY])
    assert type(error).__name__ == "WachatConnectionError"
    assert type(error.__cause__).__name__ == "_SanitizedCause"
    assert_no_key(*exception_texts(error))


def test_transport_error_keeps_a_clean_cause() -> None:
    """A chain that does not mention the key is kept as it is, for debugging."""
    cause = aiohttp.ClientConnectionError("connection lost")
    assert transport_error(cause, NAME, [KEY]).__cause__ is cause


@pytest.mark.parametrize(
    ("exc", "expected", "png"),
    [
        pytest.param(TimeoutError(), WachatTimeoutError, True, id="timeout"),
        pytest.param(aiohttp.ClientPayloadError("cut"), "truncated-png", True, id="cut-png"),
        pytest.param(aiohttp.ClientPayloadError("cut"), InvalidResponseError, False, id="cut-json"),
        pytest.param(
            aiohttp.ClientConnectionError("reset"), WachatConnectionError, True, id="reset"
        ),
        pytest.param(ConnectionRefusedError("refused"), WachatConnectionError, True, id="os-error"),
    ],
)
def test_transport_error_maps_each_family(exc: BaseException, expected: object, png: bool) -> None:
    """Timeouts, bodies cut short (a truncated PNG or a bad JSON body) and connection failures
    each become their own error, named after the instance."""
    error = transport_error(exc, NAME, [KEY], png=png)
    if expected == "truncated-png":
        assert (type(error).__name__, getattr(error, "truncated", None)) == (
            "InvalidImageError",
            True,
        )
    else:
        assert type(error) is expected
    assert error.instance_name == NAME


def test_client_response_error_is_never_the_cause() -> None:
    """aiohttp's ClientResponseError (whose repr shows request headers) is replaced as cause."""
    info = aiohttp.RequestInfo(
        URL("https://app.wachat.net/api/v1/instance/qr/image"),
        "GET",
        CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {KEY}"})),
    )
    cause = aiohttp.ClientResponseError(info, (), status=500, message="x")
    error = transport_error(cause, NAME, [KEY])
    assert type(error.__cause__).__name__ == "_SanitizedCause"
    assert_no_key(*exception_texts(error))


# -- one attempt against a real server ------------------------------------------------------


@pytest.fixture
async def transport(server: FakeWachatServer) -> AsyncIterator[Transport]:
    """A transport bound to a session of its own on the fake server."""
    t = Transport(
        api_key=Secret(KEY),
        qr_url=URL(server.base_url).joinpath("instance", "qr", "image"),
        timeout=DEFAULT_TIMEOUT,
        max_image_bytes=5 * 1024**2,
        user_agent="tests",
        borrowed=False,
        link=SimpleNamespace(session=None, slots=ConnectionQueue(2), closed=False),
    )
    async with aiohttp.ClientSession() as session:
        t.link.session = session
        yield t


async def test_an_attempt_is_one_request_and_never_retries(
    server: FakeWachatServer, transport: Transport
) -> None:
    """A 502 is raised after exactly one request, whatever comes next: retrying is not its job."""
    server.script(NAME, [502, 200])
    with pytest.raises(QRFetchFailedError) as info:
        await transport.fetch_image(NAME)
    assert (server.request_count(NAME), info.value.attempts) == (1, 1)
    assert transport.link.slots.in_use == 0  # the slot is back


async def test_an_attempt_returns_a_validated_image(
    server: FakeWachatServer, transport: Transport
) -> None:
    """A 200 becomes a QRImage with the PNG's dimensions."""
    qr = await transport.fetch_image(NAME)
    assert (qr.instance_name, qr.width > 0, qr.height > 0) == (NAME, True, True)


async def test_a_404_names_the_route_when_the_base_url_looks_wrong(
    server: FakeWachatServer,
) -> None:
    """A 404 from a base URL that does not end in /api/v1 carries a note about the base URL."""
    t = Transport(
        api_key=Secret(KEY),
        qr_url=URL(server.base_url).parent.joinpath("v2", "instance", "qr", "image"),
        timeout=DEFAULT_TIMEOUT,
        max_image_bytes=1024,
        user_agent="tests",
        borrowed=False,
        link=SimpleNamespace(session=None, slots=ConnectionQueue(1), closed=False),
    )
    async with aiohttp.ClientSession() as session:
        t.link.session = session
        with pytest.raises(InstanceNotFoundError) as info:
            await t.fetch_image(NAME)
    assert any("base URL" in note for note in info.value.__notes__)


async def test_an_attempt_without_a_session_is_refused_and_gives_its_slot_back(
    transport: Transport,
) -> None:
    """Once the client has let go of the session (it was closed), an image attempt raises
    ClientClosedError having sent nothing, and its slot is free again."""
    transport.link.session = None
    with pytest.raises(ClientClosedError) as info:
        await transport.fetch_image(NAME)
    assert (info.value.attempts, info.value.instance_name, transport.link.slots.in_use) == (
        0,
        NAME,
        0,
    )


@pytest.mark.parametrize("call", ["get", "stream", "state"])
async def test_a_runtime_error_of_an_open_session_is_not_taken_for_a_closed_client(
    server: FakeWachatServer, call: str
) -> None:
    """A RuntimeError raised inside aiohttp while the session is open (here by a trace hook)
    propagates as it is: only a closed session's RuntimeError means the client was closed."""

    async def boom(*_: object) -> None:
        raise RuntimeError("hook failed")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(boom)
    async with WachatClient(api_key=KEY, base_url=server.base_url, trace_configs=[trace]) as client:

        async def run() -> object:
            if call == "get":
                return await client.get_qr_image(NAME)
            if call == "stream":
                async with client.stream_qr_image(NAME) as stream:
                    return stream
            return await client.get_instance_state(NAME)

        with pytest.raises(RuntimeError, match="hook failed") as info:
            await run()
        assert not isinstance(info.value, ClientClosedError)
        assert client._state.slots.in_use == 0


@pytest.mark.parametrize(
    "content_type",
    ["image/png; charset=binary", "IMAGE/PNG", "Image/Png"],
    ids=["with-parameter", "capitals", "mixed-case"],
)
async def test_a_png_content_type_written_otherwise_is_still_a_png(
    server: FakeWachatServer, content_type: str
) -> None:
    """The raw header is compared first; any other spelling of image/png is parsed and accepted
    (the slower path), and the image is validated the same way."""
    server.script(NAME, [Fault(content_type=content_type)])
    async with WachatClient(api_key=KEY, base_url=server.base_url) as client:
        qr = await client.get_qr_image(NAME)
        assert client._state.slots.in_use == 0
    assert (qr.instance_name, qr.width > 0) == (NAME, True)


# -- the DEBUG line of each attempt ------------------------------------------------------


async def _each_call(client: WachatClient, how: str, tmp_path: Path) -> None:
    if how == "get":
        await client.get_qr_image(NAME)
    elif how == "stream":
        async with client.stream_qr_image(NAME) as stream:
            await stream.read()
    elif how == "save":
        await client.save_qr_image(NAME, tmp_path / "qr.png")
    else:
        await client.get_instance_state(NAME)


@pytest.mark.parametrize("how", ["get", "stream", "save", "state"])
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        pytest.param([], ["-> 200 OK"], id="ok"),
        pytest.param([Fault(status=502), Fault(status=200)], ["-> 502", "-> 200 OK"], id="retried"),
        # The answer's line is logged when the headers come; the body then fails to arrive.
        pytest.param([Fault(drop=True)], ["-> 200 OK"], id="cut-mid-body"),
    ],
)
async def test_every_attempt_of_every_call_is_one_debug_line_without_the_key(
    server: FakeWachatServer,
    how: str,
    script: list[Fault],
    expected: list[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """``wachat_async.http`` logs one DEBUG line per attempt, on every kind of call, the
    one-coroutine image fetch included; the key is never in it."""
    if script:
        server.script(NAME, script)
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, retry=RetryPolicy(zero_wait=True)
    ) as client:
        with (
            caplog.at_level(logging.DEBUG, logger="wachat_async.http"),
            contextlib.suppress(WachatConnectionError),
        ):
            await _each_call(client, how, tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "wachat_async.http"]
    if how == "state":  # the state route is not scripted: one plain answer
        expected = ["-> 200 OK"]
    assert len(lines) == len(expected), lines
    for line, part in zip(lines, expected, strict=True):
        assert line.startswith("GET http"), line
        assert part in line, line
    assert_no_key(*lines)
