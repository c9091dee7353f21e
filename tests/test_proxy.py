"""HTTP proxies: ``WachatClient(proxy=...)`` and ``trust_env=True`` through a real tinyproxy.

Debian's tinyproxy runs on a loopback port with BasicAuth (tests/_tinyproxy.py); its log
proves each request went through it, and that ``https://`` went as ``CONNECT`` (so the proxy
never saw the key, which travels inside TLS). The proxy's password, like the key, must appear in
no repr, exception, log record or output.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import os
import re
import traceback
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wachat_async import (
    AuthenticationError,
    ConfigurationError,
    ProxyAuthenticationError,
    ProxyError,
    RetryPolicy,
    UnexpectedStatusError,
    WachatClient,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)
from wachat_async._network import parse_proxy
from wachat_async._redact import REDACTED
from wachat_async.testing import FakeWachatServer, Fault

from ._tinyproxy import PROXY_PASSWORD, PROXY_USER, Tinyproxy, running_tinyproxy
from .conftest import KEY, NAME, SkippingLoop, exception_texts, run_skipping, until
from .hostile._raw_server import Close, RawServer, RecordedRequest, Send, http_response

WRONG_PASSWORD = "wr0ng-PW-11aa22"
PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")
ALL_PROXY_ENV = (*PROXY_ENV, "ALL_PROXY", "all_proxy", "NETRC", "REQUEST_METHOD")


@pytest.fixture(autouse=True)
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No proxy variable of the machine running the tests leaks into these tests."""
    for name in ALL_PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # not the user's ~/.netrc


@pytest.fixture
async def servers() -> AsyncIterator[tuple[FakeWachatServer, FakeWachatServer]]:
    """(plain HTTP, HTTPS) fake servers, key KEY, instance NAME on both."""
    async with FakeWachatServer(KEY) as plain, FakeWachatServer(KEY, tls=True) as tls:
        plain.add_instance(NAME)
        tls.add_instance(NAME)
        yield plain, tls


@pytest.fixture
def proxy(
    servers: tuple[FakeWachatServer, FakeWachatServer], tmp_path: Path
) -> Iterator[Tinyproxy]:
    """A tinyproxy with BasicAuth that may CONNECT to the HTTPS fake server's port."""
    with running_tinyproxy(tmp_path, connect_ports=[servers[1].port]) as running:
        yield running


def secret_free(*texts: object) -> None:
    """Fail if the key or a proxy password (right or wrong) is in any of *texts*."""
    for text in map(str, texts):
        assert KEY not in text, f"API key leaked: {text[:200]!r}"
        for password in (PROXY_PASSWORD, WRONG_PASSWORD):
            assert password not in text, f"proxy password leaked: {text[:200]!r}"


def client_for(server: FakeWachatServer, **kwargs: Any) -> WachatClient:
    """A zero-wait client for *server* (trusting its CA when it speaks TLS)."""
    if server.tls:
        kwargs.setdefault("ssl", server.ssl_context)
    elif "proxy" in kwargs or kwargs.get("trust_env"):
        # Plain http:// through a proxy hands the proxy the key: these tests mean it.
        kwargs.setdefault("allow_insecure_http", True)
    kwargs.setdefault("retry", RetryPolicy(zero_wait=True))
    return WachatClient(api_key=KEY, base_url=server.base_url, **kwargs)


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_proxy_argument_routes_every_request_through_the_proxy(
    servers: tuple[FakeWachatServer, FakeWachatServer], proxy: Tinyproxy, scheme: str
) -> None:
    """proxy=URL with credentials: tinyproxy logs the request (CONNECT for https://)."""
    server = servers[0] if scheme == "http" else servers[1]
    async with client_for(server, proxy=proxy.url_with_credentials) as client:
        qr = await client.get_qr_image(NAME)
        state = await client.get_instance_state(NAME)
        secret_free(repr(client), client)
    assert (qr.instance_name, state.instance_name) == (NAME, NAME)
    seen = proxy.requests()
    if scheme == "http":
        assert [line.split()[0] for line in seen] == ["GET", "GET"]
        assert all(f"127.0.0.1:{server.port}/api/v1/instance/" in line for line in seen)
    else:
        assert seen
        assert set(seen) == {f"CONNECT 127.0.0.1:{server.port} HTTP/1.1"}
    assert server.request_count() == 2
    secret_free(proxy.log_text())


async def test_https_through_connect_hides_the_key_and_path_from_the_proxy(
    servers: tuple[FakeWachatServer, FakeWachatServer], proxy: Tinyproxy
) -> None:
    """Through CONNECT the proxy sees host and port only: no path, no instance, no key."""
    server = servers[1]
    async with client_for(server, proxy=proxy.url_with_credentials) as client:
        await client.get_qr_image(NAME)
    log = proxy.log_text()
    assert f"CONNECT 127.0.0.1:{server.port}" in log
    assert NAME not in log
    assert "/instance/qr/image" not in log
    secret_free(log)


@pytest.mark.parametrize(
    ("variable", "scheme"),
    [
        pytest.param("HTTPS_PROXY", "https", id="HTTPS_PROXY"),
        pytest.param("https_proxy", "https", id="https_proxy"),
        pytest.param("HTTP_PROXY", "http", id="HTTP_PROXY"),
        pytest.param("http_proxy", "http", id="http_proxy"),
    ],
)
async def test_trust_env_uses_the_proxy_variables(
    servers: tuple[FakeWachatServer, FakeWachatServer],
    proxy: Tinyproxy,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    scheme: str,
) -> None:
    """trust_env=True: the *_PROXY variable for the base URL's scheme carries the requests."""
    server = servers[0] if scheme == "http" else servers[1]
    monkeypatch.setenv(variable, proxy.url_with_credentials)
    async with client_for(server, trust_env=True) as client:
        await client.get_qr_image(NAME)
        secret_free(repr(client))
    assert len(proxy.requests()) == 1
    assert server.request_count(NAME) == 1


async def test_without_trust_env_the_proxy_variables_are_ignored(
    servers: tuple[FakeWachatServer, FakeWachatServer],
    proxy: Tinyproxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default trust_env=False: HTTPS_PROXY/HTTP_PROXY change nothing."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url_with_credentials)
    monkeypatch.setenv("HTTP_PROXY", proxy.url_with_credentials)
    for server in servers:
        async with client_for(server) as client:
            await client.get_qr_image(NAME)
    assert proxy.requests() == []


@pytest.mark.parametrize(
    "no_proxy",
    [
        pytest.param("127.0.0.1", id="exact-host"),
        pytest.param("localhost,127.0.0.1", id="list"),
        pytest.param("*", id="star"),
    ],
)
async def test_no_proxy_bypasses_the_proxy(
    servers: tuple[FakeWachatServer, FakeWachatServer],
    proxy: Tinyproxy,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: str,
) -> None:
    """trust_env=True with the host in NO_PROXY: straight to the server, tinyproxy unused."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url_with_credentials)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    async with client_for(servers[1], trust_env=True) as client:
        await client.get_qr_image(NAME)
    assert (proxy.requests(), servers[1].request_count(NAME)) == ([], 1)


async def test_explicit_proxy_wins_over_the_environment(
    servers: tuple[FakeWachatServer, FakeWachatServer],
    proxy: Tinyproxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """proxy= is used even when trust_env=True and HTTPS_PROXY names another (dead) proxy."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    async with client_for(servers[1], proxy=proxy.url_with_credentials, trust_env=True) as c:
        await c.get_qr_image(NAME)
    assert len(proxy.requests()) == 1


async def test_netrc_supplies_the_proxy_credentials_with_trust_env(
    servers: tuple[FakeWachatServer, FakeWachatServer],
    proxy: Tinyproxy,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """trust_env=True, HTTPS_PROXY without credentials: they come from $NETRC, like aiohttp."""
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {PROXY_USER} password {PROXY_PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    async with client_for(servers[1], trust_env=True) as client:
        await client.get_qr_image(NAME)
    assert len(proxy.requests()) == 1
    assert servers[1].requests[-1].auth_via == "bearer"  # netrc never replaced the Bearer key


@pytest.mark.parametrize(
    ("scheme", "credentials", "status"),
    [
        pytest.param("http", "none", 407, id="http-no-credentials"),
        pytest.param("https", "none", 407, id="https-no-credentials"),
        pytest.param("https", "wrong", 401, id="https-wrong-password"),
    ],
)
async def test_proxy_refusing_credentials_is_a_proxy_authentication_error(
    servers: tuple[FakeWachatServer, FakeWachatServer],
    proxy: Tinyproxy,
    scheme: str,
    credentials: str,
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """407 (or tinyproxy's 401 to a CONNECT): ProxyAuthenticationError, never retried."""
    caplog.set_level(logging.DEBUG)
    server = servers[0] if scheme == "http" else servers[1]
    url = (
        proxy.url
        if credentials == "none"
        else f"http://{PROXY_USER}:{WRONG_PASSWORD}@127.0.0.1:{proxy.port}"
    )
    policy = RetryPolicy(zero_wait=True, retry_transport_errors=True, max_attempts=4)
    async with client_for(server, proxy=url, retry=policy) as client:
        with pytest.raises(ProxyAuthenticationError) as info:
            await client.get_qr_image(NAME)
    error = info.value
    assert isinstance(error, ProxyError)
    assert isinstance(error, WachatConnectionError)
    assert not isinstance(error, UnexpectedStatusError)
    assert (error.proxy_status, error.attempts, server.request_count()) == (status, 1, 0)
    assert f"127.0.0.1:{proxy.port}" in str(error)
    assert ("credentials" in str(error)) is True
    secret_free(*exception_texts(error), *(r.getMessage() for r in caplog.records))


async def test_plain_http_401_from_the_proxy_says_the_proxy_may_be_refusing(
    servers: tuple[FakeWachatServer, FakeWachatServer], proxy: Tinyproxy
) -> None:
    """tinyproxy's 401 to a forwarded http:// request cannot be told from the API's: a note."""
    url = f"http://{PROXY_USER}:{WRONG_PASSWORD}@127.0.0.1:{proxy.port}"
    async with client_for(servers[0], proxy=url) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.get_qr_image(NAME)
    assert any(f"proxy 127.0.0.1:{proxy.port}" in n for n in info.value.__notes__)
    secret_free(*exception_texts(info.value))


async def test_unreachable_proxy_is_a_proxy_error(
    servers: tuple[FakeWachatServer, FakeWachatServer],
) -> None:
    """A proxy that refuses connections: ProxyError naming it (host:port only)."""
    async with client_for(servers[1], proxy="http://user:s3cret-pw@127.0.0.1:9") as client:
        with pytest.raises(ProxyError) as info:
            await client.get_qr_image(NAME)
    assert "127.0.0.1:9" in str(info.value)
    assert not [t for t in exception_texts(info.value) if "s3cret-pw" in t]


async def test_connect_to_a_forbidden_port_is_a_proxy_error(
    servers: tuple[FakeWachatServer, FakeWachatServer], tmp_path: Path
) -> None:
    """tinyproxy refusing CONNECT to a port (403): ProxyError with proxy_status 403."""
    with running_tinyproxy(tmp_path, connect_ports=[443]) as strict:
        async with client_for(servers[1], proxy=strict.url_with_credentials) as client:
            with pytest.raises(ProxyError) as info:
                await client.get_qr_image(NAME)
    assert info.value.proxy_status == 403
    assert not isinstance(info.value, ProxyAuthenticationError)


@pytest.mark.parametrize(
    "proxy_url",
    [
        pytest.param("http://alice:pr0xy-PASS-7f2e9c@proxy.corp.example:3128", id="plain"),
        pytest.param("http://alice:pr0xy-PASS-7f2e9c@proxy.corp.example:3128/", id="slash"),
        pytest.param("http://al%40ice:pr0xy-PASS-7f2e9c@proxy.corp.example:3128", id="encoded"),
    ],
)
def test_repr_shows_the_proxy_host_only(proxy_url: str) -> None:
    """repr(client) names proxy.corp.example:3128 and never its credentials."""
    client = WachatClient(api_key=KEY, base_url="https://h.example/v1", proxy=proxy_url)
    text = repr(client)
    assert "proxy.corp.example:3128" in text
    secret_free(text, str(client))
    assert "alice" not in text


@pytest.mark.parametrize(
    "proxy_url",
    [
        pytest.param("https://alice:pr0xy-PASS-7f2e9c@proxy.example:3128", id="https-proxy"),
        pytest.param("socks5://alice:pr0xy-PASS-7f2e9c@proxy.example:1080", id="socks"),
        pytest.param("proxy.example:3128", id="no-scheme"),
        pytest.param("http://alice:pr0xy-PASS-7f2e9c@proxy.example:3128/x", id="path"),
        pytest.param("http://alice:pr0xy-PASS-7f2e9c@proxy.example:3128?k=v", id="query"),
        pytest.param("http://alice:pr0xy-PASS-7f2e9c@:3128", id="no-host"),
        pytest.param("http://alice:pr0xy-PASS-7f2e9c@proxy.example:99999", id="bad-port"),
        pytest.param(3128, id="int"),
    ],
)
def test_bad_proxy_urls_are_configuration_errors_without_the_password(proxy_url: object) -> None:
    """A proxy= that cannot work fails at construction; the message hides the credentials."""
    with pytest.raises(ConfigurationError) as info:
        WachatClient(api_key=KEY, base_url="https://h.example/v1", proxy=proxy_url)  # type: ignore[arg-type]
    assert "proxy" in str(info.value)
    secret_free(*exception_texts(info.value))


@pytest.mark.parametrize(
    "option",
    [
        pytest.param({"trust_env": True}, id="trust_env"),
        pytest.param({"ssl": False}, id="ssl"),
        pytest.param({"trace_configs": [aiohttp.TraceConfig()]}, id="trace_configs"),
    ],
)
async def test_network_options_with_a_borrowed_session_are_refused(option: dict[str, Any]) -> None:
    """A borrowed session has its own connector: set these on it (ConfigurationError says so)."""
    async with aiohttp.ClientSession() as session:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ssl=False's own warning is not the point here
            with pytest.raises(ConfigurationError, match="session"):
                WachatClient(
                    api_key=KEY, base_url="https://h.example/v1", session=session, **option
                )


def test_trust_env_must_be_a_bool() -> None:
    """trust_env=1 is a ConfigurationError (a bool, not a truthy value)."""
    with pytest.raises(ConfigurationError, match="trust_env"):
        WachatClient(api_key=KEY, base_url="https://h.example/v1", trust_env=1)  # type: ignore[arg-type]


# -- malformed proxy URLs: the credentials never show ---------------------------------------

LEAK_PW = "Hunter2Secret"
MALFORMED = [
    pytest.param(f"alice:{LEAK_PW}@proxy.corp.example:3128", id="no-scheme"),
    pytest.param(f"http:alice:{LEAK_PW}@proxy.corp.example:3128", id="no-slashes"),
    pytest.param(f"//alice:{LEAK_PW}@proxy.corp.example:3128", id="scheme-relative"),
    pytest.param(f"http://alice:{LEAK_PW}#x@proxy.corp.example:3128", id="raw-hash"),
    pytest.param(f"http://alice:{LEAK_PW}?x@proxy.corp.example:3128", id="raw-question-mark"),
    pytest.param(f"http://alice:{LEAK_PW}/x@proxy.corp.example:3128", id="raw-slash"),
    pytest.param(f"http://alice:{LEAK_PW}@proxy.corp.example:3128/pac", id="path"),
    pytest.param(f"http://alice:{LEAK_PW}@proxy.corp.example", id="no-port"),
    pytest.param(f"http://alice:{LEAK_PW}@proxy.corp.example:0", id="port-0"),
    pytest.param(f"socks5://alice:{LEAK_PW}@proxy.corp.example:1080", id="socks"),
]


def _no_password_anywhere(exc: BaseException, password: str) -> None:
    """Not in str/repr/notes of the chain, nor in a library frame's locals."""
    forms = {password, quote(password, safe=""), quote(password)}
    plain = traceback.TracebackException.from_exception(exc)
    texts = [*exception_texts(exc), "".join(plain.format())]
    # The library's own frames (the test's own locals hold the URL it typed, of course).
    rendered = traceback.TracebackException.from_exception(exc, capture_locals=True)
    for frame in rendered.stack:
        if f"{os.sep}wachat_async{os.sep}" in frame.filename:
            texts += list((frame.locals or {}).values())
    for text in texts:
        for form in forms:
            assert form not in text, f"proxy password leaked: {text[:200]!r}"


@pytest.mark.parametrize("proxy_url", MALFORMED)
def test_malformed_proxy_urls_never_show_the_password(proxy_url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        WachatClient(api_key=KEY, base_url="https://h.example/v1", proxy=proxy_url)
    assert "proxy" in str(info.value)
    assert REDACTED in str(info.value)
    _no_password_anywhere(info.value, LEAK_PW)


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
@pytest.mark.parametrize("proxy_url", MALFORMED)
async def test_malformed_https_proxy_variable_never_shows_the_password(
    proxy_url: str, variable: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The same through HTTPS_PROXY (or https_proxy) with trust_env=True: refused at the first
    call, naming the variable as it is set."""
    caplog.set_level(logging.DEBUG)
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, proxy_url)
    client = WachatClient(api_key=KEY, base_url="https://h.example/v1", trust_env=True)
    with pytest.raises(ConfigurationError) as info:
        await client.get_qr_image(NAME)
    await client.aclose()
    assert f"{variable} (trust_env=True)" in str(info.value)
    _no_password_anywhere(info.value, LEAK_PW)
    assert LEAK_PW not in caplog.text


_PASSWORD_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs"))


@settings(max_examples=60, deadline=None)
@given(
    password=st.text(alphabet=st.sampled_from("@:#?/%") | _PASSWORD_CHARS, min_size=1),
    template=st.sampled_from(
        [
            "alice:{}@proxy.corp.example:3128",
            "http:alice:{}@proxy.corp.example:3128",
            "//alice:{}@proxy.corp.example:3128",
            "http://alice:{}@proxy.corp.example:3128/pac",
            "http://alice:{}@proxy.corp.example",
            "http://alice:{}@proxy.corp.example:3128",
        ]
    ),
)
def test_no_proxy_password_shows_in_errors_reprs_or_locals(password: str, template: str) -> None:
    """Any password (with @:#?/% and unicode, raw in the URL): never in a message, repr or
    the locals of a traceback; a URL that works keeps it out of repr(client)."""
    secret = "Zq9" + password + "Xw7"  # distinctive: no ordinary word holds it
    proxy_url = template.format(secret)
    try:
        client = WachatClient(api_key=KEY, base_url="https://h.example/v1", proxy=proxy_url)
    except ConfigurationError as exc:
        _no_password_anywhere(exc, secret)
    else:
        assert secret not in repr(client)
        assert "proxy.corp.example:3128" in repr(client)


@pytest.mark.parametrize(
    ("proxy_url", "login", "password"),
    [
        pytest.param(
            "http://alice:p%40ss%3Aw%C3%B6rd%2F%23%3F@proxy.example:3128",
            "alice",
            "p@ss:wörd/#?",
            id="encoded",
        ),
        pytest.param(
            "http://alice:p@ss:w@proxy.example:3128", "alice", "p@ss:w", id="raw-at-and-colon"
        ),
        pytest.param("http://a%20b:pw@proxy.example:3128/", "a b", "pw", id="user-with-space"),
        pytest.param("http://proxy.example:65535", "", "", id="no-credentials"),
    ],
)
def test_good_proxy_urls_give_their_credentials(proxy_url: str, login: str, password: str) -> None:
    parsed = parse_proxy(proxy_url)
    assert parsed is not None
    assert (parsed.login, parsed.password) == (login, password)
    assert parsed.url.user is None
    assert parsed.url.path in ("", "/")
    assert parsed.url.explicit_port is not None
    if password:
        assert password not in repr(parsed)


# -- plain http:// through a proxy hands the proxy the key ---------------------------------


@pytest.mark.parametrize(
    "proxy_url",
    [
        pytest.param("http://proxy.corp.example:3128", id="remote-proxy"),
        pytest.param("http://127.0.0.1:3128", id="loopback-proxy"),
        pytest.param("http://u:pw-123456@[::1]:3128", id="ipv6-proxy-with-credentials"),
    ],
)
def test_plain_http_through_a_proxy_needs_allow_insecure_http(proxy_url: str) -> None:
    with pytest.raises(ConfigurationError, match="allow_insecure_http") as info:
        WachatClient(api_key=KEY, base_url="http://127.0.0.1:8080/api/v1", proxy=proxy_url)
    assert "clear text" in str(info.value)
    assert "pw-123456" not in str(info.value)
    client = WachatClient(
        api_key=KEY,
        base_url="http://127.0.0.1:8080/api/v1",
        proxy=proxy_url,
        allow_insecure_http=True,
    )
    assert "proxy=" in repr(client)


async def test_plain_http_through_an_env_proxy_is_refused_at_the_first_call(
    servers: tuple[FakeWachatServer, FakeWachatServer],
    proxy: Tinyproxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY + trust_env=True with an http:// base URL: a clear error, nothing sent."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url_with_credentials)
    plain = servers[0]
    client = WachatClient(api_key=KEY, base_url=plain.base_url, trust_env=True)
    with pytest.raises(ConfigurationError, match="HTTP_PROXY, trust_env=True") as info:
        await client.get_qr_image(NAME)
    await client.aclose()
    assert "NO_PROXY" in str(info.value)
    assert proxy.requests() == []
    assert plain.request_count() == 0
    secret_free(*exception_texts(info.value))


# -- a proxy that cannot be reached, or answers garbage, is a ProxyError --------------------


async def test_proxy_host_that_does_not_resolve_is_a_proxy_error(
    servers: tuple[FakeWachatServer, FakeWachatServer],
) -> None:
    async with client_for(
        servers[1], proxy="http://proxy.nonexistent.invalid:3128", retry=RetryPolicy.disabled()
    ) as client:
        with pytest.raises(ProxyError) as info:
            await client.get_qr_image(NAME)
    assert "proxy.nonexistent.invalid:3128" in str(info.value)
    assert "DNS" in str(info.value)
    assert "ssl:default" not in str(info.value)


@pytest.mark.parametrize("scheme", ["https", "http"])
@pytest.mark.parametrize(
    ("actions", "says"),
    [
        pytest.param([Send(b"HELLO I AM NOT HTTP\r\n\r\n")], "not HTTP", id="garbage"),
        pytest.param([Send(b"\x05\xff")], "not HTTP", id="socks-answer"),
        pytest.param([Close()], "closed the connection", id="closes"),
    ],
)
async def test_proxy_answering_garbage_or_closing_is_a_proxy_error(
    servers: tuple[FakeWachatServer, FakeWachatServer],
    actions: list[Any],
    says: str,
    scheme: str,
) -> None:
    """One clean line naming the proxy (no parser dump); retried only with
    retry_transport_errors, as every ProxyError that may heal."""
    server = servers[1] if scheme == "https" else servers[0]
    async with RawServer(actions) as fake_proxy:
        port = fake_proxy.port
        policy = RetryPolicy(zero_wait=True, retry_transport_errors=True, max_attempts=2)
        async with client_for(server, proxy=fake_proxy.url, retry=policy) as client:
            with pytest.raises(ProxyError) as info:
                await client.get_qr_image(NAME)
    message = str(info.value)
    assert says in message
    assert f"127.0.0.1:{port}" in message
    assert "\n" not in message
    assert "\\x" not in message
    assert "Bad status" not in message
    assert info.value.attempts == 2
    assert fake_proxy.connections >= 2  # aiohttp itself may retry a closed connection once
    assert server.request_count() == 0


async def test_connect_carries_the_clients_user_agent(
    servers: tuple[FakeWachatServer, FakeWachatServer],
) -> None:
    """The CONNECT names the client (user_agent=), not aiohttp's default, and never the key."""
    refusal = http_response(407, b"", headers=[("Proxy-Authenticate", 'Basic realm="x"')])
    async with (
        RawServer([Send(refusal), Close()]) as fake_proxy,
        client_for(servers[1], proxy=fake_proxy.url, user_agent="acme-qr-poller/2.1") as client,
    ):
        with pytest.raises(ProxyAuthenticationError):
            await client.get_qr_image(NAME)
    assert fake_proxy.requests
    for connect in fake_proxy.requests:
        assert connect.method == "CONNECT"
        assert connect.header("User-Agent") == "acme-qr-poller/2.1"
        assert connect.header("Authorization") is None
        assert KEY not in connect.raw


@pytest.mark.parametrize("ending", ["timeout", "cancel"])
def test_https_through_a_proxy_ended_mid_call_leaves_no_socket_but_the_tunnels(
    tmp_path: Path, wachat_server_factory: Any, ending: str
) -> None:
    """An attempt through tinyproxy's CONNECT that ends (its timeout, or a cancellation) once
    the tunnel and TLS are up and the request is in: the error is the right one, and once the
    loop has ended the only ResourceWarning (if any) is for the tunnel's one socket to the proxy,
    which aiohttp 3.14 leaves to the garbage collector (docs/networks.md, upstream)."""
    hanging = wachat_server_factory(api_key=KEY, tls=True)
    hanging.add_instance(NAME)
    hanging.script(NAME, [Fault(hang=True)])

    async def one_call(loop: SkippingLoop) -> None:
        async with WachatClient(
            api_key=KEY,
            base_url=hanging.base_url,
            ssl=hanging.ssl_context,
            proxy=f"http://127.0.0.1:{tiny.port}",
            timeout=30,
            retry=RetryPolicy.disabled(),
        ) as client:
            call = asyncio.ensure_future(client.get_qr_image(NAME))
            await until(lambda: hanging.request_count() == 1 or call.done())  # tunnel and TLS up
            assert not call.done()
            if ending == "timeout":
                loop.skip(60)  # the attempt's 30 s pass now, not in real time
                with pytest.raises(WachatTimeoutError):
                    await call
            else:
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call

    with (
        running_tinyproxy(tmp_path, connect_ports=[hanging.port], basic_auth=False) as tiny,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        run_skipping(one_call)
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    # The socket and its transport warn in either order (or only the transport, which closes
    # the socket as it goes): one file descriptor at most, and a socket to the proxy.
    assert len({fd for text in leaks for fd in re.findall(r"fd=(\d+)", text)}) <= 1, leaks
    for text in leaks:
        assert text.startswith(("unclosed <socket.socket", "unclosed transport")), leaks
        assert "raddr" not in text or f"raddr=('127.0.0.1', {tiny.port})" in text, leaks


# -- a proxy that echoes its credentials ------------------------------------------------------

ECHO_USER = "echo-user"
#: "/", "+" and "=" so that percent-encoding changes the password, the pair and the token.
ECHO_PASSWORD = "echo/Pa55+w0rd="
ECHO_PAIR = f"{ECHO_USER}:{ECHO_PASSWORD}"
ECHO_TOKEN = base64.b64encode(ECHO_PAIR.encode()).decode("ascii")
#: How the proxy quotes what it received, by form: the header value as sent, the base64 token,
#: the user:password pair, each also percent-encoded (as a URL or a log line would).
ECHOES = {
    "header": f"Basic {ECHO_TOKEN}",
    "token": ECHO_TOKEN,
    "token-percent": quote(ECHO_TOKEN, safe=""),
    "pair": ECHO_PAIR,
    "pair-percent": quote(ECHO_PAIR, safe=""),
    "password-percent": quote(ECHO_PASSWORD, safe=""),
}
#: What must be nowhere: every secret form, raw and percent-encoded.
ECHO_SECRETS = {
    form
    for secret in (ECHO_TOKEN, ECHO_PAIR, ECHO_PASSWORD)
    for form in (secret, quote(secret, safe=""), quote(secret))
}


def _echoing_proxy(status: int, where: str, form: str) -> Callable[[RecordedRequest], list[Any]]:
    """A proxy stand-in's script: answer *status*, quoting the request's Proxy-Authorization
    (in the *form* given) in the body, a header or the reason phrase."""

    def answer(request: RecordedRequest) -> list[Any]:
        assert request.header("Proxy-Authorization") == ECHOES["header"]  # what it got, echoed
        echo = ECHOES[form]
        body = f"<h1>{status}</h1><p>you sent Proxy-Authorization: {echo}</p>".encode()
        response = http_response(
            status,
            body if where == "body" else b"denied",
            reason=f"Denied {echo}" if where == "reason" else "Denied",
            headers=[("X-Echo", echo)] if where == "header" else [],
            content_type="text/html",
        )
        return [Send(response), Close()]

    return answer


@pytest.mark.parametrize("form", ECHOES)
@pytest.mark.parametrize("where", ["body", "header", "reason"])
@pytest.mark.parametrize("status", [407, 502])
@pytest.mark.parametrize("scheme", ["https", "http"], ids=["connect", "plain-http"])
async def test_a_proxy_echoing_its_credentials_leaves_no_trace_of_them(
    scheme: str, status: int, where: str, form: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy that quotes the Proxy-Authorization it received (base64 token, user:password,
    percent-encoded) in its 407/502 body, a header or its reason phrase, to a CONNECT
    (https://) or a plain request: no form of the credentials in the exception chain (str,
    repr, notes, attributes, the traceback), the client's repr or any log record."""
    caplog.set_level(logging.DEBUG)
    async with RawServer(_echoing_proxy(status, where, form)) as fake_proxy:
        base_url = f"{scheme}://127.0.0.1:9/api/v1"  # never reached: the proxy answers first
        async with WachatClient(
            api_key=KEY,
            base_url=base_url,
            proxy=f"http://{quote(ECHO_USER)}:{quote(ECHO_PASSWORD, safe='')}@{fake_proxy.url[7:]}",
            allow_insecure_http=scheme == "http",
            retry=RetryPolicy(zero_wait=True, max_attempts=2),
        ) as client:
            with pytest.raises(WachatConnectionError if scheme == "https" else WachatError) as info:
                await client.get_qr_image(NAME)
            shown = repr(client)
    assert fake_proxy.requests, "the proxy was never asked"
    texts = [
        *exception_texts(info.value),
        "".join(traceback.format_exception(info.value)),
        shown,
        *(record.getMessage() for record in caplog.records),
        *(caplog.text.splitlines()),
    ]
    for text in texts:
        for secret in ECHO_SECRETS:
            assert secret.lower() not in text.lower(), f"proxy credentials leaked: {text[:300]!r}"
