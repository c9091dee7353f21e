"""TLS: ``WachatClient(ssl=...)`` against real HTTPS servers on loopback (trustme CAs).

A fake server with a throwaway CA (``FakeWachatServer(tls=True)``) is verified when the client
trusts that CA, and refused (unknown CA, wrong host name, expired certificate) when it does not,
with a :class:`TLSVerificationError` that says how to pass a CA and is never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import ssl
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
import trustme

from wachat_async import (
    InsecureTLSWarning,
    RetryPolicy,
    TLSVerificationError,
    WachatClient,
    WachatConnectionError,
)
from wachat_async.testing import FakeWachatServer

from .conftest import KEY, NAME, exception_texts

TRANSPORT_RETRIES = RetryPolicy(retry_transport_errors=True, zero_wait=True, max_attempts=4)


@pytest.fixture
async def tls_server() -> AsyncIterator[FakeWachatServer]:
    """A started HTTPS fake server (key KEY, instance NAME) with a throwaway CA."""
    async with FakeWachatServer(api_key=KEY, tls=True) as fake:
        fake.add_instance(NAME)
        yield fake


class ExpiredServer:
    """A TLS server whose certificate (from its own trustme CA) expired yesterday.

    It completes no handshake with a verifying client, so it needs no HTTP.
    """

    def __init__(self) -> None:
        self.ca = trustme.CA()
        yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        cert = self.ca.issue_cert(
            "127.0.0.1", not_before=yesterday - datetime.timedelta(days=30), not_after=yesterday
        )
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.context)
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ExpiredServer:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.context)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/api/v1"

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


CALLS: list[Any] = [
    pytest.param(lambda c: c.get_qr_image(NAME), id="get_qr_image"),
    pytest.param(lambda c: c.get_instance_state(NAME), id="get_instance_state"),
    pytest.param(lambda c: _stream(c), id="stream_qr_image"),
]


async def _stream(client: WachatClient) -> bytes:
    async with client.stream_qr_image(NAME) as stream:
        return await stream.read()


async def test_client_trusting_the_ca_fetches_over_https(tls_server: FakeWachatServer) -> None:
    """ssl=server.ssl_context: the QR arrives over HTTPS, the key as a Bearer header."""
    async with WachatClient(
        api_key=KEY, base_url=tls_server.base_url, ssl=tls_server.ssl_context
    ) as client:
        qr = await client.get_qr_image(NAME)
    assert (qr.instance_name, tls_server.request_count(NAME)) == (NAME, 1)
    assert tls_server.requests[-1].auth_via == "bearer"


@pytest.mark.parametrize("call", CALLS)
async def test_unknown_ca_is_a_tls_verification_error_with_the_hint(
    tls_server: FakeWachatServer, call: Callable[[WachatClient], Awaitable[Any]]
) -> None:
    """Default trust store vs a private CA: TLSVerificationError naming ssl= and SSL_CERT_FILE."""
    async with WachatClient(api_key=KEY, base_url=tls_server.base_url) as client:
        with pytest.raises(TLSVerificationError) as info:
            await call(client)
    error = info.value
    assert isinstance(error, WachatConnectionError)
    assert "certificate verification failed" in str(error)
    assert "ssl=" in str(error)
    assert "SSL_CERT_FILE" in str(error)
    assert "--ca-file" in str(error)
    assert (error.host, error.port, error.instance_name) == ("127.0.0.1", tls_server.port, NAME)
    assert "issuer" in error.reason.lower()
    assert error.__cause__ is not None


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(TRANSPORT_RETRIES, id="retry_transport_errors"),
        pytest.param(
            RetryPolicy(retry_transport_errors=True, zero_wait=True, statuses={502, 504, 407}),
            id="with-407-status",
        ),
    ],
)
async def test_certificate_failure_is_never_retried(
    tls_server: FakeWachatServer, policy: RetryPolicy
) -> None:
    """Even with retry_transport_errors=True: one attempt, no retry event, budget untouched."""
    events: list[Any] = []
    policy = attrs.evolve(policy, on_retry=events.append)
    async with WachatClient(api_key=KEY, base_url=tls_server.base_url, retry=policy) as client:
        with pytest.raises(TLSVerificationError) as info:
            await client.get_qr_image(NAME)
        assert not policy.is_retryable(info.value)
        assert (info.value.attempts, events, client.retry_budget.retries) == (1, [], 0)


async def test_wrong_host_name_is_a_tls_verification_error() -> None:
    """A certificate for another name (trusted CA) fails with the host name reason."""
    async with FakeWachatServer(KEY, tls=True, tls_hostnames=["api.wachat.test"]) as server:
        server.add_instance(NAME)
        async with WachatClient(
            api_key=KEY, base_url=server.base_url, ssl=server.ssl_context, retry=TRANSPORT_RETRIES
        ) as client:
            with pytest.raises(TLSVerificationError) as info:
                await client.get_qr_image(NAME)
    assert "match" in info.value.reason.lower()
    assert info.value.attempts == 1


async def test_expired_certificate_is_a_tls_verification_error() -> None:
    """An expired certificate from a trusted CA fails with the expiry reason, once."""
    async with ExpiredServer() as server:
        client = WachatClient(
            api_key=KEY,
            base_url=server.base_url,
            ssl=server.client_context(),
            retry=TRANSPORT_RETRIES,
        )
        async with client:
            with pytest.raises(TLSVerificationError) as info:
                await client.get_qr_image(NAME)
    assert "expired" in info.value.reason.lower()
    assert info.value.attempts == 1


async def test_watch_qr_stops_at_a_certificate_failure(tls_server: FakeWachatServer) -> None:
    """watch_qr does not keep polling a server whose certificate does not verify."""
    async with WachatClient(api_key=KEY, base_url=tls_server.base_url) as client:
        watch = client.watch_qr(NAME, interval=0.001)
        with pytest.raises(TLSVerificationError):
            await anext(watch)
        await watch.aclose()


async def test_fetch_many_reports_certificate_failures_per_name(
    tls_server: FakeWachatServer,
) -> None:
    """fetch_many gives each name its TLSVerificationError (the batch goes on)."""
    tls_server.add_instance("t1_second")
    async with WachatClient(api_key=KEY, base_url=tls_server.base_url) as client:
        results = [r async for r in client.fetch_many([NAME, "t1_second"])]
    assert sorted(type(r.error).__name__ for r in results) == ["TLSVerificationError"] * 2


async def test_certificate_failure_leaks_no_key_into_errors_or_logs(
    tls_server: FakeWachatServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The key is in no text of the error chain and no log record."""
    caplog.set_level(logging.DEBUG)
    async with WachatClient(api_key=KEY, base_url=tls_server.base_url) as client:
        with pytest.raises(TLSVerificationError) as info:
            await client.get_qr_image(NAME)
    texts = [*exception_texts(info.value), *(r.getMessage() for r in caplog.records)]
    assert texts
    assert not [t for t in texts if KEY in t]


async def test_ca_file_through_ssl_create_default_context(
    tls_server: FakeWachatServer, tmp_path: Path
) -> None:
    """The README recipe: ssl=ssl.create_default_context(cafile=...) with the CA's PEM file."""
    path = tls_server.write_ca_file(tmp_path / "ca.pem")
    context = ssl.create_default_context(cafile=str(path))
    async with WachatClient(api_key=KEY, base_url=tls_server.base_url, ssl=context) as client:
        assert (await client.get_qr_image(NAME)).instance_name == NAME


async def test_ssl_cert_file_is_honoured_with_trust_env(
    tls_server: FakeWachatServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trust_env=True reads SSL_CERT_FILE when the session opens; trust_env=False does not."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.write_ca_file(tmp_path / "ca.pem")))
    async with WachatClient(api_key=KEY, base_url=tls_server.base_url, trust_env=True) as client:
        assert (await client.get_qr_image(NAME)).instance_name == NAME
    async with WachatClient(api_key=KEY, base_url=tls_server.base_url) as client:
        with pytest.raises(TLSVerificationError):
            await client.get_qr_image(NAME)


async def test_ssl_false_warns_at_construction_and_skips_verification(
    tls_server: FakeWachatServer,
) -> None:
    """ssl=False: an InsecureTLSWarning (a UserWarning) at construction, then no verification."""
    with pytest.warns(InsecureTLSWarning, match="verification") as caught:
        client = WachatClient(api_key=KEY, base_url=tls_server.base_url, ssl=False)
    assert issubclass(caught[0].category, UserWarning)
    assert caught[0].filename == __file__
    async with client:
        assert (await client.get_qr_image(NAME)).instance_name == NAME


def test_ssl_false_warning_can_be_silenced_by_the_standard_filters() -> None:
    """warnings.filterwarnings('ignore', category=InsecureTLSWarning) silences it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=InsecureTLSWarning)
        WachatClient(api_key=KEY, base_url="https://h.example/v1", ssl=False)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("cert.pem", id="a-path-str"),
        pytest.param(1, id="int"),
        pytest.param(Path("ca.pem"), id="a-Path"),
        pytest.param(ssl.PROTOCOL_TLS_CLIENT, id="protocol-constant"),
    ],
)
def test_bad_ssl_values_are_configuration_errors(value: object) -> None:
    """ssl= takes an SSLContext, False, an aiohttp.Fingerprint or None, nothing else."""
    from wachat_async import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"ssl must be an ssl\.SSLContext"):
        WachatClient(api_key=KEY, base_url="https://h.example/v1", ssl=value)  # type: ignore[arg-type]


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.mark.parametrize(
    ("make", "warns"),
    [
        pytest.param(_unverified_context, True, id="cert-none"),
        pytest.param(ssl.create_default_context, False, id="default"),
        pytest.param(lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), False, id="tls-client"),
    ],
)
def test_an_ssl_context_that_does_not_verify_warns_like_ssl_false(make: Any, warns: bool) -> None:
    """A context with verify_mode=CERT_NONE is ssl=False by another name: the same warning, at
    the caller's line; a verifying one is silent."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        WachatClient(api_key=KEY, base_url="https://h.example/v1", ssl=make())
    insecure = [w for w in caught if issubclass(w.category, InsecureTLSWarning)]
    assert len(insecure) == (1 if warns else 0)
    if warns:
        assert insecure[0].filename == __file__
        assert "CERT_NONE" in str(insecure[0].message)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), id="client-auth"),
        pytest.param(lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), id="tls-server"),
    ],
)
def test_a_server_side_ssl_context_is_a_configuration_error(make: Any) -> None:
    """A server-side context cannot open a client connection: refused at construction, not a
    connection error retried like a network blip."""
    from wachat_async import ConfigurationError

    with pytest.raises(ConfigurationError, match="server-side SSLContext"):
        WachatClient(api_key=KEY, base_url="https://h.example/v1", ssl=make())


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        pytest.param("127.0.0.1", "127.0.0.1:{port}", id="ipv4"),
        pytest.param("::1", "[::1]:{port}", id="ipv6"),
    ],
)
async def test_a_tls_error_writes_host_and_port_unambiguously(host: str, shown: str) -> None:
    """An IPv6 address is bracketed before its port (the port cannot read as part of it)."""
    async with FakeWachatServer(KEY, tls=True, host=host, tls_hostnames=["api.wachat.test"]) as srv:
        srv.add_instance(NAME)
        async with WachatClient(api_key=KEY, base_url=srv.base_url, ssl=srv.ssl_context) as client:
            with pytest.raises(TLSVerificationError) as info:
                await client.get_qr_image(NAME)
    assert f"verification failed for {shown.format(port=srv.port)}:" in str(info.value)


async def test_ssl_true_means_default_verification(tls_server: FakeWachatServer) -> None:
    """ssl=True is aiohttp's "verify with the default trust store" (a private CA fails)."""
    async with WachatClient(api_key=KEY, base_url=tls_server.base_url, ssl=True) as client:
        with pytest.raises(TLSVerificationError):
            await client.get_qr_image(NAME)


@contextlib.asynccontextmanager
async def _failing_server(cause: str) -> AsyncIterator[tuple[str, Any]]:
    """(base_url, the client's ssl=) for a server whose certificate fails for *cause*."""
    if cause == "expired":
        async with ExpiredServer() as expired:
            yield expired.base_url, expired.client_context()
        return
    hostnames = ["api.wachat.test"] if cause == "wrong-host" else None
    async with FakeWachatServer(KEY, tls=True, tls_hostnames=hostnames) as server:
        server.add_instance(NAME)
        if cause == "unknown-ca":
            yield server.base_url, None
        elif cause == "pin":
            yield server.base_url, aiohttp.Fingerprint(b"\x00" * 32)
        else:
            yield server.base_url, server.ssl_context


@pytest.mark.parametrize(
    ("cause", "says", "never"),
    [
        pytest.param(
            "unknown-ca", ["private CA", "--ca-file", "SSL_CERT_FILE"], [], id="unknown-ca"
        ),
        pytest.param("expired", ["validity period", "clock"], ["private CA"], id="expired"),
        pytest.param(
            "wrong-host", ["not issued for that host name"], ["private CA"], id="wrong-host"
        ),
        pytest.param(
            "pin", ["pin mismatch", "Fingerprint"], ["private CA", "\\x00", "b'"], id="pin"
        ),
    ],
)
async def test_each_certificate_failure_gets_the_hint_for_its_cause(
    cause: str, says: list[str], never: list[str]
) -> None:
    """One TLSVerificationError per cause, never retried, with advice that fits the cause
    (trusting a CA fixes neither an expired nor a wrong-host certificate), one period."""
    async with (
        _failing_server(cause) as (base_url, ssl_option),
        WachatClient(
            api_key=KEY, base_url=base_url, ssl=ssl_option, retry=TRANSPORT_RETRIES
        ) as client,
    ):
        with pytest.raises(TLSVerificationError) as info:
            await client.get_qr_image(NAME)
    message = str(info.value)
    assert info.value.attempts == 1
    assert not TRANSPORT_RETRIES.is_retryable(info.value)
    assert ".." not in message
    for text in says:
        assert text in message
    for text in never:
        assert text not in message
    assert "\n" not in message


@pytest.fixture
def tls_server_in_thread(
    wachat_server_factory: Callable[..., FakeWachatServer],
) -> FakeWachatServer:
    """A TLS fake server on its own thread: a child process's client can reach it."""
    server = wachat_server_factory(api_key=KEY, tls=True)
    server.add_instance(NAME)
    return server


_CHILD = """
import asyncio, os, sys
from wachat_async import TLSVerificationError, WachatClient
if sys.argv[2] == "after-import":
    os.environ["SSL_CERT_FILE"] = sys.argv[3]
async def main():
    async with WachatClient(api_key=sys.argv[4], base_url=sys.argv[1]) as client:
        try:
            await client.get_qr_image(sys.argv[5])
        except TLSVerificationError:
            print("REFUSED")
        else:
            print("TRUSTED")
asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        pytest.param("at-start", "TRUSTED", id="set-before-the-process-starts"),
        pytest.param("after-import", "REFUSED", id="set-after-import"),
    ],
)
def test_ssl_cert_file_without_trust_env_is_read_once_at_import(
    tls_server_in_thread: FakeWachatServer, tmp_path: Path, when: str, expected: str
) -> None:
    """The documented behaviour: with trust_env=False and no ssl=, OpenSSL reads SSL_CERT_FILE
    when aiohttp builds its default context (at import), whatever trust_env says; a value set
    later is not seen (trust_env=True re-reads it when each session opens)."""
    ca = tmp_path / "ca.pem"
    tls_server_in_thread.write_ca_file(ca)
    environ = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    if when == "at-start":
        environ["SSL_CERT_FILE"] = str(ca)
    result = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", _CHILD, tls_server_in_thread.base_url, when, str(ca), KEY, NAME],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip() == expected, result.stderr
