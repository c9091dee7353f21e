"""pytest plugin (entry point ``pytest11: wachat_async``): the ``wachat_server`` fixtures.

pytest loads this module in every run of every project that installs wachat-async, so it
imports nothing beyond pytest itself; the server (aiohttp, attrs, segno) is imported only
when a test asks for a fixture. The servers run on their own thread (``run_in_thread``), so
the fixtures work in sync tests and in async tests on any event loop, without pytest-asyncio.

Usage::

    def test_qr(wachat_server):
        wachat_server.add_instance("t1_abc_store")
        client = WachatClient(api_key=wachat_server.api_key, base_url=wachat_server.base_url)

    def test_two_accounts(wachat_server_factory):
        slow = wachat_server_factory(api_key="other", latency=0.05, auto_create=True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._server import FakeWachatServer

__all__ = ["wachat_server", "wachat_server_factory"]


@pytest.fixture
def wachat_server_factory() -> Iterator[Callable[..., FakeWachatServer]]:
    """Start fake servers with any ``FakeWachatServer`` arguments; all close at teardown."""
    from ._server import FakeWachatServer

    with contextlib.ExitStack() as stack:

        def start(api_key: str = "test-key", **kwargs: Any) -> FakeWachatServer:
            kwargs.setdefault("qr_rotation", None)
            return stack.enter_context(FakeWachatServer(api_key, **kwargs).run_in_thread())

        yield start


@pytest.fixture
def wachat_server(
    wachat_server_factory: Callable[..., FakeWachatServer],
) -> FakeWachatServer:
    """A started fake server with key ``"test-key"`` and no instances; QR rotates only on
    ``rotate_qr`` (deterministic tests)."""
    return wachat_server_factory()
