"""Fast unit tests: models, PNG validation, errors, redaction, exports, and aioresponses mocks."""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

import wachat_async
from wachat_async import (
    APIStatusError,
    InstanceState,
    InvalidImageError,
    QRFetchFailedError,
    QRImage,
    QRResult,
    UnexpectedStatusError,
    WachatClient,
    WachatError,
)
from wachat_async._errors import status_error
from wachat_async._models import check_png_end, png_dimensions
from wachat_async._redact import REDACTED, excerpt, redact

from .conftest import KEY, NAME, assert_no_key, exception_texts

SIG = b"\x89PNG\r\n\x1a\n"


def chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png(width: int = 3, height: int = 2) -> bytes:
    """A minimal, valid PNG of the given size (8-bit greyscale)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\xff" * width for _ in range(height))
    return SIG + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# -- PNG validation -----------------------------------------------------------------------


def test_png_dimensions_reads_ihdr() -> None:
    """Width and height come from the IHDR chunk."""
    assert png_dimensions(png(7, 5)) == (7, 5)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"GIF89a" + b"\x00" * 40, "signature", id="gif"),
        pytest.param(b"GIF8", "signature", id="short-non-png"),
        pytest.param(SIG + b"\x00" * 5, "truncated", id="short-png-start"),
        pytest.param(SIG + chunk(b"IDAT", b"x" * 13) + b"\x00" * 10, "IHDR", id="first-not-ihdr"),
        pytest.param(png()[:29] + b"\x00\x00\x00\x00" + png()[33:], "checksum", id="bad-crc"),
        pytest.param(
            SIG + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 5, 8, 0, 0, 0, 0)),
            "dimensions",
            id="zero-width",
        ),
        pytest.param(
            SIG + chunk(b"IHDR", struct.pack(">IIBBBBB", 2**31, 5, 8, 0, 0, 0, 0)),
            "dimensions",
            id="oversized-width",
        ),
    ],
)
def test_png_dimensions_rejects_non_pngs(data: bytes, message: str) -> None:
    """Anything that is not the start of a PNG raises InvalidImageError saying why."""
    with pytest.raises(InvalidImageError, match=message):
        png_dimensions(data, instance_name=NAME)


def test_check_png_end_needs_iend() -> None:
    """A PNG without its IEND trailer is truncated."""
    check_png_end(png())
    with pytest.raises(InvalidImageError) as info:
        check_png_end(png()[:-1])
    assert info.value.truncated


# -- models -------------------------------------------------------------------------------


def test_qrimage_from_png_and_helpers(tmp_path: Path) -> None:
    """from_png validates; sha256, data URI, _repr_png_ and save all use the same bytes."""
    data = png(4, 4)
    qr = QRImage.from_png(data, instance_name=NAME)
    assert (qr.width, qr.height) == (4, 4)
    assert qr.sha256 == hashlib.sha256(data).hexdigest()
    assert qr.to_data_uri() == "data:image/png;base64," + base64.b64encode(data).decode()
    assert qr._repr_png_() == data
    target = qr.save(tmp_path / "a.png")
    assert target.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_qrimage_save_failure_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the rename fails, the temp file is removed and the error propagates."""
    qr = QRImage.from_png(png(), instance_name=NAME)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        qr.save(tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_qrimage_is_frozen_and_repr_has_no_bytes() -> None:
    """QRImage cannot be mutated and its repr is a summary."""
    qr = QRImage.from_png(png(), instance_name=NAME)
    with pytest.raises(AttributeError):
        qr.width = 9  # type: ignore[misc]
    text = repr(qr)
    assert text.startswith(f"QRImage(instance_name={NAME!r}, 3x2 PNG, ")
    assert "IHDR" not in text


def test_qrimage_rejects_invalid_bytes() -> None:
    """from_png refuses bytes that are not a complete PNG."""
    with pytest.raises(InvalidImageError):
        QRImage.from_png(png()[:-12], instance_name=NAME)


def test_qrresult_needs_exactly_one_of_image_and_error() -> None:
    """A result has an image or an error, never both or neither."""
    qr = QRImage.from_png(png(), instance_name=NAME)
    error = WachatError("boom", instance_name=NAME)
    assert QRResult(instance_name=NAME, image=qr).ok
    assert not QRResult(instance_name=NAME, error=error).ok
    with pytest.raises(ValueError, match="exactly one"):
        QRResult(instance_name=NAME)
    with pytest.raises(ValueError, match="exactly one"):
        QRResult(instance_name=NAME, image=qr, error=error)


@pytest.mark.parametrize(
    ("state", "connected"),
    [("open", True), ("connecting", False), ("close", False), ("OPEN", False), ("new", False)],
)
def test_instance_state_is_connected_only_when_open(state: str, connected: bool) -> None:
    """Only the exact state "open" counts as connected; others are kept as they are."""
    assert InstanceState(instance_name=NAME, state=state).is_connected is connected


# -- errors -------------------------------------------------------------------------------


def test_status_error_for_unknown_status() -> None:
    """An undocumented status maps to UnexpectedStatusError keeping the status."""
    error = status_error(599, instance_name=NAME, body="teapot")
    assert type(error) is UnexpectedStatusError
    assert error.status == 599
    assert str(error).startswith("599 Unknown Status: ")
    assert "teapot" in str(error)


def test_status_error_carries_retry_after_and_attempts() -> None:
    """Status errors keep Retry-After and attempts; repr names the class."""
    error = status_error(502, retry_after=3.0)
    assert isinstance(error, QRFetchFailedError)
    assert error.retry_after == 3.0
    assert error.attempts == 1
    assert repr(error).startswith("QRFetchFailedError(")
    assert "instance" not in str(error)


def test_error_classes_pin_their_status() -> None:
    """Each APIStatusError subclass can be raised bare and knows its status."""
    for cls in APIStatusError.__subclasses__():
        if cls is not UnexpectedStatusError:
            assert cls().status == cls.status > 0


def test_every_exported_error_is_a_wachat_error() -> None:
    """All exception classes exported by the package derive from WachatError."""
    for name in wachat_async.__all__:
        obj = getattr(wachat_async, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, WachatError) or issubclass(obj, Warning), name


# -- redaction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"key is {KEY}", id="plain"),
        pytest.param("key%3D" + KEY.replace("-", "%2D"), id="percent-encoded-known-key"),
        pytest.param("GET /x?apiKey=abc123&instanceName=y", id="query-param"),
        pytest.param("Authorization: Bearer abc.def", id="bearer"),
        pytest.param('{"api_key": "zzz"}', id="json-field"),
    ],
)
def test_redact_hides_known_and_generic_credentials(text: str) -> None:
    """Known keys (and encodings) and apiKey=/Bearer credentials are replaced."""
    out = redact(text, [KEY])
    assert KEY not in out
    assert "abc123" not in out
    assert "abc.def" not in out
    assert "zzz" not in out


def test_redact_handles_url_encoded_key() -> None:
    """A key with reserved characters is caught in its percent-encoded form."""
    key = "a/b+c=d"
    assert redact("x=a%2Fb%2Bc%3Dd;", [key]) == f"x={REDACTED};"


def test_excerpt_is_one_redacted_line_within_limit() -> None:
    """excerpt folds control characters and white space and cuts with an ellipsis."""
    text = f"line1\r\nline2\x00\x1b[31m {KEY} " + "y" * 1000
    out = excerpt(text, [KEY], limit=50)
    assert len(out) == 50
    assert out.endswith("…")
    assert not re.search(r"[\x00-\x1f]", out)
    assert KEY not in out


def test_excerpt_ignores_empty_secrets() -> None:
    """An empty secret does not blank the whole text."""
    assert excerpt("hello", ["", KEY]) == "hello"


# -- exports ------------------------------------------------------------------------------


def test_all_is_exactly_the_public_surface() -> None:
    """__all__ lists every public name in the package namespace, and nothing else."""
    public = {n for n in vars(wachat_async) if not n.startswith("_")} - {
        # submodules imported as a side effect of the re-exports
        name
        for name, value in vars(wachat_async).items()
        if type(value).__name__ == "module"
    }
    assert set(wachat_async.__all__) - {"__version__"} == public


def test_version_is_the_installed_metadata() -> None:
    """__version__ comes from the installed distribution."""
    from importlib.metadata import version

    assert wachat_async.__version__ == version("wachat-async")


# -- aioresponses (fast, no sockets) ------------------------------------------------------


class MockResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without aiohttp 3.14's stream_writer argument."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


QR_URL = re.compile(r"^https://app\.wachat\.net/api/v1/instance/qr/image\?.*$")


async def test_mocked_success_sends_bearer_header() -> None:
    """With a mocked transport the client sends the Bearer header and parses the PNG."""
    with aioresponses() as mocked:
        mocked.get(QR_URL, body=png(), content_type="image/png", response_class=MockResponse)
        async with WachatClient(api_key=KEY) as client:
            qr = await client.get_qr_image(NAME)
        ((_method, url), calls) = next(iter(mocked.requests.items()))
    assert (qr.width, qr.height) == (3, 2)
    assert url.query["instanceName"] == NAME
    assert calls[0].kwargs["headers"]["Authorization"] == f"Bearer {KEY}"
    assert calls[0].kwargs["allow_redirects"] is False


async def test_mocked_redirect_is_not_followed() -> None:
    """A 302 is an UnexpectedStatusError naming the (redacted) target, not followed."""
    target = f"https://evil.example/steal?apiKey={KEY}"
    with aioresponses() as mocked:
        mocked.get(QR_URL, status=302, headers={"Location": target}, response_class=MockResponse)
        async with WachatClient(api_key=KEY) as client:
            with pytest.raises(UnexpectedStatusError) as info:
                await client.get_qr_image(NAME)
    assert info.value.status == 302
    assert "evil.example" in info.value.body
    assert_no_key(*exception_texts(info.value))


async def test_mocked_json_error_prefers_message_then_error() -> None:
    """The body excerpt is the JSON message, else the error field."""
    with aioresponses() as mocked:
        mocked.get(
            QR_URL, status=502, payload={"error": "Upstream down"}, response_class=MockResponse
        )
        async with WachatClient(api_key=KEY, retry=wachat_async.RetryPolicy.disabled()) as c:
            with pytest.raises(QRFetchFailedError) as info:
                await c.get_qr_image(NAME)
    assert info.value.body == "Upstream down"


async def test_mocked_wrong_content_type_quotes_the_body() -> None:
    """A text/html 200 is an InvalidImageError that quotes a short body excerpt."""
    with aioresponses() as mocked:
        mocked.get(
            QR_URL,
            body="<b>Sign in to Wi-Fi</b>",
            content_type="text/html",
            response_class=MockResponse,
        )
        async with WachatClient(api_key=KEY) as client:
            with pytest.raises(InvalidImageError, match="text/html: <b>Sign in") as info:
                await client.get_qr_image(NAME)
    assert info.value.content_type == "text/html"
