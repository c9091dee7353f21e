"""The CLI on real networks: ``--ca-file``, ``--proxy``, the proxy variables (honoured like
curl does, for any base URL but a loopback one; ``--no-env-proxy`` to ignore them), against
``FakeWachatServer(tls=True)``, a real tinyproxy and a recording proxy, in process
(``main([...])``) and in a real subprocess. Proxy passwords never show."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from wachat_async.testing import FakeWachatServer

from .._tinyproxy import PROXY_PASSWORD, Tinyproxy, running_tinyproxy
from ..conftest import KEY, NAME
from ._support import Run, cli_process

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")


@pytest.fixture(autouse=True)
def no_machine_proxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (*PROXY_VARIABLES, "ALL_PROXY", "all_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


@pytest.fixture
def tls_fake(
    wachat_server_factory: Callable[..., FakeWachatServer],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> tuple[FakeWachatServer, Path]:
    server = wachat_server_factory(api_key=KEY, tls=True)
    server.add_instance(NAME)
    ca = tmp_path / "ca.pem"
    server.write_ca_file(ca)
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    monkeypatch.setenv("WACHAT_BASE_URL", server.base_url)
    return server, ca


@pytest.fixture
def proxy(tls_fake: tuple[FakeWachatServer, Path], tmp_path: Path) -> Iterator[Tinyproxy]:
    (tmp_path / "proxy").mkdir()
    with running_tinyproxy(tmp_path / "proxy", connect_ports=[tls_fake[0].port]) as running:
        yield running


@pytest.mark.parametrize(
    "where",
    [pytest.param("after-command", id="after-command"), pytest.param("before", id="before")],
)
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["fetch", NAME, "-o", "q.png"], id="fetch"),
        pytest.param(["poll", NAME], id="poll"),
    ],
)
def test_ca_file_trusts_the_fake_servers_ca(
    run: Callable[..., Run], tls_fake: tuple[FakeWachatServer, Path], where: str, command: list[str]
) -> None:
    server, ca = tls_fake
    argv = (
        [*command, "--ca-file", str(ca)]
        if where == "after-command"
        else ["--ca-file", str(ca), *command]
    )
    result = run(*argv)
    assert result.code == 0, result.err
    assert server.request_count(NAME) >= 1


def test_without_ca_file_the_hint_names_the_flag(
    run: Callable[..., Run], tls_fake: tuple[FakeWachatServer, Path]
) -> None:
    result = run("fetch", NAME, "-o", "q.png")
    assert result.code == 6  # a connection error
    assert "certificate verification failed" in result.err
    assert "--ca-file" in result.err


def test_a_ca_file_that_does_not_sign_the_server_says_so(
    run: Callable[..., Run], tls_fake: tuple[FakeWachatServer, Path], tmp_path: Path
) -> None:
    """--ca-file with another CA: the message names the file, instead of advising --ca-file."""
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    result = run("fetch", NAME, "-o", "q.png", "--ca-file", str(other))
    assert result.code == 6
    assert "certificate verification failed" in result.err
    assert f"The CA certificates in {other} (--ca-file) do not sign" in result.err
    assert "wachat-qr --ca-file ca.pem" not in result.err
    assert "ssl.create_default_context" not in result.err


@pytest.mark.parametrize(
    ("content", "says"),
    [
        pytest.param(None, "No such file", id="missing"),
        pytest.param("not a certificate", "cannot use the CA file", id="not-pem"),
    ],
)
def test_a_bad_ca_file_is_a_usage_error(
    run: Callable[..., Run],
    tls_fake: tuple[FakeWachatServer, Path],
    tmp_path: Path,
    content: str | None,
    says: str,
) -> None:
    path = tmp_path / "bad.pem"
    if content is not None:
        path.write_text(content)
    result = run("fetch", NAME, "--ca-file", str(path))
    assert result.code == 2
    assert says in result.err
    assert tls_fake[0].request_count() == 0


def test_proxy_from_the_flag(
    run: Callable[..., Run], tls_fake: tuple[FakeWachatServer, Path], proxy: Tinyproxy
) -> None:
    """--proxy URL, for any base URL (a loopback one too); tinyproxy's log shows the CONNECT."""
    server, ca = tls_fake
    result = run(
        "fetch", NAME, "-o", "q.png", "--ca-file", str(ca), "-v", "--debug",
        "--proxy", proxy.url_with_credentials,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert f"CONNECT 127.0.0.1:{server.port} HTTP/1.1" in proxy.requests()
    assert PROXY_PASSWORD not in result.out + result.err


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
@pytest.mark.parametrize("no_env_proxy", [False, True], ids=["variables", "no-env-proxy"])
def test_the_variables_never_take_a_loopback_base_url_to_a_proxy(
    run: Callable[..., Run],
    tls_fake: tuple[FakeWachatServer, Path],
    proxy: Tinyproxy,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    no_env_proxy: bool,
) -> None:
    """A fake server on this machine is reached directly whatever HTTPS_PROXY says (like Go's
    net/http, unlike curl): the company proxy named for everything else never sees it."""
    monkeypatch.setenv(variable, proxy.url_with_credentials)
    extra = ["--no-env-proxy"] if no_env_proxy else []
    result = run("fetch", NAME, "-o", "q.png", "--ca-file", str(tls_fake[1]), *extra)
    assert result.code == 0, result.err
    assert proxy.requests() == []
    assert tls_fake[0].request_count(NAME) == 1


class _RecordingProxy:
    """A loopback "proxy" that records each request line and refuses it with a 403."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(4096)
                    if not piece:
                        break
                    data += piece
                self.lines.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        # On Linux close() alone does not wake a thread blocked in accept(); shutdown() does.
        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the recording proxy's thread did not stop"


@pytest.fixture
def recording_proxy() -> Iterator[_RecordingProxy]:
    proxy = _RecordingProxy()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
@pytest.mark.parametrize("no_env_proxy", [False, True], ids=["variables", "no-env-proxy"])
def test_the_variables_take_a_remote_base_url_to_the_proxy(
    run: Callable[..., Run],
    recording_proxy: _RecordingProxy,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    no_env_proxy: bool,
) -> None:
    """For any other base URL the variables count, as curl's do (unless --no-env-proxy):
    the CONNECT reaches the proxy the variable names (which refuses it here, offline)."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    monkeypatch.setenv("WACHAT_BASE_URL", "https://wachat.example:8443/api/v1")
    monkeypatch.setenv(variable, f"http://alice:{PROXY_PASSWORD}@127.0.0.1:{recording_proxy.port}")
    if no_env_proxy:
        # Offline, the direct attempt fails on its own: what matters is the proxy never hears.
        monkeypatch.setenv("WACHAT_BASE_URL", "https://127.0.0.2:9/api/v1")
    extra = ["--no-env-proxy"] if no_env_proxy else []
    result = run("fetch", NAME, "-o", "q.png", "--retries", "0", *extra)
    assert result.code != 0
    if no_env_proxy:
        assert recording_proxy.lines == []
    else:
        assert recording_proxy.lines == ["CONNECT wachat.example:8443 HTTP/1.1"]
        assert "proxy" in result.err.lower()
    assert PROXY_PASSWORD not in result.out + result.err


@pytest.mark.parametrize(
    "proxy_url",
    [
        pytest.param(f"alice:{PROXY_PASSWORD}@127.0.0.1:3128", id="no-scheme"),
        pytest.param(f"http://alice:{PROXY_PASSWORD}@127.0.0.1:9", id="unreachable"),
        pytest.param(f"http://alice:{PROXY_PASSWORD}#x@127.0.0.1:3128", id="raw-hash"),
    ],
)
@pytest.mark.parametrize("source", ["flag", "HTTPS_PROXY"])
def test_proxy_passwords_never_in_cli_output(
    run: Callable[..., Run],
    tls_fake: tuple[FakeWachatServer, Path],
    monkeypatch: pytest.MonkeyPatch,
    proxy_url: str,
    source: str,
) -> None:
    extra = ["--proxy", proxy_url] if source == "flag" else []
    if source != "flag":
        # The variables count for a remote base URL only (never for a loopback one).
        monkeypatch.setenv("WACHAT_BASE_URL", "https://wachat.example:8443/api/v1")
        monkeypatch.setenv("HTTPS_PROXY", proxy_url)
    result = run(
        "fetch", NAME, "--ca-file", str(tls_fake[1]), "--debug", "-v", "--retries", "0", *extra
    )
    assert result.code in (2, 6)
    assert "proxy" in result.err.lower()
    assert PROXY_PASSWORD not in result.out + result.err


def test_subprocess_through_tinyproxy_with_ca_file(
    tls_fake: tuple[FakeWachatServer, Path], proxy: Tinyproxy, tmp_path: Path
) -> None:
    """The installed entry point, a real process: --proxy honoured, the CA file trusted."""
    server, ca = tls_fake
    out = tmp_path / "q.png"
    process = cli_process(
        [
            "fetch",
            NAME,
            "-o",
            str(out),
            "--ca-file",
            str(ca),
            "--proxy",
            proxy.url_with_credentials,
        ],
        server,
        env_extra={"NO_PROXY": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    assert f"CONNECT 127.0.0.1:{server.port} HTTP/1.1" in proxy.requests()
    assert PROXY_PASSWORD not in stdout + stderr
    assert KEY not in stdout + stderr
