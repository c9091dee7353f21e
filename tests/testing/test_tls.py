"""The fake server's TLS (``wachat_async.testing._tls`` and ``FakeWachatServer(tls=True)``)."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from wachat_async.testing import FakeWachatServer, _tls
from wachat_async.testing import __main__ as cli

from ._support import KEY, NAME, PNG_SIGNATURE, get


def has_ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (some containers have no IPv6)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
async def tls_fake() -> Any:
    """A started HTTPS fake server (key KEY) with one Baileys instance NAME."""
    async with FakeWachatServer(KEY, tls=True) as server:
        server.add_instance(NAME)
        yield server


async def test_tls_server_serves_https_to_a_client_that_trusts_its_ca(
    tls_fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """tls=True: an https:// base URL, and a PNG for a client given server.ssl_context."""
    status, _headers, body = await get(http, tls_fake, ssl=tls_fake.ssl_context)
    assert (tls_fake.base_url[:8], tls_fake.tls, status) == ("https://", True, 200)
    assert body.startswith(PNG_SIGNATURE)


async def test_tls_server_is_refused_by_the_system_roots(
    tls_fake: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """A client with the default trust store fails verification: the CA is private."""
    with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
        await get(http, tls_fake)
    assert info.value.certificate_error.verify_code != 0


async def test_ssl_context_trusts_only_its_own_ca(tls_fake: FakeWachatServer) -> None:
    """Another fake server's context does not verify this one (each CA is throwaway)."""
    other = FakeWachatServer(KEY, tls=True)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(http, tls_fake, ssl=other.ssl_context)


@pytest.mark.parametrize(
    ("bind", "dial"),
    [
        pytest.param("127.0.0.1", "127.0.0.1", id="ipv4"),
        pytest.param("127.0.0.1", "localhost", id="localhost"),
        pytest.param(
            "::1",
            "[::1]",
            id="ipv6",
            marks=pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback"),
        ),
    ],
)
async def test_certificate_names_every_loopback_name_by_default(bind: str, dial: str) -> None:
    """The default certificate verifies for 127.0.0.1, localhost and ::1."""
    async with (
        FakeWachatServer(KEY, host=bind, tls=True) as server,
        aiohttp.ClientSession() as http,
    ):
        server.add_instance(NAME)
        url = f"https://{dial}:{server.port}/api/v1/instance/qr/image"
        async with http.get(
            url,
            params={"instanceName": NAME},
            headers={"Authorization": f"Bearer {KEY}"},
            ssl=server.ssl_context,
        ) as response:
            assert response.status == 200


async def test_tls_hostnames_makes_a_certificate_for_other_names(
    http: aiohttp.ClientSession,
) -> None:
    """tls_hostnames replaces the names: dialing 127.0.0.1 is then a host name mismatch."""
    async with FakeWachatServer(KEY, tls=True, tls_hostnames=["api.wachat.test"]) as server:
        server.add_instance(NAME)
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
            await get(http, server, ssl=server.ssl_context)
    assert "match" in str(info.value.certificate_error).lower()


def test_ssl_context_is_a_fresh_client_context_each_time() -> None:
    """Each access gives a new client context (a caller may change its own)."""
    server = FakeWachatServer(KEY, tls=True)
    first, second = server.ssl_context, server.ssl_context
    assert first is not second
    assert (first.verify_mode, first.check_hostname) == (ssl.CERT_REQUIRED, True)


def test_ca_file_holds_the_ca_and_verifies(tmp_path: Path) -> None:
    """write_ca_file writes ca_pem; a context loaded from the file verifies the server."""
    server = FakeWachatServer(KEY, tls=True)
    server.add_instance(NAME)
    path = server.write_ca_file(tmp_path / "ca.pem")
    assert path.read_bytes() == server.ca_pem
    assert server.ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    context = ssl.create_default_context(cafile=str(path))
    with server.run_in_thread():
        request = urllib.request.Request(  # noqa: S310 - loopback https
            f"{server.base_url}/instance/qr/image?instanceName={NAME}",
            headers={"Authorization": f"Bearer {KEY}"},
        )
        with urllib.request.urlopen(request, context=context) as response:  # noqa: S310
            assert (response.status, response.read()[:8]) == (200, PNG_SIGNATURE)


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(lambda s: s.ssl_context, id="ssl_context"),
        pytest.param(lambda s: s.ca_pem, id="ca_pem"),
        pytest.param(lambda s: s.write_ca_file("never-written.pem"), id="write_ca_file"),
    ],
)
def test_plain_server_has_no_tls_material(use: Any) -> None:
    """A plain HTTP server says to create it with tls=True (and writes no file)."""
    server = FakeWachatServer(KEY)
    with pytest.raises(RuntimeError, match="tls=True"):
        use(server)
    assert (server.tls, Path("never-written.pem").exists()) == (False, False)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"tls": 1}, TypeError, "tls must be a bool", id="tls-int"),
        pytest.param({"tls_hostnames": ["x.test"]}, ValueError, "needs tls=True", id="no-tls"),
        pytest.param({"tls": True, "tls_hostnames": []}, ValueError, "at least one", id="empty"),
        pytest.param({"tls": True, "tls_hostnames": "x.test"}, TypeError, "single", id="str"),
        pytest.param({"tls": True, "tls_hostnames": [b"x"]}, TypeError, "hold str", id="bytes"),
        pytest.param({"tls": True, "tls_hostnames": ["a b"]}, ValueError, "host name", id="space"),
        pytest.param({"tls": True, "tls_hostnames": ["a/b"]}, ValueError, "host name", id="slash"),
        pytest.param({"tls": True, "tls_hostnames": [""]}, ValueError, "host name", id="blank"),
        pytest.param({"tls": True, "tls_hostnames": ["é.test"]}, ValueError, "host", id="idn"),
        pytest.param(
            {"tls": True, "tls_hostnames": ["u@h.test"]}, ValueError, "host", id="userinfo"
        ),
    ],
)
def test_bad_tls_arguments_are_refused_at_construction(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad tls / tls_hostnames values fail at construction with a precise message."""
    with pytest.raises(error, match=match):
        FakeWachatServer(KEY, **kwargs)


def test_bracketed_ipv6_hostname_is_accepted() -> None:
    """An IPv6 address may be given with or without URL brackets."""
    assert _tls.check_hostnames(["[::1]", "::1", "10.0.0.1"]) == ("::1", "::1", "10.0.0.1")


def test_missing_trustme_fails_at_construction_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without trustme, tls=True is an ImportError naming the testing extra; tls=False works."""
    monkeypatch.setitem(sys.modules, "trustme", None)
    with pytest.raises(ImportError, match=r"pip install 'wachat-async\[testing\]'"):
        FakeWachatServer(KEY, tls=True)
    assert FakeWachatServer(KEY).tls is False


def test_server_context_refuses_tls_1_1() -> None:
    """The server context accepts TLS 1.2 or later only."""
    assert _tls.ThrowawayCA().server_context().minimum_version == ssl.TLSVersion.TLSv1_2


# -- the program ---------------------------------------------------------------------------


def stop_at_once(monkeypatch: pytest.MonkeyPatch, seen: list[FakeWachatServer]) -> None:
    """Make the program's server record itself and stop as soon as it listens."""
    from wachat_async.testing import _server

    class Stopping(FakeWachatServer):
        async def start(self) -> None:
            await super().start()
            seen.append(self)
            asyncio.get_running_loop().call_soon(signal.raise_signal, signal.SIGINT)

    monkeypatch.setattr(_server, "FakeWachatServer", Stopping)


def test_program_tls_writes_the_ca_file_and_prints_https(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--tls --ca-file PATH: https exports, the CA in PATH, and a line saying how to trust it."""
    seen: list[FakeWachatServer] = []
    stop_at_once(monkeypatch, seen)
    path = tmp_path / "ca.pem"
    assert cli.main(["--tls", "--ca-file", str(path), "--port", "0"]) == 0
    out = capsys.readouterr().out
    assert f"export WACHAT_BASE_URL={seen[0].base_url}" in out
    assert seen[0].base_url.startswith("https://127.0.0.1:")
    assert f"--ca-file {path}" in out
    assert path.read_bytes() == seen[0].ca_pem


def test_program_tls_without_ca_file_uses_a_temporary_file_removed_on_exit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--tls alone writes the CA to a temporary file, printed, and removed when it stops."""
    seen: list[FakeWachatServer] = []
    stop_at_once(monkeypatch, seen)
    assert cli.main(["--tls", "--port", "0"]) == 0
    out = capsys.readouterr().out
    (printed,) = [w for w in out.split() if w.endswith(".pem")]
    assert "wachat-fake-ca-" in printed
    assert not Path(printed).exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--ca-file", "x.pem"], "--ca-file needs --tls", id="ca-file-without-tls"),
        pytest.param(
            ["--tls", "--ca-file", "/nonexistent-dir/ca.pem"],
            "cannot write the CA file",
            id="unwritable",
        ),
    ],
)
def test_program_tls_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """TLS option mistakes are one line on stderr and exit status 2, before listening."""
    code = cli.main([*argv, "--port", "0", "--duration", "0.01"])
    out, err = capsys.readouterr()
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert message in err


def test_program_tls_without_trustme_exits_2_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--tls without trustme: exit 2 with the install command."""
    monkeypatch.setitem(sys.modules, "trustme", None)
    code = cli.main(["--tls", "--port", "0", "--duration", "0.01"])
    assert (code, "wachat-async[testing]" in capsys.readouterr().err) == (2, True)
