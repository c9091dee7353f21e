"""A hung test fails instead of stalling the run: pytest-timeout, configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HUNG = """
import asyncio
import time


async def test_awaits_an_hour():
    await asyncio.sleep(3600)


def test_sleeps_an_hour():
    time.sleep(3600)
"""


def test_every_test_has_a_timeout_of_about_a_minute(pytestconfig: pytest.Config) -> None:
    """pytest-timeout is loaded and the suite's configuration gives every test 60 s."""
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert float(pytestconfig.getini("timeout")) == 60


@pytest.mark.slow  # a pytest subprocess: seconds of start-up
def test_a_hung_test_fails_at_its_timeout(tmp_path: Path) -> None:
    """Under the project's pytest configuration (the timeout shortened to 0.5 s), a coroutine
    awaiting an hour and a function sleeping one each fail on the timeout; nothing hangs."""
    (tmp_path / "test_hung.py").write_text(HUNG, encoding="utf-8")
    proc = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            "-o",
            "timeout=0.5",
            "-q",
            "-rN",  # no short summary: CI=true prints its lines untruncated, repeating the message
            "test_hung.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.count("Failed: Timeout (>0.5s) from pytest-timeout") == 2, proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("2 failed in ")
