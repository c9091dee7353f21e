"""wachat_async.web transitions: watch limits (``expired``, the restart), shutdown with a PNG
request waiting on a hung upstream, a closed client's event route, the PNG route sharing a
watch's first poll. Every framework (aiohttp.web, Starlette, FastAPI's qr_router) alike.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests._web import EVERY_FRAMEWORK, EventReader, serve, until, watch_tasks
from tests.conftest import KEY, NAME, SkippingLoop, run_skipping
from tests.test_web_events import Turnstile
from wachat_async import RetryPolicy, WachatClient
from wachat_async.testing import FakeWachatServer
from wachat_async.web import _hub, end_event_streams, hub_for, qr_events

QR = "/instance/qr/image"
STOPPING = "the server is stopping; try again"
CLIENT_CLOSED = "the QR code service is not available (client closed); try again"
RESTART = {"Wachat-Restart": "1"}


@pytest.fixture(params=EVERY_FRAMEWORK)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def still() -> AsyncIterator[FakeWachatServer]:
    """A fake server whose QR changes only when a test rotates it."""
    async with FakeWachatServer(api_key=KEY, qr_rotation=None) as fake:
        fake.add_instance(NAME)
        yield fake


@pytest.fixture
async def wachat(still: FakeWachatServer) -> AsyncIterator[WachatClient]:
    async with WachatClient(
        api_key=KEY, base_url=still.base_url, retry=RetryPolicy(zero_wait=True)
    ) as client:
        yield client


@pytest.fixture
async def gated(still: FakeWachatServer) -> AsyncIterator[tuple[WachatClient, Turnstile]]:
    """A zero-wait client whose upstream requests wait at a Turnstile (a hung upstream)."""
    turnstile = Turnstile()
    async with (
        aiohttp.ClientSession(trace_configs=[turnstile.trace()]) as session,
        WachatClient(
            api_key=KEY, base_url=still.base_url, retry=RetryPolicy(zero_wait=True), session=session
        ) as client,
    ):
        yield client, turnstile


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def sigterm() -> Iterator[list[int]]:
    """SIGTERM handled by a recording Python handler for the test, then restored."""
    calls: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda sig, frame: calls.append(sig))
    try:
        yield calls
    finally:
        signal.signal(signal.SIGTERM, before)


async def rotate_until(
    still: FakeWachatServer, reader: EventReader, kind: str
) -> tuple[int, dict[str, object]]:
    """Rotate the QR after each `qr` event until a *kind* event; how many `qr` came first."""
    qrs = 0
    while True:
        got = await reader.next()
        assert got is not None, "the stream ended"
        if got[0] == kind:
            return qrs, got[1]
        assert got[0] == "qr", got
        qrs += 1
        still.rotate_qr(NAME)


# -- watch limits (issue 22) ---------------------------------------------------------------------


async def test_a_page_left_open_stops_polling_at_max_qrs(
    framework: str, still: FakeWachatServer, wachat: WachatClient, http: aiohttp.ClientSession
) -> None:
    """After max_qrs QRs the watch makes no further request; every viewer hears `expired`,
    then only pings; the PNG route answers 410 without asking upstream."""
    async with (
        serve(framework, wachat, max_qrs=3, heartbeat=60.0) as base,
        http.get(f"{base}/qr/{NAME}/events") as response,
    ):
        reader = EventReader(response)
        qrs, expired = await rotate_until(still, reader, "expired")
        await until(lambda: not watch_tasks(), "the watch stops polling")
        sent = still.request_count()
        async with http.get(f"{base}/qr/{NAME}.png") as png:
            answer = png.status, await png.json()
        later = await raw_events(http, f"{base}/qr/{NAME}/events")
        assert still.request_count() == sent  # nothing upstream since the limit
    assert qrs == 3
    assert expired["instance"] == NAME
    assert expired["qrs_shown"] == 3
    assert isinstance(expired["elapsed"], float)
    assert answer[0] == 410
    assert answer[1]["error"].startswith("this QR code expired")
    assert later == "expired"  # a new viewer of an expired watch: no new watch


async def raw_events(http: aiohttp.ClientSession, url: str) -> str:
    """The first event of a new stream at *url* (then it is closed)."""
    async with http.get(url) as response:
        got = await EventReader(response).next()
    assert got is not None
    return got[0]


async def test_one_restart_brings_a_new_qr_to_every_viewer(
    framework: str, still: FakeWachatServer, wachat: WachatClient, http: aiohttp.ClientSession
) -> None:
    """Two viewers share one expired watch; a POST with the header restarts it for both (a
    second POST is a no-op 204); without the header, 400 and nothing restarts."""
    async with serve(framework, wachat, max_qrs=1, heartbeat=60.0) as base:
        url = f"{base}/qr/{NAME}/events"
        async with http.get(url) as one, http.get(url) as two:
            readers = [EventReader(one), EventReader(two)]
            await readers[0].expect("qr")
            await readers[1].expect("qr")
            still.rotate_qr(NAME)
            for reader in readers:
                await reader.expect("expired")
            await until(lambda: not watch_tasks(), "the watch stops polling")
            async with http.post(url) as bare:
                refused = bare.status, await bare.json()
            assert not watch_tasks()
            async with http.post(url, headers=RESTART) as restart:
                assert restart.status == 204
            async with http.post(url, headers=RESTART) as again:
                assert again.status == 204
            fresh = [await reader.expect("qr") for reader in readers]
    assert refused == (
        400,
        {"error": "a restart needs the header Wachat-Restart: 1", "instance": NAME},
    )
    assert fresh[0] == fresh[1]


async def test_a_restart_needs_authorize(
    framework: str, still: FakeWachatServer, wachat: WachatClient, http: aiohttp.ClientSession
) -> None:
    """The restart is a route like the others: a refused user gets 403 and nothing restarts."""
    allowed = {"yes": True}
    rule = lambda request, name: allowed["yes"]  # noqa: E731
    async with serve(framework, wachat, max_qrs=1, heartbeat=60.0, authorize=rule) as base:
        url = f"{base}/qr/{NAME}/events"
        async with http.get(url) as response:
            reader = EventReader(response)
            await reader.expect("qr")
            still.rotate_qr(NAME)
            await reader.expect("expired")
            await until(lambda: not watch_tasks(), "the watch stops polling")
            sent = still.request_count()
            allowed["yes"] = False
            async with http.post(url, headers=RESTART) as restart:
                status = restart.status
            assert not watch_tasks()
    assert status == 403
    assert still.request_count() == sent


def test_linking_timeout_stops_the_watch_and_no_request_follows(new_loop: object) -> None:
    """On a loop whose clock the test moves: 30 s after it began the watch expires (a wait
    cut short), and moving the clock on sends nothing more."""

    async def body(loop: SkippingLoop) -> None:
        async with (
            FakeWachatServer(api_key=KEY, qr_rotation=None) as fake,
            WachatClient(api_key=KEY, base_url=fake.base_url) as client,
        ):
            fake.add_instance(NAME)
            hub = hub_for(client)
            watch = hub.join(NAME, 2.0, limits=(None, 30.0))
            await until(lambda: watch.latest is not None, "the first QR")
            loop.skip(31.0)
            await until(lambda: watch.expired is not None, "the watch expires")
            sent = fake.request_count()
            loop.skip(600.0)
            for _ in range(20):
                await asyncio.sleep(0)
            assert fake.request_count() == sent
            expired = watch.expired
            assert expired is not None
            assert expired.qrs_shown == 1
            assert expired.elapsed >= 30.0
            assert hub.watches(NAME) == [watch]  # kept, with its viewer, for a restart
            hub.leave(watch)
            loop.skip(_hub.KEEP_EXPIRED - 1.0)  # a reconnect within KEEP_EXPIRED: still expired
            assert hub.join(NAME, 2.0, limits=(None, 30.0)) is watch
            assert watch.expired is expired
            hub.leave(watch)
            loop.skip(_hub.KEEP_EXPIRED - 1.0)  # counted from the last viewer's leaving
            assert hub.watches(NAME) == [watch]
            loop.skip(2.0)
            await until(lambda: not hub.watches(NAME), "the expiry is forgotten")
            assert fake.request_count() == sent

    run_skipping(body)


async def test_no_limit_with_none(
    still: FakeWachatServer, wachat: WachatClient, http: aiohttp.ClientSession
) -> None:
    """max_qrs=None, linking_timeout=None: the watch goes on past the default 6 QRs."""
    async with (
        serve("aiohttp", wachat, max_qrs=None, linking_timeout=None) as base,
        http.get(f"{base}/qr/{NAME}/events") as response,
    ):
        reader = EventReader(response)
        for _ in range(8):
            await reader.expect("qr")
            still.rotate_qr(NAME)
        assert watch_tasks()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_qrs": 0}, ValueError),
        ({"max_qrs": 2.5}, TypeError),
        ({"max_qrs": True}, TypeError),
        ({"linking_timeout": 0}, ValueError),
        ({"linking_timeout": float("inf")}, ValueError),
        ({"linking_timeout": "3"}, TypeError),
    ],
    ids=["qrs-zero", "qrs-float", "qrs-bool", "timeout-zero", "timeout-inf", "timeout-str"],
)
def test_bad_limits_raise_when_the_routes_are_built(
    wachat_unopened: WachatClient, options: dict[str, object], error: type[Exception]
) -> None:
    from wachat_async.web.aiohttp import qr_routes
    from wachat_async.web.fastapi import qr_router

    with pytest.raises(error):
        qr_routes(wachat_unopened, authorize=lambda r, n: True, **options)  # type: ignore[arg-type]
    with pytest.raises(error):
        qr_router(wachat_unopened, authorize=lambda instance_name: True, **options)  # type: ignore[arg-type]


@pytest.fixture
def wachat_unopened() -> Iterator[WachatClient]:
    client = WachatClient(api_key=KEY, base_url="http://127.0.0.1:9")
    yield client
    asyncio.run(client.aclose())


# -- shutdown with a PNG request on a hung upstream (stranger's 05) -------------------------------


@pytest.mark.parametrize("how", ["end_event_streams", "SIGTERM"])
async def test_shutdown_answers_a_png_request_waiting_on_upstream_at_once(
    framework: str,
    still: FakeWachatServer,
    gated: tuple[WachatClient, Turnstile],
    http: aiohttp.ClientSession,
    sigterm: list[int],
    how: str,
) -> None:
    """A PNG request whose upstream fetch hangs: on shutdown the fetch is cancelled and the
    request answers 503 JSON with Retry-After at once (the server can stop)."""
    client, turnstile = gated
    async with serve(framework, client) as base:
        pending = asyncio.ensure_future(http.get(f"{base}/qr/{NAME}.png"))
        await until(lambda: turnstile.waiting == 1, "the fetch hangs upstream")
        if how == "SIGTERM":
            signal.raise_signal(signal.SIGTERM)
        else:
            await end_event_streams()
        async with await pending as png:
            answer = png.status, png.headers.get("Retry-After"), await png.json()
        assert turnstile.waiting == 0
    assert answer == (503, "2", {"error": STOPPING, "instance": NAME})
    if framework == "aiohttp":  # uvicorn's own handler (chained in front of ours) records it
        assert sigterm == ([signal.SIGTERM] if how == "SIGTERM" else [])


# -- a closed client (stranger's 08) -------------------------------------------------------------


async def test_a_closed_clients_event_route_is_a_503_not_a_stream_that_ends_at_once(
    framework: str, still: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """Once the client is closed a reconnect gets 503 with Retry-After (the page backs off),
    never a stream that ends at once (the browser would reconnect in a loop)."""
    client = WachatClient(api_key=KEY, base_url=still.base_url, retry=RetryPolicy(zero_wait=True))
    async with serve(framework, client) as base:
        url = f"{base}/qr/{NAME}/events"
        async with http.get(url) as response:
            reader = EventReader(response)
            await reader.expect("qr")
            await asyncio.gather(client.aclose(), asyncio.sleep(0))  # another task closes it
            assert await reader.rest() == []
        answers = []
        for _ in range(3):
            async with http.get(url) as again:
                answers.append((again.status, again.headers.get("Retry-After"), await again.json()))
    assert answers == [(503, "2", {"error": CLIENT_CLOSED, "instance": NAME})] * 3
    assert not watch_tasks()


# -- the PNG route and the watch (stranger's 09) -------------------------------------------------


async def test_a_png_request_during_the_first_poll_shares_it(
    framework: str,
    still: FakeWachatServer,
    gated: tuple[WachatClient, Turnstile],
    http: aiohttp.ClientSession,
) -> None:
    """A viewer's watch is fetching its first QR: PNG requests wait for it instead of asking
    upstream themselves (N viewers' images cost the watch's one poll)."""
    client, turnstile = gated
    async with (
        serve(framework, client) as base,
        http.get(f"{base}/qr/{NAME}/events") as response,
    ):
        reader = EventReader(response)
        await until(lambda: turnstile.waiting == 1, "the watch asks the state")
        pngs = [asyncio.ensure_future(http.get(f"{base}/qr/{NAME}.png")) for _ in range(5)]
        turnstile.let_through(2)  # the state, then the QR
        await reader.expect("qr")
        statuses = []
        for pending in pngs:
            async with await pending as png:
                statuses.append(png.status)
    assert statuses == [200] * 5
    assert still.request_count(NAME, path=QR) == 1
    assert turnstile.waiting == 0


# -- FastAPI's authorize that raises (stranger's 03) ---------------------------------------------


async def test_a_raising_authorize_is_a_403_and_one_log_line_per_minute(
    framework: str,
    still: FakeWachatServer,
    wachat: WachatClient,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every framework: 403 JSON (never a 500), and one error with the traceback for ten
    requests; the rest are debug lines."""

    def broken(request: object, name: str) -> bool:
        raise KeyError("session")

    caplog.set_level(logging.DEBUG, logger="wachat_async.web")
    async with serve(framework, wachat, authorize=broken) as base:
        answers = []
        for _ in range(10):
            async with http.get(f"{base}/qr/{NAME}.png") as png:
                answers.append((png.status, await png.json()))
    errors = [r for r in caplog.records if r.name == "wachat_async.web" and r.levelname == "ERROR"]
    assert answers == [(403, {"error": "forbidden", "instance": NAME})] * 10
    assert len(errors) == 1
    assert "KeyError" in errors[0].getMessage()
    assert still.request_count() == 0


# -- an expired watch and a reconnect (stranger's s4/05) -----------------------------------------


async def test_an_expired_watch_stays_expired_when_its_only_viewer_reconnects(
    framework: str, still: FakeWachatServer, wachat: WachatClient, http: aiohttp.ClientSession
) -> None:
    """The only viewer's stream drops after `expired` (a proxy's idle cut, a Wi-Fi blip) and
    EventSource reconnects: `expired` again and no upstream request; only the button's POST
    starts a new watch."""
    async with serve(framework, wachat, max_qrs=1, heartbeat=60.0) as base:
        url = f"{base}/qr/{NAME}/events"
        async with http.get(url) as response:
            reader = EventReader(response)
            await reader.expect("qr")
            still.rotate_qr(NAME)
            await reader.expect("expired")
        hub = hub_for(wachat)
        await until(lambda: not hub.viewers(), "the viewer has left")
        sent = still.request_count()
        again = await raw_events(http, url)
        async with http.get(f"{base}/qr/{NAME}.png") as png:
            png_status = png.status
        assert still.request_count() == sent
        async with http.post(url, headers=RESTART) as restart:
            assert restart.status == 204
        fresh = await raw_events(http, url)
    assert (again, png_status, fresh) == ("expired", 410, "qr")


def test_remembered_expiries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past KEEP_EXPIRED_MAX expired watches without a viewer, the oldest is forgotten."""
    monkeypatch.setattr(_hub, "KEEP_EXPIRED_MAX", 2)

    async def body(loop: SkippingLoop) -> None:
        async with (
            FakeWachatServer(api_key=KEY, qr_rotation=None) as fake,
            WachatClient(api_key=KEY, base_url=fake.base_url) as client,
        ):
            names = [f"t1_keep000{i}_store" for i in range(3)]
            hub = hub_for(client)
            watches = []
            for name in names:
                fake.add_instance(name)
                watches.append(hub.join(name, 2.0, limits=(None, 30.0)))
            await until(lambda: all(w.latest for w in watches), "the first QRs")
            loop.skip(31.0)
            await until(lambda: all(w.expired for w in watches), "the watches expire")
            for watch in watches:
                hub.leave(watch)
            assert [bool(hub.watches(name)) for name in names] == [False, True, True]

    run_skipping(body)


# -- restart header values (stranger's s4/21) ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "status"),
    [("1", 204), ("true", 204), ("True", 204), ("0", 400), ("no", 400), ("false", 400)],
)
async def test_only_a_true_restart_header_restarts(
    framework: str,
    still: FakeWachatServer,
    wachat: WachatClient,
    http: aiohttp.ClientSession,
    value: str,
    status: int,
) -> None:
    async with serve(framework, wachat, max_qrs=1, heartbeat=60.0) as base:
        url = f"{base}/qr/{NAME}/events"
        async with http.get(url) as response:
            reader = EventReader(response)
            await reader.expect("qr")
            still.rotate_qr(NAME)
            await reader.expect("expired")
            async with http.post(url, headers={"Wachat-Restart": value}) as restart:
                answer = restart.status
            after = (await reader.next() or ("end",))[0] if status == 204 else None
            assert bool(watch_tasks()) is (status == 204)
    assert (answer, after) == (status, "qr" if status == 204 else None)


# -- a stream that starts after the shutdown began (stranger's s4/10) ----------------------------


class SlowRule:
    """An async authorize that waits until the test lets it answer (a slow session store)."""

    def __init__(self) -> None:
        self.entered = 0
        self.go = asyncio.Event()

    async def __call__(self, request: object, name: str) -> bool:
        self.entered += 1
        await self.go.wait()
        return True


@pytest.mark.parametrize("route", ["events", "png"])
@pytest.mark.parametrize("how", ["end_event_streams", "SIGTERM"])
async def test_a_request_whose_authorize_outlasts_the_shutdown_start_gets_a_503(
    framework: str,
    still: FakeWachatServer,
    wachat: WachatClient,
    http: aiohttp.ClientSession,
    sigterm: list[int],
    how: str,
    route: str,
) -> None:
    """The first request of the app is still in `authorize` when the shutdown begins: once it
    is let through it answers 503 with Retry-After, no stream, no watch, nothing upstream;
    and so does every later request (the shutdown stays in force)."""
    rule = SlowRule()
    path = f"/qr/{NAME}/events" if route == "events" else f"/qr/{NAME}.png"
    async with serve(framework, wachat, authorize=rule) as base:
        pending = asyncio.ensure_future(http.get(base + path))
        await until(lambda: rule.entered == 1, "the request waits in authorize")
        if how == "SIGTERM":
            signal.raise_signal(signal.SIGTERM)
        else:
            await end_event_streams()
        rule.go.set()
        async with await pending as answer:
            first = answer.status, answer.headers.get("Retry-After"), await answer.json()
        async with http.get(base + path) as later:
            second = later.status, await later.json()
        async with http.post(f"{base}/qr/{NAME}/events", headers=RESTART) as restart:
            third = restart.status
    assert first == (503, "2", {"error": STOPPING, "instance": NAME})
    assert second == (503, {"error": STOPPING, "instance": NAME})
    assert third == 503
    assert still.request_count() == 0
    assert not watch_tasks()


async def test_a_stream_that_starts_after_the_shutdown_began_ends_at_once(
    wachat: WachatClient, still: FakeWachatServer
) -> None:
    """Between the route's 503 check and the stream's first step there are awaits (the
    response's headers): a stream that starts after the shutdown began yields nothing, joins
    no watch and asks nothing upstream."""
    stream = qr_events(hub_for(wachat), NAME, png_path="q.png", interval=1.0, heartbeat=30.0)
    await end_event_streams()
    assert [chunk async for chunk in stream] == []
    assert hub_for(wachat).viewers() == {}
    assert not watch_tasks()
    assert still.request_count() == 0
