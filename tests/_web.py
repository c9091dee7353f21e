"""Shared helpers for the wachat_async.web tests: serve qr_routes on loopback, read SSE.

Both frameworks run on real sockets: aiohttp.web under ``aiohttp.test_utils.TestServer`` and
Starlette/FastAPI under uvicorn in this event loop (httpx's ASGI transport would buffer the
event stream until it ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from wachat_async import WachatClient
from wachat_async.web import WATCH_TASK_PREFIX, _hub, end_event_streams

FRAMEWORKS = ("aiohttp", "starlette")
#: Also wachat_async.web.fastapi.qr_router under FastAPI, for tests of what all answer alike.
EVERY_FRAMEWORK = (*FRAMEWORKS, "fastapi-router")
#: Bounds for waits in tests (never asserted on).
LIMIT = 30.0


def allow_all(request: object, instance_name: str) -> bool:
    return True


@contextlib.asynccontextmanager
async def serve(
    framework: str, client: WachatClient, *, fastapi: bool = False, **options: Any
) -> AsyncIterator[str]:
    """Serve ``qr_routes(client, **options)`` with *framework*; yield the base URL.
    ``fastapi-router``: ``qr_router`` included at the prefix, *authorize* made a dependency."""
    options.setdefault("authorize", allow_all)
    if framework == "fastapi-router":
        async with serve_asgi(router_app(client, **options)) as base:
            yield base
        return
    if framework == "aiohttp":
        from wachat_async.web.aiohttp import qr_routes

        app = web.Application()
        app.add_routes(qr_routes(client, **options))
        async with TestServer(app) as server:
            yield str(server.make_url("")).rstrip("/")
        return
    from wachat_async.web.starlette import qr_routes as starlette_routes

    routes = starlette_routes(client, **options)
    if fastapi:
        from fastapi import FastAPI

        asgi: Any = FastAPI(routes=routes)
    else:
        from starlette.applications import Starlette

        asgi = Starlette(routes=routes)
    async with serve_asgi(asgi) as base:
        yield base


def router_app(client: WachatClient, **options: Any) -> Any:
    """A FastAPI app with ``qr_router(client, **options)`` included at ``prefix`` ("/qr")."""
    from fastapi import FastAPI, Request

    from wachat_async.web.fastapi import qr_router

    rule = options.pop("authorize")
    prefix = options.pop("prefix", "/qr")

    async def authorize(request: Request, instance_name: str) -> Any:
        verdict = rule(request, instance_name)
        return await verdict if inspect.isawaitable(verdict) else verdict

    keyword = inspect.Parameter.KEYWORD_ONLY  # annotations as objects: Request is local here
    authorize.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("request", keyword, annotation=Request),
            *[inspect.Parameter("instance_name", keyword, annotation=str)],
        ]
    )

    app = FastAPI()
    app.include_router(qr_router(client, authorize=authorize, **options), prefix=prefix)
    return app


@contextlib.asynccontextmanager
async def serve_asgi(asgi: Any) -> AsyncIterator[str]:
    """Serve the ASGI app *asgi* under uvicorn in this event loop; yield the base URL."""
    import uvicorn

    config = uvicorn.Config(asgi, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        # What uvicorn's shutdown does, without its waits: it notices should_exit within 0.1 s,
        # then sleeps 0.1 s more (0.2 s of each Starlette test, a minute of the suite).
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            connection.shutdown()
        state = server.server_state
        await until(lambda: not state.connections and not state.tasks, "uvicorn's requests end")
        task.cancel()
        await asyncio.wait([task])


class EventReader:
    """Reads one ``text/event-stream`` response into (event, data) pairs and comments."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next(self) -> tuple[str, Any] | None:
        """The next event as (name, parsed JSON data); ``None`` once the stream has ended."""
        kind, data = "message", list[str]()
        while True:
            raw = await asyncio.wait_for(self.response.content.readline(), LIMIT)
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if not line:
                if data:
                    return kind, json.loads("\n".join(data))
                continue
            if line.startswith(":"):
                self.comments.append(line)
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                kind = value
            elif field == "data":
                data.append(value)

    async def expect(self, kind: str) -> Any:
        """The data of the next event, which must be *kind*."""
        got = await self.next()
        assert got is not None, f"stream ended while waiting for {kind!r}"
        assert got[0] == kind, got
        return got[1]

    async def rest(self) -> list[tuple[str, Any]]:
        """Every event until the stream ends."""
        events = []
        while (got := await self.next()) is not None:
            events.append(got)
        return events


async def deploy() -> None:
    """A deploy, in one process: every stream ends (:func:`end_event_streams`), then the next
    process, which is not stopping (a shutdown stays in force on its loop), takes the pages'
    reconnects."""
    await end_event_streams()
    _hub._stopping.discard(asyncio.get_running_loop())


def png_url(events_url: str, src: str) -> str:
    """The PNG an event's ``src`` names: it is relative to the event stream's URL."""
    return urljoin(events_url, src)  # as a browser resolves it (yarl's join decodes %2F)


def watch_tasks() -> list[asyncio.Task[Any]]:
    """The upstream watch tasks of wachat_async.web that exist right now."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(WATCH_TASK_PREFIX)]


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Let the loop run until *predicate* holds (bounded; a failure names *what*)."""

    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.002)

    try:
        await asyncio.wait_for(wait(), LIMIT)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


class RawResponse:
    """What :func:`raw_request` read: the status, the headers (lower-case names), the body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return json.loads(self.body)


async def raw_request(
    base: str, method: str, target: str, headers: dict[str, str] | None = None
) -> RawResponse:
    """Send *target* exactly as written (no client normalises ``..`` or re-encodes ``%2F``),
    with ``Connection: close``; read the answer (of an event stream: up to its first event)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), LIMIT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        fields: dict[str, str] = {}
        for line in filter(None, header_lines):
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif fields.get("content-type") == "text/event-stream":  # up to the first event
            body = b""
            while b"event:" not in body or not body.endswith(b"\n\n"):
                if fields.get("transfer-encoding") == "chunked":
                    size = int((await asyncio.wait_for(reader.readline(), LIMIT)).strip(), 16)
                    body += await asyncio.wait_for(reader.readexactly(size + 2), LIMIT)
                    body = body[:-2]
                else:
                    body += await asyncio.wait_for(reader.readuntil(b"\n\n"), LIMIT)
            body = body[body.index(b"event:") :]  # after the opening retry:
        else:
            body = await asyncio.wait_for(reader.read(), LIMIT)
            if fields.get("transfer-encoding") == "chunked":
                body = _unchunk(body)
        return RawResponse(status, fields, body)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _unchunk(data: bytes) -> bytes:
    out, rest = b"", data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out
