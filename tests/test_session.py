"""Sessions and connections: borrowed sessions, the connection queue, event-loop changes.

Real loopback servers throughout; timings are tiny and nothing asserts a duration, only
outcomes (every call succeeded, the server saw exactly these headers, no warning was emitted).
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from wachat_async import (
    ConfigurationError,
    InstanceNotFoundError,
    QRFetchFailedError,
    QRImage,
    RetryPolicy,
    WachatClient,
    WachatTimeoutError,
)
from wachat_async.testing import FakeWachatServer, Fault

from .conftest import KEY, NAME, assert_no_connection_checked_out, assert_no_key

ZERO_WAIT = RetryPolicy(zero_wait=True)


async def call(client: WachatClient, how: str, name: str, tmp_path: Path) -> object:
    """One public call of kind *how*, reading the whole body; returns what it produced."""
    if how == "get":
        return await client.get_qr_image(name)
    if how == "stream":
        async with client.stream_qr_image(name) as stream:
            return await stream.read()
    if how == "save":
        return await client.save_qr_image(name, tmp_path / f"{name}.png")
    return await client.get_instance_state(name)


CALLS = [pytest.param(how, id=how) for how in ("get", "stream", "save", "state")]


@pytest.mark.parametrize("how", CALLS)
async def test_every_call_can_be_a_clients_first(
    server: FakeWachatServer, how: str, tmp_path: Path
) -> None:
    """Without ``async with``, whichever call comes first opens the session in the running loop."""
    client = WachatClient(api_key=KEY, base_url=server.base_url, retry=ZERO_WAIT)
    try:
        assert "state=unopened" in repr(client)
        assert await call(client, how, NAME, tmp_path)
        assert "state=open" in repr(client)
    finally:
        await client.aclose()


@asynccontextmanager
async def borrowing(
    server: FakeWachatServer, session: aiohttp.ClientSession, **kwargs: Any
) -> AsyncIterator[WachatClient]:
    """Enter *session* and a client that borrows it."""
    async with (
        session,
        WachatClient(api_key=KEY, base_url=server.base_url, session=session, **kwargs) as client,
    ):
        yield client


# -- a borrowed session's defaults never change a result --------------------------------


async def _raise_anything(response: aiohttp.ClientResponse) -> None:
    raise RuntimeError(f"borrowed raise_for_status callable saw {response.status}")


@pytest.mark.parametrize(
    "raise_for_status",
    [pytest.param(True, id="true"), pytest.param(_raise_anything, id="callable")],
)
async def test_borrowed_raise_for_status_changes_no_status_mapping(
    server: FakeWachatServer, raise_for_status: Any
) -> None:
    """With raise_for_status on the borrowed session, a 404 is still InstanceNotFoundError and
    a 502 is still retried (and a 200 still a QRImage)."""
    server.script(NAME, [502])
    session = aiohttp.ClientSession(raise_for_status=raise_for_status)
    async with borrowing(server, session, retry=ZERO_WAIT) as client:
        with pytest.raises(InstanceNotFoundError):
            await client.get_qr_image("nobody")
        qr = await client.get_qr_image(NAME)
    assert isinstance(qr, QRImage)
    assert server.request_count(NAME) == 2  # the 502, then the retry


async def test_borrowed_502_without_retries_is_a_status_error(server: FakeWachatServer) -> None:
    """A 502 through a raise_for_status session is QRFetchFailedError, not a connection error."""
    server.script(NAME, [502])
    async with (
        aiohttp.ClientSession(raise_for_status=True) as session,
        WachatClient(
            api_key=KEY, base_url=server.base_url, session=session, retry=RetryPolicy.disabled()
        ) as client,
    ):
        with pytest.raises(QRFetchFailedError) as info:
            await client.get_qr_image(NAME)
    assert info.value.status == 502


async def test_borrowed_default_headers_and_cookies_are_not_sent(server: FakeWachatServer) -> None:
    """Another API's Authorization, User-Agent, Accept, custom headers and cookies on the
    borrowed session never reach Wachat: the server sees exactly the client's headers."""
    session = aiohttp.ClientSession(
        headers={
            "Authorization": "Bearer other-api-token",
            "User-Agent": "other-app/1.0",
            "Accept": "text/html",
            "X-Other-Api-Key": "other-secret",
            "Cookie": "from=headers",
        },
        cookies={"session_id": "other-cookie"},
        cookie_jar=aiohttp.CookieJar(unsafe=True),  # unsafe: keeps cookies for IP hosts
    )
    async with session:
        session.cookie_jar.update_cookies({"host_cookie": "x"}, response_url=URL(server.url))
        assert len(session.cookie_jar.filter_cookies(URL(server.base_url))) == 2
        async with WachatClient(api_key=KEY, base_url=server.base_url, session=session) as client:
            await client.get_qr_image(NAME)
            await client.get_instance_state(NAME)
    for request in server.requests:
        assert request.auth_via == "bearer"
        assert request.key_valid
        assert request.user_agent is not None
        assert request.user_agent.startswith("wachat-async/")
        assert "X-Other-Api-Key" not in request.headers
        assert "Cookie" not in request.headers
    assert [r.headers["Accept"] for r in server.requests] == ["image/png", "application/json"]


async def test_borrowed_cookie_jar_gets_nothing_from_wachat(server: FakeWachatServer) -> None:
    """Cookies Wachat might set do not land in the lender's jar."""
    server.script(NAME, [Fault(headers={"Set-Cookie": "wachat=1; Path=/"})])
    jar = aiohttp.CookieJar(unsafe=True)  # unsafe: would keep cookies from an IP host
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with WachatClient(api_key=KEY, base_url=server.base_url, session=session) as client:
            await client.get_qr_image(NAME)
        assert len(session.cookie_jar) == 0


async def test_borrowed_base_url_and_timeout_do_not_apply(server: FakeWachatServer) -> None:
    """A session made for another host (base_url) with a tiny timeout still reaches Wachat
    under the client's own timeout."""
    server.script(NAME, [Fault(delay=0.05)])
    async with (
        aiohttp.ClientSession(
            base_url="http://other-api.invalid/", timeout=aiohttp.ClientTimeout(total=0.001)
        ) as session,
        WachatClient(api_key=KEY, base_url=server.base_url, session=session) as client,
    ):
        qr = await client.get_qr_image(NAME)
    assert qr.instance_name == NAME


async def test_borrowed_auto_decompress_off_still_decodes(server: FakeWachatServer) -> None:
    """A gzip-encoded PNG is decoded even when the borrowed session turned decompression off
    (and a tiny read buffer changes nothing)."""
    async with FakeWachatServer(api_key=KEY) as plain:
        plain.add_instance(NAME)
        png = (await _fetch_plain(plain)).data
    server.script(
        NAME,
        [Fault(body=gzip.compress(png), headers={"Content-Encoding": "gzip"})],
    )
    async with borrowing(
        server, aiohttp.ClientSession(auto_decompress=False, read_bufsize=16)
    ) as client:
        qr = await client.get_qr_image(NAME)
    assert qr.data == png


async def _fetch_plain(server: FakeWachatServer) -> QRImage:
    async with WachatClient(api_key=KEY, base_url=server.base_url) as client:
        return await client.get_qr_image(NAME)


async def test_borrowed_basic_auth_does_not_replace_the_key(server: FakeWachatServer) -> None:
    """A session with default BasicAuth (for another API) neither clashes with the Bearer
    header nor replaces it."""
    with pytest.warns(DeprecationWarning, match="auth"):  # aiohttp deprecates session auth
        session = aiohttp.ClientSession(auth=aiohttp.BasicAuth("user", "other-password"))
    async with borrowing(server, session) as client:
        await client.get_qr_image(NAME)
    assert server.requests[-1].auth_via == "bearer"
    assert server.requests[-1].key_valid


async def test_borrowed_trust_env_netrc_is_not_read(
    server: FakeWachatServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trust_env on the borrowed session would add ~/.netrc credentials for the host (and
    aiohttp would refuse them next to our header); the client never uses them."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    async with borrowing(server, aiohttp.ClientSession(trust_env=True)) as client:
        await client.get_qr_image(NAME)
    assert server.requests[-1].key_valid


async def test_borrowed_middlewares_are_not_applied(server: FakeWachatServer) -> None:
    """A client middleware on the borrowed session does not touch Wachat requests."""
    touched: list[str] = []

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        touched.append(str(request.url))
        request.headers["Authorization"] = "Bearer hijacked"
        return await handler(request)

    async with borrowing(server, aiohttp.ClientSession(middlewares=(middleware,))) as client:
        await client.get_qr_image(NAME)
    assert touched == []
    assert server.requests[-1].key_valid


async def test_borrowed_connector_and_trace_configs_are_used(server: FakeWachatServer) -> None:
    """What a borrowed session lends is used: its connection pool and its trace configs."""
    started: list[str] = []

    async def on_request_start(*args: Any) -> None:
        started.append(str(args[2].url.path))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        async with WachatClient(api_key=KEY, base_url=server.base_url, session=session) as client:
            await client.get_qr_image(NAME)
        connector = session.connector
        assert connector is not None
        assert sum(len(conns) for conns in connector._conns.values()) == 1  # back in its pool
        assert not session.closed
    assert started == ["/api/v1/instance/qr/image"]


async def test_redirects_are_never_followed_whatever_the_session(
    server: FakeWachatServer,
) -> None:
    """A 302 is reported (not followed), with a borrowed session that requotes redirects."""
    server.script(NAME, [Fault(status=302, headers={"Location": "http://elsewhere.invalid/x"})])
    async with (
        aiohttp.ClientSession(requote_redirect_url=False) as session,
        WachatClient(
            api_key=KEY, base_url=server.base_url, session=session, retry=ZERO_WAIT
        ) as client,
    ):
        with pytest.raises(Exception, match="not followed") as info:
            await client.get_qr_image(NAME)
    assert getattr(info.value, "status", None) == 302
    assert server.request_count() == 1


async def test_closed_borrowed_session_is_a_configuration_error(server: FakeWachatServer) -> None:
    """A borrowed session closed before (or while) the client uses it is a clear error."""
    session = aiohttp.ClientSession()
    await session.close()
    client = WachatClient(api_key=KEY, base_url=server.base_url, session=session)
    with pytest.raises(ConfigurationError, match="is closed"):
        await client.get_qr_image(NAME)
    await client.aclose()

    session = aiohttp.ClientSession()
    async with WachatClient(api_key=KEY, base_url=server.base_url, session=session) as client:
        await client.get_qr_image(NAME)
        await session.close()
        with pytest.raises(ConfigurationError, match="was closed") as info:
            await client.get_qr_image(NAME)
    assert_no_key(info.value)


async def test_unclosed_client_on_a_borrowed_session_is_collected_silently(
    server: FakeWachatServer,
) -> None:
    """Dropping a client that borrowed a session warns about nothing (the session is the
    caller's, and stays usable)."""
    async with aiohttp.ClientSession() as session:
        client = WachatClient(api_key=KEY, base_url=server.base_url, session=session)
        await client.get_qr_image(NAME)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            del client
            gc.collect()
        async with session.get(server.base_url + "/instance/state") as response:
            assert response.status == 401


# -- the connection queue -----------------------------------------------------------------


@pytest.mark.parametrize("how", CALLS)
async def test_more_calls_than_connections_queue_instead_of_timing_out(
    how: str, tmp_path: Path
) -> None:
    """max_connections=1, a slow server, four concurrent calls: every call succeeds, because
    each waits for a connection before its per-attempt timeout starts."""
    async with FakeWachatServer(api_key=KEY, latency=0.1) as server:
        names = [f"{NAME}_{i}" for i in range(4)]
        for name in names:
            server.add_instance(name)
        async with WachatClient(
            api_key=KEY,
            base_url=server.base_url,
            max_connections=1,
            timeout=0.3,
            retry=RetryPolicy.disabled(),
        ) as client:
            results = await asyncio.gather(
                *(call(client, how, name, tmp_path) for name in names), return_exceptions=True
            )
            assert_no_connection_checked_out(client)
            assert client._slots._value == 1
    assert [r for r in results if isinstance(r, BaseException)] == []


@pytest.mark.parametrize(
    "connector_kwargs",
    [
        pytest.param({"limit": 1}, id="limit"),
        pytest.param({"limit": 0, "limit_per_host": 1}, id="limit-per-host"),
        pytest.param({"limit": 5, "limit_per_host": 1}, id="both"),
    ],
)
async def test_borrowed_session_queue_follows_its_connector(
    connector_kwargs: dict[str, int],
) -> None:
    """With a borrowed session the queue is sized from its connector (limit, limit_per_host):
    more calls than connections all succeed, and fetch_many is capped the same way."""
    async with FakeWachatServer(api_key=KEY, latency=0.1) as server:
        names = [f"{NAME}_{i}" for i in range(4)]
        for name in names:
            server.add_instance(name)
        connector = aiohttp.TCPConnector(**connector_kwargs)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            WachatClient(
                api_key=KEY,
                base_url=server.base_url,
                session=session,
                timeout=0.3,
                retry=RetryPolicy.disabled(),
            ) as client,
        ):
            assert client._slot_limit == 1
            images = await asyncio.gather(*(client.get_qr_image(n) for n in names))
            async with client.fetch_many(names, concurrency=50) as results:
                outcomes = [r async for r in results]
    assert [qr.instance_name for qr in images] == names
    assert all(result.ok for result in outcomes)


def test_unlimited_borrowed_connector_means_an_unlimited_queue() -> None:
    """aiohttp's limit=0 is 'no limit': the client's queue does not limit either."""

    async def main() -> int | None:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            return WachatClient(api_key=KEY, session=session)._slot_limit

    assert asyncio.run(main()) is None


async def test_stream_holds_its_slot_until_closed(server: FakeWachatServer) -> None:
    """An open stream keeps its connection slot; leaving the block (read or not) frees it."""
    async with WachatClient(api_key=KEY, base_url=server.base_url, max_connections=1) as client:
        async with client.stream_qr_image(NAME) as stream:
            assert client._slots.locked()
            await stream.__anext__()
        assert not client._slots.locked()
        async with client.stream_qr_image(NAME):
            pass
        assert not client._slots.locked()


@pytest.mark.parametrize("how", CALLS)
async def test_slots_are_released_on_errors_and_cancellation(
    server: FakeWachatServer, how: str, tmp_path: Path
) -> None:
    """A failed call and a cancelled call both give their connection slot back."""
    server.script(NAME, [Fault(hang=True)])
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, max_connections=2, retry=ZERO_WAIT
    ) as client:
        with pytest.raises(InstanceNotFoundError):
            await call(client, how, "nobody", tmp_path)
        task = asyncio.ensure_future(call(client, how, NAME, tmp_path))
        while not server.request_count(NAME):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client._slots._value == 2
        assert_no_connection_checked_out(client)


async def test_a_retry_waiting_out_its_backoff_holds_no_slot(server: FakeWachatServer) -> None:
    """Between attempts (the backoff wait) a call holds no connection slot: with one slot, a
    call queued behind a failing one is sent before the failing one's retry."""
    server.add_instance("queued")
    server.script(NAME, [502, 200])
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, max_connections=1, retry=ZERO_WAIT
    ) as client:
        retrying = asyncio.ensure_future(client.get_qr_image(NAME))
        while not server.request_count(NAME):
            await asyncio.sleep(0)
        await client.get_qr_image("queued")
        await retrying
    assert [r.instance_name for r in server.requests] == [NAME, "queued", NAME]


async def test_deadline_bounds_the_wait_for_a_slot(server: FakeWachatServer) -> None:
    """A call queued behind a connection that is never freed ends at the policy's deadline
    with WachatTimeoutError, and its place in the queue is given up."""
    async with WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        max_connections=1,
        timeout=5.0,
        retry=RetryPolicy(zero_wait=True, deadline=0.05),
    ) as client:
        async with client.stream_qr_image(NAME):
            with pytest.raises(WachatTimeoutError, match="deadline"):
                await client.get_qr_image(NAME)
        assert not client._slots.locked()
        assert (await client.get_qr_image(NAME)).instance_name == NAME
    assert server.request_count(NAME) == 2


def test_fetch_many_concurrency_is_capped_at_the_queue_size() -> None:
    """fetch_many never runs more workers than the client has connection slots."""
    captured: dict[str, Any] = {}

    def fake_fetch_many(fetch: object, names: object, **kwargs: Any) -> None:
        captured.update(kwargs)

    client = WachatClient(api_key=KEY, max_connections=3)
    import wachat_async._client as module

    original = module.fetch_many
    module.fetch_many = fake_fetch_many  # type: ignore[assignment]
    try:
        client.fetch_many(["a"], concurrency=32)
    finally:
        module.fetch_many = original
    assert captured["concurrency"] == 3


# -- a client used across event loops -----------------------------------------------------


def _run(fn: Callable[[], Awaitable[Any]]) -> Any:
    """asyncio.run(fn()) with every warning an error and a full collection afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = asyncio.run(fn())  # type: ignore[arg-type]
        gc.collect()
    return result


@pytest.fixture
def threaded_server(
    wachat_server_factory: Callable[..., FakeWachatServer],
) -> FakeWachatServer:
    """A fake server on its own thread, so it outlives the event loops of the test."""
    server = wachat_server_factory(api_key=KEY)
    server.add_instance(NAME)
    return server


def test_bare_calls_across_two_asyncio_runs(
    threaded_server: FakeWachatServer, tmp_path: Path
) -> None:
    """A module-level client used by successive asyncio.run calls works in each, with no
    warning and no 'Event loop is closed' (its session follows the loop)."""
    client = WachatClient(api_key=KEY, base_url=threaded_server.base_url, max_connections=2)

    async def use() -> list[object]:
        # Concurrent calls first: they all see the loop change at once.
        return [
            *await asyncio.gather(*(client.get_qr_image(NAME) for _ in range(4))),
            await client.get_instance_state(NAME),
            await call(client, "stream", NAME, tmp_path),
            await call(client, "save", NAME, tmp_path),
            await client.get_qr_image(NAME),
        ]

    first = _run(use)
    second = _run(use)
    third = _run(use)
    assert len(first) == len(second) == len(third) == 8
    _run(client.aclose)
    assert client.closed
    assert threaded_server.request_count() == 24


def test_async_with_after_bare_calls_in_an_earlier_run(threaded_server: FakeWachatServer) -> None:
    """Bare calls in one asyncio.run, then ``async with client`` in the next: both work and the
    client ends closed, without warnings."""
    client = WachatClient(api_key=KEY, base_url=threaded_server.base_url)

    async def bare() -> QRImage:
        return await client.get_qr_image(NAME)

    async def scoped() -> QRImage:
        async with client:
            return await client.get_qr_image(NAME)

    assert _run(bare).instance_name == NAME
    assert _run(scoped).instance_name == NAME
    assert client.closed
    with pytest.raises(RuntimeError, match="closed"):
        _run(bare)


def test_client_left_open_at_the_end_of_a_run_warns_about_nothing(
    threaded_server: FakeWachatServer,
) -> None:
    """A script that never closes its client gets no warning: the session is closed as the
    loop finishes, and collecting the client afterwards is silent."""

    async def script() -> None:
        client = WachatClient(api_key=KEY, base_url=threaded_server.base_url)
        await client.get_qr_image(NAME)
        globals()["_leftover_client"] = client

    _run(script)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del globals()["_leftover_client"]
        gc.collect()


def test_loop_closed_without_finishing_async_generators(threaded_server: FakeWachatServer) -> None:
    """Even a loop closed by hand (no shutdown_asyncgens) leaves no warning behind: the next
    loop drops the dead session and opens a new one."""
    client = WachatClient(api_key=KEY, base_url=threaded_server.base_url)

    async def many() -> list[QRImage]:
        return await asyncio.gather(*(client.get_qr_image(NAME) for _ in range(3)))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            loop = asyncio.new_event_loop()
            try:
                images = loop.run_until_complete(many())
            finally:
                loop.close()
            assert [qr.instance_name for qr in images] == [NAME] * 3
            gc.collect()
        _run(client.aclose)


def test_borrowed_session_from_another_loop_is_a_clear_error(
    threaded_server: FakeWachatServer,
) -> None:
    """A borrowed session created in one asyncio.run and used in the next raises
    ConfigurationError naming the event loop, never a raw aiohttp error."""

    async def make() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    session = asyncio.run(make())
    client = WachatClient(api_key=KEY, base_url=threaded_server.base_url, session=session)

    async def use() -> None:
        await client.get_qr_image(NAME)

    with pytest.raises(ConfigurationError, match="another event loop") as info:
        _run(use)
    assert_no_key(info.value, repr(info.value))
    session.detach()  # its loop is gone: nothing left to close
    assert threaded_server.request_count() == 0
