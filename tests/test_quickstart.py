"""examples/quickstart.py: the fake server when no key is set, the real path when one is."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import KEY, NAME, load_example
from wachat_async.testing import FakeWachatServer

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


quickstart = load_example("quickstart")


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without WACHAT_API_KEY / WACHAT_BASE_URL."""
    monkeypatch.delenv("WACHAT_API_KEY", raising=False)
    monkeypatch.delenv("WACHAT_BASE_URL", raising=False)


def test_without_a_key_it_uses_the_fake_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No key: the fake server starts in-process, three PNGs are saved, the 404 is handled."""
    assert quickstart.main(["--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "embedded fake Wachat server" in out
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert saved == sorted(f"{n}.png" for n in quickstart.FAKE_INSTANCES)
    assert all((tmp_path / n).read_bytes().startswith(b"\x89PNG") for n in saved)
    assert out.count(": saved ") == 3
    assert "handled: InstanceNotFoundError (status 404)" in out


def test_with_a_key_it_fetches_the_named_instances(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    wachat_server_factory: Callable[..., FakeWachatServer],
) -> None:
    """A key set: the names given are fetched from WACHAT_BASE_URL; failures are reported."""
    server = wachat_server_factory(api_key=KEY)
    server.add_instance(NAME)
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    monkeypatch.setenv("WACHAT_BASE_URL", server.base_url)
    code = quickstart.main([NAME, "t1_nothere0_x/../y", "--out-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1
    assert [p.name for p in tmp_path.iterdir()] == [f"{NAME}.png"]
    assert "t1_nothere0_x/../y: failed: InstanceNotFoundError" in captured.out
    assert "handled: InstanceNotFoundError" in captured.out
    assert KEY not in captured.out + captured.err
    assert server.request_count(NAME) == 1


def test_with_a_key_and_no_names_it_asks_for_names(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key but no instance names: usage message, exit status 2, no request."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    assert quickstart.main([]) == 2
    assert "name the instances" in capsys.readouterr().err


def test_filename_stays_in_the_folder() -> None:
    """Instance names cannot steer the file outside the output folder."""
    assert quickstart.filename("../../etc/passwd") == "_.._etc_passwd.png"
    assert quickstart.filename(NAME) == f"{NAME}.png"


def test_runs_as_a_script(tmp_path: Path) -> None:
    """python examples/quickstart.py works from any folder, with no key and no network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WACHAT_")}
    done = subprocess.run(  # noqa: S603 - our interpreter, our script
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "qr-codes").glob("*.png"))) == 3
    assert "handled: InstanceNotFoundError" in done.stdout
