"""Fixtures of the CLI tests: main([...]) runs in-process against a fake server on a thread."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli._support import OTHER, Run
from tests.conftest import KEY, NAME
from wachat_async import RetryPolicy
from wachat_async.cli import _commands, main
from wachat_async.testing import FakeWachatServer


@pytest.fixture
def fake(wachat_server_factory: Callable[..., FakeWachatServer]) -> FakeWachatServer:
    """A fake server on its own thread (main() runs its own event loop), key KEY, two
    instances and one non-Baileys instance."""
    server = wachat_server_factory(api_key=KEY)
    server.add_instances([NAME, OTHER])
    server.add_instance("t1_cloudapi_office", integration="WHATSAPP-BUSINESS")
    return server


@pytest.fixture(autouse=True)
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run in a temporary folder with no key in the environment and zero-wait retries.

    The commands' retry policy is the one seam the tests set (no option removes the backoff's
    waits, and no test may sleep); ``--retries N`` still changes its attempts.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WACHAT_API_KEY", raising=False)
    monkeypatch.delenv("WACHAT_BASE_URL", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setattr(_commands, "RETRY_POLICY", RetryPolicy(zero_wait=True))
    return tmp_path


@pytest.fixture
def env(fake: FakeWachatServer, monkeypatch: pytest.MonkeyPatch) -> FakeWachatServer:
    """WACHAT_API_KEY and WACHAT_BASE_URL point at the fake server."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    monkeypatch.setenv("WACHAT_BASE_URL", fake.base_url)
    return fake


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Call main(argv) and return its exit code and output; fail if the key leaked."""

    def call(*argv: str, allow_key: bool = False) -> Run:
        code = main(list(argv))
        captured = capsys.readouterr()
        if not allow_key:
            assert KEY not in captured.out, "API key on stdout"
        assert KEY not in captured.err, "API key on stderr"
        assert "Traceback" not in captured.err
        return Run(code, captured.out, captured.err)

    return call


@pytest.fixture
def rotating(
    wachat_server_factory: Callable[..., FakeWachatServer], monkeypatch: pytest.MonkeyPatch
) -> FakeWachatServer:
    """A fake server whose QR changes on every request (its clock jumps a period per read)."""
    ticks = iter(range(10**9))
    server = wachat_server_factory(api_key=KEY, qr_rotation=1.0, clock=lambda: float(next(ticks)))
    server.add_instance(NAME)
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    monkeypatch.setenv("WACHAT_BASE_URL", server.base_url)
    return server


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
