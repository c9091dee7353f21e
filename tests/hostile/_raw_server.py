"""A raw asyncio TCP server that says exactly the bytes a broken or malicious server would.

``aiohttp.web`` (and every real server) refuses to send a garbage status line, a lying
``Content-Length`` or a bad chunk size, and cannot reset a connection half-way through a body.
This server can: for each request it reads, it runs a short script of *actions* (send bytes,
drip them, pause, close, reset, hang) chosen by a :data:`Script`. It records what it received
(request line and headers) so tests can assert what the client sent, and where.

Every wait is bounded, and :meth:`RawServer.close` leaves no task, socket or transport behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "Close",
    "Drip",
    "Hang",
    "Notify",
    "RawServer",
    "RecordedRequest",
    "Reset",
    "Send",
    "Sleep",
    "WaitFor",
    "chunked",
    "http_response",
    "make_png",
    "serve_in_thread",
]

#: The longest any single wait inside the server may last (a hang, a slow client, shutdown).
MAX_WAIT = 5.0


@dataclass(frozen=True)
class Send:
    """Write *data* at once."""

    data: bytes


@dataclass(frozen=True)
class Drip:
    """Write *data* in pieces of *piece* bytes, pausing *delay* seconds between pieces."""

    data: bytes
    piece: int = 16
    delay: float = 0.005


@dataclass(frozen=True)
class Sleep:
    """Pause for *seconds* (keep it to a few milliseconds)."""

    seconds: float


@dataclass(frozen=True)
class Close:
    """Close the connection gracefully (FIN)."""


@dataclass(frozen=True)
class Reset:
    """Abort the connection with a TCP RST (``SO_LINGER`` 0), as a crashing proxy would.

    Linux throws away received-but-unread data when an RST arrives, so a reset sent right after
    some bytes could erase them before the client read them, and "reset mid-body" would turn
    into "reset before the status line" at random. When the server has a ``peer_unread`` probe
    it therefore first waits (bounded) until the client has read everything sent so far.
    """


@dataclass(frozen=True)
class Hang:
    """Send nothing more and keep the connection open until the client leaves or the server
    closes (bounded by ``MAX_WAIT``)."""


@dataclass(frozen=True)
class WaitFor:
    """Pause until *event* is set (bounded by ``MAX_WAIT``): lets a test order the server's
    bytes against what the client has done, without guessing at timing."""

    event: asyncio.Event


@dataclass(frozen=True)
class Notify:
    """Set *event*: tells the test the actions before this one have been written."""

    event: asyncio.Event


Action = Send | Drip | Sleep | Close | Reset | Hang | WaitFor | Notify


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server read it: request line, headers in order, connection number."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    connection: int

    def header(self, name: str) -> str | None:
        """The first value of header *name* (case-insensitive), or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    @property
    def instance_name(self) -> str | None:
        """The ``instanceName`` query parameter, if any."""
        values = parse_qs(urlsplit(self.target).query).get("instanceName")
        return values[0] if values else None

    @property
    def raw(self) -> str:
        """The request head as text (for leak checks)."""
        lines = [f"{self.method} {self.target} {self.version}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        return "\r\n".join(lines)


#: What to answer: the same actions for every request, or a function of the request.
Script = Sequence[Action] | Callable[[RecordedRequest], Sequence[Action]]


def http_response(
    status: int = 200,
    body: bytes = b"",
    *,
    reason: str = "OK",
    headers: Iterable[tuple[str, str]] = (),
    content_type: str | None = "image/png",
    content_length: int | bool | None = True,
) -> bytes:
    """A complete HTTP/1.1 response as bytes.

    *content_length*: ``True`` for the real length, an int to lie, ``None``/``False`` to omit.
    """
    lines = [f"HTTP/1.1 {status} {reason}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if content_length is True:
        lines.append(f"Content-Length: {len(body)}")
    elif isinstance(content_length, int) and content_length is not False:
        lines.append(f"Content-Length: {content_length}")
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*pieces: bytes, end: bool = True) -> bytes:
    """*pieces* in chunked transfer encoding (with the final zero chunk if *end*)."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + (b"0\r\n\r\n" if end else b"")


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def make_png(width: int = 29, height: int = 29) -> bytes:
    """A valid greyscale PNG of *width* x *height* (a checkerboard, so it is not all zeros)."""
    rows = b"".join(
        b"\x00" + bytes(255 * ((x + y) % 2) for x in range(width)) for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows, 9))
        + _png_chunk(b"IEND", b"")
    )


def gzip_bytes(data: bytes) -> bytes:
    """*data* gzip-compressed (deterministic: no timestamp)."""
    return gzip.compress(data, mtime=0)


@dataclass
class RawServer:
    """A loopback TCP server answering each request with a scripted list of actions.

    Use it as ``async with RawServer(script) as server``; ``server.base_url`` is what a
    ``WachatClient`` needs. ``requests`` lists every request head received, ``connections``
    counts accepted TCP connections (including ones that never sent a full request).
    """

    script: Script
    host: str = "127.0.0.1"
    #: Bytes the client has received on the connection from its *port* but not read yet (None:
    #: unknown). The client runs in this process, so a test can look at its socket; see Reset.
    peer_unread: Callable[[int], int | None] | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = field(default=None, repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set, repr=False)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition, repr=False)

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, self.host, 0, backlog=1024)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The port the server listens on."""
        assert self._server is not None, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL to give a client."""
        return f"{self.url}/api/v1"

    async def wait_for_requests(self, count: int, timeout: float = MAX_WAIT) -> None:
        """Wait (at most *timeout* seconds) until *count* requests have arrived."""
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.requests) >= count), timeout
            )

    async def close(self) -> None:
        """Stop listening, end every connection and wait for every handler (all bounded)."""
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=MAX_WAIT)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=MAX_WAIT)
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), MAX_WAIT)
            self._server = None
        # Let transports finish closing (connection_lost runs via call_soon).
        for _ in range(3):
            await asyncio.sleep(0)

    async def _wait_peer_read_all(self, writer: asyncio.StreamWriter) -> None:
        """Wait (at most ``MAX_WAIT``) until the client has read every byte sent to it."""
        if self.peer_unread is None:
            return
        port = writer.get_extra_info("peername")[1]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MAX_WAIT
        while self.peer_unread(port) and loop.time() < deadline:
            await asyncio.sleep(0.001)

    def _actions_for(self, request: RecordedRequest) -> Sequence[Action]:
        return self.script(request) if callable(self.script) else self.script

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(writer)
        self.connections += 1
        number = self.connections
        try:
            while not self._stopping.is_set():
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), MAX_WAIT)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    return
                except TimeoutError:
                    return
                request = _parse_head(head, number)
                async with self._arrived:
                    self.requests.append(request)
                    self._arrived.notify_all()
                if await self._run(self._actions_for(request), reader, writer):
                    return
        except (ConnectionError, OSError):
            return
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), MAX_WAIT)

    async def _run(
        self, actions: Sequence[Action], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Run *actions*; True when the connection is finished."""
        for action in actions:
            if isinstance(action, Send):
                writer.write(action.data)
                await writer.drain()
            elif isinstance(action, Drip):
                for start in range(0, len(action.data), action.piece):
                    writer.write(action.data[start : start + action.piece])
                    await writer.drain()
                    await asyncio.sleep(action.delay)
            elif isinstance(action, Sleep):
                await asyncio.sleep(action.seconds)
            elif isinstance(action, WaitFor):
                await asyncio.wait_for(action.event.wait(), MAX_WAIT)
            elif isinstance(action, Notify):
                action.event.set()
            elif isinstance(action, Close):
                if writer.can_write_eof():
                    writer.write_eof()
                writer.close()
                return True
            elif isinstance(action, Reset):
                await writer.drain()
                await self._wait_peer_read_all(writer)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return True
            else:  # Hang: until the client goes away or the server stops, bounded.
                stop = asyncio.ensure_future(self._stopping.wait())
                gone = asyncio.ensure_future(reader.read(1))
                try:
                    await asyncio.wait(
                        {stop, gone}, timeout=MAX_WAIT, return_when="FIRST_COMPLETED"
                    )
                finally:
                    for fut in (stop, gone):
                        fut.cancel()
                    await asyncio.gather(stop, gone, return_exceptions=True)
                return True
        return False


def _parse_head(head: bytes, connection: int) -> RecordedRequest:
    text = head.decode("latin-1")
    line, *rest = text.split("\r\n")
    parts = line.split(" ", 2)
    method, target, version = ([*parts, "", "", ""])[:3]
    headers = []
    for raw in rest:
        if ":" in raw:
            name, _, value = raw.partition(":")
            headers.append((name.strip(), value.strip()))
    return RecordedRequest(method, target, version, tuple(headers), connection)


@contextlib.contextmanager
def serve_in_thread(script: Script) -> Iterator[RawServer]:
    """Run a :class:`RawServer` on its own event loop in a thread, for code that runs its own
    loop (``asyncio.run`` in the CLI). Stops and joins the thread on exit (bounded)."""
    loop = asyncio.new_event_loop()
    server = RawServer(script)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.__aenter__())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.close())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, name="raw-server", daemon=True)
    thread.start()
    try:
        assert ready.wait(MAX_WAIT), "raw server did not start"
        yield server
    finally:
        loop.call_soon_threadsafe(server._stopping.set)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(MAX_WAIT * 3)
        assert not thread.is_alive(), "raw server thread did not stop"
