"""Sessions and connections: borrowed sessions, the connection queue, event-loop changes.

Real loopback servers throughout; timings are tiny and nothing asserts a duration, only
outcomes (every call succeeded, the server saw exactly these headers, no warning was emitted).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import itertools
import logging
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from wachat_async import (
    ClientClosedError,
    ConfigurationError,
    DeadlineExceededError,
    InstanceNotFoundError,
    ProxyAuthenticationError,
    QRFetchFailedError,
    QRImage,
    RetryPolicy,
    WachatClient,
    WachatTimeoutError,
    _client,
)
from wachat_async.testing import FakeWachatServer, Fault

from .conftest import (
    KEY,
    LOOPS,
    NAME,
    SkippingLoop,
    T,
    assert_no_connection_checked_out,
    assert_no_key,
    endless,
    exception_texts,
    run_skipping,
    until,
)

ZERO_WAIT = RetryPolicy(zero_wait=True)

#: Every async test here runs on asyncio's loop and on uvloop (tests/conftest.py).
ON_EVERY_LOOP = True


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


@asynccontextmanager
async def authenticating_proxy(
    server: FakeWachatServer, seen: list[str | None]
) -> AsyncIterator[str]:
    """A plain-HTTP forward proxy on loopback that answers 407 unless the request carries
    ``Proxy-Authorization: Basic me:pw``, and otherwise relays it to *server*; records each
    request's Proxy-Authorization. Yields the proxy's URL."""
    from aiohttp import web

    expected = aiohttp.encode_basic_auth("me", "proxy-pw")
    upstream = aiohttp.ClientSession()

    async def handler(request: web.BaseRequest) -> web.Response:
        given = request.headers.get("Proxy-Authorization")
        seen.append(given)
        if given != expected:
            return web.Response(status=407, headers={"Proxy-Authenticate": 'Basic realm="p"'})
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("proxy-authorization", "host")
        }
        target = request.raw_path  # absolute in a proxy request: http://host:port/path?query
        if target.startswith("/"):
            target = f"{server.url}{target}"
        async with upstream.get(target, headers=headers, allow_redirects=False) as answer:
            return web.Response(
                status=answer.status, body=await answer.read(), content_type=answer.content_type
            )

    runner = web.ServerRunner(web.Server(handler))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await upstream.close()


@pytest.mark.parametrize("auth", [True, False], ids=["credentials", "no-credentials"])
async def test_borrowed_session_goes_through_the_clients_proxy(
    server: FakeWachatServer, auth: bool
) -> None:
    """With a borrowed session the proxy is the client's ``proxy=`` (the proxy sees its
    credentials and lets the request through); without them the proxy's 407 is reported, and
    the proxy password shows nowhere."""
    seen: list[str | None] = []
    async with authenticating_proxy(server, seen) as proxy:
        url = proxy.replace("http://", "http://me:proxy-pw@") if auth else proxy
        async with (
            aiohttp.ClientSession() as session,
            WachatClient(
                api_key=KEY,
                base_url=server.base_url,
                session=session,
                proxy=url,
                allow_insecure_http=True,  # the fake server speaks plain http
                retry=ZERO_WAIT,
            ) as client,
        ):
            if auth:
                assert (await client.get_qr_image(NAME)).instance_name == NAME
            else:
                with pytest.raises(ProxyAuthenticationError) as info:  # the proxy's
                    await client.get_qr_image(NAME)
                assert_no_key(*exception_texts(info.value))
                assert "proxy-pw" not in " ".join(exception_texts(info.value))
    expected = aiohttp.encode_basic_auth("me", "proxy-pw") if auth else None
    assert seen == [expected]
    assert server.request_count(NAME) == (1 if auth else 0)


async def test_a_borrowed_sessions_default_proxy_is_not_used(server: FakeWachatServer) -> None:
    """aiohttp has no public getter for a session's default proxy: the client does not lend it
    (pass ``proxy=`` to the client), so a request goes straight to the server."""
    seen: list[str | None] = []
    async with (
        authenticating_proxy(server, seen) as proxy,
        aiohttp.ClientSession(proxy=proxy) as session,
        WachatClient(api_key=KEY, base_url=server.base_url, session=session) as client,
    ):
        assert (await client.get_qr_image(NAME)).instance_name == NAME
    assert seen == []
    assert server.request_count(NAME) == 1


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
def test_more_calls_than_connections_queue_instead_of_timing_out(how: str, tmp_path: Path) -> None:
    """max_connections=1, held by an open stream; four calls queue behind it while a minute
    passes on the loop's clock (twelve of their 5 s timeouts): none ends, and each succeeds
    once the stream closes, because a call waits for a connection before its timeout starts."""

    async def queue_a_minute(loop: SkippingLoop) -> list[object]:
        async with FakeWachatServer(api_key=KEY) as server:
            names = [f"{NAME}_{i}" for i in range(4)]
            server.add_instances([NAME, *names])
            async with WachatClient(
                api_key=KEY,
                base_url=server.base_url,
                max_connections=1,
                timeout=5.0,
                retry=RetryPolicy.disabled(),
            ) as client:
                calls = await _queued_for_a_minute(
                    loop, client, [call(client, how, name, tmp_path) for name in names]
                )
                results = await asyncio.gather(*calls, return_exceptions=True)
                assert_no_connection_checked_out(client)
        return results

    results = run_skipping(queue_a_minute)
    assert [r for r in results if isinstance(r, BaseException)] == []


async def _queued_for_a_minute(
    loop: SkippingLoop, client: WachatClient, calls: list[Awaitable[T]]
) -> list[asyncio.Future[T]]:
    """Start *calls* behind a stream that holds *client*'s only connection, move *loop*'s
    clock a minute ahead (any timer they had armed fires), check that none has ended, close
    the stream, and hand back the running calls."""
    async with client.stream_qr_image(NAME):
        running: list[asyncio.Future[T]] = [asyncio.ensure_future(c) for c in calls]
        await settle()
        loop.skip(60)
        await settle()
        assert [f for f in running if f.done()] == [], "a queued call ended while it queued"
    return running


@pytest.mark.parametrize(
    "connector_kwargs",
    [
        pytest.param({"limit": 1}, id="limit"),
        pytest.param({"limit": 0, "limit_per_host": 1}, id="limit-per-host"),
        pytest.param({"limit": 5, "limit_per_host": 1}, id="both"),
    ],
)
def test_borrowed_session_queue_follows_its_connector(connector_kwargs: dict[str, int]) -> None:
    """With a borrowed session the queue is sized from its connector (limit, limit_per_host):
    calls behind the one connection queue in the client, not in the connector where their
    timeouts would run (a minute passes on the loop's clock), all succeed, and fetch_many is
    capped the same way."""

    async def queue_a_minute(loop: SkippingLoop) -> tuple[list[str], list[bool]]:
        async with FakeWachatServer(api_key=KEY) as server:
            names = [f"{NAME}_{i}" for i in range(4)]
            server.add_instances([NAME, *names])
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(**connector_kwargs)) as s,
                WachatClient(
                    api_key=KEY,
                    base_url=server.base_url,
                    session=s,
                    timeout=5.0,
                    retry=RetryPolicy.disabled(),
                ) as client,
            ):
                calls = await _queued_for_a_minute(
                    loop, client, [client.get_qr_image(n) for n in names]
                )
                images = [qr.instance_name for qr in await asyncio.gather(*calls)]
                async with client.fetch_many(names, concurrency=50) as results:
                    outcomes = [r.ok async for r in results]
        return images, outcomes

    images, outcomes = run_skipping(queue_a_minute)
    assert images == [f"{NAME}_{i}" for i in range(4)]
    assert outcomes == [True] * 4


def spent_deadline(view: WachatClient) -> WachatClient:
    """*view*, its calls' clock saying the whole deadline has passed as each call starts: the
    deadline timer fires on the next turn of the loop, not after real time."""
    deadline = view.retry_policy.deadline
    assert deadline is not None
    view._retrier.clock = itertools.cycle([0.0, deadline]).__next__  # started, then remaining
    return view


async def settle() -> None:
    """Give the loop plenty of turns (no sleeping): enough for any request that could be sent
    over loopback to reach the server in the same loop."""
    for _ in range(200):
        await asyncio.sleep(0)


@asynccontextmanager
async def hanging_calls(
    server: FakeWachatServer, client: WachatClient, count: int
) -> AsyncIterator[list[asyncio.Task[QRImage]]]:
    """*count* concurrent get_qr_image calls, each for a name whose request hangs; cancelled
    (and awaited) on the way out."""
    names = [f"{NAME}_hang_{i}" for i in range(count)]
    for name in names:
        server.add_instance(name)
        server.script(name, [Fault(hang=True)])
    tasks = [asyncio.ensure_future(client.get_qr_image(name)) for name in names]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize(
    "connector_kwargs",
    [
        pytest.param(None, id="own-max-connections"),
        pytest.param({"limit": 2}, id="borrowed-limit"),
        pytest.param({"limit": 0, "limit_per_host": 2}, id="borrowed-limit-per-host"),
        pytest.param({"limit": 9, "limit_per_host": 2}, id="borrowed-both"),
    ],
)
async def test_at_most_the_connection_limit_is_in_flight_at_the_server(
    server: FakeWachatServer, connector_kwargs: dict[str, int] | None
) -> None:
    """Five calls against two connection slots: the server sees exactly two requests, the
    other three wait in the client's queue (and send nothing) until a slot is free."""
    async with contextlib.AsyncExitStack() as stack:
        session = None
        if connector_kwargs is not None:
            connector = aiohttp.TCPConnector(**connector_kwargs)
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        client = await stack.enter_async_context(
            WachatClient(api_key=KEY, base_url=server.base_url, max_connections=2, session=session)
        )
        async with hanging_calls(server, client, 5) as tasks:
            await until(lambda: server.request_count() == 2)
            await settle()
            assert server.request_count() == 2
            assert not any(task.done() for task in tasks)


async def test_unlimited_borrowed_connector_means_an_unlimited_queue(
    server: FakeWachatServer,
) -> None:
    """aiohttp's limit=0 is 'no limit': the client's queue does not limit either (not even to
    max_connections, which is for the client's own pool): 120 calls are all in flight."""
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        WachatClient(api_key=KEY, base_url=server.base_url, session=session) as client,
        hanging_calls(server, client, 120),
    ):
        await until(lambda: server.request_count() == 120)


async def test_stream_holds_its_slot_until_closed(server: FakeWachatServer) -> None:
    """An open stream keeps its connection slot (a call behind it waits until its deadline and
    says why, having sent nothing); leaving the block (read or not) frees it."""
    async with WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        max_connections=1,
        retry=ZERO_WAIT,
    ) as client:
        # Only the queued call has a deadline (spent at once, by its clock): the view shares
        # the client's connection slots.
        queued = spent_deadline(client.with_options(retry=RetryPolicy(zero_wait=True, deadline=5)))
        for read in (True, False):
            async with client.stream_qr_image(NAME) as stream:
                if read:
                    await stream.__anext__()
                with pytest.raises(DeadlineExceededError) as info:
                    await queued.get_qr_image(NAME)
            assert "waiting for a connection slot (1 in use: is a stream left open?)" in str(
                info.value
            )
            assert info.value.attempts == 0
            assert (await client.get_qr_image(NAME)).instance_name == NAME
    assert server.request_count(NAME) == 4  # two streams, two calls after them; none queued


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
        assert_no_connection_checked_out(client)
        # Both slots are free again: two more calls are both sent at once.
        sent = server.request_count()
        async with hanging_calls(server, client, 2):
            await until(lambda: server.request_count() == sent + 2)


@pytest.mark.parametrize("borrowed", [False, True], ids=["own-session", "borrowed-session"])
@pytest.mark.parametrize("how", CALLS)
async def test_aclose_refuses_the_calls_queued_for_a_slot(
    server: FakeWachatServer, how: str, borrowed: bool, tmp_path: Path
) -> None:
    """aclose() while calls wait for a connection slot: each is woken and refused with
    ClientClosedError (attempts 0, nothing sent), never an AssertionError; the call in flight
    on the client's own session fails the same way (a borrowed session's pool is the lender's:
    its request goes on)."""
    server.script(NAME, [Fault(hang=True)])
    async with contextlib.AsyncExitStack() as stack:
        session = None
        if borrowed:
            connector = aiohttp.TCPConnector(limit=1)
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        client = WachatClient(
            api_key=KEY, base_url=server.base_url, max_connections=1, session=session
        )
        in_flight = asyncio.ensure_future(client.get_qr_image(NAME))
        await until(lambda: server.request_count() == 1)
        queued = [asyncio.ensure_future(call(client, how, NAME, tmp_path)) for _ in range(3)]
        await settle()
        assert not any(task.done() for task in queued)
        await client.aclose()
        await settle()
        if how != "save":  # save_qr_image may reach the queue late: see below
            assert all(task.done() for task in queued), "aclose() left queued calls waiting"
        outcomes = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 10)
        if borrowed:
            assert not in_flight.done()
            in_flight.cancel()
        first = await asyncio.gather(in_flight, return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, ClientClosedError), repr(outcome)
        # save_qr_image checks its path in a worker thread first: it may reach the queue only
        # after the close, and is refused there instead of woken.
        if how != "save":
            assert "waited for a connection slot" in str(outcome)
        assert outcome.attempts == 0
        assert_no_key(outcome, repr(outcome))
    if not borrowed:
        assert isinstance(first[0], ClientClosedError)
        assert "in flight" in str(first[0])
    assert server.request_count() == 1


async def test_aclose_wakes_calls_queued_behind_an_open_stream(server: FakeWachatServer) -> None:
    """A stream left open holds the only slot; aclose() refuses the calls queued behind it at
    once, without waiting for the stream to be closed."""
    gate = asyncio.Event()
    client = WachatClient(api_key=KEY, base_url=server.base_url, max_connections=1)

    async def hold_stream() -> None:
        async with client.stream_qr_image(NAME):
            await gate.wait()

    holder = asyncio.ensure_future(hold_stream())
    await until(lambda: server.request_count() == 1)
    queued = asyncio.ensure_future(client.get_qr_image(NAME))
    await settle()
    await client.aclose()
    await settle()
    assert queued.done(), "aclose() left a call queued behind the stream waiting"
    with pytest.raises(ClientClosedError):
        await queued  # the stream is still open here
    assert not holder.done()
    gate.set()
    await holder
    assert server.request_count() == 1


async def test_closing_the_client_mid_batch_ends_fetch_many_with_client_closed_error(
    server: FakeWachatServer,
) -> None:
    """aclose() while fetch_many runs: the results that completed are yielded, then the loop
    raises ClientClosedError (not one failure per remaining name, not a raw RuntimeError)."""
    slow = [f"{NAME}_slow_{i}" for i in range(3)]
    for name in slow:
        server.add_instance(name)
        server.script(name, [Fault(hang=True)])
    names = itertools.chain([NAME], slow, endless([NAME]))
    client = WachatClient(api_key=KEY, base_url=server.base_url, max_connections=4)
    got: list[str] = []

    async def consume() -> None:
        async with client.fetch_many(names, concurrency=4, dedupe=False) as results:
            async for result in results:
                got.append(result.instance_name)
                if len(got) == 1:
                    await until(lambda: server.request_count() >= 4)
                    await client.aclose()

    with pytest.raises(ClientClosedError):
        await consume()
    assert got[0] == NAME
    assert all(name == NAME for name in got)


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
    (spent at once by the call's clock: no real waiting) with WachatTimeoutError, and its place
    in the queue is given up."""
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, max_connections=1, timeout=5.0, retry=ZERO_WAIT
    ) as client:
        queued = spent_deadline(client.with_options(retry=RetryPolicy(zero_wait=True, deadline=5)))
        async with client.stream_qr_image(NAME):
            with pytest.raises(WachatTimeoutError, match="deadline") as info:
                await queued.get_qr_image(NAME)
        assert (await client.get_qr_image(NAME)).instance_name == NAME
    assert server.request_count(NAME) == 2
    assert str(info.value) == (
        "deadline of 5 s exceeded while waiting for a connection slot "
        "(1 in use: is a stream left open?)"
    )
    assert info.value.attempts == 0


async def test_fetch_many_concurrency_is_capped_at_the_queue_size(
    server: FakeWachatServer,
) -> None:
    """fetch_many never runs more workers than the client has connection slots: with three
    slots, concurrency=32 runs three worker tasks (and three requests)."""
    names = [f"{NAME}_{i}" for i in range(10)]
    for name in names:
        server.add_instance(name)
        server.script(name, [Fault(hang=True)])
    async with (
        WachatClient(api_key=KEY, base_url=server.base_url, max_connections=3) as client,
        client.fetch_many(names, concurrency=32) as results,
    ):
        first = asyncio.ensure_future(results.__anext__())
        await until(lambda: server.request_count() == 3)
        await settle()
        assert "concurrency=3 " in repr(results)
        workers = [t for t in asyncio.all_tasks() if "fetch-many-worker" in t.get_name()]
        assert len(workers) == 3
        assert server.request_count() == 3
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first


# -- a client used across event loops -----------------------------------------------------
#
# Each test runs on asyncio's loop and on uvloop (the ``new_loop`` fixture), with every warning
# an error.

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _run(fn: Callable[[], Awaitable[Any]], new_loop: LoopFactory) -> Any:
    """What ``asyncio.run(fn())`` does, on a loop from *new_loop*, with every warning an error
    and a full collection afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with asyncio.Runner(loop_factory=new_loop) as runner:
            result = runner.run(fn())
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
    threaded_server: FakeWachatServer, tmp_path: Path, new_loop: LoopFactory
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

    first = _run(use, new_loop)
    second = _run(use, new_loop)
    third = _run(use, new_loop)
    assert len(first) == len(second) == len(third) == 8
    _run(client.aclose, new_loop)
    assert client.closed
    assert threaded_server.request_count() == 24


def test_async_with_after_bare_calls_in_an_earlier_run(
    threaded_server: FakeWachatServer, new_loop: LoopFactory
) -> None:
    """Bare calls in one asyncio.run, then ``async with client`` in the next: both work and the
    client ends closed, without warnings."""
    client = WachatClient(api_key=KEY, base_url=threaded_server.base_url)

    async def bare() -> QRImage:
        return await client.get_qr_image(NAME)

    async def scoped() -> QRImage:
        async with client:
            return await client.get_qr_image(NAME)

    assert _run(bare, new_loop).instance_name == NAME
    assert _run(scoped, new_loop).instance_name == NAME
    assert client.closed
    with pytest.raises(RuntimeError, match="closed"):
        _run(bare, new_loop)


def test_client_left_open_at_the_end_of_a_run_warns_about_nothing(
    threaded_server: FakeWachatServer, new_loop: LoopFactory
) -> None:
    """A script that never closes its client gets no warning: the session is closed as the
    loop finishes (asyncio.run finalises async generators), and collecting the client
    afterwards is silent."""

    async def script() -> None:
        client = WachatClient(api_key=KEY, base_url=threaded_server.base_url)
        await client.get_qr_image(NAME)
        globals()["_leftover_client"] = client

    _run(script, new_loop)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del globals()["_leftover_client"]
        gc.collect()


def test_a_loop_closed_with_the_clients_connections_open_warns_once(
    threaded_server: FakeWachatServer, new_loop: LoopFactory
) -> None:
    """A loop closed by hand (no shutdown_asyncgens) takes the client's sockets with it: the
    next loop opens a new session and works, and one ResourceWarning of ours names the fix
    (asyncio and uvloop report the sockets they were left with themselves)."""
    client = WachatClient(api_key=KEY, base_url=threaded_server.base_url)

    async def many() -> list[QRImage]:
        return await asyncio.gather(*(client.get_qr_image(NAME) for _ in range(3)))

    def in_a_loop_closed_by_hand() -> list[str]:
        loop = new_loop()
        try:
            images = loop.run_until_complete(many())
        finally:
            loop.close()
        return [qr.instance_name for qr in images]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert in_a_loop_closed_by_hand() == [NAME] * 3
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(client.aclose())
        gc.collect()
        messages = [(w.category, str(w.message)) for w in caught]
        caught.clear()  # the warnings' sources hold transports, to be collected in here
        gc.collect()
    ours = [m for m in messages if "WachatClient" in m[1]]
    assert ours == [(ResourceWarning, _client._IDLE_LOOP_MESSAGE)]
    assert "await client.aclose()" in ours[0][1]
    others = {text.split(" ", 2)[1] for _, text in messages if "WachatClient" not in text}
    assert others <= {"resource", "transport", "<socket.socket"}  # "unclosed ..." of the loops


def test_borrowed_session_from_another_loop_is_a_clear_error(
    threaded_server: FakeWachatServer, new_loop: LoopFactory
) -> None:
    """A borrowed session created in one asyncio.run and used in the next raises
    ConfigurationError naming the event loop, never a raw aiohttp error."""

    async def make() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        session = runner.run(make())
    client = WachatClient(api_key=KEY, base_url=threaded_server.base_url, session=session)

    async def use() -> None:
        await client.get_qr_image(NAME)

    with pytest.raises(ConfigurationError, match="another event loop") as info:
        _run(use, new_loop)
    assert_no_key(info.value, repr(info.value))
    session.detach()  # its loop is gone: nothing left to close
    assert threaded_server.request_count() == 0


@contextlib.contextmanager
def nothing_left_behind(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail on any warning (as an error), any exception ignored in a ``__del__`` or a
    callback ("unclosed transport", "coroutine ... was never awaited"), and any asyncio error
    log ("Task was destroyed but it is pending!", "Exception in callback"), up to and
    including a full garbage collection at the end."""
    unraisable: list[str] = []
    previous = sys.unraisablehook

    def record(args: Any) -> None:
        unraisable.append(f"{args.exc_type.__name__}: {args.exc_value}")

    sys.unraisablehook = record
    caplog.set_level(logging.DEBUG, logger="asyncio")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield
            gc.collect()
    finally:
        sys.unraisablehook = previous
    assert unraisable == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def _get(loop: asyncio.AbstractEventLoop, client: WachatClient) -> QRImage:
    return loop.run_until_complete(client.get_qr_image(NAME))


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param("aclose-from-another-loop", id="aclose-from-another-loop"),
        pytest.param("new-loop-per-call", id="new-loop-per-call-left-open"),
        pytest.param("old-loop-runs-again", id="old-loop-runs-again"),
        pytest.param("three-loops-then-asyncio-run", id="three-loops-then-asyncio-run"),
    ],
)
def test_a_session_of_an_idle_loop_is_closed_without_warnings(
    threaded_server: FakeWachatServer,
    scenario: str,
    caplog: pytest.LogCaptureFixture,
    new_loop: LoopFactory,
) -> None:
    """The session of a loop that is still open but not running (a sync wrapper doing
    ``new_event_loop().run_until_complete(call)`` per call, a notebook's previous loop) is
    closed when the client moves to another loop or is closed from one: no pending task, no
    never-awaited coroutine, no unclosed socket, and nothing runs twice if the old loop runs
    again."""
    client = WachatClient(api_key=KEY, base_url=threaded_server.base_url)
    opened: list[asyncio.AbstractEventLoop] = []

    def fresh() -> asyncio.AbstractEventLoop:
        opened.append(new_loop())
        return opened[-1]

    with nothing_left_behind(caplog):
        try:
            first = fresh()
            assert _get(first, client).instance_name == NAME
            if scenario == "aclose-from-another-loop":
                _run(client.aclose, new_loop)
            elif scenario == "new-loop-per-call":
                assert _get(fresh(), client).instance_name == NAME
                assert _get(fresh(), client).instance_name == NAME
                fresh().run_until_complete(client.aclose())
            elif scenario == "old-loop-runs-again":
                second = fresh()
                assert _get(second, client).instance_name == NAME  # closes first's session
                first.run_until_complete(asyncio.sleep(0))
                assert _get(second, client).instance_name == NAME
                second.run_until_complete(client.aclose())
            else:
                assert _get(fresh(), client).instance_name == NAME
                assert _get(fresh(), client).instance_name == NAME
                assert _run(lambda: client.get_qr_image(NAME), new_loop).instance_name == NAME
                _run(client.aclose, new_loop)
        finally:
            for loop in opened:
                loop.close()
    assert client.closed
    with pytest.raises(ClientClosedError):
        _run(lambda: client.get_qr_image(NAME), new_loop)


async def _drain() -> None:
    """Run until every other task of this loop is done (the finaliser's close among them)."""
    await asyncio.sleep(0)  # the task the finaliser scheduled starts
    while pending := asyncio.all_tasks() - {asyncio.current_task()}:
        await asyncio.gather(*pending)


def test_a_dropped_client_warns_once_and_its_loop_closes_it(
    threaded_server: FakeWachatServer, caplog: pytest.LogCaptureFixture, new_loop: LoopFactory
) -> None:
    """A client dropped without aclose() gives one ResourceWarning, its own; when its loop
    runs again, asyncio's async-generator finaliser closes the session there, and nothing else
    is reported."""
    client = WachatClient(api_key=KEY, base_url=threaded_server.base_url)
    loop = new_loop()
    try:
        _get(loop, client)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del client
            gc.collect()
        messages = [str(w.message) for w in caught]
        del caught  # the warning's source holds the session
        assert messages == [
            "Unclosed WachatClient: use 'async with WachatClient() as client' "
            "or 'await client.aclose()'"
        ]
        with nothing_left_behind(caplog):
            gc.collect()
            loop.run_until_complete(_drain())
    finally:
        loop.close()


#: Scripts run in a child ``python -X dev -W error`` (asyncio debug mode, every warning shown).
CHILD_SCRIPTS = {
    "aclose-from-another-loop": """
        l1 = new_loop()
        l1.run_until_complete(client.get_qr_image(NAME))
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(client.aclose())
        l1.close()
    """,
    "new-loop-per-call": """
        def get(name):
            return new_loop().run_until_complete(client.get_qr_image(name))
        get(NAME); get(NAME)
        new_loop().run_until_complete(client.aclose())
    """,
}


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("script", CHILD_SCRIPTS.values(), ids=CHILD_SCRIPTS.keys())
def test_loop_changes_are_silent_under_python_dev_mode(
    threaded_server: FakeWachatServer, script: str, loop: str
) -> None:
    """Under ``python -X dev -W error`` (asyncio debug mode), moving a client between loops
    left open and closing it from another loop prints no warning, no "Task was destroyed",
    no never-awaited coroutine (the loops themselves are the script's to close)."""
    code = "\n".join(
        [
            "import asyncio, gc, warnings",
            "warnings.filterwarnings('ignore', 'unclosed event loop', ResourceWarning)",
            f"import {loop}",
            f"new_loop = {loop}.new_event_loop",
            "from wachat_async import WachatClient",
            f"NAME = {NAME!r}",
            f"client = WachatClient(api_key={KEY!r}, base_url={threaded_server.base_url!r})",
            textwrap.dedent(script),
            "gc.collect()",
            "print('done')",
        ]
    )
    child = subprocess.run(  # noqa: S603 - our own interpreter and a script of ours
        [sys.executable, "-X", "dev", "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (child.returncode, child.stdout, child.stderr) == (0, "done\n", "")


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c.get_qr_image(NAME), id="get_qr_image"),
        pytest.param(lambda c: c.with_options(timeout=5).get_qr_image(NAME), id="view"),
        pytest.param(lambda c: c.__aenter__(), id="async-with"),
    ],
)
def test_a_client_in_use_by_another_threads_loop_is_a_clear_error(
    threaded_server: FakeWachatServer, call: Any, new_loop: LoopFactory
) -> None:
    """One client per event loop: while another thread's loop runs with the session, a call
    from a second loop is a ConfigurationError and the other thread's session stays open;
    aclose() from the second loop closes the session in the loop that runs it."""
    client = WachatClient(api_key=KEY, base_url=threaded_server.base_url)
    other = new_loop()
    runner = threading.Thread(target=other.run_forever)
    runner.start()
    try:
        asyncio.run_coroutine_threadsafe(client.get_qr_image(NAME), other).result(timeout=10)
        session = client._state.session
        with pytest.raises(ConfigurationError, match="one running event loop at a time"):
            _run(lambda: call(client), new_loop)
        assert client._state.session is session
        assert session is not None
        assert not session.closed
        qr = asyncio.run_coroutine_threadsafe(client.get_qr_image(NAME), other).result(10)
        assert qr.instance_name == NAME
        _run(client.aclose, new_loop)
        give_up = time.monotonic() + 10  # a hang guard, not a timing assertion
        while not session.closed and time.monotonic() < give_up:
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), other).result(timeout=10)
        assert session.closed
    finally:
        other.call_soon_threadsafe(other.stop)
        runner.join(timeout=10)
        other.close()
