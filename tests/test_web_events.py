"""wachat_async.web event streams and the hub: one upstream watch per instance, fan-out, cleanup.

The fan-out tests hold every upstream request at a turnstile (an aiohttp trace hook on a
borrowed session), so "one poll per round, whatever the number of viewers" is counted exactly,
without clocks.
"""

from __future__ import annotations

import asyncio
import gc
import re
import socket
import struct
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from tests._web import LIMIT, EventReader, png_url, serve, until, watch_tasks
from tests.conftest import KEY, NAME, assert_no_key
from wachat_async import RetryPolicy, WachatClient
from wachat_async.testing import FakeWachatServer
from wachat_async.web import QRHub, hub_for, qr_events
from wachat_async.web._hub import Unavailable

#: Every async test here runs on asyncio's loop and on uvloop (tests/conftest.py).
ON_EVERY_LOOP = True

QR = "/instance/qr/image"
STATE = "/instance/state"
OTHER = "t1_zz99yy88_other_store"


@pytest.fixture
async def still() -> AsyncIterator[FakeWachatServer]:
    """A fake server whose QR changes only when a test rotates it."""
    async with FakeWachatServer(api_key=KEY, qr_rotation=None) as fake:
        fake.add_instance(NAME)
        fake.add_instance(OTHER)
        yield fake


@pytest.fixture
async def wachat(still: FakeWachatServer) -> AsyncIterator[WachatClient]:
    async with WachatClient(
        api_key=KEY, base_url=still.base_url, retry=RetryPolicy(zero_wait=True)
    ) as client:
        yield client


class Turnstile:
    """Holds every upstream request until the test lets one through."""

    def __init__(self) -> None:
        self.waiting = 0
        self.passed = 0
        self._permits = asyncio.Semaphore(0)

    def let_through(self, count: int = 1) -> None:
        for _ in range(count):
            self._permits.release()

    def trace(self) -> aiohttp.TraceConfig:
        async def on_start(session: object, context: object, params: object) -> None:
            self.waiting += 1
            try:
                await self._permits.acquire()
            finally:
                self.waiting -= 1
            self.passed += 1

        config = aiohttp.TraceConfig()
        config.on_request_start.append(on_start)
        return config


@pytest.fixture
async def gated(
    still: FakeWachatServer,
) -> AsyncIterator[tuple[WachatClient, Turnstile]]:
    """A zero-wait client whose upstream requests wait at a Turnstile."""
    turnstile = Turnstile()
    async with (
        aiohttp.ClientSession(trace_configs=[turnstile.trace()]) as session,
        WachatClient(
            api_key=KEY,
            base_url=still.base_url,
            retry=RetryPolicy(zero_wait=True),
            session=session,
        ) as client,
    ):
        yield client, turnstile


async def test_events_announce_each_qr_then_connected_and_end(
    framework: str, still: FakeWachatServer, wachat: WachatClient
) -> None:
    """qr at once and on every change (sha256 + src), connected once open, then the end."""
    async with (
        serve(framework, wachat) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/qr/{NAME}/events") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-store"
        reader = EventReader(response)
        first = await reader.expect("qr")
        still.rotate_qr(NAME)
        second = await reader.expect("qr")
        still.set_state(NAME, "open")
        rest = await reader.rest()
        async with http.get(png_url(f"{base}/qr/{NAME}/events", second["src"])) as png:
            image = await png.read()
    assert set(first) == {"sha256", "src"}
    assert first["src"] == f"../{NAME}.png?v={first['sha256']}"
    assert first["sha256"] != second["sha256"]
    assert rest == [("connected", {"instance": NAME})]
    assert png.headers["ETag"] == f'"{second["sha256"]}"'
    assert image.startswith(b"\x89PNG")
    assert_no_key(first, second, *response.headers.values())
    await until(lambda: not watch_tasks(), "the watch ends once connected")


async def test_an_instance_already_linked_says_connected_at_once(
    framework: str, still: FakeWachatServer, wachat: WachatClient
) -> None:
    """A linked instance gets `connected` without a QR ever being fetched."""
    still.set_state(NAME, "open")
    async with (
        serve(framework, wachat) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/qr/{NAME}/events") as response,
    ):
        events = await EventReader(response).rest()
    assert events == [("connected", {"instance": NAME})]
    assert still.request_count(NAME, path=QR) == 0


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(404, (404, "no such instance"), id="404"),
        pytest.param(409, (409, "this instance has no QR code"), id="409"),
        pytest.param(401, (502, "the service refused the app"), id="401"),
    ],
)
async def test_a_terminal_upstream_error_is_an_error_event_that_ends_the_stream(
    framework: str,
    still: FakeWachatServer,
    wachat: WachatClient,
    status: int,
    expected: tuple[int, str],
) -> None:
    """A terminal error sends `event: failed` with the PNG route's JSON and status, then the
    stream ends (not `error`, which is EventSource's own event)."""
    still.script(NAME, [status])
    async with (
        serve(framework, wachat) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/qr/{NAME}/events") as response,
    ):
        events = await EventReader(response).rest()
        async with http.get(f"{base}/qr/{NAME}.png") as png:
            png_error = await png.json() if png.status != 200 else None
    assert len(events) == 1
    kind, data = events[0]
    assert kind == "failed"
    assert data["instance"] == NAME
    assert expected[1] in data["error"]
    assert data["status"] == expected[0]
    assert set(data) == {"error", "instance", "status"}
    assert png_error is None  # the script is spent: the next fetch works again
    await until(lambda: not watch_tasks(), "the failed watch is gone")


async def test_transient_failures_are_announced_and_ridden_out(
    framework: str, still: FakeWachatServer, wachat: WachatClient
) -> None:
    """502s beyond the retry policy keep the stream open: a failed poll is an `unavailable`
    event (why, and when the next try is), and the next good poll brings the QR back."""
    async with (
        serve(framework, wachat) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/qr/{NAME}/events") as response,
    ):
        reader = EventReader(response)
        first = await reader.expect("qr")
        still.script(NAME, [502] * 8)  # two polls of four attempts each
        down = await reader.expect("unavailable")
        while (got := await reader.next()) is not None and got[0] == "unavailable":
            pass  # a viewer may skip states it was too slow to see: it reads the latest
        still.rotate_qr(NAME)
        second = await reader.expect("qr")
    assert down == {
        "instance": NAME,
        "error": "the QR code service failed; try again",
        "retry_in": down["retry_in"],
    }
    assert isinstance(down["retry_in"], float)
    assert got == ("qr", first)  # the same QR, current again
    assert second["sha256"] != first["sha256"]


async def test_heartbeat_comments_keep_an_idle_stream_alive(
    framework: str, wachat: WachatClient
) -> None:
    """With nothing new to say, the stream sends `: ping` comments (period = heartbeat)."""
    async with (
        serve(framework, wachat, heartbeat=0.01) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/qr/{NAME}/events") as response,
    ):
        reader = EventReader(response)
        await reader.expect("qr")
        while len(reader.comments) < 2:
            line = await asyncio.wait_for(response.content.readline(), LIMIT)
            if line.startswith(b":"):
                reader.comments.append(line.decode().strip())
    assert reader.comments[:2] == [": ping", ": ping"]


async def test_fifty_viewers_share_one_upstream_watch(
    framework: str, still: FakeWachatServer, gated: tuple[WachatClient, Turnstile]
) -> None:
    """50 event streams of one instance make one state + one QR request per round, not 50."""
    client, turnstile = gated
    viewers = 50
    async with (
        serve(framework, client) as base,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
    ):
        responses = await asyncio.gather(
            *(http.get(f"{base}/qr/{NAME}/events") for _ in range(viewers))
        )
        try:
            readers = [EventReader(r) for r in responses]
            await until(lambda: turnstile.waiting == 1, "the watch's first request waits")
            assert hub_for(client).viewers() == {NAME: viewers}
            turnstile.let_through(2)  # round 1: state, then QR
            firsts = await asyncio.gather(*(r.expect("qr") for r in readers))
            await until(lambda: turnstile.waiting == 1, "round 2's state request waits")
            assert still.request_count(NAME, path=STATE) == 1
            assert still.request_count(NAME, path=QR) == 1

            # While watched, the PNG route answers from the announced image: no upstream call.
            async with http.get(png_url(f"{base}/qr/{NAME}/events", firsts[0]["src"])) as png:
                assert png.status == 200
                assert png.headers["ETag"] == f'"{firsts[0]["sha256"]}"'
            assert turnstile.waiting == 1
            assert turnstile.passed == 2

            still.rotate_qr(NAME)
            turnstile.let_through(2)  # round 2: state, then the new QR
            seconds = await asyncio.gather(*(r.expect("qr") for r in readers))
            await until(lambda: turnstile.waiting == 1, "round 3 waits")
            assert still.request_count(NAME, path=QR) == 2
            assert still.request_count(NAME, path=STATE) == 2
            assert len({f["sha256"] for f in firsts}) == 1
            assert len({s["sha256"] for s in seconds}) == 1
            assert firsts[0] != seconds[0]
            assert len(watch_tasks()) == 1
        finally:
            for response in responses:
                response.close()
        await until(lambda: not watch_tasks(), "the last viewer leaving stops the watch")
        assert hub_for(client).viewers() == {}
        assert turnstile.waiting == 0


async def test_last_viewer_leaving_stops_the_watch_and_a_new_one_restarts_it(
    framework: str, still: FakeWachatServer, gated: tuple[WachatClient, Turnstile]
) -> None:
    """Viewers are counted: the watch outlives all but the last; a later viewer starts anew."""
    client, turnstile = gated
    async with serve(framework, client, heartbeat=0.01) as base, aiohttp.ClientSession() as http:
        one = await http.get(f"{base}/qr/{NAME}/events")
        two = await http.get(f"{base}/qr/{NAME}/events")
        await until(lambda: hub_for(client).viewers() == {NAME: 2}, "two viewers")
        turnstile.let_through(2)
        await EventReader(one).expect("qr")
        await EventReader(two).expect("qr")
        first_task = watch_tasks()[0]
        one.close()  # a browser goes away mid-stream
        await until(lambda: hub_for(client).viewers() == {NAME: 1}, "one viewer left")
        assert not first_task.done()
        two.close()
        await until(lambda: first_task.done(), "the last viewer stops the watch")
        assert first_task.cancelled()
        assert hub_for(client).viewers() == {}
        assert turnstile.waiting == 0  # the cancelled request does not linger

        three = await http.get(f"{base}/qr/{NAME}/events")
        turnstile.let_through(2)
        await EventReader(three).expect("qr")
        assert [t for t in watch_tasks() if t is not first_task]
        three.close()
        await until(lambda: not watch_tasks(), "no watch task left")


async def test_instances_are_watched_separately(
    framework: str, still: FakeWachatServer, wachat: WachatClient
) -> None:
    """Two instances, two watches; each stream hears only of its own instance."""
    async with (
        serve(framework, wachat) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/qr/{NAME}/events") as mine,
        http.get(f"{base}/qr/{OTHER}/events") as other,
    ):
        a = await EventReader(mine).expect("qr")
        b = await EventReader(other).expect("qr")
        assert sorted(hub_for(wachat).viewers()) == sorted([NAME, OTHER])
        assert len(watch_tasks()) == 2
    assert a["sha256"] != b["sha256"]
    assert OTHER in b["src"]
    await until(lambda: not watch_tasks(), "both watches end")


async def test_png_route_fetches_upstream_when_nobody_watches(
    framework: str, still: FakeWachatServer, wachat: WachatClient
) -> None:
    """Without a running watch each PNG request asks upstream (a stale ?v= included)."""
    async with serve(framework, wachat) as base, aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(f"{base}/qr/{NAME}.png?v=stale") as png:
                assert png.status == 200
    assert still.request_count(NAME, path=QR) == 2


# -- the hub, without a framework -----------------------------------------------------------------


async def test_hub_is_per_client_and_per_event_loop(wachat: WachatClient) -> None:
    """hub_for gives one hub per (client, loop): the same object twice, another elsewhere."""
    hub = hub_for(wachat)
    assert hub_for(wachat) is hub
    assert isinstance(hub, QRHub)
    other_client = WachatClient(api_key=KEY, base_url=wachat.base_url)
    assert hub_for(other_client) is not hub

    def in_another_loop() -> QRHub:
        async def get() -> QRHub:
            return hub_for(wachat)

        return asyncio.run(get())

    other_loop_hub = await asyncio.to_thread(in_another_loop)
    assert other_loop_hub is not hub
    await other_client.aclose()


async def test_hub_does_not_keep_a_client_alive(still: FakeWachatServer) -> None:
    """The registry holds clients weakly: a dropped client is collected with its hubs."""
    import weakref

    client = WachatClient(api_key=KEY, base_url=still.base_url)
    hub_for(client)
    ref = weakref.ref(client)
    await client.aclose()
    del client
    gc.collect()
    assert ref() is None


async def test_qr_events_is_a_plain_async_iterator_of_bytes(
    still: FakeWachatServer, wachat: WachatClient
) -> None:
    """qr_events works without a framework and closing it counts the viewer out."""
    stream = qr_events(hub_for(wachat), NAME, png_path="/x/qr.png", interval=1.0, heartbeat=15.0)
    assert re.fullmatch(rb"retry: \d{4}\n\n", await stream.__anext__())
    chunk = await stream.__anext__()
    assert chunk.startswith(b"event: qr\ndata: {")
    assert b'"src":"/x/qr.png?v=' in chunk
    assert chunk.endswith(b"\n\n")
    assert hub_for(wachat).viewers() == {NAME: 1}
    await stream.aclose()
    assert hub_for(wachat).viewers() == {}
    await until(lambda: not watch_tasks(), "closing the stream stops the watch")


async def test_a_browser_that_leaves_is_noticed_without_a_write(
    still: FakeWachatServer, wachat: WachatClient
) -> None:
    """The `gone` check ends a quiet stream (no heartbeat due) and releases the watch."""
    state = SimpleNamespace(gone=False)

    async def gone() -> bool:
        return bool(state.gone)

    stream = qr_events(
        hub_for(wachat), NAME, png_path="/qr.png", interval=1.0, heartbeat=0.01, gone=gone
    )
    while not (await stream.__anext__()).startswith(b"event: qr"):
        pass  # pings may come first: the heartbeat is shorter than the first poll
    state.gone = True
    rest = [chunk async for chunk in stream]
    assert all(chunk == b": ping\n\n" for chunk in rest), rest
    assert hub_for(wachat).viewers() == {}
    await until(lambda: not watch_tasks(), "the watch is released")


async def test_a_bug_in_the_watch_is_an_error_event_not_a_hang(
    still: FakeWachatServer, wachat: WachatClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception ends the stream with a 502-style final event (and is logged)."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(wachat, "get_instance_state", broken)
    stream = qr_events(hub_for(wachat), NAME, png_path="/qr.png", interval=1.0, heartbeat=15.0)
    chunks = [chunk async for chunk in stream]
    assert chunks[1:] == [
        b'event: failed\ndata: {"error":"the QR code service failed; try again",'
        + f'"instance":"{NAME}","status":502'.encode()
        + b"}\n\n"
    ]


# -- viewers that go away -------------------------------------------------------------------------


async def _open_stream(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw event-stream request; returns once the response head has arrived."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /qr/{NAME}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), LIMIT)
    assert head.startswith(b"HTTP/1.1 200 ")
    return reader, writer


def _leave(writer: asyncio.StreamWriter, how: str) -> None:
    if how == "reset":  # RST, as a crashed browser or a dropped network leaves
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("moment", ["before-the-first-image", "after-the-first-image"])
async def test_a_viewer_leaving_mid_stream_stops_the_upstream_watch(
    framework: str,
    still: FakeWachatServer,
    gated: tuple[WachatClient, Turnstile],
    how: str,
    moment: str,
) -> None:
    """A browser that closes or resets its connection, while the first upstream request is
    still out or after the first image: its viewer count and the watch drop to zero, the
    held request is cancelled, and upstream hears nothing more."""
    client, turnstile = gated
    async with serve(framework, client, heartbeat=30.0) as base:
        reader, writer = await _open_stream(base)
        await until(lambda: turnstile.waiting == 1, "the watch's first request waits")
        if moment == "after-the-first-image":
            turnstile.let_through(2)  # state, then QR
            await asyncio.wait_for(reader.readuntil(b"event: qr"), LIMIT)
            await until(lambda: turnstile.waiting == 1, "the next round waits")
        sent = still.request_count()
        assert hub_for(client).viewers() == {NAME: 1}
        _leave(writer, how)
        await until(lambda: not watch_tasks(), "the watch stops")
        assert hub_for(client).viewers() == {}
        assert turnstile.waiting == 0  # the held request was cancelled, not left waiting
        turnstile.let_through(5)  # nothing is left to use them
        await asyncio.sleep(0)
        assert still.request_count() == sent


async def test_one_viewer_resetting_leaves_the_others_watching(
    framework: str, still: FakeWachatServer, gated: tuple[WachatClient, Turnstile]
) -> None:
    """Of three viewers, one resets its connection: the watch goes on for the other two, who
    still get the next QR; it stops once they have left too."""
    client, turnstile = gated
    async with serve(framework, client, heartbeat=30.0) as base:
        streams = [await _open_stream(base) for _ in range(3)]
        await until(lambda: hub_for(client).viewers() == {NAME: 3}, "three viewers")
        turnstile.let_through(2)
        for reader, _ in streams:
            await asyncio.wait_for(reader.readuntil(b"event: qr"), LIMIT)
        _leave(streams[0][1], "reset")
        await until(lambda: hub_for(client).viewers() == {NAME: 2}, "two viewers left")
        assert len(watch_tasks()) == 1
        still.rotate_qr(NAME)
        turnstile.let_through(2)
        for reader, _ in streams[1:]:
            await asyncio.wait_for(reader.readuntil(b"event: qr"), LIMIT)
        assert still.request_count(NAME, path=QR) == 2  # one poll for all of them
        for _, writer in streams[1:]:
            _leave(writer, "close")
        await until(lambda: not watch_tasks(), "the watch stops with the last viewer")
        assert hub_for(client).viewers() == {}


# -- outages and recovery --------------------------------------------------------------------------


@pytest.fixture
async def slow(still: FakeWachatServer) -> AsyncIterator[WachatClient]:
    """A client with real waits but one attempt per call: each poll is one upstream request,
    and a watch's next poll (an hour away in these tests) comes only when something wakes it."""
    async with WachatClient(
        api_key=KEY, base_url=still.base_url, retry=RetryPolicy(max_attempts=1)
    ) as client:
        yield client


async def test_down_from_the_start_both_routes_say_unavailable_and_a_new_viewer_wakes_it(
    framework: str,
    still: FakeWachatServer,
    slow: WachatClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Upstream fails the first poll: the stream says `unavailable` (why, the next try), the
    PNG route answers the same 503 with Retry-After (the routes agree); once upstream is back,
    a viewer that joins makes the backing-off watch poll at once, and both viewers get the QR."""
    monkeypatch.setattr("wachat_async.web._hub.WAKE_GAP", 0.0)
    still.script(NAME, [502])
    hour = {"interval": 3600.0, "max_backoff": 7200.0}
    async with (
        serve(framework, slow, **hour) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/qr/{NAME}/events") as first,
    ):
        down = await EventReader(first).expect("unavailable")
        async with http.get(f"{base}/qr/{NAME}.png") as png:
            body = await png.json()
            retry_after = int(png.headers["Retry-After"])
        assert png.status == 503
        assert still.request_count(NAME, path=QR) == 1  # the PNG route did not ask again
        async with http.get(f"{base}/qr/{NAME}/events") as second:
            await EventReader(second).expect("unavailable")  # what it missed, first
            back = await EventReader(second).expect("qr")
            assert await EventReader(first).expect("qr") == back
    assert down["error"] == body["error"] == "the QR code service failed; try again"
    assert 6480 <= down["retry_in"] <= 7200 * 1.1  # 2 x interval, jittered
    assert 6480 <= retry_after <= 7200 * 1.1
    assert still.request_count(NAME, path=QR) == 2


async def test_the_wait_between_failing_polls_is_capped_by_max_backoff(
    framework: str, still: FakeWachatServer, wachat: WachatClient
) -> None:
    """While polls fail, each `unavailable` names the next try, never beyond max_backoff
    (plus jitter): a page opened after the outage gets its QR within seconds, not a minute."""
    still.script(NAME, [502] * 24)  # six polls of four attempts
    async with (
        serve(framework, wachat, interval=1.0, max_backoff=3.0) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/qr/{NAME}/events") as response,
    ):
        reader = EventReader(response)
        waits = []
        while (got := await reader.next()) is not None and got[0] == "unavailable":
            waits.append(got[1]["retry_in"])
        assert got is not None
        assert got[0] == "qr"
    assert len(waits) == 6
    assert 1.8 <= waits[0] <= 2.2  # twice the interval after the first failure
    assert all(wait <= 3.0 * 1.1 for wait in waits)
    assert max(waits) >= 2.7  # the cap is reached


async def test_a_qr_older_than_max_age_is_not_served_as_current(
    framework: str, still: FakeWachatServer, gated: tuple[WachatClient, Turnstile]
) -> None:
    """While the next poll hangs, the QR gets older: past max_age (here at once) the stream
    says `unavailable` (no next try known: a poll is under way), never `qr`, and the PNG route
    answers 503."""
    client, turnstile = gated
    async with (
        serve(framework, client, max_age=1e-9) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/qr/{NAME}/events") as response,
    ):
        reader = EventReader(response)
        await until(lambda: turnstile.waiting == 1, "the first poll waits")
        turnstile.let_through(2)
        event = await reader.next()
        if event is not None and event[0] == "qr":
            # uvloop's clock counts whole milliseconds: the QR may be seen in the millisecond
            # it was polled in, then the stream wakes as it goes stale.
            event = await reader.next()
        assert event is not None
        assert event[0] == "unavailable"  # round 2 is held at the turnstile
        stale = event[1]
        async with http.get(f"{base}/qr/{NAME}.png") as png:
            assert png.status == 503
            assert png.headers["Retry-After"] == "2"  # a poll under way: RETRY_AFTER
            body = await png.json()
        assert turnstile.passed == 2
    assert stale == {"instance": NAME, "error": body["error"], "retry_in": None}
    assert "slow" in body["error"]


async def test_a_watch_serves_its_qr_until_max_age_after_its_last_good_poll(
    still: FakeWachatServer, gated: tuple[WachatClient, Turnstile]
) -> None:
    """Watch.state, the one rule both routes follow, at chosen clock readings."""
    client, turnstile = gated
    hub = hub_for(client)
    watch = hub.join(NAME, 1.0)
    turnstile.let_through(2)
    await until(lambda: watch.latest is not None, "the first image")
    assert watch.state(watch.confirmed + 14.9, 15.0) is watch.latest
    assert hub.latest(NAME) is watch.latest  # one dict lookup, however many instances
    assert hub.latest(OTHER) is None
    later = watch.state(watch.confirmed + 15.1, 15.0)
    assert isinstance(later, Unavailable)
    assert later.retry_at is None
    hub.leave(watch)
    await until(lambda: not watch_tasks(), "the watch stops")


async def test_concurrent_png_requests_share_one_upstream_fetch(
    framework: str, still: FakeWachatServer, gated: tuple[WachatClient, Turnstile]
) -> None:
    """With nobody watching, 20 requests at once for one instance make one upstream request."""
    client, turnstile = gated
    asked: list[str] = []

    def counting(request: object, name: str) -> bool:
        asked.append(name)
        return True

    async with (
        serve(framework, client, authorize=counting) as base,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
    ):

        async def get() -> tuple[int, bytes]:
            async with http.get(f"{base}/qr/{NAME}.png") as png:
                return png.status, await png.read()

        requests = asyncio.gather(*(get() for _ in range(20)))
        # authorize, then the fetch, with no await between: once all 20 asked, all share it.
        await until(lambda: len(asked) == 20 and turnstile.waiting == 1, "all 20 wait")
        turnstile.let_through(1)
        answers = await requests
    assert {status for status, _ in answers} == {200}
    assert len({body for _, body in answers}) == 1
    assert still.request_count(NAME, path=QR) == 1


async def test_an_interval_below_a_second_is_raised_and_its_watch_still_stops(
    gated: tuple[WachatClient, Turnstile],
) -> None:
    """interval=0.5 polls once a second, and the last viewer leaving forgets that watch, so
    the next viewer gets a new one instead of a finished one."""
    client, _ = gated
    hub = hub_for(client)
    first = hub.join(NAME, 0.5)
    assert first.interval == 1.0
    hub.leave(first)
    assert hub.viewers() == {}
    second = hub.join(NAME, 0.5)
    assert second is not first
    assert second.ended is None
    hub.leave(second)
    await until(lambda: not watch_tasks(), "the watches stop")


@pytest.mark.parametrize(
    ("retry_at", "expected"),
    [(110.2, "11"), (100.0, "1"), (98.0, "1"), (100.4, "1")],
    ids=["ahead", "now", "past", "under-a-second"],
)
def test_png_retry_after_is_never_below_one(retry_at: float, expected: str) -> None:
    """Once the announced try is due or past (a poll is running), Retry-After stays a
    delay of at least 1 s, never 0 or negative."""
    from wachat_async.web._core import unavailable_answer
    from wachat_async.web._hub import Unavailable

    answer = unavailable_answer(Unavailable("down", retry_at), "t1_abc_store", now=100.0)
    assert answer.status == 503
    assert answer.headers["Retry-After"] == expected
