"""``client.with_options(...)``: a per-call view sharing the session, connection queue and budget.

The handler that needs a 3 s answer and the fleet poller that keeps 30 s use one client: the
view changes ``timeout``, ``retry``, ``max_image_bytes`` or ``user_agent`` and shares everything
else; it owns nothing, so closing it closes nothing, and closing the client closes every view.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from wachat_async import (
    ClientClosedError,
    ConfigurationError,
    QRFetchFailedError,
    ResponseTooLargeError,
    RetryBudget,
    RetryPolicy,
    WachatClient,
    WachatTimeoutError,
)
from wachat_async.testing import FakeWachatServer, Fault

from .conftest import KEY, NAME, until

#: Every async test here runs on asyncio's loop and on uvloop (tests/conftest.py).
ON_EVERY_LOOP = True


@pytest.fixture
async def server() -> AsyncIterator[FakeWachatServer]:
    """A started fake server (key KEY) with one Baileys instance NAME."""
    async with FakeWachatServer(api_key=KEY) as fake:
        fake.add_instance(NAME)
        yield fake


@pytest.fixture
async def client(server: FakeWachatServer) -> AsyncIterator[WachatClient]:
    """A zero-wait client with a 30 s timeout and the default 4 attempts."""
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, timeout=30.0, retry=RetryPolicy(zero_wait=True)
    ) as wachat:
        yield wachat


async def test_view_changes_only_what_it_is_given(client: WachatClient) -> None:
    """with_options(retry=...) changes the policy; base URL, budget and timeout stay."""
    view = client.with_options(retry=RetryPolicy.disabled())
    assert view.retry_policy == RetryPolicy.disabled()
    assert client.retry_policy == RetryPolicy(zero_wait=True)
    assert view.retry_budget is client.retry_budget
    assert view.base_url == client.base_url


async def test_view_retry_policy_is_used_for_its_calls_only(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """A one-attempt view fails on the first 502 while the client retries it."""
    server.script(NAME, [502, 502])
    with pytest.raises(QRFetchFailedError) as info:
        await client.with_options(retry=RetryPolicy.disabled()).get_qr_image(NAME)
    assert info.value.attempts == 1
    assert (await client.get_qr_image(NAME)).instance_name == NAME
    assert server.request_count(NAME) == 3


async def test_view_timeout_applies_to_its_calls(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """A view's short timeout times out a hanging answer; the client's 30 s does not apply."""
    server.script(NAME, [Fault(hang=True)])
    view = client.with_options(timeout=0.05, retry=RetryPolicy.disabled())
    with pytest.raises(WachatTimeoutError):
        await view.get_qr_image(NAME)


async def test_view_shares_the_session_and_opens_none(client: WachatClient) -> None:
    """Calls through views use the client's one session (no session per view)."""
    await client.get_qr_image(NAME)
    state = client._state
    session = state.session
    views = [client.with_options(timeout=3.0) for _ in range(50)]
    await asyncio.gather(*(v.get_qr_image(NAME) for v in views))
    assert state.session is session
    assert all(v._state is state for v in views)


async def test_view_shares_the_connection_queue(server: FakeWachatServer) -> None:
    """max_connections=1 bounds the client and its views together: a view's call queues."""
    server.add_instance("t1_other")
    server.script(NAME, [Fault(hang=True)])
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, max_connections=1, retry=RetryPolicy.disabled()
    ) as client:
        hanging = asyncio.create_task(client.get_qr_image(NAME))
        await until(lambda: server.request_count(NAME) == 1)
        queued = asyncio.create_task(client.with_options(timeout=5.0).get_qr_image("t1_other"))
        for _ in range(200):
            await asyncio.sleep(0)
        assert (queued.done(), server.request_count("t1_other")) == (False, 0)
        hanging.cancel()
        qr = await queued
        assert qr.instance_name == "t1_other"
        with pytest.raises(asyncio.CancelledError):
            await hanging


async def test_view_shares_the_retry_budget(
    server: FakeWachatServer,
) -> None:
    """A retry through a view is withdrawn from the client's budget."""
    budget = RetryBudget()
    async with WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        retry=RetryPolicy(zero_wait=True),
        retry_budget=budget,
    ) as client:
        server.script(NAME, [502])
        await client.with_options(timeout=3.0).get_qr_image(NAME)
    assert (budget.retries, budget.calls) == (1, 1)


async def test_view_max_image_bytes(server: FakeWachatServer, client: WachatClient) -> None:
    """with_options(max_image_bytes=64) refuses the QR the client accepts."""
    with pytest.raises(ResponseTooLargeError):
        await client.with_options(max_image_bytes=64).get_qr_image(NAME)
    assert (await client.get_qr_image(NAME)).instance_name == NAME


async def test_view_user_agent(server: FakeWachatServer, client: WachatClient) -> None:
    """with_options(user_agent=...) sends that User-Agent; the client keeps its own."""
    await client.with_options(user_agent="fleet-poller/2").get_qr_image(NAME)
    await client.get_qr_image(NAME)
    agents = [r.headers.get("User-Agent") for r in server.requests]
    assert agents[0] == "fleet-poller/2"
    assert agents[1] is not None
    assert agents[1].startswith("wachat-async/")


async def test_views_of_views_compose(server: FakeWachatServer, client: WachatClient) -> None:
    """A view of a view keeps the first view's options unless it changes them."""
    first = client.with_options(retry=RetryPolicy.disabled())
    second = first.with_options(max_image_bytes=64)
    assert second.retry_policy == RetryPolicy.disabled()
    with pytest.raises(ResponseTooLargeError):
        await second.get_qr_image(NAME)
    assert second.retry_budget is client.retry_budget


async def test_closing_a_view_closes_nothing(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """A view owns nothing: aclose() / async with on it leaves the client working."""
    view = client.with_options(timeout=3.0)
    async with view:
        await view.get_qr_image(NAME)
    await view.aclose()
    assert not client.closed
    assert (await client.get_qr_image(NAME)).instance_name == NAME


async def test_closing_the_client_closes_its_views(server: FakeWachatServer) -> None:
    """After the client closes, its views refuse calls like the client does."""
    client = WachatClient(api_key=KEY, base_url=server.base_url)
    view = client.with_options(timeout=3.0)
    await view.get_qr_image(NAME)
    await client.aclose()
    assert view.closed
    with pytest.raises(RuntimeError, match="closed"):
        await view.get_qr_image(NAME)


@pytest.mark.parametrize("through", ["client", "view"])
async def test_a_request_in_flight_when_the_client_closes_is_client_closed(
    server: FakeWachatServer, through: str
) -> None:
    """Closing the client fails a request in flight, direct or through a view, as closed."""
    client = WachatClient(api_key=KEY, base_url=server.base_url)
    caller = client if through == "client" else client.with_options(timeout=5.0)
    server.script(NAME, [Fault(hang=True)])
    call = asyncio.ensure_future(caller.get_qr_image(NAME))
    await until(lambda: server.request_count(NAME) == 1)  # the request reached the server
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await call


async def test_view_works_with_fetch_many_and_stream(
    server: FakeWachatServer, client: WachatClient
) -> None:
    """fetch_many and stream_qr_image run with the view's options."""
    view = client.with_options(max_image_bytes=64)
    results = [r async for r in view.fetch_many([NAME])]
    assert isinstance(results[0].error, ResponseTooLargeError)
    async with client.with_options(timeout=3.0).stream_qr_image(NAME) as stream:
        assert (await stream.read()).startswith(b"\x89PNG")


async def test_view_of_a_borrowed_session_borrows_it_too(server: FakeWachatServer) -> None:
    """A client on a borrowed session: its views use that session's connector."""
    async with aiohttp.ClientSession() as session:
        async with WachatClient(api_key=KEY, base_url=server.base_url, session=session) as c:
            await c.with_options(timeout=3.0).get_qr_image(NAME)
        assert not session.closed


def test_view_repr_says_it_is_a_view_and_hides_the_key(client: WachatClient) -> None:
    """repr of a view names the options it changes and never the key."""
    text = repr(client.with_options(timeout=3.0))
    assert "view" in text
    assert KEY not in text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"timeout": -1}, "timeout", id="negative-timeout"),
        pytest.param({"timeout": "3"}, "timeout", id="str-timeout"),
        pytest.param({"retry": 3}, "retry", id="int-retry"),
        pytest.param({"max_image_bytes": 10}, "max_image_bytes", id="tiny-cap"),
        pytest.param({"user_agent": "a\r\nX-Evil: 1"}, "user_agent", id="crlf-agent"),
    ],
)
def test_bad_view_options_are_configuration_errors(
    client: WachatClient, kwargs: dict[str, Any], match: str
) -> None:
    """with_options checks its arguments like the constructor does."""
    with pytest.raises(ConfigurationError, match=match):
        client.with_options(**kwargs)


def test_with_options_rejects_unknown_options(client: WachatClient) -> None:
    """Options a view cannot change (session, proxy, api_key, ...) are a TypeError."""
    with pytest.raises(TypeError):
        client.with_options(proxy="http://127.0.0.1:3128")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("chain", "expected"),
    [
        pytest.param(
            [{"timeout": 5}, {"retry": RetryPolicy.disabled()}, {"timeout": None}, {"retry": None}],
            "view(timeout=20.0, retry=default)",
            id="replaced-and-restored",
        ),
        pytest.param(
            [{"timeout": 1}, {"timeout": 2}, {"timeout": 3}],
            "view(timeout=3.0)",
            id="same-option-thrice",
        ),
        pytest.param(
            [{"max_image_bytes": 1024}, {"user_agent": "a/1"}, {"max_image_bytes": 2048}],
            "view(max_image_bytes=2048, user_agent)",
            id="mixed",
        ),
    ],
)
def test_repr_of_a_view_of_a_view_lists_each_option_once(
    client: WachatClient, chain: list[dict[str, Any]], expected: str
) -> None:
    view = client
    for options in chain:
        view = view.with_options(**options)
    assert repr(view).endswith(f" {expected}>")
    long_chain = client
    for _ in range(50):
        long_chain = long_chain.with_options(timeout=4)
    assert repr(long_chain).count("timeout=") == 1
