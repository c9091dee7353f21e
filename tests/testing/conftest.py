"""Fixtures for the fake server's tests: a hand-driven clock, a started server, a plain client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from wachat_async.testing import FakeWachatServer

from ._support import KEY, NAME, Clock


@pytest.fixture
def clock() -> Clock:
    """A fake clock starting at 1000 s."""
    return Clock()


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeWachatServer]:
    """A started server (key KEY, 20 s rotation on the fake clock) with one Baileys instance."""
    async with FakeWachatServer(KEY, clock=clock) as server:
        server.add_instance(NAME)
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session."""
    async with aiohttp.ClientSession() as session:
        yield session
