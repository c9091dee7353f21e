"""URLs for ``GET /instance/qr/image`` and the ``<img>`` tag that shows one (no I/O)."""

from __future__ import annotations

import html
import warnings
from collections.abc import Iterable

from yarl import URL

from ._redact import Secret, redact_message
from ._validate import check_api_key, check_instance_name, is_loopback_host

__all__ = [
    "DEFAULT_BASE_URL",
    "ApiKeyExposureWarning",
    "build_qr_image_url",
    "qr_img_tag",
]

DEFAULT_BASE_URL = "https://app.wachat.net/api/v1"

_QR_IMAGE_PATH = ("instance", "qr", "image")

_SAFER_OPTIONS = (
    "Safer options keep the key on your server: fetch with WachatClient (Authorization header) "
    "and inline the image with QRImage.to_data_uri(), or serve it from your own proxy route "
    '(<img src="/qr/NAME.png">, see examples/aiohttp_proxy.py and examples/fastapi_proxy.py).'
)


class ApiKeyExposureWarning(UserWarning):
    """An API key was put into a URL on the caller's explicit request: emitted on every
    opted-in call of :func:`build_qr_image_url` and ``WachatClient.qr_image_url`` (the
    :mod:`warnings` filters control it: ``"error"`` in a test suite catches any such path)."""


def build_qr_image_url(
    instance_name: str,
    *,
    api_key: str | None = None,
    base_url: str = DEFAULT_BASE_URL,
    expose_api_key: bool = False,
) -> str:
    """Return the URL of the QR image of *instance_name*, for header auth (``WachatClient``)
    or your own proxy route.

    With *api_key* the URL also carries ``apiKey=`` (what a bare ``<img>`` needs, exposing the
    key to anyone who sees the URL): refused with ``ValueError`` unless *expose_api_key* is
    ``True``, and then every call emits :class:`ApiKeyExposureWarning`. *base_url*: an
    ``http``/``https`` URL with a host and no query or fragment; its path is kept. Unusable
    arguments raise ``TypeError``/``ValueError``, never quoting the key (docs/img-and-api-key.md).
    """
    if isinstance(api_key, str):  # from here on a traceback's locals show it as [REDACTED]
        api_key = Secret(api_key)
    elif api_key is not None:
        kind = type(api_key).__name__
        del api_key  # the raw value leaves this frame before anything is raised
        raise TypeError(f"api_key must be a str, not {kind}")
    return _build_qr_image_url(
        instance_name,
        api_key=api_key,
        base_url=base_url,
        expose_api_key=expose_api_key,
        stacklevel=2,
    )


def _build_qr_image_url(
    instance_name: str,
    *,
    api_key: str | None,
    base_url: str | URL,
    expose_api_key: bool,
    stacklevel: int,
) -> str:
    """:func:`build_qr_image_url` for it and the client; *stacklevel* counts from the caller
    (2: the warning points at that function's caller)."""
    check_instance_name(instance_name)  # also refuses lone surrogates, which yarl would drop
    if not isinstance(expose_api_key, bool):
        raise TypeError(f"expose_api_key must be a bool, not {type(expose_api_key).__name__}")
    url = _qr_image_endpoint(base_url, secrets=[api_key] if isinstance(api_key, str) else [])
    if api_key is None:
        return str(url.with_query({"instanceName": instance_name}))
    check_api_key(api_key)
    if not expose_api_key:
        raise ValueError(
            "Refusing to put the API key into the URL: anyone who sees it (browser history, "
            "server and proxy logs, Referer headers, analytics, screenshots) can use the key. "
            "If a bare <img> tag really needs it, pass expose_api_key=True "
            "(ApiKeyExposureWarning is then emitted on every call). "
            f"{_SAFER_OPTIONS} Without api_key you get the key-less URL for header auth."
        )
    clear_text = ""
    if url.scheme == "http" and not is_loopback_host(url.host or ""):
        clear_text = "It also travels unencrypted (http://) from every browser that loads it. "
    warnings.warn(
        "The API key is embedded in this QR image URL (apiKey=...): it will reach browser "
        f"history, server and proxy logs and analytics. {clear_text}{_SAFER_OPTIONS}",
        ApiKeyExposureWarning,
        stacklevel=stacklevel + 1,
    )
    return str(url.with_query({"instanceName": instance_name, "apiKey": api_key}))


def _where(url: URL) -> str:
    """*url* for an error message: scheme, host and port only (the rest may carry a key)."""
    if url.host:
        return (
            f"{url.scheme}://{url.host_port_subcomponent}" if url.scheme else "a URL with no scheme"
        )
    return f"a {url.scheme}: URL with no host" if url.scheme else "a relative URL"


def _parse(url: str) -> URL | None:
    try:
        return URL(url)
    except ValueError:
        return None


def _qr_image_endpoint(base_url: str | URL, *, secrets: Iterable[str] = ()) -> URL:
    """Join the QR image path onto *base_url*, keeping its path; errors are redacted with
    *secrets* and never chain the parser's own (it quotes the URL)."""
    if not isinstance(base_url, (str, URL)):
        raise TypeError(f"base_url must be a str, not {type(base_url).__name__}")
    base = base_url if isinstance(base_url, URL) else _parse(base_url)
    if base is None:  # raised outside the parser's handler: yarl's error quotes the URL
        raise ValueError("base_url is not a valid URL (not shown: it may hold credentials)")
    problem = None
    if base.raw_user is not None or base.raw_password is not None:
        # Credentials in the base URL would be copied into every URL handed out.
        problem = "base_url must not contain user info (user:password@)"
    elif base.scheme not in ("http", "https") or not base.host:
        problem = "base_url must be an http:// or https:// URL with a host"
    elif base.raw_query_string or base.raw_fragment:
        problem = "base_url must not have a query or a fragment"
    if problem is not None:
        raise ValueError(
            redact_message(f"{problem}; got {_where(base)} (the rest is not shown)", secrets)
        )
    return base.with_path(base.raw_path.rstrip("/"), encoded=True).joinpath(*_QR_IMAGE_PATH)


def qr_img_tag(
    url: str,
    *,
    alt: str = "WhatsApp QR code",
    width: int | None = None,
    height: int | None = None,
) -> str:
    """Return an HTML ``<img>`` element showing *url* (``src`` and ``alt`` HTML-escaped;
    *width*/*height* in CSS pixels, written only when given).

    ``referrerpolicy="no-referrer"`` keeps the *page's* URL out of the image request's
    ``Referer``. It does **not** protect a key in the image URL itself: page source, history,
    caches, the logs of every server and proxy on the way and screenshots see that URL.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    if not url:
        raise ValueError("url must not be empty")
    if not isinstance(alt, str):
        raise TypeError(f"alt must be a str, not {type(alt).__name__}")
    parts = [
        f'<img src="{html.escape(url, quote=True)}"',
        f'alt="{html.escape(alt, quote=True)}"',
    ]
    for attr, value in (("width", width), ("height", height)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{attr} must be an int or None, not {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{attr} must be a positive int, not {value}")
        parts.append(f'{attr}="{value}"')
    parts.append('referrerpolicy="no-referrer" decoding="async">')
    return " ".join(parts)
