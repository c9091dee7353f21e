"""``client.stats()`` and ``WACHAT_LOG``: what a client counts (shared with its views), and the
library logger's level and handler from the environment, against the fake server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import pytest

from wachat_async import (
    ClientStats,
    InstanceNotFoundError,
    PacingStats,
    RetryBudget,
    RetryPolicy,
    WachatClient,
    WachatConnectionError,
    WachatError,
)
from wachat_async import _stats as _logs
from wachat_async.testing import FakeWachatServer

from .conftest import KEY, NAME, until

ON_EVERY_LOOP = True


def policy() -> RetryPolicy:
    return RetryPolicy(zero_wait=True)


async def test_a_new_client_has_counted_nothing(client: WachatClient) -> None:
    assert client.stats() == ClientStats(
        requests=0,
        responses={},
        transport_failures={},
        calls_started=0,
        calls_succeeded=0,
        calls_failed=0,
        calls_cancelled=0,
        retries=0,
        budget_refusals=0,
        in_flight=0,
        waiting=0,
        pacing=PacingStats(
            active=False,
            paused_for=0.0,
            rate_cap=None,
            circuit="closed",
            rate_limited=0,
            pauses=0,
            circuit_openings=0,
            refused=0,
            waiting=0,
        ),
    )


async def test_a_502_then_200_call_and_a_404(
    server: FakeWachatServer, client: WachatClient
) -> None:
    server.script(NAME, [502])
    await client.get_qr_image(NAME)
    with pytest.raises(InstanceNotFoundError):
        await client.get_qr_image("missing")
    stats = client.stats()
    assert stats.requests == 3
    assert dict(stats.responses) == {200: 1, 404: 1, 502: 1}
    assert (stats.calls_started, stats.calls_succeeded, stats.calls_failed) == (2, 1, 1)
    assert (stats.retries, stats.budget_refusals, stats.calls_cancelled) == (1, 0, 0)
    assert stats.pacing.circuit == "closed"
    assert (stats.pacing.rate_limited, stats.pacing.pauses) == (0, 0)


async def test_a_snapshot_is_frozen_and_does_not_move(
    server: FakeWachatServer, client: WachatClient
) -> None:
    before = client.stats()
    await client.get_qr_image(NAME)
    assert before.requests == 0
    after = client.stats()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        after.requests = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        after.responses[200] = 5  # type: ignore[index]


async def test_views_share_the_counts(server: FakeWachatServer, client: WachatClient) -> None:
    view = client.with_options(timeout=5).with_options(retry=None)
    await view.get_qr_image(NAME)
    await client.get_instance_state(NAME)
    assert client.stats() == view.stats()
    assert client.stats().calls_succeeded == 2


async def test_budget_refusals_are_counted(server: FakeWachatServer) -> None:
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.0)
    server.script(NAME, [502])
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, retry=policy(), retry_budget=budget
    ) as client:
        with pytest.raises(WachatError):
            await client.get_qr_image(NAME)
        stats = client.stats()
    assert (stats.budget_refusals, stats.retries, stats.calls_failed) == (1, 0, 1)
    assert dict(stats.responses) == {502: 1}


async def test_transport_failures_by_kind() -> None:
    async with WachatClient(api_key=KEY, base_url="http://127.0.0.1:9/api/v1") as client:
        with pytest.raises(WachatConnectionError):
            await client.get_qr_image(NAME)
        stats = client.stats()
    assert dict(stats.transport_failures) == {"WachatConnectionError": 1}
    assert (stats.requests, dict(stats.responses)) == (1, {})


async def test_in_flight_waiting_and_a_cancelled_call(server: FakeWachatServer) -> None:
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, max_connections=1, retry=policy()
    ) as client:
        async with client.stream_qr_image(NAME):
            waiter = asyncio.create_task(client.get_qr_image(NAME))
            await until(lambda: client.stats().waiting == 1)
            stats = client.stats()
            assert (stats.in_flight, stats.waiting, stats.calls_started) == (1, 1, 2)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        stats = client.stats()
    assert (stats.in_flight, stats.waiting) == (0, 0)
    assert (stats.calls_succeeded, stats.calls_cancelled, stats.requests) == (1, 1, 1)


# -- WACHAT_LOG ------------------------------------------------------------------------------

LIBRARY = logging.getLogger("wachat_async")


@contextmanager
def no_root_handler() -> Iterator[None]:
    """No handler on the root logger (pytest's own would count as the application's)."""
    root = logging.getLogger()
    saved = root.handlers
    root.handlers = []
    try:
        yield
    finally:
        root.handlers = saved


def apply(environ: dict[str, str]) -> None:
    with no_root_handler():
        _logs.apply_log_env(environ)


@pytest.fixture
def library_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[logging.Logger]:
    """The library logger, restored afterwards; WACHAT_LOG unset, nothing applied yet."""
    level, handlers = LIBRARY.level, list(LIBRARY.handlers)
    monkeypatch.delenv("WACHAT_LOG", raising=False)
    _logs._applied.clear()
    yield LIBRARY
    for handler in LIBRARY.handlers:
        if handler not in handlers:
            LIBRARY.removeHandler(handler)
    LIBRARY.setLevel(level)
    _logs._applied.clear()


@pytest.mark.parametrize(
    ("value", "level"),
    [("info", logging.INFO), ("debug", logging.DEBUG), (" DEBUG ", logging.DEBUG)],
    ids=["info", "debug", "case-and-spaces"],
)
def test_wachat_log_sets_the_level_and_one_handler(
    library_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch, value: str, level: int
) -> None:
    monkeypatch.setenv("WACHAT_LOG", value)
    with no_root_handler():
        WachatClient(api_key=KEY)
        WachatClient(api_key=KEY)  # a second client adds nothing
        _logs._applied.clear()
        _logs.apply_log_env()  # nor does applying the same value again
    assert library_logger.level == level
    (handler,) = library_logger.handlers
    assert isinstance(handler, logging.StreamHandler)
    assert handler.formatter is not None
    assert handler.formatter._fmt == _logs.LOG_FORMAT


def test_another_value_later_changes_the_level_not_the_handlers(
    library_logger: logging.Logger,
) -> None:
    apply({"WACHAT_LOG": "debug"})
    apply({"WACHAT_LOG": "info"})
    assert library_logger.level == logging.INFO
    assert len(library_logger.handlers) == 1


def test_an_application_handler_is_kept_alone(library_logger: logging.Logger) -> None:
    root = logging.getLogger()
    with no_root_handler():
        root.addHandler(logging.NullHandler())
        _logs.apply_log_env({"WACHAT_LOG": "info"})
        assert len(root.handlers) == 1
    assert library_logger.level == logging.INFO
    assert library_logger.handlers == []


@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
def test_unset_or_empty_changes_nothing(library_logger: logging.Logger, value: str) -> None:
    apply({})
    apply({"WACHAT_LOG": value})
    assert (library_logger.level, library_logger.handlers) == (logging.NOTSET, [])


def test_an_unknown_value_is_ignored_with_one_warning(
    library_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wachat_async")
    for _ in range(3):
        _logs.apply_log_env({"WACHAT_LOG": "verbose"})  # caplog's handler on the root
    assert [r.getMessage() for r in caplog.records] == [
        "WACHAT_LOG='verbose' ignored: use info or debug"
    ]
    assert library_logger.handlers == []


@pytest.mark.parametrize(
    ("value", "debug_lines"), [("info", False), ("debug", True)], ids=["info", "debug"]
)
async def test_retry_lines_follow_wachat_log(
    server: FakeWachatServer,
    library_logger: logging.Logger,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: str,
    debug_lines: bool,
) -> None:
    """A retried 502 shows its INFO retry line on stderr at both levels, each request's DEBUG
    line only at debug; never the key."""
    monkeypatch.setenv("WACHAT_LOG", value)
    server.script(NAME, [502])
    with no_root_handler():
        client = WachatClient(api_key=KEY, base_url=server.base_url, retry=policy())
    async with client:
        await client.get_qr_image(NAME)
    err = capsys.readouterr().err
    assert "INFO wachat_async: Retrying QR call for instance" in err
    assert ("DEBUG wachat_async.http: GET " in err) == debug_lines
    assert KEY not in err
