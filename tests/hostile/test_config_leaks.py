"""A key planted in every argument: no configuration error may carry it.

Each case builds a :class:`WachatClient`, calls :func:`build_qr_image_url`, ``qr_image_url``,
:class:`RetryPolicy` or :class:`RetryBudget` with the hostile KEY (characters that change under
URL-encoding) hidden in one argument, raw or encoded, and asserts that the error raised holds
no form of the key (``LEAK_FORMS``) in its str, repr, args, notes or attributes, in anything
chained to it (``__cause__`` and ``__context__``, even when suppressed) or in its formatted
traceback. Configuration errors pass one redaction point
(:func:`wachat_async._redact.redact_message`); the URL checks in ``_urls.py`` never echo more
than a URL's scheme, host and port.
"""

from __future__ import annotations

import warnings
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from wachat_async import (
    ConfigurationError,
    RetryBudget,
    RetryPolicy,
    WachatClient,
    build_qr_image_url,
)

from .conftest import KEY, NAME, assert_clean_exception, exception_chain

ENCODED = quote(KEY, safe="")
HOST = "https://app.wachat.net"

#: base_url values that hold the key and can never be a usable base URL.
BAD_BASE_URLS = [
    pytest.param(f"{HOST}/api/v1?apiKey={KEY}", id="query-raw"),
    pytest.param(f"{HOST}/api/v1?apiKey={ENCODED}", id="query-percent-encoded"),
    pytest.param(f"{HOST}/api/v1?apiKey={quote_plus(KEY)}", id="query-plus-encoded"),
    pytest.param(f"{HOST}/api/v1?apiKey={ENCODED.lower()}", id="query-lower-case-hex"),
    pytest.param(f"https://{ENCODED}@app.wachat.net/api/v1", id="userinfo-user"),
    pytest.param(f"https://u:{ENCODED}@app.wachat.net/api/v1", id="userinfo-password"),
    pytest.param(f"https://u:{KEY}@app.wachat.net/api/v1", id="userinfo-password-raw"),
    pytest.param(f"{HOST}/api/v1#{KEY}", id="fragment"),
    pytest.param(f"{HOST}/api/v1#apiKey={ENCODED}", id="fragment-encoded"),
    pytest.param(f"ftp://app.wachat.net/{KEY}", id="wrong-scheme"),
    pytest.param(f"https:///{KEY}", id="no-host"),
    pytest.param(f"https://[{KEY}]/api/v1", id="unparsable"),
    pytest.param(KEY, id="the-key-itself"),
    pytest.param(f"http://example.com/api/v1?apiKey={KEY}", id="plain-http-remote-with-query"),
]

#: base_url values that parse as base URLs but carry the key: the client refuses them too.
KEYED_BASE_URLS = [
    pytest.param(f"https://{KEY}@app.wachat.net/api/v1", id="userinfo-raw-parsed-as-path"),
    pytest.param(f"{HOST}/{KEY}/api/v1", id="path-raw"),
    pytest.param(f"{HOST}/{ENCODED}/api/v1", id="path-percent-encoded"),
    pytest.param(f"http://127.0.0.1:8080/{KEY}", id="loopback-path"),
]


class _LeakyRepr:
    """An argument whose repr is the key, as a settings object's might be."""

    def __repr__(self) -> str:
        return KEY

    __str__ = __repr__


def _assert_clean(exc: BaseException) -> None:
    """No form of KEY in *exc* anywhere, chained (even suppressed) context included; and no
    implicit context at all: the error a check raised inside is not chained, so it cannot
    carry a value the check quoted (nor show in the traceback)."""
    assert_clean_exception(exc)
    for link in exception_chain(exc):
        assert not link.__suppress_context__ or link.__context__ is None, "hidden context"
        assert link.__context__ is None or link.__context__ is link.__cause__, "implicit context"


@pytest.mark.parametrize("base_url", [*BAD_BASE_URLS, *KEYED_BASE_URLS])
def test_client_base_url_holding_the_key(base_url: str) -> None:
    """A base_url with the key in any part is refused without quoting it."""
    with pytest.raises(ConfigurationError) as info:
        WachatClient(api_key=KEY, base_url=base_url)
    _assert_clean(info.value)


@pytest.mark.parametrize("base_url", [*BAD_BASE_URLS, *KEYED_BASE_URLS])
def test_env_base_url_holding_the_key(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """WACHAT_BASE_URL (with the key from WACHAT_API_KEY) gets the same treatment."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    monkeypatch.setenv("WACHAT_BASE_URL", base_url)
    with pytest.raises(ConfigurationError) as info:
        WachatClient()
    _assert_clean(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"user_agent": f"bot/1 {KEY}\r\nX-Injected: 1"}, id="user-agent-crlf"),
        pytest.param({"user_agent": f"{KEY}\x00"}, id="user-agent-nul"),
        pytest.param({"user_agent": KEY.encode()}, id="user-agent-bytes"),
        pytest.param({"user_agent": "   "}, id="user-agent-blank"),
        pytest.param({"timeout": KEY}, id="timeout-str"),
        pytest.param({"timeout": _LeakyRepr()}, id="timeout-leaky-repr"),
        pytest.param({"timeout": float("nan")}, id="timeout-nan"),
        pytest.param({"retry": KEY}, id="retry-str"),
        pytest.param({"retry": _LeakyRepr()}, id="retry-leaky-repr"),
        pytest.param({"retry_budget": KEY}, id="retry-budget-str"),
        pytest.param({"max_connections": KEY}, id="max-connections-str"),
        pytest.param({"max_image_bytes": KEY}, id="max-image-bytes-str"),
        pytest.param({"allow_insecure_http": KEY}, id="allow-insecure-http-str"),
        pytest.param({"api_key": f"{KEY}\n"}, id="api-key-with-newline"),
        pytest.param({"api_key": f" {KEY}"}, id="api-key-with-space"),
        pytest.param({"api_key": KEY.encode()}, id="api-key-bytes"),
    ],
)
def test_client_argument_holding_the_key(kwargs: dict[str, Any]) -> None:
    """Every other argument: refused, by type or by rule, without quoting the value."""
    kwargs.setdefault("api_key", KEY)
    with pytest.raises(ConfigurationError) as info:
        WachatClient(**kwargs)
    _assert_clean(info.value)


@pytest.mark.parametrize(
    "base_url",
    [
        pytest.param("https://me:hunter2@app.wachat.net/api/v1", id="userinfo"),
        pytest.param("https://app.wachat.net/api/v1?token=hunter2", id="query"),
        pytest.param("https://app.wachat.net/api/v1#hunter2", id="fragment"),
        pytest.param("ftp://app.wachat.net/hunter2", id="path-of-wrong-scheme"),
    ],
)
def test_url_secrets_other_than_the_key_are_not_echoed(base_url: str) -> None:
    """User info, query, fragment and path are never quoted, whatever they hold."""
    with pytest.raises(ConfigurationError) as info:
        WachatClient(api_key=KEY, base_url=base_url)
    assert "app.wachat.net" in str(info.value)
    for link in exception_chain(info.value):
        assert "hunter2" not in f"{link!s} {link!r} {link.args!r}"


@pytest.mark.parametrize("base_url", BAD_BASE_URLS)
@pytest.mark.parametrize(
    "api_key", [pytest.param(KEY, id="key-given"), pytest.param(None, id="no-key")]
)
@pytest.mark.parametrize(
    "expose", [pytest.param(True, id="exposed"), pytest.param(False, id="not-exposed")]
)
def test_url_builder_base_url_holding_the_key(
    base_url: str, api_key: str | None, expose: bool
) -> None:
    """build_qr_image_url refuses the same base URLs without quoting the key, known or not."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may be emitted before the refusal either
        with pytest.raises(ValueError, match="base_url") as info:
            build_qr_image_url(NAME, api_key=api_key, base_url=base_url, expose_api_key=expose)
    _assert_clean(info.value)


def test_client_qr_image_url_flag_holding_the_key() -> None:
    """qr_image_url(expose_api_key=<not a bool>) names the type, not the value."""
    client = WachatClient(api_key=KEY, base_url=HOST + "/api/v1")
    with pytest.raises(TypeError) as info:
        client.qr_image_url(NAME, expose_api_key=KEY)  # type: ignore[arg-type]
    _assert_clean(info.value)


@pytest.mark.parametrize(
    "field",
    [
        "max_attempts",
        "initial_wait",
        "max_wait",
        "deadline",
        "max_retry_after",
        "respect_retry_after",
        "retry_transport_errors",
        "zero_wait",
        "on_retry",
        "statuses",
    ],
)
@pytest.mark.parametrize(
    "value",
    [pytest.param(KEY, id="str"), pytest.param(_LeakyRepr(), id="leaky-repr")],
)
def test_retry_policy_field_holding_the_key(field: str, value: object) -> None:
    """RetryPolicy validation names the field and the value's type, never the value."""
    with pytest.raises((TypeError, ValueError)) as info:
        RetryPolicy(**{field: value})  # type: ignore[arg-type]
    assert field in str(info.value) or "statuses" in str(info.value)
    _assert_clean(info.value)


def test_retry_policy_status_holding_the_key() -> None:
    """A non-int inside statuses is named by type."""
    with pytest.raises((TypeError, ValueError)) as info:
        RetryPolicy(statuses=[502, KEY])  # type: ignore[list-item]
    _assert_clean(info.value)


@pytest.mark.parametrize("field", ["ratio", "min_retries_per_second", "ttl"])
def test_retry_budget_field_holding_the_key(field: str) -> None:
    """RetryBudget validation names the field and the value's type, never the value."""
    with pytest.raises((TypeError, ValueError)) as info:
        RetryBudget(**{field: KEY})  # type: ignore[arg-type]
    _assert_clean(info.value)
