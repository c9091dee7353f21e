"""The pytest plugin (``wachat_async.testing._plugin``): the wachat_server fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import aiohttp
import pytest

from wachat_async.testing import FakeWachatServer

from ._support import (
    NAME,
    get,
    sync_get,
)

pytest_plugins = ["pytester"]


def test_plugin_is_registered(pytestconfig: pytest.Config) -> None:
    """The pytest11 entry point loads the plugin."""
    assert pytestconfig.pluginmanager.has_plugin("wachat_async")


def test_wachat_server_fixture_in_sync_test(wachat_server: FakeWachatServer) -> None:
    """The fixture is started, empty, keyed 'test-key', and serves sync clients."""
    wachat_server.add_instance(NAME)
    _, body = sync_get(
        f"{wachat_server.base_url}/instance/state?instanceName={NAME}&apiKey=test-key"
    )
    assert json.loads(body)["success"] is True
    assert (wachat_server.api_key, list(wachat_server.instances)) == ("test-key", [NAME])


async def test_wachat_server_fixture_in_async_test(
    wachat_server: FakeWachatServer, http: aiohttp.ClientSession
) -> None:
    """The same fixture serves an async client on the test's loop."""
    wachat_server.add_instance(NAME)
    status, _, _ = await get(http, wachat_server, key="test-key")
    assert status == 200


def test_wachat_server_factory_passes_options(
    wachat_server_factory: Callable[..., FakeWachatServer],
) -> None:
    """The factory starts independent servers with the given options."""
    first = wachat_server_factory(auto_create=True)
    second = wachat_server_factory("other-key")
    assert (first.port != second.port, second.api_key) == (True, "other-key")


def test_plugin_import_is_cheap() -> None:
    """Importing the plugin loads none of the server's modules, aiohttp.web or segno."""
    code = (
        "import sys, wachat_async.testing._plugin; "
        "print(sorted(m for m in sys.modules if m.startswith('wachat_async.testing.')"
        " or m in ('aiohttp.web', 'segno')))"
    )
    out = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['wachat_async.testing._plugin']"


def test_fixture_works_in_a_users_suite(pytester: pytest.Pytester) -> None:
    """A user's test file using the fixtures passes, even with pytest-asyncio disabled."""
    pytester.makepyfile(
        """
        import json, urllib.request

        def test_state(wachat_server):
            wachat_server.add_instance("t1_abc_store", state="open")
            url = (wachat_server.base_url
                   + "/instance/state?instanceName=t1_abc_store&apiKey=test-key")
            with urllib.request.urlopen(url) as response:
                assert json.load(response)["instance"]["state"] == "open"

        def test_factory(wachat_server_factory):
            assert wachat_server_factory(latency=0.0).port > 0
        """
    )
    result = pytester.runpytest("-p", "no:asyncio", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
