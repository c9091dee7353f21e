"""Stopping an app with QR pages open: every event stream ends cleanly (no final event, no
traceback) and the process exits, under uvicorn and aiohttp.web, on SIGINT and SIGTERM.

The examples run as their docstrings say (subprocesses, the embedded fake server); what is
asserted is how each stream ended and the exit status and log, never an elapsed time (the
bounds only keep a regression from hanging the suite: uvicorn used to wait forever, aiohttp
two shutdown_timeouts of 60 s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests._web import LIMIT, EventReader, serve, until, watch_tasks
from tests.conftest import EXAMPLES, KEY, NAME
from wachat_async import RetryPolicy, WachatClient
from wachat_async.testing import FakeWachatServer
from wachat_async.web import _hub, end_event_streams, hub_for, qr_events

DEMO = "t1_demo0001_store"
VIEWERS = 20

RUN_APP = """
import sys
from aiohttp import web
from wachat_async import WachatClient
from wachat_async.testing import FakeWachatServer
from wachat_async.web.aiohttp import qr_routes

CLIENT = web.AppKey("client", WachatClient)

async def wachat(app):
    async with FakeWachatServer() as fake:
        fake.add_instance(%(name)r)
        async with WachatClient(api_key=fake.api_key, base_url=fake.base_url) as client:
            app[CLIENT] = client
            yield

app = web.Application()
app.cleanup_ctx.append(wachat)
app.add_routes(qr_routes(lambda r: r.app[CLIENT], prefix="/qr", authorize=lambda r, n: True))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda t: print(t, flush=True))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _start(args: list[str], ready: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("WACHAT_API_KEY", "WACHAT_BASE_URL")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    log: list[str] = []
    try:
        while ready not in (log[-1] if log else ""):
            line = (await asyncio.wait_for(proc.stdout.readline(), LIMIT)).decode()
            assert line, "exited early:\n" + "".join(log)
            log.append(line)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, log


async def _end_of(response: aiohttp.ClientResponse) -> list[tuple[str, Any]]:
    """The events after the first `qr` until the end, which must be a clean end of stream (a
    cut chunked body raises)."""
    return await EventReader(response).rest()


SCRIPTS = [
    pytest.param(["examples/fastapi_proxy.py"], "Uvicorn running", id="uvicorn-example"),
    pytest.param(["examples/aiohttp_proxy.py"], "Open http", id="aiohttp-example"),
    pytest.param(["-c", RUN_APP % {"name": DEMO}], "Running on", id="aiohttp-run_app"),
]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(("script", "ready"), SCRIPTS)
async def test_a_signal_ends_every_stream_cleanly_and_the_app_exits(
    script: list[str], ready: str, sig: signal.Signals
) -> None:
    """With pages open, the signal a deploy sends: each stream gets a clean end of stream
    and no final event, the process exits (0, or killed by the signal it re-raised), its log
    holds no traceback and no error."""
    if "fastapi" in script[0]:
        pytest.importorskip("uvicorn")
    port = _free_port()
    args = [str(EXAMPLES.parent / script[0]) if script[0].endswith(".py") else script[0]]
    proc, log = await _start(
        [*args, *script[1:], *(["--port"] if args[0] != "-c" else []), str(port)], ready
    )
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            url = f"http://127.0.0.1:{port}/qr/{DEMO}/events"
            responses = await asyncio.gather(*(http.get(url) for _ in range(VIEWERS)))
            for response in responses:
                await EventReader(response).expect("qr")
            proc.send_signal(sig)
            ends = await asyncio.gather(*(_end_of(r) for r in responses))
        assert proc.stdout is not None
        rest = (await asyncio.wait_for(proc.stdout.read(), LIMIT)).decode()
        status = await asyncio.wait_for(proc.wait(), LIMIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "".join(log) + rest
    assert all(all(kind == "qr" for kind, _ in end) for end in ends), ends
    assert status in (0, -sig), text  # uvicorn re-raises the signal once it has stopped
    for bad in ("Traceback", "CancelledError", "ERROR", "Cancel "):
        assert bad not in text, text


# -- in-process ------------------------------------------------------------------------------------


async def test_end_event_streams_ends_every_stream_without_an_event(
    framework: str, client: WachatClient
) -> None:
    """What aiohttp's on_shutdown (or any app's own stop) calls: each stream ends cleanly, the
    watch stops, and the shutdown stays in force: a later viewer gets a 503, no new watch."""
    async with serve(framework, client) as base, aiohttp.ClientSession() as http:
        responses = [await http.get(f"{base}/qr/{NAME}/events") for _ in range(3)]
        for response in responses:
            await EventReader(response).expect("qr")
        await end_event_streams()
        for response in responses:
            assert await EventReader(response).rest() == []
        await until(lambda: not watch_tasks(), "the watch stops")
        async with http.get(f"{base}/qr/{NAME}/events") as again:
            assert (again.status, again.headers.get("Retry-After")) == (503, "2")
        assert not watch_tasks()


async def test_a_closed_client_ends_the_streams_and_is_no_failure(
    framework: str, server: FakeWachatServer
) -> None:
    """The app closing its client (its lifespan ending) is not an upstream failure: streams end
    without a `failed` event, so pages reconnect; the PNG route answers 503."""
    client = WachatClient(api_key=KEY, base_url=server.base_url, retry=RetryPolicy(zero_wait=True))
    async with serve(framework, client) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/qr/{NAME}/events") as response:
            reader = EventReader(response)
            await reader.expect("qr")
            await client.aclose()
            assert await reader.rest() == []
        async with http.get(f"{base}/qr/{NAME}.png") as png:
            assert png.status == 503
            assert (await png.json())["error"] == (
                "the QR code service is not available (client closed); try again"
            )


@pytest.fixture
def sigterm() -> Iterator[list[int]]:
    """SIGTERM handled by a recording Python handler for the test, then restored."""
    calls: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda sig, frame: calls.append(sig))
    try:
        yield calls
    finally:
        signal.signal(signal.SIGTERM, before)


async def test_a_signal_ends_the_streams_and_reaches_the_handler_in_place(
    client: WachatClient, sigterm: list[int]
) -> None:
    """The first viewer chains a handler before the one in place (a server's): on the signal
    every stream of the loop ends cleanly and the server's handler still runs, once."""
    stream = qr_events(hub_for(client), NAME, png_path="q.png", interval=1.0, heartbeat=30.0)
    await stream.__anext__()  # retry:
    assert (await stream.__anext__()).startswith(b"event: qr")
    assert isinstance(signal.getsignal(signal.SIGTERM), _hub._Chained)
    signal.raise_signal(signal.SIGTERM)
    assert [chunk async for chunk in stream] == []
    assert sigterm == [signal.SIGTERM]
    await until(lambda: not watch_tasks(), "the watch stops")


async def test_a_default_signal_disposition_is_left_alone(client: WachatClient) -> None:
    """A signal nobody handles in Python (SIGTERM's default ends the process) stays so."""
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        stream = qr_events(hub_for(client), NAME, png_path="q.png", interval=1.0, heartbeat=30.0)
        await stream.__anext__()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        await stream.aclose()
    finally:
        signal.signal(signal.SIGTERM, before)
