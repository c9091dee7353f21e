"""Hypothesis fuzzing of the parsers that see hostile bytes: PNG validation, error-body excerpts,
redaction, ``Retry-After``, and whole HTTP responses sent by the raw server.

The properties: only the documented exception type ever comes out (``InvalidImageError`` for
PNG checks, ``WachatError`` for a call), and excerpt text is one line, within its limit, free of
control characters and of the key. Runs are derandomized (the same examples every run, no
example database), so this suite cannot be flaky; failures found while writing it are pinned as
explicit ``@example``s or xfail cases.
"""

from __future__ import annotations

import asyncio
import json
import struct
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wachat_async import InvalidImageError, QRImage, RetryPolicy, WachatClient, WachatError
from wachat_async._models import PNG_SIGNATURE, check_png_end, png_dimensions
from wachat_async._redact import excerpt, redact
from wachat_async._transport import parse_retry_after

from ._raw_server import Close, RawServer, RecordedRequest, Send, make_png
from .conftest import KEY, assert_clean_exception, assert_pool_clean, leaked

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=120,
    suppress_health_check=[HealthCheck.too_slow],
)
PNG = make_png(29, 29)
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"

#: Key-like secrets: what API keys are made of (no whitespace, so folding cannot rebuild one).
secrets = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./+=~",
    min_size=12,
    max_size=64,
)


def _ihdr(width: int, height: int, tail: bytes = b"\x08\x00\x00\x00\x00") -> bytes:
    data = struct.pack(">II", width, height) + tail
    chunk = b"IHDR" + data
    return PNG_SIGNATURE + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _replace_byte(index: int, value: int) -> bytes:
    return PNG[:index] + bytes([value]) + PNG[index + 1 :]


def _replace_byte(index: int, value: int) -> bytes:
    return PNG[:index] + bytes([value]) + PNG[index + 1 :]


# -- PNG validation -------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
@example(b"")
@example(PNG_SIGNATURE)
@example(PNG[:32])
def test_png_dimensions_only_raises_invalid_image(data: bytes) -> None:
    """Arbitrary bytes give (width, height) within PNG limits or InvalidImageError, nothing else."""
    try:
        width, height = png_dimensions(data, instance_name="x")
    except InvalidImageError as exc:
        error: InvalidImageError | None = exc
    else:
        error = None
    if error is not None:
        assert error.instance_name == "x"
        assert error.truncated == (0 < len(data) < 33 and PNG_SIGNATURE.startswith(data[:8]))
    else:
        assert 0 < width < 2**31
        assert 0 < height < 2**31
        assert data.startswith(PNG_SIGNATURE)


@FUZZ
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.one_of(
        st.binary(min_size=5, max_size=5),
        st.sampled_from(
            [b"\x08\x00\x00\x00\x00", b"\x01\x03\x00\x00\x01", b"\x10\x06\x00\x00\x00"]
        ),
    ),
)
def test_png_dimensions_accepts_exactly_the_valid_sizes(
    width: int, height: int, tail: bytes
) -> None:
    """A well-formed IHDR is accepted iff both sides are 1..2**31-1 and its five one-byte fields
    are a combination the PNG spec allows, and its size is reported; a bad side is named first."""
    head = _ihdr(width, height, tail)
    sides = 0 < width < 2**31 and 0 < height < 2**31
    depth, colour, compression, filtering, interlace = tail
    allowed = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
    fields = depth in allowed.get(colour, ()) and (compression, filtering, interlace) in {
        (0, 0, 0),
        (0, 0, 1),
    }
    if sides and fields:
        assert png_dimensions(head) == (width, height)
    else:
        with pytest.raises(
            InvalidImageError, match="invalid dimensions" if not sides else "invalid IHDR"
        ):
            png_dimensions(head)


@FUZZ
@given(st.integers(0, 32), st.integers(1, 255))
def test_any_corrupted_header_byte_is_rejected(position: int, flip: int) -> None:
    """Changing any one byte of the 33-byte header (signature, IHDR, CRC) is always detected."""
    head = bytearray(PNG[:33])
    head[position] ^= flip
    with pytest.raises(InvalidImageError):
        png_dimensions(bytes(head))


@FUZZ
@given(st.binary(max_size=64))
def test_check_png_end_only_raises_truncated(data: bytes) -> None:
    """check_png_end accepts exactly the bytes ending in IEND; otherwise InvalidImageError."""
    if data.endswith(_IEND):
        check_png_end(data)
    else:
        with pytest.raises(InvalidImageError) as info:
            check_png_end(data)
        assert info.value.truncated


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(lambda cut: PNG[:cut], st.integers(0, len(PNG))),
        st.builds(lambda tail: PNG + tail, st.binary(max_size=20)),
        st.builds(_replace_byte, st.integers(0, len(PNG) - 1), st.integers(0, 255)),
    )
)
@example(PNG)
def test_qrimage_from_png_only_raises_invalid_image(data: bytes) -> None:
    """from_png on arbitrary, cut, extended or bit-flipped PNGs: a QRImage or InvalidImageError."""
    try:
        image = QRImage.from_png(data, instance_name="x")
    except InvalidImageError:
        assert data != PNG
    else:
        assert image.data == data
        assert data.startswith(PNG_SIGNATURE)
        assert data.endswith(_IEND)
        assert (image.width, image.height) == png_dimensions(data)
        assert "\\x" not in repr(image)


# -- excerpts and redaction -----------------------------------------------------------------


def _forms(secret: str) -> list[str]:
    return [secret, quote(secret, safe=""), quote_plus(secret)]


#: Anything, plus a good share of what breaks log lines and encoders: controls, line and
#: paragraph separators, format characters (bidi overrides) and lone surrogates.
_hostile_chars = st.characters() | st.characters(categories=["Cc", "Cf", "Cs", "Zl", "Zp"])


@st.composite
def text_with_secret(draw: st.DrawFn) -> tuple[str, str]:
    """(text, secret): arbitrary text with the secret, or an encoded form, spliced in."""
    secret = draw(secrets)
    parts = draw(st.lists(st.text(_hostile_chars, max_size=80), min_size=1, max_size=5))
    forms = [*_forms(secret), f"Bearer {secret}", f"apiKey={quote(secret, safe='')}"]
    spliced = [p + (draw(st.sampled_from(forms)) if draw(st.booleans()) else "") for p in parts]
    return "".join(spliced), secret


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


@FUZZ
@given(text_with_secret(), st.integers(1, 600))
@example(("x" * 490 + "SECRETSECRETSECRET" + "y" * 50, "SECRETSECRETSECRET"), 500)
@example(("\u2028line\x85two\x1bthree\r\nfour", "SECRETSECRETSECRET"), 500)
def test_excerpt_is_one_bounded_clean_line(sample: tuple[str, str], limit: int) -> None:
    """excerpt: at most *limit* characters, no control character, no line break, no secret,
    always writable as UTF-8."""
    text, secret = sample
    out = excerpt(text, [secret], limit=limit)
    out.encode("utf-8")
    assert len(out) <= limit
    assert not _has_control(out)
    assert len(out.splitlines()) <= 1
    for form in _forms(secret):
        assert form not in out
    assert out == out.strip()


@FUZZ
@given(text_with_secret())
def test_redact_removes_every_form_of_the_secret(sample: tuple[str, str]) -> None:
    """redact leaves no plain or URL-encoded copy of the secret, and redacting twice is stable."""
    text, secret = sample
    out = redact(text, [secret])
    for form in _forms(secret):
        assert form not in out


def test_redact_is_idempotent() -> None:
    """Redacting already-redacted text changes nothing."""
    once = redact(f"Authorization: Bearer {KEY}", [KEY])
    assert once == "Authorization: Bearer [REDACTED]"
    assert redact(once, [KEY]) == once


def test_excerpt_output_is_always_utf8_encodable() -> None:
    """A lone surrogate in untrusted text does not survive into an excerpt."""
    out = excerpt("https://evil.example/\udcff\udcfe")
    assert out.encode("utf-8").startswith(b"https://evil.example/")


def test_redact_is_case_insensitive() -> None:
    """The key echoed with lower-case percent-escapes or in another case is still redacted."""
    assert leaked(redact(quote(KEY, safe="").lower(), [KEY])) is None
    assert leaked(redact(KEY.upper(), [KEY])) is None


# -- Retry-After ----------------------------------------------------------------------------

_NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _check_retry_after(value: str) -> None:
    seconds = parse_retry_after(value, now=_NOW)
    assert seconds is None or seconds >= 0  # inf (too big to represent) counts as huge


@FUZZ
@given(
    st.one_of(
        st.text(alphabet="0123456789.- +eE", max_size=12),
        st.from_regex(r"\A[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT\Z"),
        st.text(alphabet=st.characters(codec="ascii"), max_size=40),
    )
)
@example("-5")
@example("1e400")
@example("Wed, 21 Oct 2015 07:28:00 GMT")
@example("Fri, 31 Dec 9999 23:59:59 GMT")
@example("Mon, 01 Jan 0001 00:00:00 +2359")
def test_parse_retry_after_ascii_never_raises(value: str) -> None:
    """Any ASCII Retry-After gives None or a number of seconds >= 0, never an exception."""
    _check_retry_after(value)


@pytest.mark.parametrize(
    "value", ["\u00b2", "\u2460", "1\u00b9"], ids=["superscript", "circled", "mixed"]
)
def test_parse_retry_after_non_ascii_digits(value: str) -> None:
    """A Retry-After of non-ASCII 'digits' (a header is latin-1/UTF-8 text) is just unparsable."""
    _check_retry_after(value)


def test_parse_retry_after_overflowing_digits_is_huge() -> None:
    """400 digits of delay is at least as huge as 86400: never a retry."""
    seconds = parse_retry_after("9" * 400)
    assert seconds is not None
    assert seconds > RetryPolicy().max_retry_after


# -- whole responses from the raw server ----------------------------------------------------


@dataclass
class _Harness:
    loop: asyncio.AbstractEventLoop
    server: RawServer
    client: WachatClient
    responses: dict[str, bytes]


@pytest.fixture(scope="module")
def harness() -> Iterator[_Harness]:
    """One raw server and one client on a private event loop, shared by every example."""
    responses: dict[str, bytes] = {}

    def script(request: RecordedRequest) -> list[Any]:
        return [Send(responses.get(request.instance_name or "", b"")), Close()]

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(RawServer(script).__aenter__())
    client = WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        retry=RetryPolicy.disabled(),
        timeout=5.0,
        max_image_bytes=4096,
    )
    loop.run_until_complete(client.__aenter__())
    try:
        yield _Harness(loop, server, client, responses)
    finally:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(server.close())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


_header_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_body = st.one_of(
    st.binary(max_size=600),
    st.just(PNG),
    st.builds(lambda cut: PNG[:cut], st.integers(0, len(PNG))),
    st.builds(
        lambda msg: json.dumps({"message": msg}).encode(),
        st.one_of(st.text(max_size=100), st.just(f"echo {KEY}")),
    ),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(1, 200)),
)


_statuses = st.sampled_from([200, 200, 200, 301, 400, 401, 404, 500, 502, 504]) | st.integers(
    100, 999
)
_content_types = st.sampled_from(["image/png", "text/html", "application/json"]) | _header_value
_lengths = st.sampled_from(["-1", "abc", "99999999999"]) | st.integers(0, 2000).map(str)
_EXTRA_HEADERS = ["Retry-After", "Location", "Transfer-Encoding", "Content-Encoding", "X-Echo"]


_statuses = st.sampled_from([200, 200, 301, 400, 401, 404, 500, 502, 504]) | st.integers(100, 999)
# Not the key as Content-Type: that leak is a known bug (test_faults.py, echo-content-type).
_content_types = st.sampled_from(["image/png", "text/html", "application/json"]) | _header_value
_lengths = st.sampled_from(["-1", "abc", "99999999999"]) | st.integers(0, 2000).map(str)
_EXTRA_HEADERS = ["Retry-After", "Location", "Transfer-Encoding", "Content-Encoding", "X-Echo"]


@st.composite
def http_responses(draw: st.DrawFn) -> bytes:
    """A plausible-to-garbled HTTP/1.1 response: any status, lying headers, any body."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    status = draw(_statuses)
    body = draw(_body)
    headers = [("Content-Type", draw(_content_types))]
    length = draw(st.sampled_from(["true", "none", "lie"]))
    if length == "true":
        headers.append(("Content-Length", str(len(body))))
    elif length == "lie":
        headers.append(("Content-Length", draw(_lengths)))
    for name in draw(st.lists(st.sampled_from(_EXTRA_HEADERS), max_size=3)):
        headers.append((name, draw(_header_value | st.just(KEY))))
    head = f"HTTP/1.1 {status} {draw(_header_value)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1", "replace") + b"\r\n" + body


@settings(FUZZ, max_examples=100)
@given(http_responses())
def test_any_response_gives_a_qrimage_or_a_clean_wachat_error(
    harness: _Harness, response: bytes
) -> None:
    """Whatever bytes the server sends: a QRImage or a WachatError, one-line, key-free."""
    name = f"fuzz-{len(harness.responses)}"
    harness.responses[name] = response

    async def call() -> object:
        try:
            return await harness.client.get_qr_image(name)
        except WachatError as exc:
            return exc

    outcome = harness.loop.run_until_complete(call())
    assert_pool_clean(harness.client)
    if isinstance(outcome, QRImage):
        assert outcome.data == PNG
    else:
        assert isinstance(outcome, WachatError)
        assert_clean_exception(outcome)
        assert "\n" not in str(outcome)
