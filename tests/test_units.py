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
    ConfigurationError,
    DeadlineExceededError,
    InstanceState,
    InvalidImageError,
    QRFetchFailedError,
    QRImage,
    QRResult,
    UnexpectedStatusError,
    WachatClient,
    WachatError,
    WachatTimeoutError,
)
from wachat_async._errors import status_error
from wachat_async._models import check_png_end, png_dimensions
from wachat_async._redact import REDACTED, excerpt, redact, redact_message
from wachat_async._validate import is_loopback_host

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


def test_timeout_errors_are_builtin_timeout_errors() -> None:
    """Both timeouts are TimeoutErrors; only the policy's deadline is a DeadlineExceededError."""
    attempt = WachatTimeoutError("request timed out", instance_name=NAME)
    deadline = DeadlineExceededError("deadline of 2 s exceeded", deadline=2.0, attempts=3)
    assert isinstance(attempt, TimeoutError)
    assert isinstance(deadline, TimeoutError)
    assert isinstance(deadline, WachatTimeoutError)
    assert not isinstance(attempt, DeadlineExceededError)
    assert (deadline.deadline, deadline.attempts, str(deadline)) == (
        2.0,
        3,
        "deadline of 2 s exceeded",
    )
    with pytest.raises(TimeoutError):
        raise attempt


# -- loopback -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        pytest.param("127.0.0.1", True, id="ipv4-loopback"),
        pytest.param("127.1.2.3", True, id="ipv4-loopback-net"),
        pytest.param("127.255.255.254", True, id="ipv4-loopback-top"),
        pytest.param("[::1]", True, id="ipv6-bracketed"),
        pytest.param("::1", True, id="ipv6-bare"),
        pytest.param("0:0:0:0:0:0:0:1", True, id="ipv6-long-form"),
        pytest.param("::ffff:127.0.0.1", True, id="ipv4-mapped-loopback"),
        pytest.param("[::ffff:7f00:1]", True, id="ipv4-mapped-loopback-hex"),
        pytest.param("localhost", True, id="localhost"),
        pytest.param("LOCALHOST", True, id="localhost-upper-case"),
        pytest.param("LocalHost", True, id="localhost-mixed-case"),
        pytest.param("localhost.", False, id="localhost-trailing-dot"),
        pytest.param("dev.localhost", False, id="subdomain-of-localhost"),
        pytest.param("localhost.example.com", False, id="localhost-prefix"),
        pytest.param("127.0.0.1.nip.io", False, id="dns-name-with-ip-prefix"),
        pytest.param("127.1", False, id="ipv4-shorthand"),
        pytest.param("::ffff:10.0.0.1", False, id="ipv4-mapped-remote"),
        pytest.param("0.0.0.0", False, id="ipv4-unspecified"),  # noqa: S104
        pytest.param("[::]", False, id="ipv6-unspecified"),
        pytest.param("128.0.0.1", False, id="just-outside-127/8"),
        pytest.param("10.0.0.1", False, id="private-ipv4"),
        pytest.param("[::1", False, id="unbalanced-bracket"),
        pytest.param("", False, id="empty"),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    """Only 127.0.0.0/8, ::1 (also IPv4-mapped) and the literal name localhost are loopback."""
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        pytest.param("127.0.0.1", True, id="ipv4"),
        pytest.param("[::1]", True, id="ipv6"),
        pytest.param("LOCALHOST", True, id="localhost-upper-case"),
        pytest.param("dev.localhost", False, id="subdomain-of-localhost"),
        pytest.param("localhost.", False, id="localhost-trailing-dot"),
        pytest.param("0.0.0.0", False, id="unspecified"),  # noqa: S104
    ],
)
def test_client_and_url_builder_share_the_loopback_rule(host: str, loopback: bool) -> None:
    """http:// to a host is refused by the client exactly when the URL builder warns that
    the key travels in clear text."""
    import warnings

    base_url = f"http://{host}:8080/api/v1"
    if loopback:
        WachatClient(api_key=KEY, base_url=base_url)  # no session yet: nothing to close
    else:
        with pytest.raises(ConfigurationError, match="Refusing plain http://"):
            WachatClient(api_key=KEY, base_url=base_url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wachat_async.build_qr_image_url(NAME, api_key=KEY, base_url=base_url, expose_api_key=True)
    assert ("unencrypted" in str(caught[0].message)) is not loopback


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


@pytest.mark.parametrize(
    "echoed",
    [
        pytest.param("a b/c", id="raw"),
        pytest.param("a%20b%2Fc", id="percent-encoded"),
        pytest.param("a+b%2Fc", id="form-encoded"),
        pytest.param("A%20B%2fC", id="percent-encoded-other-case"),
    ],
)
def test_redact_catches_each_encoding_of_a_key_with_a_space(echoed: str) -> None:
    """quote() and quote_plus() differ on a space: both forms are hidden."""
    assert redact(f"x={echoed};", ["a b/c"]) == f"x={REDACTED};"


def test_redact_prefers_the_longest_secret() -> None:
    """When one secret starts another, the longer one is hidden whole (no tail left over)."""
    assert redact("token abcdef.", ["abc", "abcdef"]) == f"token {REDACTED}."


def test_excerpt_rejects_a_limit_below_one() -> None:
    """A zero limit is a bug in the caller, not an empty excerpt."""
    with pytest.raises(ValueError, match="limit"):
        excerpt("text", limit=0)


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


@pytest.mark.parametrize("start", range(40, 49), ids=lambda n: f"key-at-{n}")
def test_excerpt_redacts_before_cutting(start: int) -> None:
    """A key straddling the cut shows none of its characters: redaction runs first."""
    out = excerpt("x" * start + KEY + " trailing text", [KEY], limit=50)
    assert len(out) == 50
    visible = 49 - start  # characters of the key that would survive a cut made first
    assert KEY[:visible] not in out
    assert "sk-" not in out


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        pytest.param("bad URL: https://me:pw@h.example/v1", "me:pw", id="userinfo"),
        pytest.param("bad URL: https://u:pa/ss@h.example/v1", "pa/ss", id="userinfo-with-slash"),
        pytest.param("bad URL: https://u:pa#ss@h.example/v1", "pa#ss", id="userinfo-with-hash"),
        pytest.param("bad URL: https://u:pa?ss@h.example/v1", "pa?ss", id="userinfo-with-query"),
        pytest.param("bad URL: https://u:pa?s#s@h.example/v1", "pa?s", id="userinfo-with-both"),
        pytest.param("bad URL: https://h.example/v1?apiKey=s3cr3t&x=1", "s3cr3t", id="query"),
        pytest.param("bad URL: https://h.example/v1?q=s3cr3t", "s3cr3t", id="any-query"),
        pytest.param("bad URL: HTTP://h.example/v1#s3cr3t", "s3cr3t", id="fragment"),
        pytest.param(f"host {KEY} refused", KEY, id="known-key"),
        pytest.param("x " + KEY.replace("-", "%2D"), KEY, id="known-key-encoded"),
        pytest.param("line one\r\nforged line", "\n", id="control-characters"),
    ],
)
def test_redact_message_hides_url_credentials_queries_and_the_key(text: str, hidden: str) -> None:
    """The configuration-error redaction point hides user info, query, fragment and the key."""
    out = redact_message(text, [KEY])
    assert hidden not in out
    assert "bad URL" in out or "refused" in out or "line one" in out or out.startswith("x ")


def test_redact_message_keeps_what_is_not_secret() -> None:
    """Scheme, host and path stay readable; only the secret parts become [REDACTED]."""
    assert redact_message("got https://u:p@h.example:8443/api/v1?k=v#f, see docs", [KEY]) == (
        f"got https://{REDACTED}@h.example:8443/api/v1?{REDACTED} see docs"
    )


def test_excerpt_ignores_empty_secrets() -> None:
    """An empty secret does not blank the whole text."""
    assert excerpt("hello", ["", KEY]) == "hello"


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        pytest.param("5", "got a str", id="str"),
        pytest.param(b"5", "got a bytes", id="bytes"),
        pytest.param(True, "got a bool", id="bool"),
        pytest.param([5], "got a list", id="list"),
        pytest.param(0, "got 0", id="zero"),
        pytest.param(-1.5, "got -1.5", id="negative"),
        pytest.param(float("inf"), "got inf", id="infinite"),
    ],
)
def test_bad_timeouts_are_named_by_type_or_number(timeout: object, message: str) -> None:
    """A bad timeout names its type (never its repr) or, for a number, its value."""
    with pytest.raises(ConfigurationError, match=message):
        WachatClient(api_key=KEY, timeout=timeout)  # type: ignore[arg-type]


def test_configuration_error_redacts_the_secrets_it_is_given() -> None:
    """ConfigurationError itself is the redaction point: a message quoting the key is cleaned."""
    error = ConfigurationError(f"cannot use host {KEY}.example", secrets=[KEY])
    assert_no_key(*exception_texts(error), *error.args)
    assert str(error) == f"cannot use host {REDACTED}.example"


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
