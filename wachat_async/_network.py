"""The client's network options: TLS, HTTP proxies, the environment and trace configs.

It checks what ``WachatClient(ssl=, proxy=, trust_env=, trace_configs=)`` receives, turns a
proxy URL into a credential-free URL plus ``aiohttp.BasicAuth`` (so no aiohttp message or
repr can hold the password), reads the proxy and CA settings of the environment the way
aiohttp does (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``, ``~/.netrc`` for the proxy's
credentials, ``SSL_CERT_FILE``/``SSL_CERT_DIR``), and classifies TLS and proxy failures into
:class:`TLSVerificationError` and :class:`ProxyError`, with messages that say what to do.

It never does I/O on the network and never imports the client.
"""

from __future__ import annotations

import base64
import ssl
import warnings
from collections.abc import Iterable, Sequence

import aiohttp
import attrs
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from ._errors import (
    ConfigurationError,
    ProxyAuthenticationError,
    ProxyError,
    TLSVerificationError,
    WachatConnectionError,
)
from ._redact import Secret

__all__ = [
    "CA_HINT",
    "InsecureTLSWarning",
    "Proxy",
    "SSLOption",
    "check_ssl",
    "check_trace_configs",
    "classify",
    "env_proxy",
    "parse_proxy",
    "ssl_for_session",
]

#: What ``ssl=`` may be: aiohttp's own meanings.
SSLOption = ssl.SSLContext | bool | aiohttp.Fingerprint | None

#: How to trust a private CA: appended to every certificate failure.
CA_HINT = (
    "If the server uses a private CA (an internal gateway, a TLS-inspecting proxy), trust its "
    "certificate: WachatClient(ssl=ssl.create_default_context(cafile='ca.pem')), or "
    "SSL_CERT_FILE=ca.pem with trust_env=True (wachat-qr --ca-file ca.pem)"
)


class InsecureTLSWarning(UserWarning):
    """``WachatClient(ssl=False)``: certificates are not verified, so anyone on the path can
    read the API key. Emitted at construction; the standard ``warnings`` filters control it."""


def check_ssl(value: object, *, secrets: Iterable[str] = ()) -> SSLOption:
    """*value* if it is a valid ``ssl=`` option; ``ssl=False`` warns :class:`InsecureTLSWarning`.

    ``None`` (and ``True``): verify against the default trust store. An ``ssl.SSLContext``:
    yours, used as is. ``False``: no verification at all. An ``aiohttp.Fingerprint``: pin the
    certificate's SHA-256.
    """
    if value is None or value is True:
        return None
    if value is False:
        warnings.warn(
            "ssl=False turns off certificate verification: anyone on the network path can "
            "impersonate the server and read the API key. Trust the server's CA instead "
            "(ssl=ssl.create_default_context(cafile='ca.pem'))",
            InsecureTLSWarning,
            stacklevel=4,
        )
        return False
    if isinstance(value, (ssl.SSLContext, aiohttp.Fingerprint)):
        return value
    raise ConfigurationError(
        "ssl must be an ssl.SSLContext, False (no verification), an aiohttp.Fingerprint or "
        f"None, not {type(value).__name__}",
        secrets=secrets,
    )


def check_trace_configs(value: object) -> tuple[aiohttp.TraceConfig, ...]:
    """*value* as a tuple of ``aiohttp.TraceConfig`` (``None``: none)."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes, aiohttp.TraceConfig)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            "trace_configs must be a sequence of aiohttp.TraceConfig (e.g. [trace_config]), "
            f"not {type(value).__name__}"
        )
    configs = tuple(value)
    for config in configs:
        if not isinstance(config, aiohttp.TraceConfig):
            raise ConfigurationError(
                f"trace_configs must hold aiohttp.TraceConfig objects, not {type(config).__name__}"
            )
    return configs


@attrs.frozen(kw_only=True)
class Proxy:
    """An HTTP proxy: its URL without credentials, and the credentials apart.

    ``url`` goes to aiohttp as ``proxy=`` and ``auth`` as ``proxy_auth=``, so no aiohttp
    exception text or request info can quote the password; ``secrets`` are the forms of the
    credentials the redaction point must hide (the password, ``user:password`` and its
    base64 in ``Proxy-Authorization: Basic ...``).
    """

    url: URL
    auth: aiohttp.BasicAuth | None = attrs.field(default=None, repr=False)
    from_env: bool = False

    @property
    def display(self) -> str:
        """``host:port``: how the proxy is named in reprs and messages."""
        host = self.url.host or "?"
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.url.port}"

    @property
    def secrets(self) -> tuple[str, ...]:
        """The credential forms to redact (empty without credentials)."""
        auth = self.auth
        if auth is None:
            return ()
        pair = f"{auth.login}:{auth.password}"
        token = base64.b64encode(pair.encode(auth.encoding)).decode("ascii")
        forms = [pair, token]
        if auth.password:
            forms.append(auth.password)
        return tuple(Secret(form) for form in forms if len(form) >= 4)

    def __repr__(self) -> str:
        return f"<Proxy {self.display}{' (from the environment)' if self.from_env else ''}>"


def _no_credentials(url: URL) -> URL:
    return url.with_user(None).with_password(None) if url.user or url.password else url


def parse_proxy(value: object, *, secrets: Iterable[str] = ()) -> Proxy | None:
    """The ``proxy=`` argument, checked: an ``http://`` URL (str or yarl.URL) with a host,
    optionally ``user:password@`` (percent-encoded), and nothing after the port but ``/``."""
    if value is None:
        return None
    if not isinstance(value, (str, URL)):
        raise ConfigurationError(
            f"proxy must be an http:// URL (str or yarl.URL) or None, not {type(value).__name__}"
        )
    try:
        url = URL(value) if isinstance(value, str) else value
        host = url.host
        port = url.port
    except (TypeError, ValueError):
        url, host, port = URL(), None, None
    shown = str(value)
    if not host or port is None or not url.is_absolute():
        raise ConfigurationError(
            f"proxy must be an absolute URL such as http://HOST:PORT, got {shown!r}",
            secrets=secrets,
        )
    if url.scheme != "http":
        raise ConfigurationError(
            f"proxy must be an http:// URL (https:// to Wachat still goes through CONNECT, so "
            f"the proxy never sees the key); {url.scheme}:// proxies are not supported, got "
            f"{shown!r}",
            secrets=secrets,
        )
    if url.path not in ("", "/") or url.query_string or url.fragment:
        raise ConfigurationError(
            "proxy must be http://HOST:PORT (credentials as user:password@ before the host), "
            f"without a path, query or fragment, got {shown!r}",
            secrets=secrets,
        )
    auth = None
    if url.user is not None or url.password is not None:
        auth = aiohttp.BasicAuth(url.user or "", url.password or "")
    return Proxy(url=_no_credentials(url.with_path("")), auth=auth)


def env_proxy(target: URL) -> Proxy | None:
    """The proxy the environment chooses for *target*, exactly as aiohttp's ``trust_env``:
    ``https_proxy``/``HTTPS_PROXY`` for https:// (``http_proxy`` for http://), none when the
    host is in ``NO_PROXY``, credentials from the URL or else from ``~/.netrc``."""
    try:
        url, auth = get_env_proxy_for_url(target)
    except LookupError:
        return None
    if auth is None and (url.user or url.password):  # pragma: no cover - aiohttp strips them
        auth = aiohttp.BasicAuth(url.user or "", url.password or "")
    return Proxy(url=_no_credentials(url), auth=auth, from_env=True)


def ssl_for_session(
    option: SSLOption, *, trust_env: bool
) -> ssl.SSLContext | bool | aiohttp.Fingerprint:
    """The ``ssl=`` a new session's connector gets.

    With ``trust_env`` and no ``ssl=``, a fresh default context, so ``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` as set when the session opens take effect (aiohttp's own default context
    is built once, at import). Otherwise *option* (``True``: aiohttp's default verification).
    """
    if option is None:
        return ssl.create_default_context() if trust_env else True
    return option


def _reason(error: BaseException) -> str:
    reason = getattr(error, "verify_message", None) or getattr(error, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    text = str(error)
    return text.split("] ", 1)[-1].split(" (_ssl.c", 1)[0] if text else type(error).__name__


def _certificate_failure(exc: BaseException) -> BaseException | None:
    """The certificate verification error in *exc* (aiohttp's wrapper or ssl's own), if any."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return exc.certificate_error
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ssl.SSLCertVerificationError, ssl.CertificateError)):
            return current
        current = current.__cause__ or current.__context__
    return None


def classify(
    exc: BaseException,
    *,
    host: str | None,
    port: int | None,
    proxy: Proxy | None,
    instance_name: str | None,
) -> WachatConnectionError | None:
    """A :class:`TLSVerificationError` or :class:`ProxyError` for *exc*, else ``None`` (the
    caller maps it as any other transport error). Messages name hosts, never credentials."""
    failure = _certificate_failure(exc)
    if failure is not None:
        reason = _reason(failure)
        where = f"{host}:{port}" if host else "the server"
        return TLSVerificationError(
            f"TLS certificate verification failed for {where}: {reason}. {CA_HINT}",
            reason=reason,
            host=host,
            port=port,
            instance_name=instance_name,
        )
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return proxy_status_error(exc.status, proxy=proxy, instance_name=instance_name)
    if proxy is not None and isinstance(exc, aiohttp.ClientProxyConnectionError):
        return ProxyError(
            f"cannot connect to the HTTP proxy {proxy.display}: {type(exc).__name__}",
            instance_name=instance_name,
        )
    return None


def proxy_status_error(
    status: int, *, proxy: Proxy | None, instance_name: str | None
) -> ProxyError:
    """The error for a proxy's non-success answer *status* (407 needs credentials)."""
    name = f"the HTTP proxy {proxy.display}" if proxy is not None else "an HTTP proxy"
    if status == 407:
        given = proxy is not None and proxy.auth is not None
        hint = (
            "the credentials in proxy= were refused"
            if given
            else "pass them as proxy='http://user:password@host:port' (or in HTTPS_PROXY "
            "with trust_env=True)"
        )
        return ProxyAuthenticationError(
            f"407 Proxy Authentication Required from {name}: {hint}",
            proxy_status=407,
            instance_name=instance_name,
        )
    return ProxyError(
        f"{name} answered {status} instead of forwarding the request",
        proxy_status=status,
        instance_name=instance_name,
    )


def all_secrets(api_key: str, proxies: Sequence[Proxy | None]) -> tuple[str, ...]:
    """The API key and every proxy credential form: what the redaction point hides."""
    forms: list[str] = [api_key]
    for proxy in proxies:
        if proxy is not None:
            forms.extend(proxy.secrets)
    return tuple(forms)
