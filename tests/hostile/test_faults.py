"""The fault matrix: every way a broken or malicious server can answer, and what the client does.

Each case runs through ``get_qr_image``, ``stream_qr_image`` and ``save_qr_image`` against a raw
TCP server that sends exactly the bytes of the fault. Beyond the case's own expectation (a typed
error with the right attributes, or the right PNG), every run asserts that:

* no connection is left checked out of the client's pool, no task is left pending, and
  ``gc.collect()`` finds no unclosed transport, session or client (the ``guard`` fixture);
* ``save_qr_image`` left no temporary file and did not touch the previous file on failure;
* the key is nowhere in the exception, its chain, notes or attributes, nor in any log record;
* the server saw the key only in ``Authorization: Bearer`` and a second host saw nothing at all;
* error messages are one line (no forged log lines) and error bodies are short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import stat
import traceback
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from wachat_async import (
    APIStatusError,
    ConfigurationError,
    GatewayTimeoutError,
    InvalidImageError,
    InvalidResponseError,
    QRFetchFailedError,
    ResponseTooLargeError,
    RetryEvent,
    RetryPolicy,
    UnexpectedStatusError,
    WachatClient,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)

from ._raw_server import (
    Close,
    Drip,
    Hang,
    Notify,
    RawServer,
    RecordedRequest,
    Reset,
    Script,
    Send,
    WaitFor,
    chunked,
    gzip_bytes,
    http_response,
    make_png,
    serve_in_thread,
)
from .conftest import (
    KEY,
    NAME,
    Guard,
    assert_clean_text,
    assert_no_partial_files,
    assert_pool_clean,
    client_sockets,
    exception_texts,
    hostile_client,
    record_texts,
    unread_by,
    unread_bytes,
)

PNG = make_png(29, 29)
OLD = b"previous file contents"
MODES = ("get", "stream", "save")
CAP = 4096  # max_image_bytes for the size-cap cases

#: Placeholders a script may use; replaced by the real URLs once the servers listen.
OTHER = b"{other}"  # a second, bystander server that must never be contacted
SELF = b"{self}"  # the hostile server itself (redirect loops)

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.25.3</center>\r\n"
    b"</body>\r\n</html>\r\n"
    + b"<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n"
    * 12
)
CAPTIVE_PORTAL = (
    b"<!DOCTYPE html>\n<html><head><title>Hotel WiFi - Sign in</title></head>\n"
    b"<body><form action='/login'>Room number: <input name=room></form></body></html>\n"
)


def _fixed(*actions: Any) -> Callable[[], Script]:
    """The same actions for every request."""
    return lambda: list(actions)


def _sequence(*responses: Sequence[Any]) -> Callable[[], Script]:
    """Request n gets responses[n] (the last one repeats)."""

    def factory() -> Script:
        count = 0

        def script(request: RecordedRequest) -> Sequence[Any]:
            nonlocal count
            count += 1
            return responses[min(count, len(responses)) - 1]

        return script

    return factory


def _status(status: int, body: bytes = b"", **kwargs: Any) -> Send:
    kwargs.setdefault("content_type", "text/plain")
    kwargs.setdefault("reason", "Whatever")
    return Send(http_response(status, body, **kwargs))


def _png_response(body: bytes = PNG, **kwargs: Any) -> Send:
    return Send(http_response(200, body, **kwargs))


def _chunked_head(*extra: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: image/png", "Transfer-Encoding: chunked", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _unicode_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def _html_references(text: str) -> str:
    """*text* as an HTML page may write it: letters as they are, the rest as decimal, hex or
    named character references in turn."""
    names = {"/": "&sol;", "+": "&plus;", "=": "&equals;", "_": "&lowbar;"}
    forms = (lambda c: f"&#{ord(c)};", lambda c: f"&#x{ord(c):X};", lambda c: names[c])
    out = [c if c.isalnum() else forms[i % 3](c) for i, c in enumerate(text)]
    return "".join(out)


@dataclass(frozen=True)
class Case:
    """One fault: the server's script and what the client must do about it."""

    script: Callable[[], Script] | None  # None: nothing listens (connection refused)
    expect: type[WachatError] | None  # None: success, the body is ``body``
    attrs: Mapping[str, object] = field(default_factory=dict)
    match: str | None = None  # regex searched in str(error)
    requests: int | Mapping[str, int] | None = None  # requests the server must receive
    client: Mapping[str, Any] = field(default_factory=dict)  # extra WachatClient kwargs
    policy: Mapping[str, Any] = field(default_factory=dict)  # extra RetryPolicy kwargs
    body: bytes = PNG
    check: Callable[[Any, list[RetryEvent]], None] | None = None
    also: tuple[type[WachatError], ...] = ()  # other acceptable types (timing-dependent faults)


def _waits_are(expected: float) -> Callable[[Any, list[RetryEvent]], None]:
    def check(error: Any, events: list[RetryEvent]) -> None:
        assert [e.wait for e in events] == [expected] * len(events)
        assert events, "expected at least one retry"

    return check


def _own_backoff(error: Any, events: list[RetryEvent]) -> None:
    # RetryPolicy defaults: initial_wait 0.5, max_wait 8 -> ceilings 0.5, 1, 2 for retries 0..2.
    assert len(events) == 3
    for n, event in enumerate(events):
        assert 0.0 <= event.wait <= min(8.0, 0.5 * 2**n)


def _gave_up_on_retry_after(error: Any, events: list[RetryEvent]) -> None:
    assert events == []
    assert any("max_retry_after" in note for note in error.__notes__)


def _short_one_line_body(error: Any, events: list[RetryEvent]) -> None:
    assert "502 Bad Gateway" in error.body
    assert len(error.body) <= 500
    assert "\n" not in error.body
    assert "\r" not in error.body


def _redirect_not_followed(error: Any, events: list[RetryEvent]) -> None:
    assert "not followed" in error.body


T_CHUNKED_BAD = (WachatConnectionError, InvalidImageError)

CASES: dict[str, Case] = {
    # -- transport ---------------------------------------------------------------------------
    "connection-refused": Case(None, WachatConnectionError),
    # aiohttp itself retries an idempotent request once when a connection dies before the
    # status line (RFC 9112 section 9.3.1), hence 2 requests with a retry policy of 1 attempt.
    "reset-before-status-line": Case(_fixed(Reset()), WachatConnectionError, requests=2),
    "close-before-status-line": Case(_fixed(Close()), WachatConnectionError, requests=2),
    "garbage-status-line": Case(
        _fixed(Send(b"HTTP/1.1 abc nonsense\r\n\r\n"), Close()), WachatConnectionError, requests=1
    ),
    "not-http-at-all": Case(
        _fixed(Send(b"SSH-2.0-OpenSSH_9.6\r\n"), Close()), WachatConnectionError, requests=1
    ),
    "headers-never-finished": Case(
        _fixed(Send(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"), Hang()),
        WachatTimeoutError,
        requests=1,
    ),
    "never-answers": Case(_fixed(Hang()), WachatTimeoutError, requests=1),
    "reset-mid-body": Case(
        _fixed(Send(http_response(200, PNG)[: -len(PNG) // 2]), Reset()),
        InvalidImageError,
        attrs={"truncated": True},
        requests=1,
    ),
    "body-shorter-than-content-length": Case(
        _fixed(_png_response(content_length=len(PNG) + 100), Close()),
        InvalidImageError,
        attrs={"truncated": True},
        requests=1,
    ),
    "close-delimited-body-cut-short": Case(
        _fixed(_png_response(PNG[:-20], content_length=None), Close()),
        InvalidImageError,
        attrs={"truncated": True},
        requests=1,
    ),
    "slow-drip-below-read-timeout": Case(
        _fixed(Drip(http_response(200, PNG), piece=16, delay=0.005)), None, requests=1
    ),
    # Slowloris: every byte arrives within the read timeout, the body never ends; only the
    # per-attempt total bounds it.
    "endless-drip-below-read-timeout": Case(
        _fixed(Send(http_response(200, b"", content_length=10_000)), Drip(PNG * 100, 1, 0.02)),
        WachatTimeoutError,
        client={"timeout": aiohttp.ClientTimeout(total=0.4, sock_read=0.3)},
        requests=1,
    ),
    "stalled-body-past-read-timeout": Case(
        _fixed(Send(http_response(200, PNG)[:-20]), Hang()), WachatTimeoutError, requests=1
    ),
    # Body cut short is a transport fault: retried when the policy retries transport errors,
    # except by stream_qr_image, which has already handed the stream to the caller.
    "cut-short-retried-with-transport-retries": Case(
        _fixed(_png_response(content_length=len(PNG) + 100), Close()),
        InvalidImageError,
        attrs={"truncated": True},
        policy={"retry_transport_errors": True},
        requests={"get": 4, "stream": 1, "save": 4},
    ),
    "reset-retried-with-transport-retries": Case(
        _fixed(Reset()),
        WachatConnectionError,
        attrs={"attempts": 4},
        policy={"retry_transport_errors": True},
        requests=8,  # 4 attempts, each retried once inside aiohttp
    ),
    # -- size cap ----------------------------------------------------------------------------
    "content-length-over-cap": Case(
        _fixed(Send(http_response(200, b"", content_length=10_000_000)), Hang()),
        ResponseTooLargeError,
        attrs={"content_length": 10_000_000, "limit": CAP},
        client={"max_image_bytes": CAP},
        requests=1,
    ),
    "chunked-body-grows-past-cap": Case(
        _fixed(Send(_chunked_head() + chunked(PNG[:-12], *[b"\0" * 1000] * 8, end=False)), Hang()),
        ResponseTooLargeError,
        attrs={"content_length": None, "limit": CAP},
        client={"max_image_bytes": CAP},
        requests=1,
    ),
    "close-delimited-body-grows-past-cap": Case(
        _fixed(_png_response(PNG[:-12] + b"\0" * 8000, content_length=None), Hang()),
        ResponseTooLargeError,
        client={"max_image_bytes": CAP},
        requests=1,
    ),
    "gzip-bomb-over-cap": Case(
        _fixed(
            _png_response(
                gzip_bytes(PNG[:33] + bytes(16 * 1024**2)), headers=[("Content-Encoding", "gzip")]
            ),
        ),
        ResponseTooLargeError,
        client={"max_image_bytes": 64 * 1024},
        requests=1,
    ),
    # Whether aiohttp notices a bad chunk while parsing the head or while the body is read
    # depends on how the bytes arrive, so both mappings are accepted for the mid-body case.
    "invalid-chunk-size": Case(
        _fixed(Send(_chunked_head() + b"zz\r\n"), Close()), WachatConnectionError, requests=1
    ),
    "invalid-chunk-size-mid-body": Case(
        _fixed(Send(_chunked_head() + chunked(PNG[:40], end=False) + b"-5\r\nxx\r\n"), Close()),
        WachatConnectionError,
        also=(InvalidImageError,),
        requests=1,
    ),
    "chunk-size-lies-longer": Case(
        _fixed(Send(_chunked_head() + b"%x\r\n" % (len(PNG) + 50) + PNG), Close()),
        InvalidImageError,
        attrs={"truncated": True},
        requests=1,
    ),
    # -- framing the parser must refuse (request-smuggling shapes, oversized heads) ------------
    "content-length-and-chunked": Case(
        _fixed(Send(_chunked_head("Content-Length: 10") + chunked(PNG))),
        WachatConnectionError,
        requests=1,
    ),
    "duplicate-content-length": Case(
        _fixed(
            Send(
                http_response(200, PNG, headers=[("Content-Length", str(len(PNG) + 5))]),
            ),
            Close(),
        ),
        WachatConnectionError,
        requests=1,
    ),
    "content-length-with-sign": Case(
        _fixed(_png_response(content_length=None, headers=[("Content-Length", f"+{len(PNG)}")])),
        WachatConnectionError,
    ),
    "chunk-size-overflow": Case(
        _fixed(Send(_chunked_head() + b"f" * 20 + b"\r\n" + PNG), Close()),
        WachatConnectionError,
    ),
    "header-line-over-8k": Case(
        _fixed(_png_response(headers=[("X-Long", "a" * 9000)])), WachatConnectionError
    ),
    "twenty-thousand-headers": Case(
        _fixed(_png_response(headers=[(f"X-{i}", "v") for i in range(20_000)])),
        WachatConnectionError,
    ),
    "status-code-out-of-range": Case(
        _fixed(Send(b"HTTP/1.1 99999 Nope\r\n\r\n"), Close()), WachatConnectionError
    ),
    "http-1.0-close-delimited-png": Case(
        _fixed(Send(b"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\n\r\n" + PNG), Close()), None
    ),
    "unsupported-content-encoding-br": Case(
        _fixed(_png_response(headers=[("Content-Encoding", "br")])), WachatConnectionError
    ),
    # -- content encodings ---------------------------------------------------------------------
    "gzip-png": Case(
        _fixed(_png_response(gzip_bytes(PNG), headers=[("Content-Encoding", "gzip")])), None
    ),
    "deflate-zlib-png": Case(
        _fixed(_png_response(zlib.compress(PNG), headers=[("Content-Encoding", "deflate")])),
        None,
    ),
    "deflate-raw-png": Case(
        _fixed(_png_response(_deflate_raw(PNG), headers=[("Content-Encoding", "deflate")])),
        None,
    ),
    "gzip-chunked-png": Case(
        _fixed(
            Send(_chunked_head("Content-Encoding: gzip") + chunked(*_pieces(gzip_bytes(PNG), 7)))
        ),
        None,
    ),
    "gzip-corrupt": Case(
        _fixed(
            _png_response(b"\x1f\x8b\x08\x00garbage" * 4, headers=[("Content-Encoding", "gzip")])
        ),
        InvalidImageError,
        requests=1,
    ),
    # -- 200s that are not a PNG ----------------------------------------------------------------
    "captive-portal-html": Case(
        _fixed(Send(http_response(200, CAPTIVE_PORTAL, content_type="text/html"))),
        InvalidImageError,
        attrs={"content_type": "text/html", "truncated": False},
        match=r"expected image/png, got text/html: .*Hotel WiFi",
        requests=1,
    ),
    "image-png-but-html": Case(
        _fixed(_png_response(CAPTIVE_PORTAL)),
        InvalidImageError,
        match="bad signature",
        requests=1,
    ),
    "image-png-but-json": Case(
        _fixed(_png_response(b'{"qr": "data:image/png;base64,iVBORw0KGgo="}')),
        InvalidImageError,
        match="bad signature",
    ),
    "empty-200": Case(_fixed(_png_response(b"")), InvalidImageError, requests=1),
    "empty-200-no-content-type": Case(
        _fixed(Send(http_response(200, b"", content_type=None))), InvalidImageError
    ),
    "png-header-only": Case(
        _fixed(_png_response(PNG[:20])), InvalidImageError, attrs={"truncated": True}
    ),
    "png-bad-ihdr-crc": Case(
        _fixed(_png_response(PNG[:29] + b"\0\0\0\0" + PNG[33:])),
        InvalidImageError,
        match="checksum",
    ),
    "png-without-iend": Case(
        _fixed(_png_response(PNG[:-12])), InvalidImageError, attrs={"truncated": True}
    ),
    "png-with-trailing-garbage": Case(_fixed(_png_response(PNG + b"tail")), InvalidImageError),
    "png-content-type-with-parameters": Case(
        _fixed(_png_response(content_type="IMAGE/PNG; charset=binary")), None
    ),
    # -- statuses ----------------------------------------------------------------------------
    "502-html-proxy-page": Case(
        _fixed(_status(502, NGINX_502, content_type="text/html")),
        QRFetchFailedError,
        attrs={"status": 502, "attempts": 4},
        requests=4,
        check=_short_one_line_body,
    ),
    "504-json": Case(
        _fixed(
            _status(
                504,
                json.dumps({"status": 504, "message": "Upstream request timed out"}).encode(),
                content_type="application/json",
            )
        ),
        GatewayTimeoutError,
        attrs={"status": 504, "attempts": 4, "body": "Upstream request timed out"},
        requests=4,
    ),
    "502-then-200": Case(_sequence([_status(502, b"busy")], [_png_response()]), None, requests=2),
    "retry-after-negative": Case(
        _fixed(_status(502, headers=[("Retry-After", "-5")])),
        QRFetchFailedError,
        attrs={"retry_after": None, "attempts": 4},
        requests=4,
        check=_own_backoff,
    ),
    "retry-after-huge": Case(
        _fixed(_status(502, headers=[("Retry-After", "86400")])),
        QRFetchFailedError,
        attrs={"retry_after": 86400.0, "attempts": 1},
        requests=1,
        check=_gave_up_on_retry_after,
    ),
    "retry-after-far-future-date": Case(
        _fixed(_status(504, headers=[("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT")])),
        GatewayTimeoutError,
        attrs={"attempts": 1},
        requests=1,
        check=_gave_up_on_retry_after,
    ),
    "retry-after-garbage": Case(
        _fixed(_status(502, headers=[("Retry-After", "soon, maybe")])),
        QRFetchFailedError,
        attrs={"retry_after": None, "attempts": 4},
        requests=4,
        check=_own_backoff,
    ),
    "retry-after-past-http-date": Case(
        _fixed(_status(504, headers=[("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")])),
        GatewayTimeoutError,
        attrs={"retry_after": 0.0, "attempts": 4},
        requests=4,
        check=_waits_are(0.0),
    ),
    "retry-after-overflowing-digits": Case(
        _fixed(_status(502, headers=[("Retry-After", "9" * 400)])),
        QRFetchFailedError,
        attrs={"attempts": 1},
        requests=1,
        check=_gave_up_on_retry_after,
    ),
    "retry-after-non-ascii-digit": Case(
        _fixed(_status(502, headers=[("Retry-After", "\u00b2".encode().decode("latin-1"))])),
        QRFetchFailedError,
        attrs={"retry_after": None, "attempts": 4},
        requests=4,
    ),
    "unknown-5xx-500": Case(
        _fixed(_status(500, b"Internal Server Error")),
        UnexpectedStatusError,
        attrs={"status": 500, "attempts": 1},
        requests=1,
    ),
    "unknown-5xx-503-with-retry-after": Case(
        _fixed(_status(503, b"maintenance", headers=[("Retry-After", "0")])),
        UnexpectedStatusError,
        attrs={"status": 503, "attempts": 1, "retry_after": 0.0},
        requests=1,
    ),
    "unregistered-status-599": Case(
        _fixed(_status(599, b"")),
        UnexpectedStatusError,
        attrs={"status": 599},
        match="599 Unknown Status",
        requests=1,
    ),
    "204-no-content": Case(
        _fixed(_status(204, content_length=None, content_type=None)),
        UnexpectedStatusError,
        attrs={"status": 204},
        requests=1,
    ),
    "502-deeply-nested-json": Case(
        _fixed(_status(502, b"[" * 50_000, content_type="application/json")),
        QRFetchFailedError,
        requests=4,
    ),
    "502-error-body-stalls": Case(
        _fixed(_status(502, b"x" * 100, content_length=1000), Hang()),
        QRFetchFailedError,
        attrs={"attempts": 1, "body": "x" * 100},
        policy={"max_attempts": 1},
        requests=1,
    ),
    # -- redirects (never followed) -----------------------------------------------------------
    "redirect-302-to-other-host": Case(
        _fixed(_status(302, headers=[("Location", "{other}/api/v1/instance/qr/image")])),
        UnexpectedStatusError,
        attrs={"status": 302, "attempts": 1},
        requests=1,
        check=_redirect_not_followed,
    ),
    "redirect-307-to-other-host": Case(
        _fixed(_status(307, headers=[("Location", "{other}/steal?instanceName=x")])),
        UnexpectedStatusError,
        attrs={"status": 307},
        requests=1,
        check=_redirect_not_followed,
    ),
    "redirect-308-to-https-other-host": Case(
        _fixed(_status(308, headers=[("Location", "https://evil.example/api/v1")])),
        UnexpectedStatusError,
        attrs={"status": 308},
        requests=1,
    ),
    "redirect-loop": Case(
        _fixed(
            _status(301, headers=[("Location", "{self}/api/v1/instance/qr/image?instanceName=x")])
        ),
        UnexpectedStatusError,
        attrs={"status": 301, "attempts": 1},
        requests=1,
        check=_redirect_not_followed,
    ),
    "redirect-relative-same-host": Case(
        _fixed(_status(303, headers=[("Location", "/login")])),
        UnexpectedStatusError,
        attrs={"status": 303},
        requests=1,
    ),
}

# The key echoed back by a hostile server or proxy, in every place a response can carry text.
ECHO_CASES: dict[str, Case] = {
    "echo-401-plain-body": Case(
        _fixed(_status(401, f"Invalid API key {KEY}".encode())),
        APIStatusError,
        attrs={"status": 401},
    ),
    "echo-400-url-encoded-body": Case(
        _fixed(_status(400, f"bad request: apiKey={quote(KEY, safe='')}&x=1".encode())),
        APIStatusError,
        attrs={"status": 400},
    ),
    "echo-403-json-message": Case(
        _fixed(
            _status(
                403,
                json.dumps({"message": f"key {KEY} is restricted"}).encode(),
                content_type="application/json",
            )
        ),
        APIStatusError,
        attrs={"status": 403},
    ),
    "echo-502-json-unicode-escaped-message": Case(
        _fixed(
            _status(
                502,
                ('{"message": "rejected ' + _unicode_escaped(KEY) + '"}').encode(),
                content_type="application/json",
            )
        ),
        QRFetchFailedError,
        attrs={"attempts": 4},
    ),
    "echo-500-html-request-dump": Case(
        _fixed(
            _status(
                500,
                f"<pre>GET /api/v1/instance/qr/image\nAuthorization: Bearer {KEY}\n</pre>".encode(),
                content_type="text/html",
            )
        ),
        UnexpectedStatusError,
    ),
    "echo-key-across-excerpt-cut": Case(
        _fixed(_status(404, b"x" * 490 + KEY.encode() + b" trailing")),
        APIStatusError,
        attrs={"status": 404},
    ),
    "echo-200-captive-portal": Case(
        _fixed(Send(http_response(200, f"<p>token={KEY}</p>".encode(), content_type="text/html"))),
        InvalidImageError,
    ),
    "echo-redirect-location": Case(
        _fixed(_status(302, headers=[("Location", f"https://evil.example/?apiKey={KEY}")])),
        UnexpectedStatusError,
    ),
    "echo-reason-phrase": Case(
        _fixed(_status(502, reason=KEY)), QRFetchFailedError, attrs={"attempts": 4}
    ),
    "echo-garbage-status-line": Case(
        _fixed(Send(f"HTTP/1.1 abc {KEY}\r\n\r\n".encode()), Close()), WachatConnectionError
    ),
    "echo-invalid-header-line": Case(
        _fixed(Send(f"HTTP/1.1 200 OK\r\nBad Header {KEY}\r\n\r\n".encode()), Close()),
        WachatConnectionError,
    ),
    "echo-chunk-size": Case(
        _fixed(Send(_chunked_head() + f"{KEY}\r\n".encode()), Close()), WachatConnectionError
    ),
    "echo-long-header-line": Case(
        _fixed(_png_response(headers=[("X-Long", "a" * 9000 + KEY)])), WachatConnectionError
    ),
    "echo-chunk-extension": Case(
        _fixed(Send(_chunked_head() + b"%x;ext=%s\r\n" % (len(PNG), KEY.encode()) + PNG)),
        WachatConnectionError,
    ),
    "echo-trailer-of-valid-png": Case(
        _fixed(
            Send(_chunked_head() + chunked(PNG, end=False) + f"0\r\nX-Key: {KEY}\r\n\r\n".encode())
        ),
        None,
    ),
    "echo-content-type": Case(
        _fixed(Send(http_response(200, b"x", content_type=KEY))), InvalidImageError
    ),
    "echo-url-encoded-lowercase-hex": Case(
        _fixed(_status(400, f"rejected {quote(KEY, safe='').lower()}".encode())),
        APIStatusError,
    ),
    "echo-key-upper-case": Case(
        _fixed(_status(400, f"rejected {KEY.upper()}".encode())), APIStatusError
    ),
    # The connection closes inside the headers: aiohttp's ServerDisconnectedError (not a
    # ClientResponseError) quotes every header received so far, an echoed key included.
    "echo-header-then-disconnect": Case(
        _fixed(
            Send(f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Echo: {KEY}\r\n".encode()),
            Close(),
        ),
        WachatConnectionError,
    ),
    "echo-url-encoded-header-then-disconnect": Case(
        _fixed(Send(f"HTTP/1.1 502 Bad\r\nX-Echo: {quote(KEY, safe='')}\r\n".encode()), Close()),
        WachatConnectionError,
    ),
    "echo-location-not-utf8": Case(
        _fixed(_status(302, headers=[("Location", "https://evil.example/\xff\xfe")])),
        UnexpectedStatusError,
    ),
    # Escaped echoes in bodies with no message field (the raw body is what gets excerpted).
    "echo-401-json-slash-escaped-no-message": Case(  # PHP's json_encode: "/" -> "\/"
        _fixed(
            _status(
                401,
                json.dumps({"status": 401, "provided": KEY}).replace("/", "\\/").encode(),
                content_type="application/json",
            )
        ),
        APIStatusError,
        attrs={"status": 401},
    ),
    "echo-401-json-unicode-escaped-no-message": Case(
        _fixed(
            _status(
                401,
                ('{"status": 401, "provided": "' + _unicode_escaped(KEY) + '"}').encode(),
                content_type="application/json",
            )
        ),
        APIStatusError,
        attrs={"status": 401},
    ),
    "echo-500-html-character-references": Case(
        _fixed(
            _status(
                500,
                f"<pre>Authorization: Bearer {_html_references(KEY)}</pre>".encode(),
                content_type="text/html",
            )
        ),
        UnexpectedStatusError,
    ),
    # The error body is read up to 64 KiB: the cut leaves the key's first characters at the
    # end, and folding the white space before them brings them to the excerpt's start.
    "echo-key-across-the-body-read-limit": Case(
        _fixed(_status(404, b" " * (64 * 1024 - 12) + KEY.encode() + b" trailing")),
        APIStatusError,
        attrs={"status": 404},
    ),
}


async def _fetch(client: WachatClient, mode: str, folder: Path) -> bytes:
    """Fetch NAME through one of the three public calls and return the PNG bytes."""
    if mode == "get":
        return (await client.get_qr_image(NAME)).data
    if mode == "stream":
        async with client.stream_qr_image(NAME, chunk_size=64) as stream:
            return b"".join([chunk async for chunk in stream])
    path = await client.save_qr_image(NAME, folder / "qr.png")
    return path.read_bytes()


def _bind(script: Script, urls: Mapping[bytes, str]) -> Script:
    """*script* with the URL placeholders replaced (at request time: ports are known then)."""

    def fill(data: bytes) -> bytes:
        for placeholder, url in urls.items():
            data = data.replace(placeholder, url.encode())
        return data

    def bound(request: RecordedRequest) -> Sequence[Any]:
        actions = script(request) if callable(script) else script
        out: list[Any] = []
        for action in actions:
            if isinstance(action, Send):
                action = Send(fill(action.data))
            elif isinstance(action, Drip):
                action = Drip(fill(action.data), action.piece, action.delay)
            out.append(action)
        return out

    return bound


@pytest.fixture
async def refused_url() -> AsyncIterator[str]:
    """A loopback URL where a socket is bound but not listening: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1"


async def _run_case(case: Case, mode: str, guard: Guard, folder: Path, refused_url: str) -> None:
    events: list[RetryEvent] = []
    policy = RetryPolicy(zero_wait=True, on_retry=events.append, **case.policy)
    (folder / "qr.png").write_bytes(OLD)
    async with RawServer([Hang()]) as bystander:
        server: RawServer | None = None
        if case.script is not None:
            server = await RawServer([]).__aenter__()
            server.script = _bind(case.script(), {OTHER: bystander.url, SELF: server.url})
        try:
            base_url = server.base_url if server is not None else refused_url
            async with hostile_client(base_url, retry=policy, **case.client) as client:
                if server is not None:
                    server.peer_unread = unread_by(client)
                outcome: bytes | BaseException
                try:
                    outcome = await _fetch(client, mode, folder)
                except WachatError as exc:
                    outcome = exc
                assert_pool_clean(client)
        finally:
            if server is not None:
                await server.close()
        assert bystander.connections == 0, "a second host was contacted"

    if case.expect is None:
        assert outcome == case.body
    else:
        assert isinstance(outcome, BaseException), f"expected {case.expect.__name__}, got a PNG"
        guard.exception(outcome)
        accepted = (case.expect, *case.also)
        assert isinstance(outcome, accepted), f"{type(outcome).__name__}: {outcome}"
        if case.expect is not APIStatusError:  # echo cases only care that it is a status error
            assert type(outcome) in accepted, f"{type(outcome).__name__}: {outcome}"
        for name, value in case.attrs.items():
            assert getattr(outcome, name) == value, f"{name}={getattr(outcome, name)!r}"
        if case.match is not None:
            assert re.search(case.match, str(outcome)), str(outcome)
        assert outcome.instance_name == NAME
        assert not re.search(r"[\r\n]", str(outcome)), "multi-line message"
        if isinstance(outcome, APIStatusError):
            assert len(outcome.body) <= 500
            assert "\n" not in outcome.body
    if case.check is not None:
        case.check(outcome, events)

    if mode == "save":
        assert (folder / "qr.png").read_bytes() == (case.body if case.expect is None else OLD)
    assert_no_partial_files(folder, allowed=["qr.png"])

    if server is not None:
        expected = case.requests.get(mode) if isinstance(case.requests, Mapping) else case.requests
        if expected is not None:
            assert len(server.requests) == expected
        for request in server.requests:
            assert request.header("Authorization") == f"Bearer {KEY}"
            assert KEY not in request.target
            assert quote(KEY, safe="") not in request.target
            assert request.method == "GET"


def _params(cases: Mapping[str, Any]) -> list[Any]:
    params = []
    for case_id, case in cases.items():
        for mode in MODES:
            if isinstance(case, Case):
                params.append(pytest.param(case, mode, id=f"{case_id}-{mode}"))
            else:  # a pytest.param carrying marks
                params.append(
                    pytest.param(*case.values, mode, id=f"{case_id}-{mode}", marks=case.marks)
                )
    return params


@pytest.mark.parametrize(("case", "mode"), _params(CASES))
async def test_fault(case: Case, mode: str, guard: Guard, tmp_path: Path, refused_url: str) -> None:
    """The client turns each server fault into its typed error (or the right PNG), cleanly."""
    await _run_case(case, mode, guard, tmp_path, refused_url)


@pytest.mark.parametrize(("case", "mode"), _params(ECHO_CASES))
async def test_echoed_key_is_redacted(
    case: Case, mode: str, guard: Guard, tmp_path: Path, refused_url: str
) -> None:
    """A server echoing the key back cannot get it into an exception or a log line."""
    await _run_case(case, mode, guard, tmp_path, refused_url)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "actions",
    [
        pytest.param([Hang()], id="before-status"),
        pytest.param([Send(http_response(200, PNG)[:-40]), Hang()], id="mid-body"),
        pytest.param([Send(http_response(502, b"x", content_length=10)), Hang()], id="error-body"),
    ],
)
async def test_cancellation_leaves_nothing_behind(
    actions: list[Any], mode: str, guard: Guard, tmp_path: Path
) -> None:
    """Cancelling a call while the server stalls releases the connection and the temp file."""
    (tmp_path / "qr.png").write_bytes(OLD)
    async with (
        RawServer(actions) as server,
        hostile_client(server.base_url, timeout=30.0) as client,
    ):
        task = asyncio.ensure_future(_fetch(client, mode, tmp_path))
        await server.wait_for_requests(1)
        for _ in range(5):  # let the client get as far as the server lets it
            await asyncio.sleep(0.001)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_pool_clean(client)
    assert (tmp_path / "qr.png").read_bytes() == OLD
    assert_no_partial_files(tmp_path, allowed=["qr.png"])


# -- the CLI against the same faults --------------------------------------------------------

CLI_CASES: dict[str, tuple[list[Any] | None, int]] = {
    "ok": ([_png_response()], 0),
    "connection-refused": (None, 6),
    "reset-before-status-line": ([Reset()], 6),
    "stalled-body": ([Send(http_response(200, PNG)[:-20]), Hang()], 6),
    "body-cut-short": ([_png_response(content_length=len(PNG) + 100), Close()], 7),
    "image-png-but-html": ([_png_response(CAPTIVE_PORTAL)], 7),
    "captive-portal-echoing-key": (
        [Send(http_response(200, f"<p>{KEY}</p>".encode(), content_type="text/html"))],
        7,
    ),
    "401-echoing-key": ([_status(401, f"bad key {KEY}".encode())], 3),
    "502-json-echoing-key-retried": (
        [_status(502, json.dumps({"message": f"Bearer {KEY}"}).encode())],
        5,
    ),
    "redirect-echoing-key": (
        [_status(302, headers=[("Location", f"https://evil.example/?apiKey={KEY}")])],
        5,
    ),
    "garbage-status-echoing-key": ([Send(f"HTTP/1.1 abc {KEY}\r\n\r\n".encode()), Close()], 6),
}


@pytest.mark.parametrize(
    ("actions", "exit_code"), [pytest.param(*v, id=k) for k, v in CLI_CASES.items()]
)
def test_cli_fetch_against_fault(
    actions: list[Any] | None,
    exit_code: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`wachat-qr fetch` exits with the fault's status, prints no key and leaves no partial file."""
    from wachat_async.cli import _commands, main

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    monkeypatch.setattr(_commands, "RETRY_POLICY", RetryPolicy(zero_wait=True))
    target = tmp_path / "qr.png"
    with contextlib.ExitStack() as stack:
        if actions is None:
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1"
        else:
            base_url = stack.enter_context(serve_in_thread(actions)).base_url
        # A short timeout only where the fault needs one: it bounds the whole request.
        timeout = "0.5" if any(isinstance(a, Hang) for a in actions or []) else "10"
        code = main(
            ["fetch", NAME, "-o", str(target), "--base-url", base_url, "--timeout", timeout, "-v"]
        )
    out, err = capsys.readouterr()
    assert code == exit_code, err
    for where, text in (("stdout", out), ("stderr", err)):
        assert_clean_text(text, f"CLI {where}")
    for record in caplog.records:
        for text in record_texts(record):
            assert_clean_text(text, f"log record {record.name}")
    if exit_code == 0:
        assert target.read_bytes() == PNG
    else:
        assert err.startswith("wachat-qr: ") or "wachat-qr: error: " in err
        assert len([line for line in err.splitlines() if ": error: " in line]) == 1
        assert not target.exists()
    assert_no_partial_files(tmp_path, allowed=["qr.png"] if exit_code == 0 else [])


# -- a response nobody asked for ------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="aiohttp#13656 (upstream): a pooled idle connection is reused when only is_connected() "
    "is true, so bytes the server sent unasked (a second response) are taken as the answer to "
    "the next request; BaseConnector._get should also skip protocols whose should_close is "
    "true (buffered data). Client-side mitigation: none short of force_close",
)
async def test_unsolicited_response_on_idle_connection_is_not_the_next_answer(
    guard: Guard,
) -> None:
    """Bytes pushed on an idle keep-alive connection are not taken as the next call's answer."""
    released, pushed = asyncio.Event(), asyncio.Event()
    first, second, unasked = make_png(10, 10), make_png(20, 20), make_png(30, 30)

    def script(request: RecordedRequest) -> list[Any]:
        if request.instance_name == "first":
            return [
                _png_response(first),
                WaitFor(released),
                _png_response(unasked),
                Notify(pushed),
            ]
        return [_png_response(second)]

    async with RawServer(script) as server, hostile_client(server.base_url) as client:
        assert (await client.get_qr_image("first")).data == first
        released.set()
        await asyncio.wait_for(pushed.wait(), 5)
        for _ in range(100):  # bounded: until the client's loop has read the pushed bytes
            if not any(unread_bytes(sock) for sock in client_sockets(client)):
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)
        answer = await client.get_qr_image("second")
        assert_pool_clean(client)
    assert [r.instance_name for r in server.requests] == ["first", "second"]
    assert answer.data == second


# -- tracebacks printed with local variables ------------------------------------------------


def _library_locals(exc: BaseException) -> Iterator[tuple[str, str]]:
    """(frame, repr) of every local variable of every library frame (not this test's) in the
    traceback of *exc* and its chain, as rich, IPython's verbose mode, pytest --showlocals or
    an error tracker would print them."""
    seen: set[int] = set()
    todo: list[traceback.TracebackException | None] = [
        traceback.TracebackException.from_exception(exc, capture_locals=True)
    ]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        todo += [current.__cause__, current.__context__]
        for frame in current.stack:
            if "tests" not in Path(frame.filename).parts:
                for name, value in (frame.locals or {}).items():
                    yield f"{frame.name}:{name}", value


@pytest.mark.parametrize(
    "actions",
    [
        pytest.param([_status(401, b"no")], id="status-error"),
        pytest.param([Reset()], id="transport-error"),
    ],
)
async def test_key_absent_from_tracebacks_with_locals(actions: list[Any], guard: Guard) -> None:
    """Printing the error's traceback with local variables does not print the key."""
    async with RawServer(actions) as server, hostile_client(server.base_url) as client:
        with pytest.raises(WachatError) as info:
            await client.get_qr_image(NAME)
    for where, text in _library_locals(info.value):
        assert_clean_text(text, f"local {where}")


# -- GET /instance/state against the same kind of server ------------------------------------

_STATE_OK = {"instance": {"instanceName": NAME, "state": "open"}}

STATE_CASES: dict[str, tuple[list[Any], type[WachatError] | str]] = {
    "ok": ([_status(200, json.dumps(_STATE_OK).encode())], "open"),
    "ok-nested-under-data": (
        [_status(200, json.dumps({"data": {"instance": {"state": "connecting"}}}).encode())],
        "connecting",
    ),
    "html-instead-of-json": ([_status(200, CAPTIVE_PORTAL)], InvalidResponseError),
    "empty-200": ([_status(200, b"")], InvalidResponseError),
    "json-list": ([_status(200, b"[1, 2]")], InvalidResponseError),
    "instance-not-an-object": ([_status(200, b'{"instance": "open"}')], InvalidResponseError),
    "state-not-a-string": ([_status(200, b'{"instance": {"state": 1}}')], InvalidResponseError),
    "deeply-nested-json": ([_status(200, b"[" * 50_000)], InvalidResponseError),
    "huge-integer": ([_status(200, b'{"instance": ' + b"9" * 5000 + b"}")], InvalidResponseError),
    "body-over-1mib": (
        [_status(200, b'{"pad": "' + b"x" * (1024**2 + 10) + b'"}'), Close()],
        InvalidResponseError,
    ),
    # Raised as InvalidImageError (the transport mapping is shared with the image path), which
    # is an InvalidResponseError: odd for a JSON endpoint, harmless for `except` clauses.
    "body-cut-short": (
        [_status(200, b'{"inst', content_length=100), Close()],
        InvalidResponseError,
    ),
    "echoes-key": ([_status(200, f"no state for {KEY}".encode())], InvalidResponseError),
    "401-echoes-key": ([_status(401, f"bad key {KEY}".encode())], APIStatusError),
    "stalled": (
        [Send(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"), Hang()],
        WachatTimeoutError,
    ),
    "valid-state-beside-odd-data": (
        [_status(200, json.dumps({**_STATE_OK, "data": 5}).encode())],
        "open",
    ),
}


def _state_params() -> list[Any]:
    params = []
    for case_id, case in STATE_CASES.items():
        if hasattr(case, "marks"):  # a pytest.param (a NamedTuple, so test this first)
            params.append(pytest.param(*case.values, id=case_id, marks=case.marks))
        else:
            params.append(pytest.param(*case, id=case_id))
    return params


@pytest.mark.parametrize(("actions", "expected"), _state_params())
async def test_instance_state_fault(
    actions: list[Any], expected: type[WachatError] | str, guard: Guard
) -> None:
    """get_instance_state: the state string, or a typed, one-line, key-free error."""
    async with RawServer(actions) as server, hostile_client(server.base_url) as client:
        server.peer_unread = unread_by(client)
        try:
            outcome: object = (await client.get_instance_state(NAME)).state
        except WachatError as exc:
            outcome = exc
        assert_pool_clean(client)
    if isinstance(expected, str):
        assert outcome == expected
    else:
        assert isinstance(outcome, expected), f"{type(outcome).__name__}: {outcome}"
        guard.exception(outcome)
        assert not re.search(r"[\r\n]", str(outcome))
        assert len(str(outcome)) <= 600
    assert [r.header("Authorization") for r in server.requests] == [f"Bearer {KEY}"]


# -- plain http:// and saved files ----------------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        pytest.param("http://api.wachat.example/api/v1", id="remote-name"),
        pytest.param("http://10.0.0.7/api/v1", id="private-ip"),
        pytest.param("http://0.0.0.0:8080/api/v1", id="any-address"),
        pytest.param("http://127.0.0.1.nip.io/api/v1", id="loopback-lookalike-name"),
        pytest.param("http://localhost.evil.example/api/v1", id="localhost-prefix"),
        pytest.param("http://2130706433/api/v1", id="integer-ip"),
        pytest.param("HTTP://API.WACHAT.EXAMPLE/api/v1", id="upper-case-scheme"),
    ],
)
def test_plain_http_to_a_non_loopback_host_is_refused(base_url: str) -> None:
    """The key would travel in clear text: the client refuses to be built, naming the fix."""
    with pytest.raises(ConfigurationError, match="allow_insecure_http"):
        WachatClient(api_key=KEY, base_url=base_url)


@pytest.mark.parametrize("mode", ["save_qr_image", "QRImage.save"])
async def test_saved_png_is_owner_only(mode: str, guard: Guard, tmp_path: Path) -> None:
    """A saved QR (a live login credential for the instance) is created mode 0600."""
    target = tmp_path / "qr.png"
    async with RawServer([_png_response()]) as server, hostile_client(server.base_url) as client:
        if mode == "save_qr_image":
            await client.save_qr_image(NAME, target)
        else:
            (await client.get_qr_image(NAME)).save(target)
    assert target.read_bytes() == PNG
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert_no_partial_files(tmp_path, allowed=["qr.png"])


# -- the caller's side of the stream --------------------------------------------------------


@pytest.mark.parametrize("how", ["break-after-first-chunk", "raise-in-block", "never-iterate"])
async def test_half_read_stream_never_poisons_the_next_call(how: str, guard: Guard) -> None:
    """Leaving a stream early closes its connection; the next call gets its own, whole body."""
    # `first` is far bigger than what the client buffers, so it is still arriving when the
    # caller leaves; a half-read connection returned to the pool would hand the rest of it to
    # the next call (both responses are keep-alive).
    first, second = PNG[:33] + bytes(2 * 1024**2), make_png(20, 20)

    def script(request: RecordedRequest) -> list[Any]:
        return [_png_response(first if request.instance_name == "first" else second)]

    async with RawServer(script) as server, hostile_client(server.base_url) as client:
        with contextlib.suppress(LookupError):
            async with client.stream_qr_image("first", chunk_size=16) as stream:
                if how == "raise-in-block":
                    raise LookupError("the caller's own error")
                if how == "break-after-first-chunk":
                    async for _ in stream:
                        break
        assert_pool_clean(client)
        assert (await client.get_qr_image("second")).data == second
        assert_pool_clean(client)
    assert [r.instance_name for r in server.requests] == ["first", "second"]
    assert server.connections == 2


@pytest.mark.parametrize(
    "body",
    [
        # aiohttp releases a body it has read to the end by itself: this case alone cannot
        # tell whether the client releases the response.
        pytest.param(b"busy", id="4-byte-body"),
        # Far more than the client reads for an excerpt (64 KiB) or aiohttp buffers: only the
        # client's own release (here: closing the connection) frees it before the wait.
        pytest.param(b"b" * 300 * 1024, id="300-kib-body"),
    ],
)
async def test_failed_response_is_released_before_the_retry_wait(guard: Guard, body: bytes) -> None:
    """When on_retry runs (just before the backoff wait) no connection is checked out."""
    checked_out: list[int] = []
    clients: list[WachatClient] = []

    def on_retry(event: RetryEvent) -> None:
        checked_out.append(sum(1 for _ in _acquired(clients[0])))

    async with RawServer([_status(502, body)]) as server:
        policy = RetryPolicy(zero_wait=True, on_retry=on_retry)
        async with hostile_client(server.base_url, retry=policy) as client:
            clients.append(client)
            with pytest.raises(QRFetchFailedError) as info:
                await client.get_qr_image(NAME)
            assert checked_out == [0, 0, 0], "a failed response was held through a wait"
            assert_pool_clean(client)
    guard.exception(info.value)
    assert len(server.requests) == 4
    # A body read to its end goes back to the pool (a 502 storm reuses one connection); one
    # cut off after the excerpt is closed, never reused.
    assert server.connections == (1 if len(body) < 64 * 1024 else 4)


async def test_client_response_error_never_chained_as_is(guard: Guard) -> None:
    """aiohttp's ClientResponseError repr shows every request header: a borrowed session's own
    secrets too. It is replaced by a sanitised cause even when it does not mention the key."""
    garbage = Send(b"HTTP/1.1 abc nonsense\r\n\r\n")
    async with (
        RawServer([garbage, Close()]) as server,
        aiohttp.ClientSession(headers={"X-Gateway-Pass": "gw-hunter2"}) as session,
    ):
        client = hostile_client(server.base_url, session=session)
        with pytest.raises(WachatConnectionError) as info:
            await client.get_qr_image(NAME)
        await client.aclose()
    guard.exception(info.value)
    assert type(info.value.__cause__).__name__ == "_SanitizedCause"
    for where, text in exception_texts(info.value):
        assert "hunter2" not in text, f"the session's header leaked into {where}"


def _acquired(client: WachatClient) -> Iterator[object]:
    session = client._state.session
    assert session is not None
    assert session.connector is not None
    yield from session.connector._acquired


async def test_deadline_cancels_a_stalled_attempt_cleanly(guard: Guard, tmp_path: Path) -> None:
    """The policy's deadline ends a call stuck on a silent server: typed error, nothing left."""
    (tmp_path / "qr.png").write_bytes(OLD)
    async with (
        RawServer([Send(http_response(200, PNG)[:-30]), Hang()]) as server,
        hostile_client(
            server.base_url, timeout=30.0, retry=RetryPolicy(zero_wait=True, deadline=0.2)
        ) as client,
    ):
        with pytest.raises(WachatTimeoutError, match="deadline") as info:
            await client.save_qr_image(NAME, tmp_path / "qr.png")
        assert_pool_clean(client)
    guard.exception(info.value)
    assert (tmp_path / "qr.png").read_bytes() == OLD
    assert_no_partial_files(tmp_path, allowed=["qr.png"])
