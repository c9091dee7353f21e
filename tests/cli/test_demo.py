"""wachat-qr demo (wachat_async.cli._demo): a fleet on an in-process fake server, end to end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli._support import Run, decode, terminal_to_image


def test_demo_runs_end_to_end(run: Callable[..., Run], cli_env: Path) -> None:
    """demo polls 50 fake instances: 47 PNGs saved, 3 expected failures, one QR drawn, exit 0."""
    result = run("demo", "--no-wait")
    assert result.code == 0
    saved = list((cli_env / "qr-codes").glob("*.png"))
    assert len(saved) == 47
    for label in (
        "ok",
        "QRNotSupportedError (409)",
        "InstanceNotFoundError (404)",
        "QRFetchFailedError (502)",
    ):
        assert label in result.out
    assert result.out.count("expected:") == 3
    assert "(the retries absorb them)" in result.out
    drawing = "\n".join(
        line for line in result.out.splitlines() if line and set(line) <= {"█", "▀", "▄", " "}
    )
    payload = decode(terminal_to_image(drawing))
    assert payload.startswith("wachat-fake:t1_")


def test_demo_quiet_with_custom_dir(run: Callable[..., Run], cli_env: Path) -> None:
    """--quiet prints nothing; --out-dir chooses the folder; --instances the fleet size."""
    result = run("demo", "--no-wait", "-q", "--out-dir", "elsewhere", "--instances", "12")
    assert (result.code, result.out, result.err) == (0, "", "")
    assert len(list((cli_env / "elsewhere").glob("*.png"))) == 9


@pytest.mark.parametrize(
    ("retries", "unexpected"),
    [
        pytest.param("0", "4 instances failed that were meant to succeed", id="no-retries"),
        pytest.param("1", "1 instance failed that was meant to succeed", id="one-retry"),
    ],
)
def test_demo_with_too_few_retries_reports_unexpected_failures(
    run: Callable[..., Run], retries: str, unexpected: str
) -> None:
    """The demo honours --retries: with too few, the transient 502/504s are not absorbed, and
    the demo says so and exits 1 (one instance needs two retries)."""
    result = run("demo", "--no-wait", "--instances", "12", "--retries", retries)
    assert result.code == 1
    assert "(too few --retries)" in result.out
    assert result.err.splitlines() == [f"wachat-qr: error: {unexpected}"]
