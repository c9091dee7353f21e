"""The checks the hostile suite relies on do fail when they should (a guard that cannot fail
proves nothing)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from wachat_async import WachatConnectionError

from ._raw_server import Hang, RawServer, Send, http_response, make_png
from .conftest import (
    KEY,
    Guard,
    assert_clean_exception,
    assert_clean_text,
    assert_no_partial_files,
    assert_pool_clean,
    collect_garbage,
    hostile_client,
    settle,
)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(KEY, id="plain"),
        pytest.param(KEY.upper(), id="upper-case"),
        pytest.param("apiKey=wk_live_H0st1le%2FKey%2B7f3a9c1e%3D5b2d", id="url-encoded"),
        pytest.param("wk_live_h0st1le%2fkey%2b7f3a9c1e%3d5b2d", id="url-encoded-lower-hex"),
        pytest.param("...Key+7f3a9c1e=...", id="fragment"),
        pytest.param("caf\udce9", id="lone-surrogate"),
    ],
)
def test_text_check_catches_every_form_of_the_key(text: str) -> None:
    """The leak check sees the key in any case, URL-encoded or in part, and non-UTF-8 text."""
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        assert_clean_text(text, "sample")


@pytest.mark.parametrize("where", ["cause", "context", "note", "attribute", "arg", "group"])
def test_exception_check_walks_the_whole_chain(where: str) -> None:
    """A key hidden in a cause, context, note, attribute, argument or group member is found."""
    error = WachatConnectionError("clean message")
    hidden = RuntimeError(f"Authorization: Bearer {KEY}")
    if where == "cause":
        error.__cause__ = hidden
    elif where == "context":
        error.__context__ = hidden
    elif where == "note":
        error.add_note(f"key was {KEY}")
    elif where == "attribute":
        error.instance_name = KEY
    elif where == "arg":
        error.args = ("clean message", {"headers": {"Authorization": KEY}})
    else:
        error.__cause__ = ExceptionGroup("group", [ValueError("x"), hidden])
    assert_clean_exception(WachatConnectionError("clean"))
    with pytest.raises(AssertionError, match="leaked"):
        assert_clean_exception(error)


def test_log_check_catches_a_key_in_a_record(caplog: pytest.LogCaptureFixture) -> None:
    """A log record whose arguments carry the key fails the guard's log check."""
    caplog.set_level(logging.DEBUG)
    logging.getLogger("somewhere.else").debug("headers: %r", {"Authorization": KEY})
    with pytest.raises(AssertionError, match="leaked"):
        Guard(caplog).logs()


async def test_task_check_sees_a_task_left_running() -> None:
    """settle() reports a task started during the test and still pending."""
    baseline = set(asyncio.all_tasks())
    task = asyncio.ensure_future(asyncio.Event().wait())
    try:
        assert await settle(baseline) == {task}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await settle(baseline) == set()


async def test_garbage_check_sees_an_unclosed_session() -> None:
    """An aiohttp session dropped without close() is reported by collect_garbage()."""
    collect_garbage()
    cycle: list[object] = [aiohttp.ClientSession()]
    cycle.append(cycle)  # only the cycle collector can free it now, inside the check
    del cycle
    problems = collect_garbage()
    assert any("Unclosed client session" in p for p in problems), problems


async def test_pool_check_sees_a_connection_held_open(guard: Guard) -> None:
    """A response neither read nor released keeps its connection checked out: the check fails."""
    body = make_png()
    async with (
        RawServer([Send(http_response(200, body)[:-10]), Hang()]) as server,
        hostile_client(server.base_url) as client,
    ):
        async with client.stream_qr_image("x") as stream:
            with pytest.raises(AssertionError, match="checked out"):
                assert_pool_clean(client)
            assert stream.bytes_read == 0
        assert_pool_clean(client)


def test_file_check_sees_a_leftover_part_file(tmp_path: Path) -> None:
    """A stray temporary file next to the target fails the partial-file check."""
    (tmp_path / ".qr.png.abc.part").write_bytes(b"half")
    with pytest.raises(AssertionError, match="part"):
        assert_no_partial_files(tmp_path)
