"""How a run ends (wachat_async.cli._exit): each error class's exit status, and one table of
statuses in the docstring, in --help and in EXIT_CODES."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.cli._support import Run
from wachat_async import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    GatewayTimeoutError,
    InstanceNotFoundError,
    InvalidImageError,
    InvalidInstanceNameError,
    InvalidResponseError,
    QRFetchFailedError,
    QRNotSupportedError,
    ResponseTooLargeError,
    SubscriptionRestrictedError,
    UnexpectedStatusError,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
    cli,
)
from wachat_async.cli import EXIT_CODES, exit_code_for


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param(ConfigurationError("no key"), 2, id="configuration"),
        pytest.param(InvalidInstanceNameError("empty"), 2, id="bad-name"),
        pytest.param(AuthenticationError(), 3, id="401"),
        pytest.param(SubscriptionRestrictedError(), 3, id="403"),
        pytest.param(BadRequestError(), 4, id="400"),
        pytest.param(InstanceNotFoundError(), 4, id="404"),
        pytest.param(QRNotSupportedError(), 4, id="409"),
        pytest.param(QRFetchFailedError(), 5, id="502"),
        pytest.param(GatewayTimeoutError(), 5, id="504"),
        pytest.param(UnexpectedStatusError(status=500), 5, id="500"),
        pytest.param(WachatConnectionError("reset"), 6, id="connection"),
        pytest.param(WachatTimeoutError("slow"), 6, id="timeout"),
        pytest.param(InvalidImageError("html"), 7, id="not-a-png"),
        pytest.param(ResponseTooLargeError("big", limit=64), 7, id="too-large"),
        pytest.param(InvalidResponseError("no state"), 7, id="bad-body"),
        pytest.param(WachatError("other"), 1, id="base-class"),
    ],
)
def test_exit_code_table(error: WachatError, code: int) -> None:
    """Every error class maps to the documented exit status."""
    assert exit_code_for(error) == code


def test_the_documented_table_is_the_set_of_statuses() -> None:
    """The package docstring's table lists exactly the statuses main() can return."""
    doc = cli.__doc__ or ""
    table = doc.split("code  meaning")[1].split("\n\n")[0]
    documented = {int(m) for m in re.findall(r"^(\d+)\s", table, flags=re.MULTILINE)}
    assert documented == set(EXIT_CODES)


def test_help_lists_every_status(run: Callable[..., Run]) -> None:
    """--help's "exit status" section names each status of the table."""
    section = run("--help").out.split("exit status:")[1].split("\n\n")[0]
    listed = {int(m) for m in re.findall(r"(?:^|\s)(\d+) \w", section)}
    assert listed == set(EXIT_CODES)
