"""``WachatClient``: the async session manager for the Wachat QR-code endpoint.

One attempt is: build the request, send it with aiohttp, check the status ourselves (never
``raise_for_status``: aiohttp's exception carries the request headers), then validate and read
the body under the size cap. The retry policy wraps attempts, but a call that succeeds at once
never touches tenacity. Every response is released (or its connection closed, when it was not
read to the end) on every path: success, error, retry and cancellation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from yarl import URL

from ._errors import (
    ConfigurationError,
    DeadlineExceededError,
    InvalidImageError,
    InvalidResponseError,
    ResponseTooLargeError,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
    status_error,
)
from ._files import PathArg, Sink, write_stream
from ._models import InstanceState, QRFailure, QRImage, QRSuccess, check_png_end, png_dimensions
from ._polling import FetchMany, fetch_many, watch_qr
from ._redact import Secret, excerpt, mentions, redact
from ._retry import RetryBudget, RetryEvent, RetryPolicy, parse_retry_after
from ._urls import DEFAULT_BASE_URL, _build_qr_image_url, _qr_image_endpoint
from ._validate import check_api_key, check_instance_name, check_user_agent, is_loopback_host
from ._version import __version__

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # pragma: no cover - exercised on 3.10 only
    from async_timeout import timeout as _deadline

__all__ = ["DEFAULT_TIMEOUT", "QRStream", "WachatClient"]

logger = logging.getLogger("wachat_async")

T = TypeVar("T")

#: Per-attempt timeouts: ``total`` (set explicitly: aiohttp defaults every field to None) bounds
#: every stall, before the headers or mid-body, slowloris drips included: an attempt fails 20 s
#: after it got its connection slot. ``sock_connect`` fails an unreachable host sooner. There is
#: deliberately no ``sock_read``: under a 20 s ``total`` it could only end a stall that starts in
#: the first seconds a few seconds earlier (a 15 s ``sock_read`` fails a stall at its start +
#: 15 s, so it saves at most 5 s, and nothing for a drip), while aiohttp cancels and re-arms its
#: timer on every read, 35k to 38k instructions per request (9-10% of a whole fetch, measured with
#: ``benchmarks/instructions.py``). The retry policy's ``deadline`` still bounds the whole call.
#: Pass ``timeout=aiohttp.ClientTimeout(total=..., sock_read=...)`` to have one anyway.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=20.0, sock_connect=10.0)
DEFAULT_MAX_IMAGE_BYTES = 5 * 1024**2
_CHUNK = 64 * 1024
_ERROR_BODY_LIMIT = 64 * 1024
_JSON_LIMIT = 1024**2
_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


def _as_timeout(timeout: object, *, secrets: Iterable[str] = ()) -> aiohttp.ClientTimeout:
    if timeout is None:
        return DEFAULT_TIMEOUT
    if isinstance(timeout, aiohttp.ClientTimeout):
        if timeout.total is None and timeout.sock_read is None:
            raise ConfigurationError("timeout needs a total or a sock_read limit")
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        # The type only: the repr of an arbitrary object is the caller's text.
        raise ConfigurationError(
            "timeout must be a positive number of seconds or an aiohttp.ClientTimeout, "
            f"not {type(timeout).__name__}",
            secrets=secrets,
        )
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ConfigurationError(
            f"timeout must be a positive, finite number of seconds, got {timeout!r}",
            secrets=secrets,
        )
    return aiohttp.ClientTimeout(total=float(timeout), sock_connect=min(float(timeout), 10.0))


class _SanitizedCause(Exception):
    """Stands in for a transport exception whose repr could show request headers."""


class WachatClient:
    """Async client for ``GET /instance/qr/image`` (and ``GET /instance/state``).

    Use it as an async context manager (or call :meth:`aclose`)::

        async with WachatClient() as client:          # key from WACHAT_API_KEY
            qr = await client.get_qr_image("t1_abc_store")
            qr.save("qr.png")

    The key comes from *api_key* or ``WACHAT_API_KEY`` and is sent only as
    ``Authorization: Bearer``; it never appears in a repr, an exception or a log line. The base
    URL comes from *base_url*, ``WACHAT_BASE_URL`` or the production default; plain ``http://``
    is refused for anything but loopback unless *allow_insecure_http*.

    *timeout* (seconds or an ``aiohttp.ClientTimeout``) bounds each attempt; the retry policy's
    ``deadline`` bounds a whole call. *retry* is a :class:`RetryPolicy`
    (``RetryPolicy.disabled()`` for none) and *retry_budget* the :class:`RetryBudget` that all
    calls of this client share (one of its own by default). Bodies larger than
    *max_image_bytes* raise :class:`ResponseTooLargeError` without being read.

    Without *session* the client creates its own on first use, inside the running event loop,
    with at most *max_connections* connections; if a later call runs in another loop (a second
    ``asyncio.run``, a re-run notebook cell) it opens a fresh one there, transparently. A
    *session* you pass is borrowed, never closed: the client uses its connector (pool, limits,
    TLS, DNS), trace configs and default proxy, and none of its request defaults (headers,
    cookies, auth, ``base_url``, ``raise_for_status``, timeout, middlewares, ``trust_env``).

    Every call (get, stream, save, state, and so ``fetch_many`` and ``watch_qr``) first waits
    for one of the client's connection slots (``max_connections``, or the borrowed connector's
    ``limit``/``limit_per_host``); each attempt's *timeout* starts only once it has one, and a
    retry gives its slot back while it waits out its backoff. The policy's ``deadline`` bounds
    the whole call, waiting included.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: aiohttp.ClientTimeout | float | None = None,
        retry: RetryPolicy | None = None,
        retry_budget: RetryBudget | None = None,
        max_connections: int = 100,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        session: aiohttp.ClientSession | None = None,
        allow_insecure_http: bool = False,
        user_agent: str | None = None,
    ) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._owns_session = session is None
        self._borrowed = session
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_guard: AsyncGenerator[None, None] | None = None
        key = os.environ.get("WACHAT_API_KEY") if api_key is None else api_key
        if key is None or (isinstance(key, str) and not key.strip()):
            raise ConfigurationError(
                "No Wachat API key: set the WACHAT_API_KEY environment variable or pass the "
                "api_key argument"
            )
        try:
            self._api_key = Secret(check_api_key(key))
        except (TypeError, ValueError) as exc:
            _raise_clean(ConfigurationError(str(exc)))
        # Every message below may quote an argument: redact the key from all of them.
        secrets = (self._api_key,)
        base = base_url or os.environ.get("WACHAT_BASE_URL") or DEFAULT_BASE_URL
        try:
            self._qr_url = _qr_image_endpoint(base)
            ua = check_user_agent(user_agent)
        except (TypeError, ValueError) as exc:
            _raise_clean(ConfigurationError(str(exc), secrets=secrets))
        self._timeout = _as_timeout(timeout, secrets=secrets)
        self._base_url = self._qr_url.parent.parent.parent
        if mentions(f"{self._base_url} {self._base_url.host} {self._base_url.path}", secrets):
            # It would be in every request line (and so in every access log) and in repr().
            raise ConfigurationError(
                "base_url contains the API key; the key goes in api_key (or WACHAT_API_KEY) "
                "only, and is sent as an Authorization header"
            )
        if not isinstance(allow_insecure_http, bool):
            raise ConfigurationError("allow_insecure_http must be a bool")
        if (
            self._base_url.scheme == "http"
            and not allow_insecure_http
            and not is_loopback_host(self._base_url.host or "")
        ):
            raise ConfigurationError(
                f"Refusing plain http:// to {self._base_url.host}: the API key would travel in "
                "clear text. Use https://, or pass allow_insecure_http=True if you mean it "
                "(only 127.0.0.0/8, ::1 and the name localhost count as loopback).",
                secrets=secrets,
            )
        self._state_url = self._base_url.joinpath("instance", "state")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(
                f"retry must be a RetryPolicy or None, not {type(retry).__name__}", secrets=secrets
            )
        if retry_budget is not None and not isinstance(retry_budget, RetryBudget):
            raise ConfigurationError(
                f"retry_budget must be a RetryBudget or None, not {type(retry_budget).__name__}",
                secrets=secrets,
            )
        self._retry = RetryPolicy() if retry is None else retry
        # The first attempt needs the deadline timer only if its own timeout may outlast it.
        deadline, total = self._retry.deadline, self._timeout.total
        self._guard_first_attempt = deadline is not None and (total is None or total > deadline)
        self._budget = RetryBudget() if retry_budget is None else retry_budget
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ConfigurationError("max_connections must be an int")
        if max_connections < 1:
            raise ConfigurationError("max_connections must be >= 1")
        if isinstance(max_image_bytes, bool) or not isinstance(max_image_bytes, int):
            raise ConfigurationError("max_image_bytes must be an int")
        if max_image_bytes < 64:
            raise ConfigurationError("max_image_bytes must be at least 64")
        self._max_connections = max_connections
        self._max_image_bytes = max_image_bytes
        #: How many requests this client runs at once (None: no limit): the pool's own size, so
        #: a call queues here, before its per-attempt timeout starts, never inside aiohttp's pool.
        self._slot_limit: int | None = (
            max_connections if session is None else _connector_limit(session)
        )
        self._slots = _new_slots(self._slot_limit)
        self._closed = False
        self._sleep: Callable[[float], Awaitable[None]] = (
            _no_sleep if self._retry.zero_wait else asyncio.sleep
        )
        ua = ua or f"wachat-async/{__version__} aiohttp/{aiohttp.__version__}"
        self._image_headers = {
            "Authorization": Secret(f"Bearer {self._api_key}"),
            "User-Agent": ua,
            "Accept": "image/png",
        }
        self._json_headers = {**self._image_headers, "Accept": "application/json"}

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API base URL this client talks to (no credentials in it)."""
        return str(self._base_url)

    @property
    def retry_policy(self) -> RetryPolicy:
        """The :class:`RetryPolicy` in force."""
        return self._retry

    @property
    def retry_budget(self) -> RetryBudget:
        """The :class:`RetryBudget` shared by this client's calls (its counters are live)."""
        return self._budget

    @property
    def closed(self) -> bool:
        """True after :meth:`aclose`; a closed client refuses every call."""
        return self._closed

    async def _bind(self) -> aiohttp.ClientSession:
        """Make the session (and the connection queue) belong to the running event loop.

        Runs on the first call and again whenever the loop has changed since (a module-level
        client used by two ``asyncio.run`` calls, a re-run notebook cell). The client's own
        session is replaced transparently: the old one, whose loop has ended, is dropped
        without touching that loop. A borrowed session cannot be replaced, so one that belongs
        to another loop (or is closed) is a :class:`ConfigurationError`.
        """
        if self._closed:
            raise RuntimeError(
                "WachatClient is closed; create a new client (a closed one cannot be reused)"
            )
        loop = asyncio.get_running_loop()
        old = self._session, self._loop_guard
        self._session, self._loop, self._loop_guard = None, None, None
        borrowed = self._borrowed
        if borrowed is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            session = _private_session(connector, self._timeout)
            # asyncio.run() finishes every live async generator before it closes the loop:
            # this one closes the session then, while the loop can still close its sockets.
            guard = _close_at_loop_end(session)
            await guard.asend(None)
            self._loop_guard = guard
        else:
            session = self._view_of(borrowed, loop)
        self._session, self._loop = session, loop
        self._slots = _new_slots(self._slot_limit)
        # Only now may this coroutine suspend: concurrent calls find the new session bound.
        await self._dispose(*old)
        return session

    def _view_of(
        self, borrowed: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop
    ) -> aiohttp.ClientSession:
        """A session of our own over the borrowed session's connector.

        The connector (its pool, limits, TLS and DNS settings) is what a borrowed session lends,
        with its trace configs and its default proxy. None of its request defaults applies:
        headers (another API's ``Authorization``), cookies, ``auth``, ``base_url``,
        ``raise_for_status``, ``timeout``, middlewares, ``trust_env`` (which would also read
        ``~/.netrc``), ``auto_decompress``, ``read_bufsize``: aiohttp cannot switch every one of
        them off per request (default headers, cookies and ``auth`` it always merges in).
        """
        connector = borrowed.connector
        if borrowed.closed or connector is None:
            raise ConfigurationError(
                "The aiohttp.ClientSession passed as session= is closed; pass an open session "
                "(it is borrowed, never closed by the client), or none to let the client own one"
            )
        if (
            getattr(borrowed, "_loop", loop) is not loop
            or getattr(connector, "_loop", loop) is not loop
        ):
            raise ConfigurationError(
                "The aiohttp.ClientSession passed as session= belongs to another event loop "
                "(an aiohttp session works only in the loop that created it, e.g. one "
                "asyncio.run() call). Create the session inside the loop that uses the client, "
                "or pass no session: the client's own session follows the running loop."
            )
        return _private_session(
            connector,
            self._timeout,
            connector_owner=False,
            trace_configs=list(borrowed.trace_configs) or None,
            proxy=getattr(borrowed, "_default_proxy", None),
        )

    async def _unbind(self) -> None:
        """Let go of the session (closing our own, detaching a view of a borrowed one)."""
        session, guard = self._session, self._loop_guard
        self._session, self._loop, self._loop_guard = None, None, None
        await self._dispose(session, guard)

    async def _dispose(
        self,
        session: aiohttp.ClientSession | None,
        guard: AsyncGenerator[None, None] | None,
    ) -> None:
        if session is None:
            return
        if not self._owns_session:
            session.detach()  # the connector is the lender's: never closed here
            return
        if guard is not None and not session.closed and not _loop_closed(session):
            with suppress(RuntimeError):  # a guard from another, still running loop
                await guard.aclose()  # runs the guard's ``finally``: closes the session
        if not session.closed:
            # Its loop has ended without finishing async generators (a bare
            # loop.run_until_complete): close what can be closed without that loop.
            await _abandon(session)

    async def __aenter__(self) -> WachatClient:
        if self._session is None or self._loop is not asyncio.get_running_loop():
            await self._bind()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's own session (a borrowed one is left open). Idempotent.

        Safe from any event loop, also after the loop the session was used in has ended.
        """
        self._closed = True
        await self._unbind()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        session = getattr(self, "_session", None)
        if session is None:
            return
        if not getattr(self, "_owns_session", True):
            session.detach()  # a view of a borrowed session: nothing of ours to close
        elif not session.closed:
            _warn(
                "Unclosed WachatClient: use 'async with WachatClient() as client' "
                "or 'await client.aclose()'",
                ResourceWarning,
                source=self,
            )

    def __repr__(self) -> str:
        opened = self._session is not None or self._borrowed is not None
        state = "closed" if self._closed else ("open" if opened else "unopened")
        return f"<WachatClient base_url={self.base_url!r} state={state}>"

    # -- public calls ----------------------------------------------------------------------

    async def get_qr_image(self, instance_name: str) -> QRImage:
        """Fetch the instance's current QR code as a validated :class:`QRImage`.

        Raises the :class:`APIStatusError` subclass for the status (after retrying 502/504 per
        the policy), :class:`InvalidImageError`, :class:`ResponseTooLargeError`,
        :class:`WachatConnectionError` or :class:`WachatTimeoutError`.
        """
        name = check_instance_name(instance_name)
        return await self._call(name, self._fetch_image)

    @asynccontextmanager
    async def stream_qr_image(
        self, instance_name: str, *, chunk_size: int = _CHUNK
    ) -> AsyncIterator[QRStream]:
        """Open the QR image and yield a :class:`QRStream` of its bytes.

        The status and headers are checked (and 502/504 retried) before the stream is yielded;
        once the first chunk is handed over nothing is retried. The PNG header is validated
        before the first chunk and the ``IEND`` trailer at the end; the size cap is enforced
        while reading. Leaving the block releases the connection, read or not::

            async with client.stream_qr_image("t1_abc_store") as stream:
                async for chunk in stream:
                    await response.write(chunk)
        """
        name = check_instance_name(instance_name)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError("chunk_size must be a positive int")
        stream = await self._call(name, self._open_stream, chunk_size)
        try:
            yield stream
        finally:
            stream.close()

    async def save_qr_image(self, instance_name: str, path: PathArg) -> Path:
        """Stream the QR PNG to *path* atomically and durably; return ``Path(path)``.

        The path is checked first (a folder, a socket or a missing parent folder raises an
        :class:`OSError` naming *path*, before any request). For a regular file (or a new one)
        the body streams into a temporary file in the target folder, which is fsynced and
        renamed into place only once the whole PNG has arrived and validated, then the folder
        is fsynced; on any error or cancellation the temporary file is removed and *path* is
        left as it was. A new file is readable by its owner only (mode 0600: whoever scans the
        QR links a phone to the instance); a replaced file keeps its mode. A symlink is
        followed (the PNG lands at its target; the link stays a link). A device or FIFO
        (``/dev/null``, a named pipe) is written to directly and never replaced: the validated
        PNG is written once it is complete, or nothing at all; a FIFO with no reader yet is
        waited for (cancel the call to give up). Disk waits run in a worker thread, so the
        event loop never blocks on the disk. ``~`` is not expanded.
        """
        name = check_instance_name(instance_name)
        return await write_stream(path, lambda sink: self._call(name, self._save_once, sink))

    async def get_instance_state(self, instance_name: str) -> InstanceState:
        """``GET /instance/state``: whether the instance's phone is linked yet.

        Unknown state strings are kept as they are; only ``"open"`` counts as connected.
        """
        name = check_instance_name(instance_name)
        return await self._call(name, self._fetch_state)

    def fetch_many(
        self,
        instance_names: Iterable[str],
        *,
        concurrency: int = 32,
        dedupe: bool = True,
        on_progress: Callable[[QRSuccess | QRFailure], object] | None = None,
    ) -> FetchMany:
        """Fetch many QR codes, *concurrency* at a time; a :class:`QRSuccess` or
        :class:`QRFailure` per name as each completes.

        ``dedupe=True``: one result per distinct name (the names seen are remembered).
        ``dedupe=False``: every name pulled is fetched, so ``itertools.cycle(names)`` is a
        polling loop in memory bounded by *concurrency*. Either way one name is never in flight
        twice at once, an invalid name becomes a :class:`QRFailure` with an
        :class:`InvalidInstanceNameError`, and the event loop is never held.

        Returns a :class:`FetchMany`: iterate it, ideally inside ``async with`` so that leaving
        the block cancels what is still in flight. *concurrency* is capped at the client's
        connection slots (``max_connections``, or a borrowed connector's limit), and each fetch
        queues for a slot before its timeout starts. See :func:`wachat_async._polling.fetch_many`.
        """
        return fetch_many(
            self.get_qr_image,
            instance_names,
            concurrency=min(concurrency, self._slot_limit)
            if self._slot_limit is not None and type(concurrency) is int
            else concurrency,
            dedupe=dedupe,
            on_progress=on_progress,
        )

    def watch_qr(
        self,
        instance_name: str,
        *,
        interval: float = 5.0,
        until_connected: bool = False,
        jitter: float = 0.1,
    ) -> AsyncIterator[QRImage]:
        """Poll one instance and yield its QR each time it changes (by content hash).

        Transient errors go through the retry policy and watching goes on; terminal errors
        (401/403/404/409, ...) are raised. With *until_connected* the watch ends cleanly once
        :meth:`get_instance_state` reports ``"open"``. See :func:`wachat_async._polling.watch_qr`.
        """
        name = check_instance_name(instance_name)
        return watch_qr(
            self.get_qr_image,
            name,
            interval=interval,
            jitter=jitter,
            get_state=self.get_instance_state if until_connected else None,
            sleep=self._sleep,
        )

    def qr_image_url(self, instance_name: str, *, expose_api_key: bool = False) -> str:
        """The QR image URL for this client's base URL.

        Without *expose_api_key* the URL carries no key (for header auth or a proxy). With
        ``expose_api_key=True`` it carries this client's key as ``apiKey`` for a bare ``<img>``
        tag, and :class:`ApiKeyExposureWarning` is emitted: see :func:`build_qr_image_url`.
        """
        return _build_qr_image_url(
            instance_name,
            api_key=self._api_key if expose_api_key is True else None,
            base_url=self._base_url,
            expose_api_key=expose_api_key,
            stacklevel=2,
        )

    # -- one attempt -----------------------------------------------------------------------

    async def _send(self, url: URL, name: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """Send one GET and return the 200 response; anything else becomes a typed error."""
        session = self._session
        assert session is not None  # _call bound it to the running loop
        failure: BaseException
        try:
            # Everything a result depends on is set here, whatever the session's defaults.
            resp = await session.get(
                url.with_query(instanceName=name),
                headers=headers,
                allow_redirects=False,
                raise_for_status=False,
                timeout=self._timeout,
            )
        except _TRANSPORT_ERRORS as exc:
            failure = self._transport_error(exc, name)
        except RuntimeError:
            if not session.closed:
                raise
            failure = ConfigurationError(
                "The aiohttp.ClientSession passed as session= was closed while the client "
                "still uses it; close the session only after the client"
                if self._borrowed is not None
                else "WachatClient is closed; create a new client (a closed one cannot be reused)"
            )
        else:
            if resp.status == 200:
                return resp
            failure = await self._status_error(resp, name)
        _raise_clean(failure)

    async def _open_png(self, name: str) -> aiohttp.ClientResponse:
        resp = await self._send(self._qr_url, name, self._image_headers)
        failure: WachatError | None = None
        content_type = resp.content_type
        if content_type != "image/png" and content_type.lower() != "image/png":
            # Server-controlled text: it may echo the key or carry junk, so only an excerpt.
            content_type = excerpt(content_type.lower(), [self._api_key], limit=100)
            detail = await self._read_excerpt(resp)
            failure = InvalidImageError(
                f"expected image/png, got {content_type or 'no content type'}"
                + (f": {detail}" if detail else ""),
                instance_name=name,
                content_type=content_type,
            )
        elif (length := resp.content_length) is not None and length > self._max_image_bytes:
            resp.close()
            failure = ResponseTooLargeError(
                f"QR image is {length} bytes, over max_image_bytes={self._max_image_bytes}",
                instance_name=name,
                limit=self._max_image_bytes,
                content_length=length,
            )
        if failure is not None:
            _raise_clean(failure)
        return resp

    async def _open_stream(self, name: str, chunk_size: int) -> QRStream:
        """Open the PNG in a connection slot that the stream holds until it is closed."""
        slots = self._slots
        await slots.acquire()
        try:
            resp = await self._open_png(name)
        except BaseException:
            slots.release()
            raise
        return QRStream(resp, instance_name=name, client=self, chunk_size=chunk_size, slot=slots)

    async def _fetch_image(self, name: str) -> QRImage:
        slots = self._slots
        await slots.acquire()  # the per-attempt timeout starts once a slot is ours
        try:
            resp = await self._open_png(name)
            if resp.content_length is None or "Content-Encoding" in resp.headers:
                # Unknown or compressed length: read chunk by chunk so the cap holds while
                # reading.
                stream = QRStream(resp, instance_name=name, client=self, chunk_size=_CHUNK)
                try:
                    data = await stream.read()
                finally:
                    stream.close()
                return QRImage._trusted(
                    instance_name=name, data=data, width=stream.width, height=stream.height
                )
            # Fast path: a plain body whose length _open_png already checked against the cap.
            failure: BaseException | None = None
            try:
                data = await resp.read()
            except BaseException as exc:
                resp.close()
                if not isinstance(exc, _TRANSPORT_ERRORS):
                    raise
                failure = self._transport_error(exc, name)
        finally:
            slots.release()
        if failure is not None:
            _raise_clean(failure)
        return QRImage.from_png(data, instance_name=name)

    async def _save_once(self, name: str, sink: Sink) -> None:
        await sink.reset()  # a retry starts a fresh body
        stream = await self._open_stream(name, _CHUNK)
        try:
            async for chunk in stream:
                await sink.write(chunk)
        finally:
            stream.close()

    async def _fetch_state(self, name: str) -> InstanceState:
        slots = self._slots
        await slots.acquire()
        try:
            resp = await self._send(self._state_url, name, self._json_headers)
            try:
                raw = await self._read_limited(resp, _JSON_LIMIT, name)
            finally:
                resp.close()
        finally:
            slots.release()
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError):  # deeply nested JSON recurses
            payload = None
        instance = _field(payload, "instance")
        state = instance.get("state")
        if state is None:
            state = _field(_field(payload, "data"), "instance").get("state")
        if not isinstance(state, str):
            raise InvalidResponseError(
                "GET /instance/state returned no state string: "
                + (
                    excerpt(raw.decode("utf-8", "replace"), [self._api_key], limit=200)
                    or "empty body"
                ),
                instance_name=name,
            )
        integration = instance.get("integration")
        return InstanceState(
            instance_name=name,
            state=state,
            integration=integration if isinstance(integration, str) else None,
            raw=payload,
        )

    async def _read_limited(self, resp: aiohttp.ClientResponse, limit: int, name: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        failure: BaseException
        try:
            while chunk := await resp.content.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
            else:
                return b"".join(chunks)
        except _TRANSPORT_ERRORS as exc:
            failure = self._transport_error(exc, name, png=False)
        else:
            failure = InvalidResponseError(f"response body over {limit} bytes", instance_name=name)
        _raise_clean(failure)

    async def _read_excerpt(self, resp: aiohttp.ClientResponse) -> str:
        """A short redacted excerpt of an error body; never raises, always releases *resp*
        (back to the pool when the body was read to its end, so a 502 storm reuses
        connections; closed otherwise)."""
        raw = b""
        try:
            with suppress(*_TRANSPORT_ERRORS):
                while len(raw) < _ERROR_BODY_LIMIT and (chunk := await resp.content.read(_CHUNK)):
                    raw += chunk
        finally:
            if resp.content.is_eof() and len(raw) < _ERROR_BODY_LIMIT:
                resp.release()
            else:
                resp.close()
        text = raw[:_ERROR_BODY_LIMIT].decode("utf-8", "replace")
        if text[:1] in "{[" and text:
            try:
                payload = json.loads(text)
            except (ValueError, RecursionError):  # deeply nested JSON recurses
                pass
            else:
                if isinstance(payload, dict):
                    for field in ("message", "error", "detail"):
                        if isinstance(payload.get(field), str) and payload[field].strip():
                            text = payload[field]
                            break
        return excerpt(text, [self._api_key])

    async def _status_error(self, resp: aiohttp.ClientResponse, name: str) -> WachatError:
        status = resp.status
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        location = resp.headers.get("Location")
        body = await self._read_excerpt(resp)
        if 300 <= status < 400 and location:
            body = f"redirect to {excerpt(location, [self._api_key], limit=200)} not followed"
        error = status_error(status, instance_name=name, body=body, retry_after=retry_after)
        if status == 404 and not self._base_url.path.rstrip("/").endswith("/api/v1"):
            # The route itself may be missing: a wrong base URL also answers 404.
            error._note(f"is the base URL right? {self._base_url} does not end in /api/v1")
        return error

    def _transport_error(self, exc: BaseException, name: str, *, png: bool = True) -> WachatError:
        """Map an aiohttp/OS exception to ours, with a cause that cannot leak headers.

        A body cut short is an :class:`InvalidImageError` (``truncated``) when a PNG was being
        read (*png*), else an :class:`InvalidResponseError`.
        """
        text = redact(str(exc), [self._api_key])
        if isinstance(exc, asyncio.TimeoutError):
            error: WachatError = WachatTimeoutError(
                f"request timed out ({type(exc).__name__})", instance_name=name
            )
        elif isinstance(exc, aiohttp.ClientPayloadError):
            message = f"response body cut short: {type(exc).__name__}: {excerpt(text, limit=200)}"
            if png:
                error = InvalidImageError(message, instance_name=name, truncated=True)
            else:
                error = InvalidResponseError(message, instance_name=name)
        else:
            error = WachatConnectionError(
                f"connection failed: {type(exc).__name__}: {excerpt(text, limit=300)}",
                instance_name=name,
            )
        # aiohttp's ClientResponseError repr shows the request headers, Authorization included,
        # and a parser error chained below an exception may quote the raw bytes a server sent.
        if isinstance(exc, aiohttp.ClientResponseError) or self._chain_mentions_key(exc):
            error.__cause__ = _SanitizedCause(f"{type(exc).__name__}: {excerpt(text)}")
        else:
            error.__cause__ = exc
        return error

    def _chain_mentions_key(self, exc: BaseException) -> bool:
        """Whether the key appears in the str or repr of *exc* or anything chained to it."""
        seen: set[int] = set()
        todo: list[BaseException | None] = [exc]
        while todo:
            current = todo.pop()
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            text = f"{current!s}{current!r}"
            if redact(text, [self._api_key]) != text:
                return True
            todo += (current.__cause__, current.__context__)
        return False

    # -- retries ---------------------------------------------------------------------------

    async def _call(self, name: str, attempt: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run *attempt* under the retry policy.

        Fast path: when the per-attempt ``total`` timeout already fits inside the deadline, the
        first attempt runs bare (no deadline timer, no tenacity); only a retryable failure moves
        the call onto the guarded path.
        """
        if self._loop is not asyncio.get_running_loop() or self._session is None:
            await self._bind()
        policy = self._retry
        self._budget.deposit()
        started = time.monotonic()
        # Queueing for a slot counts toward the deadline: a call that would wait runs guarded.
        slots = self._slots
        if self._guard_first_attempt or (
            # Semaphore.locked() without its per-call generator: no slot free, or a queue.
            policy.deadline is not None and (slots._value <= 0 or slots._waiters)
        ):
            return await self._guarded(name, attempt, args, started, None)
        try:
            return await attempt(name, *args)
        except WachatError as exc:
            if policy.max_attempts == 1 or not policy.is_retryable(exc):
                raise
            first = exc
        return await self._guarded(name, attempt, args, started, first)

    async def _guarded(
        self,
        name: str,
        attempt: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        started: float,
        first: WachatError | None,
    ) -> T:
        """The rest of a call under the deadline, retrying through tenacity."""
        policy = self._retry
        retry: _RetryState | None = None
        remaining = None
        if policy.deadline is not None:
            remaining = policy.deadline - (time.monotonic() - started)
        try:
            async with _deadline(remaining):
                if first is None:
                    try:
                        return await attempt(name, *args)
                    except WachatError as exc:
                        if policy.max_attempts == 1 or not policy.is_retryable(exc):
                            raise
                        first = exc
                retry = _RetryState(self, name, started)
                return await retry.run(first, attempt, args)
        except WachatError as exc:
            # First: a WachatTimeoutError is a TimeoutError too, and must not pass for the
            # deadline's.
            if retry is not None:
                exc.attempts = retry.attempts
                exc._note(retry.summary())
            raise
        except asyncio.TimeoutError:
            if policy.deadline is None:  # pragma: no cover - no deadline, no timer to expire
                raise
            attempts = retry.attempts if retry else 1
            error = DeadlineExceededError(
                f"deadline of {policy.deadline:g} s exceeded after {attempts} attempt"
                + ("s" if attempts != 1 else ""),
                deadline=policy.deadline,
                instance_name=name,
                attempts=attempts,
            )
            raise error from (retry.last_error if retry else first)


def _raise_clean(error: BaseException) -> NoReturn:
    """Raise *error* with no implicit ``__context__``.

    Our errors carry their real cause in ``__cause__``. On Python 3.10 a coroutine resumed by
    aiohttp can still see an exception aiohttp handled elsewhere as "being handled", and Python
    would attach it as ``__context__``: an unsanitised parser error that may quote bytes the
    server sent (an echoed key included). Only failure paths come here.
    """
    try:
        raise error
    except BaseException as exc:
        exc.__context__ = None
        raise


def _field(obj: object, key: str) -> dict[str, Any]:
    """``obj[key]`` when both are JSON objects, else an empty dict: untrusted JSON never
    raises while we look for the state."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def _connector_limit(session: aiohttp.ClientSession) -> int | None:
    """How many connections a borrowed session's connector opens to one host (None: no limit;
    aiohttp's 0 means unlimited for both ``limit`` and ``limit_per_host``)."""
    connector = session.connector
    if connector is None:
        return None
    limits = [n for n in (connector.limit, connector.limit_per_host) if n]
    return min(limits) if limits else None


def _new_slots(limit: int | None) -> asyncio.Semaphore:
    """The connection queue: one slot per connection (a semaphore never binds to a loop until
    someone waits on it, and a new one is made for each loop the client runs in)."""
    return asyncio.Semaphore(sys.maxsize if limit is None else limit)


def _private_session(
    connector: aiohttp.BaseConnector,
    timeout: aiohttp.ClientTimeout,
    *,
    connector_owner: bool = True,
    trace_configs: list[aiohttp.TraceConfig] | None = None,
    proxy: Any = None,
) -> aiohttp.ClientSession:
    """A session whose every request default is ours: no cookies (a dummy jar), no default
    headers or auth, no base URL, no status raising, no middlewares, no environment."""
    return aiohttp.ClientSession(
        connector=connector,
        connector_owner=connector_owner,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
        auto_decompress=True,
        trust_env=False,
        trace_configs=trace_configs,
        proxy=proxy,
    )


async def _close_at_loop_end(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """Suspended for as long as the session's loop runs; finishing it closes the session.

    ``asyncio.run`` (and ``asyncio.Runner``) finish every live async generator before closing
    the loop, so a client left open in a script or a notebook cell releases its connections
    while their loop can still close them, and its next call opens a session on the new loop.
    """
    try:
        yield
    finally:
        await session.close()


def _loop_closed(session: aiohttp.ClientSession) -> bool:
    loop = getattr(session, "_loop", None)
    return loop is None or loop.is_closed()


async def _abandon(session: aiohttp.ClientSession) -> None:
    """Close a session whose event loop has already been closed, without warnings.

    Its sockets are still open (closing a loop does not close its transports) and the usual
    close would schedule callbacks on the dead loop. So each pooled socket is closed directly
    (best effort: these are asyncio's private transport internals), then the session and its
    connector are marked closed; aiohttp skips the loop once it sees that the loop is closed.
    """
    connector = session.connector
    if connector is not None and _loop_closed(session):
        pooled = getattr(connector, "_conns", {}).values()
        protocols = [proto for conns in pooled for proto, _ in conns]
        for proto in [*protocols, *getattr(connector, "_acquired", ())]:
            transport = proto.transport
            if transport is None:
                continue
            with suppress(Exception):
                transport.abort()  # marks it closing; its callback cannot be scheduled
            lost = getattr(transport, "_call_connection_lost", None)
            if lost is not None:
                with suppress(Exception):
                    lost(None)  # what the loop would have called next: closes the socket
    with suppress(Exception):
        await session.close()


async def _no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


class _RetryState:
    """Per-call retry bookkeeping: a fresh tenacity ``AsyncRetrying`` per call, never shared."""

    __slots__ = (
        "attempts",
        "client",
        "decided_for",
        "last_error",
        "name",
        "next_wait",
        "reason",
        "started",
        "stopping",
    )

    def __init__(self, client: WachatClient, name: str, started: float) -> None:
        self.client = client
        self.name = name
        self.started = started
        self.attempts = 1
        self.next_wait = 0.0
        self.reason = ""
        self.last_error: BaseException | None = None
        self.decided_for = 0
        self.stopping = False

    async def run(
        self, first: WachatError, attempt: Callable[..., Awaitable[T]], args: tuple[Any, ...]
    ) -> T:
        policy = self.client._retry
        replay: list[WachatError] = [first]

        async def once() -> T:
            if replay:
                raise replay.pop()
            self.attempts += 1
            return await attempt(self.name, *args)

        retrying = AsyncRetrying(
            stop=self._stop,
            wait=self._wait,
            retry=retry_if_exception(policy.is_retryable),
            before_sleep=self._before_sleep,
            sleep=self.client._sleep,
            reraise=True,
        )
        return await retrying(once)

    def _decide(self, state: RetryCallState) -> bool:
        """Decide once per failed attempt whether to retry, and how long to wait first.

        tenacity asks ``wait`` and ``stop`` separately (in an order that has changed between
        its versions); both read this one decision, so the budget is charged at most once.
        """
        if self.decided_for == state.attempt_number:
            return self.stopping
        self.decided_for = state.attempt_number
        self.stopping = True
        policy = self.client._retry
        error = state.outcome.exception() if state.outcome else None
        self.last_error = error
        if self.attempts >= policy.max_attempts:
            self.reason = "max_attempts reached"
            return True
        retry_after = getattr(error, "retry_after", None) if policy.respect_retry_after else None
        if retry_after is not None and retry_after > policy.max_retry_after:
            self.reason = (
                f"Retry-After of {retry_after:g} s is over max_retry_after="
                f"{policy.max_retry_after:g} s"
            )
            return True
        wait = policy.compute_wait(self.attempts - 1, retry_after)
        elapsed = time.monotonic() - self.started
        if policy.deadline is not None and elapsed + wait >= policy.deadline:
            self.reason = f"waiting {wait:.2f} s would cross the {policy.deadline:g} s deadline"
            return True
        if not self.client._budget.try_withdraw():
            self.reason = "retry budget exhausted"
            return True
        self.next_wait = wait
        self.stopping = False
        return False

    def _stop(self, state: RetryCallState) -> bool:
        return self._decide(state)

    def _wait(self, state: RetryCallState) -> float:
        return 0.0 if self._decide(state) else self.next_wait

    def _before_sleep(self, state: RetryCallState) -> None:
        policy = self.client._retry
        error = self.last_error
        assert isinstance(error, WachatError)
        status = getattr(error, "status", None)
        logger.info(
            "Retrying QR call for instance %r: attempt %d of %d failed with %s; waiting %.2f s",
            self.name,
            self.attempts,
            policy.max_attempts,
            status if status is not None else type(error).__name__,
            self.next_wait,
        )
        if policy.on_retry is not None:
            policy.on_retry(
                RetryEvent(
                    instance_name=self.name,
                    attempt=self.attempts,
                    wait=self.next_wait,
                    error=error,
                    status=status,
                )
            )

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        plural = "s" if self.attempts != 1 else ""
        text = f"gave up after {self.attempts} attempt{plural} in {elapsed:.1f} s"
        return f"{text} ({self.reason})" if self.reason else text


class QRStream:
    """The body of a QR image response, as an async iterator of ``bytes`` chunks.

    Obtained from :meth:`WachatClient.stream_qr_image`. The PNG header is validated before the
    first chunk is yielded (``width``/``height`` are set then), the size cap while reading, and
    the ``IEND`` trailer at the end, so a stream that finishes without error was a whole PNG.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        instance_name: str,
        client: WachatClient,
        chunk_size: int,
        slot: asyncio.Semaphore | None = None,
    ) -> None:
        self._resp = response
        self._slot = slot
        self._client = client
        self._chunk_size = chunk_size
        self._limit = client._max_image_bytes
        self._tail = b""
        self._done = False
        self.instance_name = instance_name
        self.content_type: str = response.content_type
        self.content_length: int | None = response.content_length
        self.bytes_read = 0
        self.width = 0
        self.height = 0

    def __repr__(self) -> str:
        return (
            f"<QRStream instance_name={self.instance_name!r} bytes_read={self.bytes_read} "
            f"content_length={self.content_length} done={self._done}>"
        )

    def __aiter__(self) -> QRStream:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        if not self.width:
            head = await self._read()
            while head and len(head) < 33 and (more := await self._read()):
                head += more
            try:
                self.width, self.height = png_dimensions(head, instance_name=self.instance_name)
            except InvalidImageError:
                self.close()
                raise
            chunk = head
        else:
            chunk = await self._read()
            if not chunk:
                self._done = True
                self.close()
                check_png_end(self._tail, instance_name=self.instance_name)
                raise StopAsyncIteration
        self._tail = (self._tail + chunk)[-12:]
        return chunk

    async def read(self) -> bytes:
        """Read the rest of the body and return it (validated like the iteration)."""
        return b"".join([chunk async for chunk in self])

    async def _read(self) -> bytes:
        failure: BaseException
        try:
            chunk = await self._resp.content.read(self._chunk_size)
        except _TRANSPORT_ERRORS as exc:
            failure = self._client._transport_error(exc, self.instance_name)
        else:
            self.bytes_read += len(chunk)
            if self.bytes_read <= self._limit:
                return chunk
            failure = ResponseTooLargeError(
                f"QR image is over max_image_bytes={self._limit} (stopped reading at "
                f"{self.bytes_read} bytes)",
                instance_name=self.instance_name,
                limit=self._limit,
                content_length=self.content_length,
            )
        self._done = True
        self.close()
        _raise_clean(failure)

    def close(self) -> None:
        """Release the connection: back to the pool if the body was read to its end, else
        closed (a half-read connection is never reused). Idempotent."""
        if self._resp.content.is_eof():
            self._resp.release()
        else:
            self._resp.close()
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()  # the client's connection slot, held since the stream was opened
