"""One attempt on the wire: send, check the status and headers, read the body, map errors.
Statuses are checked here, never with ``raise_for_status`` (its exception carries the request
headers)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable
from contextlib import suppress
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from time import monotonic
from typing import Protocol

import aiohttp
from yarl import URL

from ._errors import (
    ClientClosedError,
    ConfigurationError,
    InvalidImageError,
    InvalidResponseError,
    ResponseTooLargeError,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
    raise_clean,
    status_error,
)
from ._files import Sink
from ._models import InstanceState, QRImage
from ._network import Proxy, classify, proxy_status_error
from ._redact import Secret, excerpt, redact
from ._slots import CLOSED_MESSAGE, ConnectionQueue
from ._stats import Counts
from ._stream import CHUNK_SIZE, TRANSPORT_ERRORS, QRStream, too_large

#: One DEBUG line per HTTP attempt (``wachat-qr --debug`` shows them).
_log = logging.getLogger("wachat_async.http")


__all__ = [
    "DEFAULT_TIMEOUT",
    "ERROR_BODY_LIMIT",
    "JSON_LIMIT",
    "_SanitizedCause",
    "Transport",
    "parse_retry_after",
    "transport_error",
]

#: Per-attempt timeouts: ``total`` bounds every stall (slowloris drips included) from the moment
#: the attempt has its connection slot. No ``sock_read``: under ``total`` it would save seconds
#: at most, for a timer aiohttp re-arms on every read.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=20.0, sock_connect=10.0)
#: How much of an error body is read for its excerpt (more is not read: the connection closes).
ERROR_BODY_LIMIT = 64 * 1024
#: The largest ``GET /instance/state`` body accepted.
JSON_LIMIT = 1024**2

_BORROWED_OTHER_LOOP = (
    "The aiohttp.ClientSession passed as session= belongs to another event loop (aiohttp "
    "refused it with a RuntimeError: a session works only in the loop that created it, e.g. one "
    "asyncio.run() call). Create the session inside the loop that uses the client, or pass no "
    "session: the client's own session follows the running loop."
)
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_CONTENT_TYPE = aiohttp.hdrs.CONTENT_TYPE


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date): ``None`` if
    missing, negative or unparsable, ``0.0`` for a past date, ``inf`` for a number too large."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _SECONDS.fullmatch(value):
        return float(value)  # ASCII digits only: float() cannot fail, and overflows to inf
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = datetime.now(UTC) if now is None else now
    return max(0.0, (when - now).total_seconds())


class _SanitizedCause(Exception):
    """Stands in for a transport exception whose repr could show request headers."""


def transport_error(
    exc: BaseException,
    name: str,
    secrets: Iterable[str],
    *,
    png: bool = True,
    server: URL | None = None,
    proxy: Proxy | None = None,
) -> WachatError:
    """Map an aiohttp/OS exception to ours, with a cause that cannot leak headers or *secrets*;
    a body cut short is an :class:`InvalidImageError` (``truncated``) when *png*."""
    secrets = tuple(secrets)
    text = redact(str(exc), secrets)
    network = classify(
        exc,
        host=None if server is None else server.host,
        port=None if server is None else server.port,
        proxy=proxy,
        instance_name=name,
        scheme=None if server is None else server.scheme,
    )
    if network is not None:
        error: WachatError = network
    elif isinstance(exc, asyncio.TimeoutError):
        error = WachatTimeoutError(f"request timed out ({type(exc).__name__})", instance_name=name)
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
    if isinstance(exc, aiohttp.ClientResponseError) or _chain_mentions(exc, secrets):
        error.__cause__ = _SanitizedCause(f"{type(exc).__name__}: {excerpt(text)}")
    else:
        error.__cause__ = exc
    return error


def _chain_mentions(exc: BaseException, secrets: tuple[str, ...]) -> bool:
    """Whether a secret appears in the str or repr of *exc* or anything chained to it."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        text = f"{current!s}{current!r}"
        if redact(text, secrets) != text:
            return True
        todo += (current.__cause__, current.__context__)
    return False


class Link(Protocol):
    """What :class:`Transport` reads of the state the client shares with its views."""

    session: aiohttp.ClientSession | None

    @property
    def slots(self) -> ConnectionQueue: ...
    @property
    def closed(self) -> bool: ...


class Transport:
    """One attempt of each call the client makes, against one base URL with one key; the
    session, the connection queue and the closed flag are read from *link*, the state the
    client and its views share."""

    def __init__(
        self,
        *,
        api_key: Secret,
        qr_url: URL,
        timeout: aiohttp.ClientTimeout,
        max_image_bytes: int,
        user_agent: str,
        borrowed: bool,
        link: Link,
        counts: Counts | None = None,
    ) -> None:
        self.qr_url = qr_url
        self.base_url = qr_url.parent.parent.parent
        self.state_url = self.base_url.joinpath("instance", "state")
        self.timeout = timeout
        self.max_image_bytes = max_image_bytes
        self.link = link
        self.counts = Counts() if counts is None else counts  # the client's, shared
        self._borrowed = borrowed
        self._api_key = api_key
        self.user_agent = user_agent
        #: The proxy the session sends through (set by the client when it binds), for messages.
        self.proxy: Proxy | None = None
        self._secrets: tuple[str, ...] = (api_key,)
        #: ``User-Agent`` and ``Proxy-Authorization`` for the CONNECT of an https:// request
        #: (None: no proxy); for http:// they are the request's own headers instead.
        self._proxy_headers: dict[str, str] | None = None
        self._set_headers(None)

    def _set_headers(self, proxy_authorization: str | None) -> None:
        self._image_headers = {
            "Authorization": Secret(f"Bearer {self._api_key}"),
            "User-Agent": self.user_agent,
            "Accept": "image/png",
        }
        if proxy_authorization is not None:
            # Plain http:// through a proxy: the request itself goes to the proxy.
            self._image_headers["Proxy-Authorization"] = proxy_authorization
        self._json_headers = {**self._image_headers, "Accept": "application/json"}

    def set_proxy(self, proxy: Proxy | None) -> None:
        """Use *proxy* in messages, and hide its credentials wherever the key is hidden."""
        self.proxy = proxy
        self._secrets = (self._api_key, *(() if proxy is None else proxy.secrets))
        authorization = None if proxy is None else proxy.authorization
        if proxy is not None and self.qr_url.scheme == "https":
            # The CONNECT carries the client's User-Agent (proxies log and allow-list by it),
            # not aiohttp's default, and the credentials; never the key.
            self._proxy_headers = {"User-Agent": self.user_agent}
            if authorization is not None:
                self._proxy_headers["Proxy-Authorization"] = authorization
            self._set_headers(None)
        else:
            self._proxy_headers = None
            self._set_headers(authorization)

    def evolve(
        self, *, timeout: aiohttp.ClientTimeout, max_image_bytes: int, user_agent: str
    ) -> Transport:
        """A transport with other per-call options, sharing the link and the proxy."""
        twin = Transport(
            api_key=self._api_key,
            qr_url=self.qr_url,
            timeout=timeout,
            max_image_bytes=max_image_bytes,
            user_agent=user_agent,
            borrowed=self._borrowed,
            link=self.link,
            counts=self.counts,
        )
        twin.set_proxy(self.proxy)
        return twin

    # -- the attempts ----------------------------------------------------------------------

    async def fetch_image(self, name: str) -> QRImage:
        """``GET /instance/qr/image`` read whole into a validated :class:`QRImage`."""
        slots = self.link.slots
        await slots.acquire()
        try:
            resp = await self.open_png(name)
            data = await self.read_limited(resp, self.max_image_bytes, name, png=True)
        finally:
            slots.release()
        return QRImage.from_png(data, instance_name=name)

    async def open_stream(self, name: str, chunk_size: int) -> QRStream:
        """Open the PNG in a connection slot that the stream holds until it is closed."""
        slots = self.link.slots
        await slots.acquire()
        try:
            resp = await self.open_png(name)
        except BaseException:
            slots.release()
            raise
        return QRStream(
            resp,
            instance_name=name,
            limit=self.max_image_bytes,
            chunk_size=chunk_size,
            map_error=self.transport_error,
            slot=slots,
        )

    async def save_once(self, name: str, sink: Sink) -> None:
        """Stream the PNG into *sink*, from its start (a retry starts a fresh body)."""
        await sink.reset()
        stream = await self.open_stream(name, CHUNK_SIZE)
        try:
            async for chunk in stream:
                await sink.write(chunk)
        finally:
            stream.close()

    async def fetch_state(self, name: str) -> InstanceState:
        """``GET /instance/state``, parsed by :meth:`InstanceState.from_payload`."""
        slots = self.link.slots
        await slots.acquire()
        try:
            resp = await self.send(self.state_url, name, self._json_headers)
            raw = await self.read_limited(resp, JSON_LIMIT, name, png=False)
        finally:
            slots.release()
        return InstanceState.from_payload(raw, instance_name=name, secrets=self._secrets)

    # -- the steps of an attempt -----------------------------------------------------------

    async def send(self, url: URL, name: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """Send one GET and return the 200 response; anything else becomes a typed error."""
        link = self.link
        session = link.session
        failure: BaseException
        if session is None or link.closed:  # the client let go of it: it was closed
            raise ClientClosedError(CLOSED_MESSAGE, instance_name=name, attempts=0)
        target = url.with_query(instanceName=name)
        counts = self.counts
        counts.requests += 1
        observer = counts.observer  # telemetry, if any: only then is the clock read
        sent = 0.0 if observer is None else monotonic()
        try:
            # Everything a result depends on is set here, whatever the session's defaults.
            resp = await session.get(
                target,
                headers=headers,
                allow_redirects=False,
                raise_for_status=False,
                timeout=self.timeout,
                proxy_headers=self._proxy_headers,
            )
        except TRANSPORT_ERRORS as exc:
            failure = self.transport_error(exc, name)
            if observer is not None:
                observer.request(url.path, None, type(failure).__name__, monotonic() - sent)
            if _log.isEnabledFor(logging.DEBUG):
                _log.debug(
                    "GET %s failed: %s: %s", self._shown(target), type(failure).__name__, failure
                )
        except RuntimeError:
            counts.requests -= 1  # aiohttp refused it: nothing was sent
            closed = self._session_failure(session, name)
            if closed is None:
                raise
            failure = closed
        else:
            if observer is not None:
                observer.request(url.path, resp.status, None, monotonic() - sent)
            if _log.isEnabledFor(logging.DEBUG):
                self._log_response(target, resp)
            if resp.status == 200:
                counts.ok += 1
                return resp
            counts.statuses[resp.status] += 1
            failure = await self.status_error(resp, name)
        raise_clean(failure)

    def _shown(self, url: URL) -> str:
        return redact(str(url), self._secrets)

    def _log_response(self, url: URL, resp: aiohttp.ClientResponse) -> None:
        """The DEBUG line of an attempt that got an answer (callers check the level first)."""
        _log.debug(
            "GET %s -> %d %s (%s, %s bytes)",
            self._shown(url),
            resp.status,
            excerpt(resp.reason or "", self._secrets, limit=60),
            excerpt(resp.headers.get("Content-Type", "no content type"), limit=60),
            resp.content_length if resp.content_length is not None else "unknown",
        )

    def _session_failure(self, session: aiohttp.ClientSession, name: str) -> WachatError | None:
        """The error for aiohttp's ``RuntimeError`` (None: raise it as it is): *session* was
        closed under the request, or a borrowed one belongs to another event loop."""
        if not session.closed:
            if self._borrowed:
                return ConfigurationError(_BORROWED_OTHER_LOOP)
            return None
        if self._borrowed and not self.link.closed:
            return ConfigurationError(
                "The aiohttp.ClientSession passed as session= was closed while the client "
                "still uses it; close the session only after the client"
            )
        return ClientClosedError(CLOSED_MESSAGE, instance_name=name, attempts=0)

    async def open_png(self, name: str) -> aiohttp.ClientResponse:
        """Send the QR image request; return the response once its headers promise a PNG
        within the size cap (else release it and raise)."""
        resp = await self.send(self.qr_url, name, self._image_headers)
        length = resp.content_length
        failure: WachatError
        # The raw header first (parsing it costs more); aiohttp's parse is lower case, without
        # parameters.
        if resp.headers.get(_CONTENT_TYPE) != "image/png" and resp.content_type != "image/png":
            # Server-controlled text: it may echo the key or carry junk, so only an excerpt.
            content_type = excerpt(resp.content_type, self._secrets, limit=100)
            detail = await self.read_excerpt(resp)
            failure = InvalidImageError(
                f"expected image/png, got {content_type}" + (f": {detail}" if detail else ""),
                instance_name=name,
                content_type=content_type,
            )
        elif length is not None and length > self.max_image_bytes:
            resp.release()
            failure = ResponseTooLargeError(
                f"QR image is {length} bytes, over max_image_bytes={self.max_image_bytes}",
                instance_name=name,
                limit=self.max_image_bytes,
                content_length=length,
            )
        else:
            return resp
        raise_clean(failure)

    async def read_limited(
        self, resp: aiohttp.ClientResponse, limit: int, name: str, *, png: bool
    ) -> bytes:
        """The whole body (read to its end, aiohttp gives the connection back), or the error
        for a body over *limit* bytes or cut short (*resp* released). *png*: the body is the
        QR image (over the limit: :class:`ResponseTooLargeError`)."""
        chunks: list[bytes] = []
        size = 0
        failure: BaseException
        try:
            while chunk := await resp.content.read(CHUNK_SIZE):
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
            else:
                return b"".join(chunks)
        except BaseException as exc:
            resp.release()
            if not isinstance(exc, TRANSPORT_ERRORS):
                raise
            failure = self.transport_error(exc, name, png=png)
        else:
            resp.release()
            if png:
                failure = too_large(limit, size, resp.content_length, name)
            else:
                failure = InvalidResponseError(
                    f"response body over {limit} bytes", instance_name=name
                )
        raise_clean(failure)

    async def read_excerpt(self, resp: aiohttp.ClientResponse) -> str:
        """A short redacted excerpt of an error body; never raises, always releases *resp*
        (its connection is reused when the body was read to its end)."""
        raw = b""
        limit = ERROR_BODY_LIMIT
        try:
            with suppress(*TRANSPORT_ERRORS):
                while len(raw) < limit and (chunk := await resp.content.read(CHUNK_SIZE)):
                    raw += chunk
        finally:
            resp.release()
        text = raw[:limit].decode("utf-8", "replace")
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
        return excerpt(text, self._secrets)

    async def status_error(self, resp: aiohttp.ClientResponse, name: str) -> WachatError:
        """The typed error for a response that is not a 200 (its body read for an excerpt)."""
        status = resp.status
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        location = resp.headers.get("Location")
        body = await self.read_excerpt(resp)
        if status == 407:
            # Only a proxy asks for proxy credentials: not a status of the instance.
            return proxy_status_error(407, proxy=self.proxy, instance_name=name)
        if 300 <= status < 400 and location:
            body = f"redirect to {excerpt(location, self._secrets, limit=200)} not followed"
        error = status_error(status, instance_name=name, body=body, retry_after=retry_after)
        if status == 401 and self.proxy is not None and self.qr_url.scheme == "http":
            # Plain http:// goes to the proxy as is, and some proxies (tinyproxy) answer wrong
            # credentials with a 401 of their own: it cannot be told from the API's.
            error.add_note(
                f"requests go through the HTTP proxy {self.proxy.display}: this 401 may be the "
                "proxy refusing its credentials"
            )
        if status == 404 and not self.base_url.path.rstrip("/").endswith("/api/v1"):
            # The route itself may be missing: a wrong base URL also answers 404.
            error.add_note(f"is the base URL right? {self.base_url} does not end in /api/v1")
        return error

    def transport_error(self, exc: BaseException, name: str, *, png: bool = True) -> WachatError:
        """:func:`transport_error` with this transport's secrets, server and proxy; once the
        client is closed, a :class:`ClientClosedError` (closing its session is what broke the
        exchange) with the mapped error as its cause."""
        error = transport_error(
            exc, name, self._secrets, png=png, server=self.base_url, proxy=self.proxy
        )
        self.counts.failures[type(error).__name__] += 1
        if not self.link.closed:
            return error
        closed = ClientClosedError(
            "WachatClient was closed while this request was in flight", instance_name=name
        )
        closed.__cause__ = error
        return closed
