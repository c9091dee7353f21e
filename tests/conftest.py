"""Shared fixtures: a fake Wachat server on loopback and a zero-wait client bound to it."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import itertools
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

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
    RateLimitError,
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


T = TypeVar("T")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class SkippingLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock a test moves forward (:meth:`skip`): the timers of asyncio
    and aiohttp (timeouts, deadlines) fire when the test says, not when the scheduler does."""

    skipped = 0.0

    def time(self) -> float:
        return super().time() + self.skipped

    def skip(self, seconds: float) -> None:
        """Move this loop's clock *seconds* ahead: every timer due by then fires next turn."""
        self.skipped += seconds


def run_skipping(body: Callable[[SkippingLoop], Coroutine[Any, Any, T]]) -> T:
    """Run ``body(loop)`` to completion on a new :class:`SkippingLoop` (closed afterwards)."""
    with asyncio.Runner(loop_factory=SkippingLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, SkippingLoop)
        return runner.run(body(loop))


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until *condition* holds (a hang guard, not a timing assertion)."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), 10)


def endless(names: Iterable[str], limit: int = 1_000) -> Iterator[str]:
    """*names* over and over, like an endless iterable, until *limit* pulls: then an
    AssertionError, so that a batch that never ends fails its test instead of hanging it."""
    for pulls, name in enumerate(itertools.cycle(names)):
        assert pulls < limit, f"still pulling names after {limit}: the batch never ended"
        yield name


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
    429: RateLimitError,
}


def status_cases(*statuses: int) -> list[Any]:
    """``pytest.param(status, exception, id=status)`` for each status; undocumented ones map to
    UnexpectedStatusError."""
    return [
        pytest.param(s, STATUS_ERRORS.get(s, UnexpectedStatusError), id=str(s)) for s in statuses
    ]


# -- the slow tier ---------------------------------------------------------------------------

#: What ``pytest -m "not slow"`` (the fast tier) leaves out, by why: a test file (all of it) or
#: file::function (every case). Also slow: tests marked ``browser`` (a headless Chromium) and
#: tests using a fixture in SLOW_FIXTURES. A fast test that runs a process fails.
SLOW = {
    "a Redis server": [
        "test_taskiq_fleet.py::test_a_redis_restart_mid_run_loses_nothing",
    ],
    "one mypy --strict run over every docs block": [
        "test_readme_types.py",
    ],
    "a Jupyter kernel": [
        "test_notebook.py",
    ],
    "scripts/*.sh make (stand-in) venvs: bash and several programs a test": [
        "test_scripts.py",
    ],
    "a multi-second soak": [
        "hostile/test_soak.py",
        "test_polling.py::test_fleet_of_2000_with_502s_and_404s",
        "cli/test_fleet.py::test_a_piped_poll_of_1000_instances_has_a_whole_title_line",
    ],
    "a tinyproxy process": [
        "test_proxy.py::test_connect_to_a_forbidden_port_is_a_proxy_error",
        "test_proxy.py::test_https_through_a_proxy_ended_mid_call_leaves_no_socket_but_the_tunnels",
    ],
    "a program in a new process (0.3-2 s each: an interpreter and its imports)": [
        "test_taskiq_fleet.py::test_redis_unreachable_is_one_line_and_exit_3",
        "cli/test_commands.py::test_fetch_to_stdout_by_any_name_keeps_stdout_a_pure_png",
        "cli/test_commands.py::test_fake_server_stops_on_sigint",
        "cli/test_extras.py::test_the_cli_imports_and_runs_without_the_extra",
        "cli/test_main.py::test_python_dash_m_runs_main",
        "cli/test_main.py::test_the_library_never_imports_the_cli",
        "cli/test_main.py::test_ctrl_c_is_exit_130_in_one_line",
        "cli/test_main.py::test_a_signal_stops_a_poll_with_its_partial_summary_and_no_temporary_file",
        "cli/test_main.py::test_poll_json_into_head_stops_quietly",
        "cli/test_main.py::test_every_command_into_a_gone_reader_is_quiet",
        "cli/test_network.py::test_subprocess_through_tinyproxy_with_ca_file",
        "cli/test_streams.py::test_a_stdout_that_cannot_be_written_is_one_line_and_exit_8",
        "cli/test_streams.py::test_a_stderr_that_cannot_be_written_never_fails_a_command",
        "cli/test_streams.py::test_an_error_with_both_streams_unwritable_still_has_its_status",
        "cli/test_streams.py::test_poll_output_survives_any_stdout_encoding",
        "test_files.py::test_permission_denied_for_real_names_the_path",
        "test_files.py::test_saving_to_dev_stdout_on_a_pipe_writes_down_the_pipe",
        "test_mutants.py::test_every_mutant_matches_its_module_exactly_once",
        "test_packaging.py::test_sdist_ships_the_license_and_the_sources",
        "test_packaging.py::test_wheel_ships_the_license_py_typed_and_the_metadata",
        "test_packaging.py::test_readme_names_the_wheel_that_is_built",
        "test_proxy_examples.py::test_aiohttp_example_runs_as_a_script_with_the_fake_server",
        "test_proxy_examples.py::test_fastapi_example_runs_as_a_script_with_the_fake_server",
        "test_proxy_examples.py::test_aiohttp_example_taken_port_is_a_one_line_error",
        "test_proxy_examples.py::test_fastapi_example_taken_port_exits_nonzero_without_traceback",
        "test_quickstart.py::test_runs_as_a_script",
        "test_readme.py::test_python_block_runs_as_a_program",
        "test_readme.py::test_ten_line_example_prints_and_saves_as_it_says",
        "test_readme.py::test_pytest_example_passes_as_pasted",
        "test_readme.py::test_pytest_example_without_its_mark_would_fail",
        "test_session.py::test_loop_changes_are_silent_under_python_dev_mode",
        "test_tls.py::test_ssl_cert_file_without_trust_env_is_read_once_at_import",
        "test_web_routes.py::test_aiohttp_routes_need_nothing_beyond_the_core",
        "test_web_routes.py::test_the_core_never_imports_the_web_package",
        "testing/test_init.py::test_fault_alone_does_not_load_the_server",
        "testing/test_main.py::test_python_dash_m_runs_until_sigint",
        "testing/test_main.py::test_readme_ten_lines_work_with_the_printed_exports",
        "testing/test_main.py::test_all_interfaces_prints_urls_that_work",
        "testing/test_main.py::test_every_interface_of_both_families_serves_ipv4_and_ipv6",
        "testing/test_main.py::test_python_dash_m_stops_quietly_when_its_reader_is_gone",
        "testing/test_plugin.py::test_plugin_import_is_cheap",
        "testing/test_server.py::test_missing_segno_fails_at_construction_in_a_fresh_process",
        "test_benchmarks_smoke.py::test_main_runs_both_modes_against_a_child_process_server",
        "test_benchmarks_smoke.py::test_fleet_main_runs_the_fake_server_in_a_child_process",
        "test_benchmarks_smoke.py::test_limits_main_counts_the_programs_answers",
        "test_benchmarks_smoke.py::test_shutdown_main_ends_every_stream_and_times_the_exit",
        "test_benchmarks_smoke.py::test_fanout_main_counts_viewers_and_upstream_requests",
        "test_benchmarks_smoke.py::test_cli_fleet_main_measures_a_whole_poll",
        "test_web_shutdown.py::test_a_signal_ends_every_stream_cleanly_and_the_app_exits",
        "test_web_page_js.py",
        "testing/test_admin.py::test_the_program_serves_the_admin_route_with_admin",
    ],
    "an nginx process": [
        "test_web_nginx.py",
    ],
}
#: Fixtures that make a test slow: both ``proxy`` fixtures start tinyproxy.
SLOW_FIXTURES = {"proxy": "a tinyproxy process", "redis_port": "a Redis server"}


_SLOW_TESTS = {test for tests in SLOW.values() for test in tests}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` what SLOW, SLOW_FIXTURES and the ``browser`` marker name; in a run of the
    whole suite, an entry of SLOW that names no test (a renamed one) is an error."""
    here = Path(__file__).parent
    unmatched = set(_SLOW_TESTS)
    for item in items:
        module = item.path.relative_to(here).as_posix()
        function = getattr(item, "originalname", item.name)
        names = {module, f"{module}::{function}"}
        unmatched -= names
        if (
            names & _SLOW_TESTS
            or SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ()))
            or item.get_closest_marker("browser")
        ):
            item.add_marker(pytest.mark.slow)
    whole = [Path(arg).resolve() for arg in config.args] == [here]
    if whole and unmatched and not config.getoption("keyword"):
        raise pytest.UsageError(f"tests/conftest.py SLOW names no test: {sorted(unmatched)}")


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


@pytest.fixture(autouse=True)
def _processes_only_in_the_slow_tier(request: pytest.FixtureRequest) -> Iterator[None]:
    """Keep the fast tier fast: in a run of it, a test whose processes used CPU must be slow.
    Only there: in a full run a slow test's process may be reaped during the next test."""
    if str(request.config.getoption("markexpr", "")).strip() != "not slow":
        yield
        return
    before = _children_cpu()
    yield
    used = _children_cpu() - before
    assert not used, f"a fast test ran processes ({used:.2f} s CPU): list it in SLOW"


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
