"""Shared fixtures: a fake Wachat server on loopback and a zero-wait client bound to it."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from wachat_async import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    GatewayTimeoutError,
    InstanceNotFoundError,
    QRFetchFailedError,
    QRNotSupportedError,
    RetryPolicy,
    SubscriptionRestrictedError,
    UnexpectedStatusError,
    WachatClient,
)
from wachat_async.testing import FakeWachatServer

from ._web import FRAMEWORKS

try:
    import uvloop
except ImportError:  # pragma: no cover - Windows, where uvloop does not exist
    uvloop = None

# The machine's proxy settings (a CI runner's HTTPS_PROXY for the package registries) are not
# the suite's: every test, and every process a test starts, begins without them. The tests of
# proxies set what they need with monkeypatch.
for _variable in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "WS_PROXY", "WSS_PROXY"):
    os.environ.pop(_variable, None)
    os.environ.pop(_variable.lower(), None)

#: A distinctive key, so a leak anywhere is easy to spot.
KEY = "sk-live-TOPSECRET-0123456789abcdef"
NAME = "t1_mq9r2jov_jakarta_store"


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (once: later calls return the same module)."""
    module_name = f"_wachat_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


#: The statuses Wachat documents for the QR route and the exception each maps to.
STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: SubscriptionRestrictedError,
    404: InstanceNotFoundError,
    409: QRNotSupportedError,
    502: QRFetchFailedError,
    504: GatewayTimeoutError,
}


def status_cases(*statuses: int) -> list[Any]:
    """``pytest.param(status, exception, id=status)`` for each status; undocumented ones map to
    UnexpectedStatusError."""
    return [
        pytest.param(s, STATUS_ERRORS.get(s, UnexpectedStatusError), id=str(s)) for s in statuses
    ]


@pytest.fixture
async def server() -> AsyncIterator[FakeWachatServer]:
    """A started fake server whose default key is KEY, with one Baileys instance NAME."""
    async with FakeWachatServer(api_key=KEY) as fake:
        fake.add_instance(NAME)
        yield fake


@pytest.fixture
async def client(server: FakeWachatServer) -> AsyncIterator[WachatClient]:
    """A client bound to the fake server, retrying in zero-wait mode."""
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, retry=RetryPolicy(zero_wait=True)
    ) as wachat:
        yield wachat
        assert_no_connection_checked_out(wachat)


def assert_no_connection_checked_out(client: WachatClient) -> None:
    """Fail if the client's own pool still has a connection checked out."""
    session = client._state.session
    if session is None:
        return
    connector = session.connector
    assert isinstance(connector, aiohttp.BaseConnector)
    assert not connector._acquired, f"{len(connector._acquired)} connection(s) checked out"


def assert_no_key(*texts: object) -> None:
    """Fail if KEY appears in any of *texts* (str() of each)."""
    for text in texts:
        assert KEY not in str(text), f"API key leaked into: {str(text)[:200]!r}"


def exception_texts(exc: BaseException) -> Iterator[str]:
    """str, repr and notes of *exc* and of every exception chained to it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield from getattr(current, "__notes__", [])
        yield from (str(v) for v in vars(current).values())
        current = current.__cause__ or current.__context__


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every logger at DEBUG."""
    caplog.set_level(logging.DEBUG)
    return caplog


_FROZEN_TESTS = [0]


@pytest.fixture(autouse=True)
def _collections_see_only_this_tests_objects() -> None:
    """Move everything alive before the test into the garbage collector's permanent generation
    (``gc.freeze()``), so a test's ``gc.collect()`` (unawaited coroutines, unclosed sessions)
    scans what this test made, not the whole suite's heap: late in a full run, with hundreds
    of MB alive, each full collection took about a second. Every 300 tests the frozen objects
    are thawed and collected once, so garbage from earlier tests is still freed."""
    _FROZEN_TESTS[0] += 1
    if _FROZEN_TESTS[0] % 300 == 0:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    """Each web test runs on aiohttp.web and on Starlette (tests/_web.py serves both)."""
    return str(request.param)


#: The event loops the client's lifecycle and the web routes are tested on: asyncio's own and
#: uvloop (what uvicorn runs on when installed with its standard extra).
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
if uvloop is not None:
    LOOPS["uvloop"] = uvloop.new_event_loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """pytest-asyncio's hook: a module that sets ``ON_EVERY_LOOP`` (True, or the names of some
    of its tests) runs those async tests on every loop of :data:`LOOPS`; the rest on asyncio's."""
    chosen = getattr(getattr(item, "module", None), "ON_EVERY_LOOP", False)
    if chosen is True or (chosen and item.name in chosen):
        return LOOPS
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(params=LOOPS.values(), ids=LOOPS.keys())
def new_loop(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    """For a synchronous test that makes its own event loops: each loop of :data:`LOOPS`."""
    factory: Callable[[], asyncio.AbstractEventLoop] = request.param
    return factory
