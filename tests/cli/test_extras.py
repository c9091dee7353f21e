"""The optional dependencies (wachat_async.cli._extras): without the cli extra, the commands
that need rich, Pillow or segno say how to install it; the others work on the base install."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli._support import Run
from tests.conftest import NAME
from wachat_async.testing import FakeWachatServer


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        pytest.param(["poll", NAME], "rich", id="poll-without-rich"),
        pytest.param(["show", NAME], "PIL", id="show-without-pillow"),
        pytest.param(["watch", NAME], "PIL", id="watch-without-pillow"),
        pytest.param(["demo"], "segno", id="demo-without-segno"),
    ],
)
def test_missing_cli_extra_prints_the_install_hint(
    run: Callable[..., Run],
    env: FakeWachatServer,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    module: str,
) -> None:
    """Without the cli extra, the commands that need it say how to install it and exit 2,
    before any request."""
    monkeypatch.setitem(sys.modules, module, None)
    result = run(*argv)
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "pip install -e '.[cli]' in the wachat-async clone" in result.err
    assert env.request_count() == 0


def test_poll_json_works_without_rich(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scripts need no extra: poll --json runs without rich (and without a progress bar)."""
    monkeypatch.setitem(sys.modules, "rich", None)
    result = run("poll", NAME, "--json")
    assert result.code == 0
    assert result.out.count('"ok": true') == 1
    assert result.err == ""


def test_the_cli_imports_and_runs_without_the_extra(tmp_path: Path) -> None:
    """In a fresh interpreter where rich, Pillow and segno cannot be imported, the CLI still
    loads: url works, and show says what to install."""
    code = (
        "import sys\n"
        "sys.modules.update(rich=None, PIL=None, segno=None)\n"
        "from wachat_async.cli import main\n"
        f"print(main(['url', {NAME!r}, '--base-url', 'https://example.test/api/v1']))\n"
        f"print(main(['show', {NAME!r}, '--api-key', 'k' * 20]))\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"https://example.test/api/v1/instance/qr/image?instanceName={NAME}",
        "0",
        "2",
    ]
    assert done.stderr == (
        "wachat-qr: error: this command needs Pillow, from the 'cli' extra: "
        "pip install -e '.[cli]' in the wachat-async clone\n"
    )
