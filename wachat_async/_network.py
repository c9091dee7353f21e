"""The client's network options (``ssl=``, ``proxy=``, ``trust_env=``, ``trace_configs=``)
and TLS and proxy failures classified with advice. No network I/O."""

from __future__ import annotations

import base64
import netrc
import os
import re
import ssl
import urllib.request
import warnings
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

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
from ._redact import REDACTED, Secret

__all__ = [
    "CA_HINT",
    "InsecureTLSWarning",
    "Proxy",
    "SSLOption",
    "check_ssl",
    "check_trace_configs",
    "classify",
    "env_proxy",
    "http_through_proxy",
    "parse_proxy",
    "ssl_for_session",
]

#: What ``ssl=`` may be: aiohttp's own meanings.
SSLOption = ssl.SSLContext | bool | aiohttp.Fingerprint | None

#: How to trust a private CA: appended to a certificate that chains to no CA the client trusts.
CA_HINT = (
    "If the server uses a private CA (an internal gateway, a TLS-inspecting proxy), trust its "
    "certificate: WachatClient(ssl=ssl.create_default_context(cafile='ca.pem')), or "
    "SSL_CERT_FILE=ca.pem in the environment of the process (read by OpenSSL for the default "
    "context; see the README's Networks), or from a shell wachat-qr --ca-file ca.pem"
)
EXPIRED_HINT = (
    "The certificate is outside its validity period (expired, or not valid yet): the server "
    "must renew it, or this machine's clock is wrong; trusting another CA will not help"
)
HOSTNAME_HINT = (
    "The certificate is not issued for that host name: use the name the certificate names in "
    "base_url (an IP address works only if the certificate lists it), or have the server's "
    "certificate reissued for this name; trusting another CA will not help"
)
PIN_HINT = (
    "The certificate is not the one pinned with ssl=aiohttp.Fingerprint: if the server's "
    "certificate was renewed, pin the new SHA-256; otherwise something on the path is "
    "impersonating the server"
)

# OpenSSL's X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code).
_EXPIRED_CODES = frozenset({9, 10})  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED
_HOSTNAME_CODES = frozenset({62, 64})  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH


def tls_hint(failure: BaseException, reason: str) -> str:
    """The advice that fits a certificate failure: by OpenSSL's code, else by its text."""
    code = getattr(failure, "verify_code", None)
    text = reason.lower()
    if code in _EXPIRED_CODES or "expired" in text or "not yet valid" in text:
        return EXPIRED_HINT
    if (
        code in _HOSTNAME_CODES
        or "mismatch" in text
        or "doesn't match" in text
        or "not valid for" in text
    ):
        return HOSTNAME_HINT
    return CA_HINT


class InsecureTLSWarning(UserWarning):
    """``WachatClient(ssl=False)``: certificates are not verified, so anyone on the path can
    read the API key. Emitted at construction; the standard ``warnings`` filters control it."""


def _warn_insecure(what: str) -> None:
    warnings.warn(
        f"{what}: anyone on the network path can impersonate the server and read the API key. "
        "Trust the server's CA instead (ssl=ssl.create_default_context(cafile='ca.pem'))",
        InsecureTLSWarning,
        stacklevel=4,  # here <- check_ssl <- WachatClient.__init__ <- the caller's line
    )


def check_ssl(value: object, *, secrets: Iterable[str] = ()) -> SSLOption:
    """*value* if it is a valid ``ssl=`` option (``None`` and ``True``: the default trust
    store); ``ssl=False`` and a context that does not verify warn :class:`InsecureTLSWarning`."""
    if value is None or value is True:
        return None
    if value is False:
        _warn_insecure("ssl=False turns off certificate verification")
        return False
    if isinstance(value, ssl.SSLContext):
        if value.protocol == ssl.PROTOCOL_TLS_SERVER:
            raise ConfigurationError(
                "ssl is a server-side SSLContext (ssl.Purpose.CLIENT_AUTH or "
                "PROTOCOL_TLS_SERVER), which cannot open a client connection: use "
                "ssl.create_default_context() (its default purpose is SERVER_AUTH)",
                secrets=secrets,
            )
        if value.verify_mode == ssl.CERT_NONE:
            _warn_insecure("this SSLContext does not verify certificates (verify_mode=CERT_NONE)")
        return value
    if isinstance(value, aiohttp.Fingerprint):
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
    """An HTTP proxy: its URL without credentials (the session's ``proxy=``), and the
    credentials apart, sent only as ``Proxy-Authorization`` so no aiohttp text can quote them."""

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
        return Secret(
            "Basic " + base64.b64encode(f"{self.login}:{self.password}".encode()).decode("ascii")
        )

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
        pair = Secret(f"{self.login}:{self.password}")
        token = Secret(base64.b64encode(pair.encode()).decode("ascii"))
        forms = [pair, token, self.password]
        # Very short forms would redact ordinary text; the pair and the token are never short.
        return tuple(Secret(form) for form in forms if len(form) >= 4)

    def __repr__(self) -> str:
        return f"<Proxy {self.display}{' (from the environment)' if self.from_env else ''}>"


#: A scheme as a proxy URL may start with; ``alice:`` in ``alice:pw@host`` is not one.
_SCHEME = re.compile(r"(?:[a-z][a-z0-9+.-]*:(?=//)|(?:https?|socks[45][ah]?):)", re.IGNORECASE)
_PROXY_FORM = "http://HOST:PORT (with credentials: USER:PASSWORD@ before HOST)"


def split_credentials(text: str) -> tuple[str, str, str]:
    """``(before, credentials, after)`` of a proxy URL as typed: the credentials run from the
    scheme (and ``//``) to the *last* ``@``, whatever they hold, never parsed as a fragment,
    query or path. *after* starts at that ``@``; without one, ``("", "", text)``."""
    scheme = _SCHEME.match(text)
    start = scheme.end() if scheme else 0
    if text.startswith("//", start):
        start += 2
    at = text.rfind("@", start)
    if at < 0:
        return "", "", text
    return text[:start], text[start:at], text[at:]


def _credential_forms(credentials: str) -> tuple[str, ...]:
    """The forms of *credentials* a message must hide, raw and percent-decoded."""
    password = credentials.partition(":")[2]
    forms = {credentials, unquote(credentials), password, unquote(password)}
    # The text itself is cut out of every message; these are the safety net, and very short
    # forms would redact ordinary words.
    return tuple(Secret(form) for form in forms if len(form) >= 4)


def parse_proxy(
    value: object, *, secrets: Iterable[str] = (), what: str = "proxy", from_env: bool = False
) -> Proxy | None:
    """The ``proxy=`` argument, checked: ``http://[USER:PASSWORD@]HOST:PORT[/]``; *what* names
    its source in messages. The credentials are cut out before anything parses the text."""
    if value is None:
        return None
    if not isinstance(value, (str, URL)):
        raise ConfigurationError(
            f"{what} must be an http:// URL (str or yarl.URL) or None, not {type(value).__name__}"
        )
    text = Secret(str(value))
    value = None  # a yarl.URL's repr shows its password: only the Secret stays in this frame
    before, credentials, after = split_credentials(text)
    credentials = Secret(credentials)
    secrets = (*secrets, *_credential_forms(credentials))
    shown = f"{before}{REDACTED}{after}" if after.startswith("@") else str(text)
    bare_text = before + after[1:] if after.startswith("@") else str(text)
    problem = _proxy_problem(bare_text, credentials, what)
    if problem is not None:
        raise ConfigurationError(f"{problem}, got {shown!r}", secrets=secrets)
    url = URL(bare_text)
    user, _, password = credentials.partition(":")
    login = Secret(unquote(user))
    if ":" in login:
        raise ConfigurationError(
            f"{what}: a proxy user name cannot contain ':' (percent-encode it as %3A in the "
            "password part only)",
            secrets=secrets,
        )
    bare = url.with_path("").with_query(None).with_fragment(None)
    return Proxy(url=bare, login=login, password=Secret(unquote(password)), from_env=from_env)


def _proxy_problem(bare_text: str, credentials: str, what: str) -> str | None:
    """What is wrong with a proxy URL (its credentials cut out), or None."""
    if any(char in credentials for char in "/?#"):
        return (
            f"{what}: the credentials before '@' hold a '/', '?' or '#', which ends them in a "
            "URL: percent-encode those characters in the password (%2F, %3F, %23)"
        )
    try:
        url = URL(bare_text)
        host, port, scheme = url.host, url.explicit_port, url.scheme
    except (TypeError, ValueError):
        return f"{what} must be an absolute URL such as {_PROXY_FORM}"
    if not scheme or "://" not in bare_text:
        return f"{what} is not an absolute URL with a scheme: write it as {_PROXY_FORM}"
    if scheme != "http":
        return (
            f"{what} must be an http:// URL (https:// to Wachat still goes through CONNECT, "
            f"so the proxy never sees the key); {scheme}:// proxies are not supported"
        )
    if not host:
        return f"{what} must be an absolute URL such as {_PROXY_FORM}"
    if port is None:
        # aiohttp would dial 80 and curl 1080: a port left out is a mistake, not a default.
        return f"{what} has no port: write it as {_PROXY_FORM} (often 3128 or 8080)"
    if port == 0:
        return f"{what} has port 0, which no proxy listens on: write it as {_PROXY_FORM}"
    if url.path not in ("", "/") or url.query_string or url.fragment:
        return f"{what} must be {_PROXY_FORM}, without a path, query or fragment"
    return None


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
    return Secret(login or ""), Secret(password or "")


def env_proxy(target: URL, *, secrets: Iterable[str] = ()) -> Proxy | None:
    """The proxy the environment chooses for *target*, as aiohttp's ``trust_env`` does
    (docs/networks.md), except that one that cannot work is a :class:`ConfigurationError`."""
    host = target.host
    if host is not None and urllib.request.proxy_bypass(host):
        return None
    # A Secret at once: it may hold the proxy's password, and a traceback may show locals.
    raw = Secret(urllib.request.getproxies().get(target.scheme) or "")
    if not raw:
        return None
    # The variable that is set (lower case wins, as urllib reads them), named as the user wrote it.
    lower = f"{target.scheme}_proxy"
    variable = lower if os.environ.get(lower) else lower.upper()
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
    """The ``ssl=`` of a new session: with ``trust_env`` and no ``ssl=``, a fresh default
    context, so ``SSL_CERT_FILE``/``SSL_CERT_DIR`` are read as the session opens."""
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
    scheme: str | None = None,
) -> WachatConnectionError | None:
    """A :class:`TLSVerificationError` or :class:`ProxyError` for *exc*, else ``None`` (any
    other transport error); *host*, *port* and *scheme* are the server dialled."""
    where = "the server"
    if host:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 in brackets
    failure = _certificate_failure(exc)
    if failure is not None:
        reason = _reason(failure).rstrip(". ")
        return TLSVerificationError(
            f"TLS certificate verification failed for {where}: {reason}. "
            f"{tls_hint(failure, reason)}",
            reason=reason,
            host=host,
            port=port,
            instance_name=instance_name,
        )
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        got = _short_hex(exc.got)
        return TLSVerificationError(
            f"TLS certificate pin mismatch for {where}: the certificate's SHA-256 starts "
            f"{got}, not the pinned {_short_hex(exc.expected)}. {PIN_HINT}",
            reason="certificate fingerprint mismatch",
            host=host,
            port=port,
            instance_name=instance_name,
        )
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return proxy_status_error(exc.status, proxy=proxy, instance_name=instance_name)
    if proxy is None:
        return None
    if isinstance(exc, aiohttp.ClientProxyConnectionError) or (
        isinstance(exc, aiohttp.ClientConnectorError)
        and (exc.host, exc.port) == (proxy.url.host, proxy.url.port)  # the proxy's DNS
    ):
        # aiohttp's text says "ssl:default", which is about the server, not the proxy.
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            why = "its host name does not resolve (DNS)"
        else:
            why = type(exc.os_error).__name__
        return ProxyError(
            f"cannot connect to the HTTP proxy {proxy.display}: {why}",
            instance_name=instance_name,
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        # Inside a tunnel the proxy also closes our connection for the server: aiohttp's
        # exception does not say which of the two hung up.
        return ProxyError(
            f"the HTTP proxy {proxy.display} closed the connection before an answer came",
            instance_name=instance_name,
        )
    # A parser error (a real response of any status is no exception here) to the CONNECT, or
    # to a plain http:// request (which goes to the proxy as it is); aiohttp's message quotes
    # the bytes: not repeated.
    if type(exc) is aiohttp.ClientResponseError and (
        exc.request_info.method == "CONNECT" or scheme == "http"
    ):
        stage = "the CONNECT" if exc.request_info.method == "CONNECT" else "the request"
        return ProxyError(
            f"the HTTP proxy {proxy.display} answered {stage} with something that is not "
            "HTTP (is it a SOCKS proxy, or the wrong port?)",
            instance_name=instance_name,
        )
    return None


def _short_hex(digest: bytes) -> str:
    return digest[:8].hex(":") + ":…"


def proxy_status_error(
    status: int, *, proxy: Proxy | None, instance_name: str | None
) -> ProxyError:
    """The error for a proxy's answer *status*: 407 (and 401 to a ``CONNECT``: tinyproxy's
    answer to wrong credentials) is a :class:`ProxyAuthenticationError`."""
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


def http_through_proxy(base: URL, proxy: Proxy, source: str) -> str:
    """Why a plain http:// base URL through a proxy is refused without allow_insecure_http."""
    return (
        f"Refusing plain http:// to {base.host} through the HTTP proxy {proxy.display} "
        f"({source}): a plain-http request goes to the proxy as it is, so the proxy and the "
        "network to it would read the API key in clear text (and the proxy would resolve "
        f"{base.host} itself). Use https:// (the key then travels inside the proxy's CONNECT "
        "tunnel), or pass allow_insecure_http=True if you mean it"
    )
