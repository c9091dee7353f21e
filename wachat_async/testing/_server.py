"""The embedded fake Wachat server: a real :mod:`aiohttp.web` application on loopback.

Everything public is re-exported from :mod:`wachat_async.testing`; see its docstring for usage.
This module never imports the client: the fake must describe the API, not the library under test.

Design notes (the *why*):

* The server runs on one event loop, but tests configure it from wherever they are (another
  loop, a synchronous test, a notebook cell). All mutable state therefore lives behind one
  :class:`threading.Lock`, held only for dictionary work, never across an ``await``.
* QR PNGs are rendered lazily and cached per instance until the payload changes, so a fleet of
  10,000 instances polled thousands of times a second costs one render per instance and rotation.
* Faults that misbehave at the transport level (``drop``, ``truncate``, ``hang``) close the
  connection themselves and hand aiohttp a response it can no longer send; aiohttp treats that
  as a premature client disconnection and logs it at DEBUG only, so no tracebacks reach the log.
* Anything that waits (``latency``, ``Fault.delay``, ``Fault.hang``) waits on a future that
  :meth:`FakeWachatServer.close` resolves, so closing never waits for a sleeping handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http
import json
import logging
import math
import re
import struct
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Literal

import attrs
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["FakeInstance", "FakeWachatServer", "Fault", "RecordedRequest"]

_log = logging.getLogger("wachat_async.testing")

API_PREFIX = "/api/v1"
QR_PATH = f"{API_PREFIX}/instance/qr/image"
STATE_PATH = f"{API_PREFIX}/instance/state"
BAILEYS = "WHATSAPP-BAILEYS"

_INSTALL_HINT = "segno is required to render QR codes: pip install 'wachat-async[testing]'"

# The documented statuses, with the short reason and sentence the error body carries.
_ERRORS: Mapping[int, tuple[str, str]] = MappingProxyType(
    {
        400: ("Bad Request", "The instanceName query parameter is required."),
        401: ("Unauthorized", "Missing or invalid API key."),
        403: ("Forbidden", "Subscription restriction prevented QR code generation."),
        404: ("Not Found", "Instance not found for this API key."),
        405: ("Method Not Allowed", "This endpoint only supports GET."),
        409: ("Conflict", "QR code is only available for WhatsApp Baileys instances."),
        500: ("Internal Server Error", _INSTALL_HINT),
        502: ("Bad Gateway", "Failed to fetch or decode the QR code image."),
        504: ("Gateway Timeout", "Wachat API request timed out."),
    }
)

# Header values must not be able to smuggle a second header or end the header block.
_BAD_HEADER_CHARS = re.compile(r"[\r\n\x00]")
# "t1_" + 8 lowercase alphanumerics + "_" + friendly name (related-endpoints.md).
_PREFIXED_NAME = re.compile(r"t\d+_[a-z0-9]{8}_(.+)", re.DOTALL)
# Payloads above this many UTF-8 bytes are replaced by a digest so the QR always fits.
_MAX_PAYLOAD_BYTES = 1000


# --------------------------------------------------------------------------------------------
# Value objects
# --------------------------------------------------------------------------------------------


def _check_status(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or not 200 <= value <= 599:
        raise ValueError(f"{attribute.name} must be an int HTTP status in 200..599, not {value!r}")


def _check_delay(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, not {value!r}")


def _check_header_text(
    _inst: object, attribute: attrs.Attribute[str | None], value: object
) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str or None, not {type(value).__name__}")
    if _BAD_HEADER_CHARS.search(value):
        raise ValueError(f"{attribute.name} must not contain CR, LF or NUL: {value!r}")


def _check_bool(_inst: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a bool, not {value!r}")


def _freeze_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping, not {type(headers).__name__}")
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header names and values must be str: {name!r}: {value!r}")
        if not name or _BAD_HEADER_CHARS.search(name) or ":" in name:
            raise ValueError(f"invalid header name: {name!r}")
        if _BAD_HEADER_CHARS.search(value):
            raise ValueError(f"header {name!r} must not contain CR, LF or NUL: {value!r}")
    return MappingProxyType(dict(headers))


def _bytes_repr(value: bytes | None) -> str:
    return "None" if value is None else f"<{len(value)} bytes>"


@attrs.frozen(kw_only=True)
class Fault:
    """One scripted response for :meth:`FakeWachatServer.script`.

    ``status`` other than 200 answers with that status and the API's JSON error body;
    ``status=200`` means "behave normally" (so the instance may still be 404, 403, ...), with the
    other fields applied on top. ``retry_after`` is sent verbatim as ``Retry-After`` (garbage
    included, to test parsers); ``content_type``/``body``/``headers`` override the response;
    ``delay`` waits before answering. At most one transport misbehaviour may be set:
    ``truncate`` (full ``Content-Length``, about half the body, then the connection closes),
    ``drop`` (connection closed without any response) or ``hang`` (no response until the client
    gives up or the server closes).

    Example::

        server.script("t1_abc_store", [Fault(status=502, retry_after="2"), Fault(drop=True)])
    """

    status: int = attrs.field(default=200, validator=_check_status)
    delay: float = attrs.field(default=0.0, validator=_check_delay)
    retry_after: str | None = attrs.field(default=None, validator=_check_header_text)
    content_type: str | None = attrs.field(default=None, validator=_check_header_text)
    body: bytes | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(bytes)),
        repr=_bytes_repr,
    )
    headers: Mapping[str, str] = attrs.field(
        factory=dict, converter=_freeze_headers, eq=False, hash=False
    )
    truncate: bool = attrs.field(default=False, validator=_check_bool)
    drop: bool = attrs.field(default=False, validator=_check_bool)
    hang: bool = attrs.field(default=False, validator=_check_bool)

    def __attrs_post_init__(self) -> None:
        if self.truncate + self.drop + self.hang > 1:
            raise ValueError("at most one of truncate, drop and hang may be set")


def _as_fault(item: int | Fault) -> Fault:
    if isinstance(item, Fault):
        return item
    if type(item) is int:
        return Fault(status=item)
    raise TypeError(f"script entries must be int statuses or Fault objects, not {item!r}")


@attrs.frozen(kw_only=True)
class FakeInstance:
    """A snapshot of one fake WhatsApp instance (its owner key is deliberately not exposed).

    ``name`` is the prefixed API name used in requests; ``friendly_name`` is what the state
    route reports as ``instance.instanceName`` (``jakarta_store`` for
    ``t1_mq9r2jov_jakarta_store``, otherwise the name itself).
    """

    name: str
    integration: str = BAILEYS
    state: str = "connecting"
    friendly_name: str


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request the fake server received, safe to print: it holds no API key.

    ``query`` excludes ``apiKey``; ``auth_via`` says how a key was presented (``"bearer"``,
    ``"query"`` or ``None``) and ``key_valid`` whether it was accepted. ``headers`` is a
    case-insensitive copy whose ``Authorization`` value is replaced by ``"Bearer <redacted>"``.
    ``status`` is the status sent, or 0 when no response was sent (``drop``, ``hang``).
    ``time`` is read from the server's clock when the response was decided.
    """

    method: str
    path: str
    instance_name: str | None
    query: Mapping[str, str] = attrs.field(eq=False, hash=False)
    auth_via: Literal["bearer", "query"] | None
    key_valid: bool
    status: int
    headers: Mapping[str, str] = attrs.field(eq=False, hash=False)
    user_agent: str | None
    time: float


@attrs.define
class _Instance:
    """Mutable server-side state of one instance (only touched under the server lock)."""

    info: FakeInstance
    owner: str
    forced_rotations: int = 0


@attrs.frozen
class _Auth:
    key: str | None
    via: Literal["bearer", "query"] | None
    valid: bool


# --------------------------------------------------------------------------------------------
# QR rendering
# --------------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _matrix_to_png(matrix: Sequence[Sequence[int]], *, scale: int = 4, border: int = 4) -> bytes:
    """Encode a QR module matrix (truthy = dark) as a 1-bit greyscale PNG.

    segno's own PNG writer is general and about as slow as the QR encoding itself; this one
    only knows squares, which is all a QR code needs.
    """
    width = (len(matrix) + 2 * border) * scale
    row_bytes = (width + 7) // 8
    padding = "1" * (row_bytes * 8 - width)
    dark, light = "0" * scale, "1" * scale  # greyscale bit 0 is black
    edge = light * border
    quiet_row = b"\x00" + b"\xff" * row_bytes  # filter type 0, then white pixels
    rows = [quiet_row] * (border * scale)
    for modules in matrix:
        bits = edge + "".join(dark if m else light for m in modules) + edge + padding
        rows.extend([b"\x00" + int(bits, 2).to_bytes(row_bytes, "big")] * scale)
    rows.extend([quiet_row] * (border * scale))
    header = struct.pack(">IIBBBBB", width, width, 1, 0, 0, 0, 0)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 9)),
            _png_chunk(b"IEND", b""),
        )
    )


def _render_qr_png(payload: str) -> bytes:
    """Return a scannable QR code PNG for *payload* (segno imported here, lazily)."""
    try:
        import segno
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    # make_qr: never a Micro QR, which phones do not read. A fixed mask skips segno's mask
    # scoring (80% of its encoding time); every mask is valid, readers handle all eight.
    qr = segno.make_qr(payload, error="m", mask=0)
    return _matrix_to_png(qr.matrix)


def _qr_payload(name: str, generation: int) -> str:
    payload = f"wachat-fake:{name}:{generation}"
    if len(payload.encode("utf-8")) <= _MAX_PAYLOAD_BYTES:
        return payload
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return f"wachat-fake:sha256={digest}:{generation}"


# --------------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------------


@functools.cache
def _error_body(status: int) -> bytes:
    reason, message = _ERRORS.get(status, (None, None))
    if reason is None or message is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        message = f"Simulated HTTP {status} response."
    return json.dumps({"success": False, "error": reason, "message": message}).encode()


def _parse_bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip()


def _redacted_headers(request: web.BaseRequest) -> CIMultiDictProxy[str]:
    headers = CIMultiDict(request.headers)
    if "Authorization" in headers:
        headers["Authorization"] = "Bearer <redacted>"  # whatever the scheme: all of it goes
    return CIMultiDictProxy(headers)


def _close_connection(request: web.BaseRequest) -> None:
    transport = request.transport
    # None only once the connection is lost, and then the handler has been cancelled.
    if transport is not None:  # pragma: no branch
        transport.close()


class _AccessLogger(AbstractAccessLogger):
    """Access log without query strings: ``?apiKey=`` must never reach a log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s %.6fs",
            request.remote,
            request.method,
            request.path,
            response.status,
            time,
        )


def _url_host(host: str) -> str:
    # Bound to every interface: the address to *connect* to is loopback, not 0.0.0.0 / ::.
    if host in ("", "0.0.0.0"):  # noqa: S104 - a comparison, not a bind
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _require_segno() -> None:
    """Fail at construction, not with a 500 on the first QR request, without the extra."""
    try:
        import segno  # noqa: F401
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT, name="segno") from exc


def _check_key(key: object, what: str = "api_key") -> str:
    if not isinstance(key, str):
        raise TypeError(f"{what} must be a str, not {type(key).__name__}")
    if not key.strip() or key != key.strip() or _BAD_HEADER_CHARS.search(key):
        # Never quote the key: even a malformed one may be a secret.
        raise ValueError(f"{what} must be non-empty, without surrounding whitespace or CR/LF/NUL")
    return key


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"instance name must be a str, not {type(name).__name__}")
    if not name.strip():
        raise ValueError("instance name must not be empty or whitespace")
    return name


def _friendly_name(name: str) -> str:
    match = _PREFIXED_NAME.fullmatch(name)
    return match.group(1) if match else name


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class FakeWachatServer:
    """A real HTTP server that behaves like Wachat's QR endpoints, for tests and demos.

    See :mod:`wachat_async.testing` for a tour. Configure it from any thread; serve it with
    ``async with server:`` (on the current loop) or ``with server.run_in_thread():`` (on a
    private loop in a daemon thread, for synchronous code).
    """

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        qr_rotation: float | None = 20.0,
        auto_create: bool = False,
        latency: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        access_log: bool = False,
        max_logged_requests: int | None = None,
    ) -> None:
        _check_key(api_key)
        _require_segno()
        if qr_rotation is not None and (
            isinstance(qr_rotation, bool)
            or not isinstance(qr_rotation, (int, float))
            or not math.isfinite(qr_rotation)
            or qr_rotation <= 0
        ):
            raise ValueError(
                f"qr_rotation must be a positive number of seconds or None, not {qr_rotation!r}"
            )
        if isinstance(latency, bool) or not isinstance(latency, (int, float)):
            raise TypeError(f"latency must be a number of seconds, not {latency!r}")
        if not math.isfinite(latency) or latency < 0:
            raise ValueError(f"latency must be a finite number >= 0, not {latency!r}")
        if max_logged_requests is not None and (
            type(max_logged_requests) is not int or max_logged_requests < 0
        ):
            raise ValueError(
                f"max_logged_requests must be an int >= 0 or None, not {max_logged_requests!r}"
            )
        self._api_key = api_key
        self._host = host
        self._requested_port = port
        self._qr_rotation = None if qr_rotation is None else float(qr_rotation)
        self._auto_create = auto_create
        self._latency = float(latency)
        self._clock = clock
        self._access_log = access_log
        self._epoch = clock()

        self._lock = threading.Lock()
        self._keys: dict[str, bool] = {api_key: False}  # key -> restricted
        self._instances: dict[str, _Instance] = {}
        self._scripts: dict[str, deque[Fault]] = {}
        self._log: deque[RecordedRequest] = deque(maxlen=max_logged_requests)
        self._counts: Counter[tuple[str | None, str]] = Counter()
        self._png_cache: dict[str, tuple[str, bytes]] = {}  # only touched on the server loop

        self._status: Literal["new", "running", "closed"] = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._closing = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving on the running loop (``port=0`` picks a free port)."""
        if self._status != "new":
            raise RuntimeError(f"FakeWachatServer cannot be started: it is {self._status}")
        self._loop = asyncio.get_running_loop()
        self._closing = False
        app = web.Application()
        app.router.add_get(QR_PATH, self._handle_qr)
        app.router.add_get(STATE_PATH, self._handle_state)
        app.router.add_route("*", "/{tail:.*}", self._handle_other)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log_class=_AccessLogger,
            access_log=logging.getLogger("wachat_async.testing.access")
            if self._access_log
            else None,
            # Cancel a handler when its client goes away (a hanging fault must not outlive it).
            handler_cancellation=True,
            # Handlers finish at once on close (see _pause); this only bounds surprises.
            shutdown_timeout=1.0,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._status = "running"
        _log.debug("fake Wachat server listening on %s", self.base_url)

    async def close(self) -> None:
        """Stop serving: open requests (hanging ones included) are cut off promptly. Idempotent."""
        if self._status != "running":
            self._status = "closed"
            return
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(
                "close() must be awaited on the loop that started the server "
                "(servers from run_in_thread() are closed by its context manager)"
            )
        self._status = "closed"
        self._closing = True
        for waiter in self._waiters:
            _resolve(waiter)
        assert self._runner is not None
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> FakeWachatServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[FakeWachatServer]:
        """Serve on a private event loop in a daemon thread for the duration of a ``with``.

        For synchronous tests, notebooks and scripts, and for async tests that must not
        depend on their own loop. Leaving the block closes the server and joins the thread.
        """
        ready = threading.Event()
        started: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        failure: list[BaseException] = []

        async def serve() -> None:
            stop = asyncio.Event()
            async with self:
                started.append((asyncio.get_running_loop(), stop))
                ready.set()
                await stop.wait()

        def target() -> None:
            try:
                asyncio.run(serve())
            except BaseException as exc:  # handed to the caller's thread below
                failure.append(exc)
            finally:
                ready.set()

        thread = threading.Thread(target=target, name="wachat-fake-server", daemon=True)
        thread.start()
        ready.wait()
        if not started:
            thread.join()
            raise failure[0]
        loop, stop = started[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join()
            if failure:
                raise failure[0]

    # -- addresses ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (known once started)."""
        if self._port is None:
            raise RuntimeError("FakeWachatServer is not started: use 'async with server:'")
        return self._port

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:8080``."""
        return f"http://{_url_host(self._host)}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL to give a client, e.g. ``http://127.0.0.1:8080/api/v1``."""
        return self.url + API_PREFIX

    @property
    def api_key(self) -> str:
        """The default valid API key (owner of instances added without ``api_key=``)."""
        return self._api_key

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        return f"<FakeWachatServer {where} {self._status} instances={len(self._instances)}>"

    # -- configuration --------------------------------------------------------------------------

    def add_api_key(self, key: str, *, restricted: bool = False) -> None:
        """Accept *key*; ``restricted=True`` makes the QR route answer 403 for its instances."""
        _check_key(key, "key")
        with self._lock:
            self._keys[key] = bool(restricted)

    def add_instance(
        self,
        name: str,
        *,
        api_key: str | None = None,
        integration: str = BAILEYS,
        state: str = "connecting",
    ) -> FakeInstance:
        """Create an instance owned by *api_key* (default: the server key; unknown keys are added).

        A non-Baileys *integration* makes the QR route answer 409. Names are stored verbatim:
        ``&``, ``#``, spaces, ``/`` and any unicode are fine. Duplicate names raise ValueError.
        """
        return self.add_instances([name], api_key=api_key, integration=integration, state=state)[0]

    def add_instances(
        self,
        names: Iterable[str],
        *,
        api_key: str | None = None,
        integration: str = BAILEYS,
        state: str = "connecting",
    ) -> list[FakeInstance]:
        """Bulk :meth:`add_instance` (all or nothing: nothing is added if one name is bad)."""
        owner = self._api_key if api_key is None else _check_key(api_key)
        for what, value in (("integration", integration), ("state", state)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{what} must be a non-empty str, not {value!r}")
        infos = [
            FakeInstance(
                name=_check_name(name),
                integration=integration,
                state=state,
                friendly_name=_friendly_name(name),
            )
            for name in names
        ]
        with self._lock:
            seen: set[str] = set()
            for info in infos:
                if info.name in self._instances or info.name in seen:
                    raise ValueError(f"instance already exists: {info.name!r}")
                seen.add(info.name)
            self._keys.setdefault(owner, False)
            for info in infos:
                self._instances[info.name] = _Instance(info=info, owner=owner)
        return infos

    def remove_instance(self, name: str) -> None:
        """Delete an instance (later requests for it get 404 unless ``auto_create``)."""
        with self._lock:
            self._lookup(name)
            del self._instances[name]
        self._png_cache.pop(name, None)

    def set_state(self, name: str, state: str) -> FakeInstance:
        """Change what the state route reports, e.g. ``"open"`` once "scanned"."""
        if not isinstance(state, str) or not state:
            raise ValueError(f"state must be a non-empty str, not {state!r}")
        with self._lock:
            entry = self._lookup(name)
            entry.info = attrs.evolve(entry.info, state=state)
            return entry.info

    def rotate_qr(self, name: str) -> str:
        """Make *name*'s QR change now (no sleeping in tests); returns the new payload."""
        with self._lock:
            self._lookup(name).forced_rotations += 1
        return self.qr_payload(name)

    def qr_payload(self, name: str) -> str:
        """The text the QR served for *name* encodes right now (for assertions)."""
        with self._lock:
            forced = self._lookup(name).forced_rotations
        return _qr_payload(name, self._generation() + forced)

    def script(self, name: str, responses: Iterable[int | Fault]) -> None:
        """Queue the next QR responses for *name* (replacing any queue left over).

        Each QR request for *name* consumes one entry, after authentication and the
        instanceName check and before the instance lookup (so unknown names can be scripted).
        An int is ``Fault(status=n)``; 200 means "normal behaviour". When the queue is empty
        the instance behaves normally again.
        """
        _check_name(name)
        faults = deque(_as_fault(item) for item in responses)
        with self._lock:
            if faults:
                self._scripts[name] = faults
            else:
                self._scripts.pop(name, None)

    def pending_script(self, name: str) -> tuple[Fault, ...]:
        """The scripted responses for *name* not consumed yet."""
        with self._lock:
            return tuple(self._scripts.get(name, ()))

    # -- inspection -----------------------------------------------------------------------------

    @property
    def instances(self) -> Mapping[str, FakeInstance]:
        """A snapshot of all instances, by name."""
        with self._lock:
            return MappingProxyType({n: e.info for n, e in self._instances.items()})

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received (oldest first; the newest ``max_logged_requests`` if set)."""
        with self._lock:
            return list(self._log)

    def request_count(self, instance_name: str | None = None, *, path: str | None = None) -> int:
        """How many requests arrived, optionally only for one instance and/or one path.

        *path* is the request path, with or without the ``/api/v1`` prefix
        (``"/instance/qr/image"``). Counts stay exact even when the log is bounded.
        """
        with self._lock:
            return sum(
                count
                for (name, req_path), count in self._counts.items()
                if (instance_name is None or name == instance_name)
                and (path is None or req_path in (path, API_PREFIX + path))
            )

    def reset_log(self) -> None:
        """Forget recorded requests and counts (instances, keys and scripts are kept)."""
        with self._lock:
            self._log.clear()
            self._counts.clear()

    # -- internals: state ----------------------------------------------------------------------

    def _lookup(self, name: str) -> _Instance:
        try:
            return self._instances[name]
        except KeyError:
            raise KeyError(f"no such fake instance: {name!r}") from None

    def _generation(self) -> int:
        if self._qr_rotation is None:
            return 0
        return max(0, math.floor((self._clock() - self._epoch) / self._qr_rotation))

    def _find(self, name: str, key: str) -> _Instance | None:
        """The instance *name* if *key* owns it; auto-creates unknown ones if enabled. Locked."""
        entry = self._instances.get(name)
        if entry is None and self._auto_create:
            info = FakeInstance(name=name, friendly_name=_friendly_name(name))
            entry = self._instances[name] = _Instance(info=info, owner=key)
        if entry is None or entry.owner != key:
            return None
        return entry

    def _authenticate(self, request: web.BaseRequest) -> _Auth:
        key = _parse_bearer(request.headers.get("Authorization"))
        if key is not None:
            via: Literal["bearer", "query"] | None = "bearer"
        else:
            key = request.query.get("apiKey")
            via = None if key is None else "query"
        return _Auth(key=key, via=via, valid=key is not None and key in self._keys)

    def _record(self, request: web.BaseRequest, name: str | None, auth: _Auth, status: int) -> None:
        """Log one request. Locked by the caller."""
        self._counts[name, request.path] += 1
        if self._log.maxlen == 0:
            return  # counting only (fleet benchmarks): skip building the record
        query: dict[str, str] = {}
        for k, v in request.query.items():
            if k != "apiKey":
                query.setdefault(k, v)
        self._log.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                instance_name=name,
                query=MappingProxyType(query),
                auth_via=auth.via,
                key_valid=auth.valid,
                status=status,
                headers=_redacted_headers(request),
                user_agent=request.headers.get("User-Agent"),
                time=self._clock(),
            )
        )

    # -- internals: waiting --------------------------------------------------------------------

    async def _pause(self, seconds: float | None) -> None:
        """Sleep *seconds* (``None``: forever), waking early when the server closes."""
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, _resolve, waiter)
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)
            if timer is not None:
                timer.cancel()

    # -- internals: handlers -------------------------------------------------------------------

    async def _handle_qr(self, request: web.Request) -> web.StreamResponse:
        if self._latency:
            await self._pause(self._latency)
        auth = self._authenticate(request)
        name = request.query.get("instanceName")
        fault: Fault | None = None
        payload: str | None = None
        with self._lock:
            if not auth.valid:
                status = 401
            elif name is None or not name.strip():
                status = 400
            else:
                script = self._scripts.get(name)
                if script:
                    fault = script.popleft()
                    if not script:
                        del self._scripts[name]
                assert auth.key is not None
                if fault is not None and fault.status != 200:
                    status = fault.status
                elif (entry := self._find(name, auth.key)) is None:
                    status = 404
                elif self._keys[auth.key]:
                    status = 403
                elif entry.info.integration != BAILEYS:
                    status = 409
                else:
                    status = 200
                    payload = _qr_payload(name, self._generation() + entry.forced_rotations)

        if payload is None:
            body, content_type = _error_body(status), "application/json"
        else:
            assert name is not None
            body, content_type = b"", "image/png"
            cached = self._png_cache.get(name)
            if cached is not None and cached[0] == payload:
                body = cached[1]
            else:
                try:
                    body = _render_qr_png(payload)
                    self._png_cache[name] = (payload, body)
                except ImportError:
                    _log.error(_INSTALL_HINT)
                    status, body, content_type, fault = (
                        500,
                        _error_body(500),
                        "application/json",
                        None,
                    )
        with self._lock:
            sent = 0 if fault is not None and (fault.drop or fault.hang) else status
            self._record(request, name, auth, sent)
        if fault is None:
            return self._response(status, body, content_type)
        return await self._faulty_response(request, fault, status, body, content_type)

    async def _handle_state(self, request: web.Request) -> web.StreamResponse:
        if self._latency:
            await self._pause(self._latency)
        auth = self._authenticate(request)
        name = request.query.get("instanceName")
        info: FakeInstance | None = None
        with self._lock:
            if not auth.valid:
                status = 401
            elif name is None or not name.strip():
                status = 400
            else:
                assert auth.key is not None
                entry = self._find(name, auth.key)
                status = 404 if entry is None else 200
                info = None if entry is None else entry.info
            self._record(request, name, auth, status)
        if info is None:
            return self._response(status, _error_body(status), "application/json")
        return self._response(200, _state_body(info), "application/json")

    async def _handle_other(self, request: web.Request) -> web.StreamResponse:
        if self._latency:
            await self._pause(self._latency)
        status = 405 if request.path in (QR_PATH, STATE_PATH) else 404
        auth = self._authenticate(request)
        with self._lock:
            self._record(request, request.query.get("instanceName"), auth, status)
        if status == 405:
            body = _error_body(405)
            response = self._response(status, body, "application/json")
            response.headers["Allow"] = "GET, HEAD"
            return response
        # Distinct from the API's "instance not found", so a client can tell a wrong base URL.
        body = json.dumps(
            {
                "success": False,
                "error": "No such route",
                "message": f"No such route: {request.method} {request.path} (the API is under "
                f"{API_PREFIX}: is the base URL right?)",
            }
        ).encode()
        return self._response(404, body, "application/json")

    @staticmethod
    def _response(status: int, body: bytes, content_type: str) -> web.Response:
        return web.Response(
            status=status,
            body=body,
            headers={"Content-Type": content_type, "Cache-Control": "no-store"},
        )

    async def _faulty_response(
        self,
        request: web.Request,
        fault: Fault,
        status: int,
        body: bytes,
        content_type: str,
    ) -> web.StreamResponse:
        if fault.delay:
            await self._pause(fault.delay)
        if fault.hang:
            await self._pause(None)  # until the server closes (or the client leaves: cancelled)
        if fault.drop or fault.hang or self._closing:
            _close_connection(request)
            return web.Response()  # unsendable now: aiohttp drops it quietly
        if fault.body is not None:
            body = fault.body
        response = web.StreamResponse(status=status)
        response.headers["Content-Type"] = fault.content_type or content_type
        response.headers["Cache-Control"] = "no-store"
        if fault.retry_after is not None:
            response.headers["Retry-After"] = fault.retry_after
        response.headers.update(fault.headers)
        response.content_length = len(body)
        await response.prepare(request)
        if fault.truncate:
            await response.write(body[: len(body) // 2])
            _close_connection(request)
            return response
        await response.write(body)
        await response.write_eof()
        return response


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _state_body(info: FakeInstance) -> bytes:
    """The ``GET /instance/state`` body, shaped like the reference (related-endpoints.md)."""
    connected = info.state == "open"
    number = f"62812{zlib.crc32(info.name.encode('utf-8', 'surrogatepass')):010d}"
    return json.dumps(
        {
            "success": True,
            "data": {"instance": {"instanceName": info.name, "state": info.state}},
            "instance": {
                "instanceName": info.friendly_name,
                "apiInstanceName": info.name,
                "internalName": info.name,
                "state": info.state,
                "profileName": f"Fake {info.friendly_name}" if connected else None,
                "profilePictureUrl": None,
                "number": number if connected else None,
                "owner": f"{number}@s.whatsapp.net" if connected else None,
                "integration": info.integration,
            },
        }
    ).encode()
