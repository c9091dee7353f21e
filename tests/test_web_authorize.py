"""wachat_async.web ``authorize``, both frameworks: every shape it may return, and fail-closed.

``authorize`` returns ``True`` or ``False``, or an awaitable of one (awaited once). Anything
else (another type, an awaitable of an awaitable, an exception, a cancelled future) refuses
with the same 403 as a ``False``, is logged as an error (a wrong type once per kind), and never
leaves a "coroutine was never awaited" or "exception was never retrieved" warning behind.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests._web import raw_request, serve, until, watch_tasks
from tests.conftest import KEY, NAME, assert_no_key
from wachat_async import RetryPolicy, WachatClient
from wachat_async.testing import FakeWachatServer
from wachat_async.web._core import Gate

#: Every async test here runs on asyncio's loop and on uvloop (tests/conftest.py).
ON_EVERY_LOOP = True

SECRET_TEXT = "db-password=hunter2"  # an exception's text: never in an answer
ROUTES = {"png": f"/qr/{NAME}.png", "events": f"/qr/{NAME}/events", "page": f"/qr/{NAME}"}
ROUTE_PARAMS = [pytest.param(route, id=route) for route in ROUTES]


@pytest.fixture
async def fake() -> AsyncIterator[FakeWachatServer]:
    async with FakeWachatServer(api_key=KEY, qr_rotation=None) as server:
        server.add_instance(NAME)
        yield server


@pytest.fixture
async def wachat(fake: FakeWachatServer) -> AsyncIterator[WachatClient]:
    async with WachatClient(
        api_key=KEY, base_url=fake.base_url, retry=RetryPolicy(zero_wait=True)
    ) as client:
        yield client


@pytest.fixture
def no_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Every warning raised meanwhile, collected after a garbage collection (an unawaited
    coroutine warns when it is collected); the test fails if there is one."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
        gc.collect()
    assert [str(w.message) for w in caught] == []


# -- the shapes ----------------------------------------------------------------------------------
# Each maker returns an authorize; `made` collects what it handed out, to check it afterwards.

Maker = Callable[[list[Any]], Callable[[object, str], Any]]


async def _verdict(value: object) -> Any:
    return value


def sync_value(value: object) -> Maker:
    return lambda made: lambda request, name: value


def async_value(value: object) -> Maker:
    def make(made: list[Any]) -> Callable[[object, str], Any]:
        async def authorize(request: object, name: str) -> Any:
            return value

        return authorize

    return make


def sync_coroutine(value: object) -> Maker:
    """A plain function that returns a coroutine (``lambda r, n: check(r, n)``)."""
    return lambda made: lambda request, name: _verdict(value)


def sync_future(value: object, *, done: bool) -> Maker:
    """A plain function that returns a Future, already resolved or resolved later."""

    def make(made: list[Any]) -> Callable[[object, str], Any]:
        def authorize(request: object, name: str) -> Any:
            future = asyncio.get_running_loop().create_future()
            if done:
                future.set_result(value)
            else:
                asyncio.get_running_loop().call_soon(future.set_result, value)
            made.append(future)
            return future

        return authorize

    return make


def sync_task(value: object) -> Maker:
    def make(made: list[Any]) -> Callable[[object, str], Any]:
        def authorize(request: object, name: str) -> Any:
            task = asyncio.get_running_loop().create_task(_verdict(value))
            made.append(task)
            return task

        return authorize

    return make


def async_returning_coroutine(made: list[Any]) -> Callable[[object, str], Any]:
    """The bug: ``async def authorize(...): return check(...)`` (the inner one not awaited)."""

    async def authorize(request: object, name: str) -> Any:
        inner = _verdict(True)
        made.append(inner)
        return inner

    return authorize


def async_returning_task(made: list[Any]) -> Callable[[object, str], Any]:
    async def authorize(request: object, name: str) -> Any:
        task = asyncio.get_running_loop().create_task(asyncio.Event().wait())  # never done
        made.append(task)
        return task

    return authorize


def async_returning_failed_future(made: list[Any]) -> Callable[[object, str], Any]:
    async def authorize(request: object, name: str) -> Any:
        future = asyncio.get_running_loop().create_future()
        future.set_exception(RuntimeError(SECRET_TEXT))
        made.append(future)
        return future

    return authorize


def sync_future_of_coroutine(made: list[Any]) -> Callable[[object, str], Any]:
    def authorize(request: object, name: str) -> Any:
        future = asyncio.get_running_loop().create_future()
        inner = _verdict(True)
        made.append(inner)
        future.set_result(inner)
        return future

    return authorize


def sync_cancelled_future(made: list[Any]) -> Callable[[object, str], Any]:
    def authorize(request: object, name: str) -> Any:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        return future

    return authorize


def sync_failed_task(made: list[Any]) -> Callable[[object, str], Any]:
    async def fail() -> bool:
        raise RuntimeError(SECRET_TEXT)

    def authorize(request: object, name: str) -> Any:
        return asyncio.get_running_loop().create_task(fail())

    return authorize


def sync_raises(made: list[Any]) -> Callable[[object, str], Any]:
    def authorize(request: object, name: str) -> Any:
        raise RuntimeError(SECRET_TEXT)

    return authorize


def async_raises(made: list[Any]) -> Callable[[object, str], Any]:
    async def authorize(request: object, name: str) -> Any:
        await asyncio.sleep(0)
        raise LookupError(SECRET_TEXT)

    return authorize


def async_generator(made: list[Any]) -> Callable[[object, str], Any]:
    async def authorize(request: object, name: str) -> Any:
        yield True

    return authorize


def other_loop_future(made: list[Any]) -> Callable[[object, str], Any]:
    other = asyncio.new_event_loop()
    made.append(other)

    def authorize(request: object, name: str) -> Any:
        return other.create_future()  # pending: awaiting it here is an error

    return authorize


class _Awaitable:
    """A hand-written awaitable (``__await__``) that gives *value*."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __await__(self) -> Any:
        return _verdict(self.value).__await__()


ALLOWED = [
    pytest.param(sync_value(True), id="sync-true"),
    pytest.param(async_value(True), id="async-true"),
    pytest.param(sync_coroutine(True), id="sync-returns-coroutine-of-true"),
    pytest.param(sync_future(True, done=True), id="sync-returns-done-future"),
    pytest.param(sync_future(True, done=False), id="sync-returns-pending-future"),
    pytest.param(sync_task(True), id="sync-returns-task"),
    pytest.param(lambda made: lambda r, n: _Awaitable(True), id="custom-awaitable"),
]

REFUSED = [
    pytest.param(sync_value(False), "", id="sync-false"),
    pytest.param(async_value(False), "", id="async-false"),
    pytest.param(sync_future(False, done=False), "", id="sync-returns-future-of-false"),
    pytest.param(sync_value(None), "returned NoneType", id="none"),
    pytest.param(sync_value(1), "returned int", id="one"),
    pytest.param(sync_value("yes"), "returned str", id="truthy-str"),
    pytest.param(async_value([True]), "returned list", id="async-list"),
    pytest.param(sync_coroutine(1), "returned int", id="coroutine-of-int"),
    pytest.param(async_returning_coroutine, "an awaitable of an awaitable", id="nested-coroutine"),
    pytest.param(async_returning_task, "an awaitable of an awaitable", id="nested-task"),
    pytest.param(
        async_returning_failed_future, "an awaitable of an awaitable", id="nested-failed-future"
    ),
    pytest.param(sync_future_of_coroutine, "an awaitable of an awaitable", id="future-of-coro"),
    pytest.param(sync_cancelled_future, "was cancelled", id="cancelled-future"),
    pytest.param(sync_failed_task, "authorize raised", id="failed-task"),
    pytest.param(sync_raises, "authorize raised", id="sync-raises"),
    pytest.param(async_raises, "authorize raised", id="async-raises"),
    pytest.param(async_generator, "returned async_generator", id="async-generator"),
    pytest.param(other_loop_future, "authorize raised", id="future-of-another-loop"),
]


def _close(made: list[Any]) -> None:
    for thing in made:
        if isinstance(thing, asyncio.AbstractEventLoop):
            thing.close()


@pytest.mark.parametrize("route", ROUTE_PARAMS)
@pytest.mark.parametrize("maker", ALLOWED)
async def test_true_or_an_awaitable_of_true_lets_the_request_through(
    framework: str,
    fake: FakeWachatServer,
    wachat: WachatClient,
    no_warnings: list[warnings.WarningMessage],
    route: str,
    maker: Maker,
) -> None:
    """A bool, or any awaitable of one (coroutine, future, task, ``__await__``): served."""
    made: list[Any] = []
    async with serve(framework, wachat, authorize=maker(made)) as base:
        response = await raw_request(base, "GET", ROUTES[route])
    assert response.status == 200, response.body[:200]
    assert all(t.done() for t in made if isinstance(t, asyncio.Future))
    await until(lambda: not watch_tasks(), "no watch left")


@pytest.mark.parametrize("route", ROUTE_PARAMS)
@pytest.mark.parametrize(("maker", "logged"), REFUSED)
async def test_anything_else_refuses_with_a_plain_403_and_is_logged(
    framework: str,
    fake: FakeWachatServer,
    wachat: WachatClient,
    caplog: pytest.LogCaptureFixture,
    no_warnings: list[warnings.WarningMessage],
    route: str,
    maker: Maker,
    logged: str,
) -> None:
    """False, a wrong type, a nested awaitable, an exception, a cancelled future: the same
    403 body as a refusal (no exception text), nothing upstream, an error in the log (none for
    a plain False), no warning; a nested coroutine is closed, a nested task cancelled."""
    caplog.set_level(logging.DEBUG, logger="wachat_async.web")
    made: list[Any] = []
    try:
        async with serve(framework, wachat, authorize=maker(made)) as base:
            response = await raw_request(base, "GET", ROUTES[route])
    finally:
        _close(made)
    assert response.status == 403
    assert json.loads(response.body) == {"error": "forbidden", "instance": NAME}
    assert SECRET_TEXT.encode() not in response.body
    assert fake.request_count() == 0
    assert watch_tasks() == []
    errors = [r for r in caplog.records if r.name == "wachat_async.web" and r.levelname == "ERROR"]
    if logged:
        assert len(errors) == 1, [r.getMessage() for r in caplog.records]
        assert logged in errors[0].getMessage()
        assert NAME in errors[0].getMessage()
    else:
        assert errors == []
    for thing in made:
        if asyncio.iscoroutine(thing):
            assert thing.cr_frame is None  # closed: it never runs, and never warns
        elif isinstance(thing, asyncio.Task):
            await until(thing.done, "the nested task ends")
            assert thing.cancelled()
    made.clear()
    gc.collect()  # a failed future nobody retrieved would complain now, in asyncio's log
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    assert_no_key(caplog.text)


async def test_a_wrong_type_is_logged_as_an_error_once_per_kind(
    framework: str,
    fake: FakeWachatServer,
    wachat: WachatClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A programming error repeats on every request: the first of each kind is an error, the
    rest debug lines (every one still refuses)."""
    caplog.set_level(logging.DEBUG, logger="wachat_async.web")
    results: list[object] = [None, None, 1, None, 1]

    def authorize(request: object, name: str) -> object:
        return results.pop(0)

    async with serve(framework, wachat, authorize=authorize) as base:
        statuses = [(await raw_request(base, "GET", ROUTES["page"])).status for _ in range(5)]
    assert statuses == [403] * 5
    web = [r for r in caplog.records if r.name == "wachat_async.web"]
    assert [(r.levelname, "NoneType" in r.getMessage()) for r in web] == [
        ("ERROR", True),
        ("DEBUG", True),
        ("ERROR", False),
        ("DEBUG", True),
        ("DEBUG", False),
    ]


async def test_an_exception_is_logged_with_its_traceback_once_a_minute_per_cause(
    framework: str,
    fake: FakeWachatServer,
    wachat: WachatClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception (a database down, say) is an error with the traceback and the exception's
    type and text, so the application's bug can be found; the same cause again within a
    minute is a debug line, so a rule that fails on every request cannot flood the log."""
    caplog.set_level(logging.DEBUG, logger="wachat_async.web")
    made: list[Any] = []
    async with serve(framework, wachat, authorize=sync_raises(made)) as base:
        for _ in range(3):
            assert (await raw_request(base, "GET", ROUTES["png"])).status == 403
    web = [r for r in caplog.records if r.name == "wachat_async.web"]
    assert [r.levelname for r in web] == ["ERROR", "DEBUG", "DEBUG"]
    assert "Traceback (most recent call last)" in web[0].getMessage()
    assert f"RuntimeError: {SECRET_TEXT!r}" in web[0].getMessage()
    assert "in authorize" in web[0].getMessage()


@pytest.mark.parametrize(
    ("later", "second"), [(59.9, "DEBUG"), (60.0, "ERROR")], ids=["within", "after"]
)
async def test_the_same_cause_is_an_error_again_after_a_minute(
    caplog: pytest.LogCaptureFixture, later: float, second: str
) -> None:
    """Per cause (type and the place it was raised): another cause is an error at once."""
    caplog.set_level(logging.DEBUG, logger="wachat_async.web")
    now = [0.0]

    def rule(request: object, name: str) -> bool:
        if name == "other":
            raise KeyError(name)
        raise RuntimeError(name)

    gate: Gate[object] = Gate(rule, 256, clock=lambda: now[0])
    await gate.is_authorized(None, "a")
    await gate.is_authorized(None, "other")
    now[0] = later
    await gate.is_authorized(None, "b")
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR", second]


async def test_cancelling_the_request_is_not_a_refusal(wachat: WachatClient) -> None:
    """While authorize awaits, a cancellation of the request's own task propagates (the
    request ends), where a cancelled future of authorize's own refuses."""
    from wachat_async.web._core import Gate

    started = asyncio.Event()

    async def slow(request: object, name: str) -> bool:
        started.set()
        await asyncio.Event().wait()
        return True

    gate: Gate[object] = Gate(slow, 256)
    task = asyncio.create_task(gate.is_authorized(object(), NAME))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
