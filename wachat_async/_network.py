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
import netrc
import os
import ssl
import urllib.request
import warnings
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import attrs
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
            stacklevel=3,  # check_ssl <- WachatClient.__init__ <- the caller's line
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

    ``url`` goes to aiohttp as the session's ``proxy=``; the credentials travel only as the
    ``Proxy-Authorization`` header (:attr:`authorization`), so no aiohttp exception text or
    URL can quote them (aiohttp's ``BasicAuth`` is deprecated, and would put them in reprs).
    :attr:`secrets` are the forms the redaction point must hide: the password,
    ``user:password`` and its base64 (what ``Proxy-Authorization: Basic ...`` carries).
    """

    url: URL
    login: str = attrs.field(default="", repr=False)
    password: str = attrs.field(default="", repr=False)
    from_env: bool = False

    @property
    def has_credentials(self) -> bool:
        return bool(self.login or self.password)

    @property
    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` value (``Basic ...``), or None without credentials."""
        if not self.has_credentials:
            return None
        pair = f"{self.login}:{self.password}".encode()
        return Secret("Basic " + base64.b64encode(pair).decode("ascii"))

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
        if not self.has_credentials:
            return ()
        pair = f"{self.login}:{self.password}"
        token = base64.b64encode(pair.encode()).decode("ascii")
        forms = [pair, token, self.password]
        # Very short forms would redact ordinary text; the pair and the token are never short.
        return tuple(Secret(form) for form in forms if len(form) >= 4)

    def __repr__(self) -> str:
        return f"<Proxy {self.display}{' (from the environment)' if self.from_env else ''}>"


def parse_proxy(
    value: object, *, secrets: Iterable[str] = (), what: str = "proxy", from_env: bool = False
) -> Proxy | None:
    """The ``proxy=`` argument, checked: an ``http://`` URL (str or yarl.URL) with a host,
    optionally ``user:password@`` (percent-encoded), and nothing after the port but ``/``.
    *what* names the source in messages (``proxy``, or the environment variable)."""
    if value is None:
        return None
    if not isinstance(value, (str, URL)):
        raise ConfigurationError(
            f"{what} must be an http:// URL (str or yarl.URL) or None, not {type(value).__name__}"
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
            f"{what} must be an absolute URL such as http://HOST:PORT, got {shown!r}",
            secrets=secrets,
        )
    if url.scheme != "http":
        raise ConfigurationError(
            f"{what} must be an http:// URL (https:// to Wachat still goes through CONNECT, "
            f"so the proxy never sees the key); {url.scheme}:// proxies are not supported, "
            f"got {shown!r}",
            secrets=secrets,
        )
    if url.path not in ("", "/") or url.query_string or url.fragment:
        raise ConfigurationError(
            f"{what} must be http://HOST:PORT (credentials as user:password@ before the "
            f"host), without a path, query or fragment, got {shown!r}",
            secrets=secrets,
        )
    login, password = url.user or "", url.password or ""
    if ":" in login:
        raise ConfigurationError(
            f"{what}: a proxy user name cannot contain ':' (percent-encode it as %3A in the "
            "password part only)",
            secrets=secrets,
        )
    bare = url.with_user(None).with_password(None).with_path("")
    return Proxy(url=bare, login=login, password=password, from_env=from_env)


def _netrc_credentials(host: str) -> tuple[str, str] | None:
    """(login, password) for *host* from ``$NETRC`` or ``~/.netrc``, as aiohttp reads it."""
    path = os.environ.get("NETRC")
    if not path:
        try:
            home = Path.home()
        except RuntimeError:  # pragma: no cover - no home directory at all
            return None
        path = str(home / ("_netrc" if os.name == "nt" else ".netrc"))
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    if entry is None:
        return None
    login, _account, password = entry
    return login or "", password or ""


def env_proxy(target: URL, *, secrets: Iterable[str] = ()) -> Proxy | None:
    """The proxy the environment chooses for *target*, the way aiohttp's ``trust_env`` does.

    ``https_proxy``/``HTTPS_PROXY`` for an https:// target (``http_proxy``/``HTTP_PROXY`` for
    http://; lower case first, and ``HTTP_PROXY`` is ignored in a CGI request, as urllib does),
    none when the host matches ``NO_PROXY``; credentials from the URL or else from
    ``~/.netrc`` (``$NETRC``) for the *proxy's* host. Unlike aiohttp, a proxy URL that cannot
    work (an ``https://`` proxy, no host) is a :class:`ConfigurationError` naming the variable,
    not a request that silently bypasses the proxy.
    """
    host = target.host
    if host is not None and urllib.request.proxy_bypass(host):
        return None
    raw = urllib.request.getproxies().get(target.scheme)
    if not raw:
        return None
    variable = f"{target.scheme.upper()}_PROXY"
    proxy = parse_proxy(raw, secrets=secrets, what=f"{variable} (trust_env=True)", from_env=True)
    assert proxy is not None
    if not proxy.has_credentials and proxy.url.host is not None:
        found = _netrc_credentials(proxy.url.host)
        if found is not None:
            proxy = attrs.evolve(proxy, login=found[0], password=found[1])
    return proxy


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
    """The error for a proxy's non-success answer *status*.

    407 (and 401 to a ``CONNECT``, which only the proxy answers: tinyproxy says 401 to wrong
    credentials) is a :class:`ProxyAuthenticationError`; anything else a :class:`ProxyError`.
    """
    name = f"the HTTP proxy {proxy.display}" if proxy is not None else "an HTTP proxy"
    if status in (401, 407):
        given = proxy is not None and proxy.has_credentials
        hint = (
            "it refused the credentials given (proxy= or the environment)"
            if given
            else "it wants credentials: proxy='http://user:password@host:port' (or in "
            "HTTPS_PROXY with trust_env=True)"
        )
        phrase = "Proxy Authentication Required" if status == 407 else "Unauthorized"
        return ProxyAuthenticationError(
            f"{status} {phrase} from {name}: {hint}",
            proxy_status=status,
            instance_name=instance_name,
        )
    return ProxyError(
        f"{name} answered {status} instead of forwarding the request",
        proxy_status=status,
        instance_name=instance_name,
    )
