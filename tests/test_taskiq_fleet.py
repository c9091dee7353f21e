"""examples/taskiq_fleet: taskiq workers and the producer against a real redis-server, fake API.

Each test starts what it needs on loopback: Debian's ``redis-server`` (on a free port, no
persistence; with an append-only file for the restart test), the fake API
(``python -m wachat_async.testing`` in a subprocess), ``taskiq worker`` subprocesses (each in
its own process group) and the producer as a subprocess, exactly as the recipe's README runs
them. Every wait is bounded (``RUN_LIMIT``, ``STEP_LIMIT``, ``KILL_LIMIT``) and fails saying
what it waited for, with the tail of every log; every process is SIGKILLed in a ``finally``
or a fixture's teardown, whether the test passed or not; every output goes to a file, never
a pipe that could fill up. Without ``redis-server`` the module is skipped locally and fails
in CI (``CI=true``): there it must run.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wachat_async.testing import FakeWachatServer

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "taskiq_fleet"
REDIS_SERVER = shutil.which("redis-server")
TASKIQ = Path(sys.executable).with_name("taskiq")
KEY = "wk_fleet_T0PSECRET_9d8c7b6a"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = [f"t1_{i:08x}_fleet_store" for i in range(2000)]

if REDIS_SERVER is None:
    reason = "needs Debian's redis-server (apt-get install redis-server; .ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)  # a skip in CI would hide a missing install step
    pytest.skip(reason, allow_module_level=True)

import redis  # noqa: E402 - after the skip: the fleet extra brings it
import redis.asyncio  # noqa: E402
from taskiq import TaskiqResult  # noqa: E402
from taskiq.serializers import JSONSerializer  # noqa: E402

from examples.taskiq_fleet import produce, worker  # noqa: E402

#: Every wait in this module is bounded; these are the bounds (seconds). A 2,000-name run takes
#: ~20 s on a loaded 2-core machine; a run that needs ten times that is stuck, not slow.
RUN_LIMIT = 200.0
STEP_LIMIT = 60.0
KILL_LIMIT = 10.0
# pytest-timeout past those bounds, so they fail first, with every log's tail.
pytestmark = pytest.mark.timeout(RUN_LIMIT + 60)


def _until(
    condition: Callable[[], bool],
    what: str,
    *,
    limit: float = STEP_LIMIT,
    context: Callable[[], str] = lambda: "",
) -> None:
    """Poll *condition* every 50 ms; fail naming *what* (and *context*) after *limit* s."""
    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"gave up after {limit:g} s waiting for {what}\n{context()}", pytrace=False)
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _group_members(pgid: int) -> bool:
    """Whether any process is still in process group *pgid* (Linux: ``/proc/PID/stat``)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rpartition(")")[2].split()[2]) == pgid:
                return True
    return False


def _signal(proc: subprocess.Popen[Any], *, group: bool = False) -> None:
    """SIGKILL *proc*, or its whole process group with *group*.

    Once *proc* is reaped its id may belong to someone else's process: then nothing, except
    a group that still has members (a leader that died on its own leaves its workers), whose
    id cannot have been reused.
    """
    if proc.returncode is not None and not (group and _group_members(proc.pid)):
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()


def _stop(proc: subprocess.Popen[Any], what: str, *, group: bool = False) -> None:
    """SIGKILL *proc* (its whole process group with *group*) and reap it, or fail saying so."""
    _signal(proc, group=group)
    try:
        proc.wait(timeout=KILL_LIMIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} (pid {proc.pid}) still running {KILL_LIMIT:g} s after SIGKILL")


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return f"({path.name}: none)"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f"--- {path.name} (last {len(text)} lines)\n" + "\n".join(text)


class RedisServer:
    """A private ``redis-server`` on a loopback port; :meth:`close` always kills it.

    ``durable``: an append-only file synced on every write (``appendfsync always``), so a
    SIGKILLed server restarted by :meth:`restart` comes back with every task and result.
    """

    def __init__(self, folder: Path, *, durable: bool = False) -> None:
        self.folder, self.port = folder, 0
        persistence = ("--appendonly", "yes", "--appendfsync", "always") if durable else ()
        self.options = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *persistence)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on a free port (another of up to 5 if one is taken first), PING answered."""
        for _ in range(5):
            self.port = _free_port()
            if self._launch():
                return
        pytest.fail("redis-server did not start on any of 5 free ports", pytrace=False)

    def restart(self) -> None:
        """Start again on the same port (after :meth:`kill`): the workers' REDIS_URL."""
        if not self._launch():
            pytest.fail(f"redis-server could not start again on port {self.port}", pytrace=False)

    def _launch(self) -> bool:
        """True once PING is answered; False if the server exited (its port was taken)."""
        assert REDIS_SERVER is not None
        self.proc = proc = subprocess.Popen(  # noqa: S603 - a fixed program on loopback
            [REDIS_SERVER, *self.options, "--port", str(self.port), "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)

        def up() -> bool:
            if proc.poll() is not None:
                return True
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            _until(up, f"redis-server to answer PING on port {self.port}", limit=20)
        finally:
            client.close()
        return proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no save beyond what is synced) and reap it."""
        if self.proc is not None:
            _stop(self.proc, "redis-server")
            self.proc = None

    close = kill


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A private redis-server on a free loopback port, no persistence; killed at the end."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server.port
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_port: int) -> str:
    """The private Redis, emptied for this test."""
    with redis.Redis(port=redis_port) as client:
        client.flushall()
    return f"redis://127.0.0.1:{redis_port}/0"


class FakeApi:
    """``python -m wachat_async.testing`` in a subprocess: every name exists, QRs never rotate.

    A subprocess, not a thread of the test process: under ``coverage run`` (the full test
    command) a fake server on a thread is traced and shares pytest's GIL, and serving
    thousands of QRs then takes twice as long as the workers need.
    """

    def __init__(self, folder: Path) -> None:
        options = ("--port", "0", "--auto-create", "--rotation", "0", "--log-limit", "0")
        self.log = folder / "fake.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
                [sys.executable, "-m", "wachat_async.testing", *options, "--api-key", KEY],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.base_url = ""

        def listening() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"the fake server exited ({self.proc.returncode})\n{_tail(self.log)}")
            first = self.log.read_text(encoding="utf-8").partition("\n")
            self.base_url = first[0].rpartition(" ")[2] if first[1] else ""
            return self.base_url.startswith("http://127.0.0.1:")

        _until(listening, "the fake server to listen", context=lambda: _tail(self.log))

    def close(self) -> None:
        _stop(self.proc, "the fake server")


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeApi]:
    """The fake API for the fleet tests, killed at the end of the module."""
    api = FakeApi(tmp_path_factory.mktemp("fake"))
    try:
        yield api
    finally:
        api.close()


def _env(redis_url: str, server: FakeWachatServer | FakeApi) -> dict[str, str]:
    env = dict(os.environ)
    env.update(REDIS_URL=redis_url, WACHAT_BASE_URL=server.base_url, WACHAT_API_KEY=KEY)
    return env


class Fleet:
    """Worker groups and producers started by one test; :meth:`close` SIGKILLs them all.

    Every process writes to a file in the test's folder (never a pipe that could fill up and
    block it), and every failure message carries the tail of each file.
    """

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.groups: list[subprocess.Popen[bytes]] = []
        self.producers: list[subprocess.Popen[bytes]] = []

    def start(self, processes: int) -> subprocess.Popen[bytes]:
        """``taskiq worker examples.taskiq_fleet.worker:broker --workers N`` in a new session."""
        index = len(self.groups)
        workers = ("--workers", str(processes), "--log-level", "WARNING")
        with (self.tmp / f"worker{index}.log").open("wb") as log:
            proc = subprocess.Popen(  # noqa: S603 - our venv's taskiq, fixed arguments
                [str(TASKIQ), "worker", "examples.taskiq_fleet.worker:broker", *workers],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.groups.append(proc)
        return proc

    def log(self, index: int) -> str:
        return (self.tmp / f"worker{index}.log").read_text(encoding="utf-8", errors="replace")

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the group: the taskiq manager and its worker processes, no clean-up."""
        _stop(proc, "a taskiq worker group", group=True)

    def produce(self, names: list[str], out: Path, *extra: str) -> subprocess.Popen[bytes]:
        """The producer on *names*, with a ``--timeout`` unless *extra* gives one."""
        index = len(self.producers)
        names_file = self.tmp / f"names{index}.txt"
        names_file.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        options = ["--names-file", str(names_file), "--out-dir", str(out), *extra]
        if "--timeout" not in extra:
            options += ["--timeout", str(RUN_LIMIT)]
        with (
            (self.tmp / f"produce{index}.out").open("wb") as out_file,
            (self.tmp / f"produce{index}.err").open("wb") as err_file,
        ):
            proc = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
                [sys.executable, "-m", "examples.taskiq_fleet.produce", *options],
                cwd=ROOT,
                env=self.env,
                stdout=out_file,
                stderr=err_file,
            )
        self.producers.append(proc)
        return proc

    def err(self, producer: subprocess.Popen[bytes]) -> str:
        index = self.producers.index(producer)
        return (self.tmp / f"produce{index}.err").read_text(encoding="utf-8", errors="replace")

    def context(self) -> str:
        """The tail of every log this test wrote, for a failure message."""
        logs = sorted(self.tmp.glob("worker*.log")) + sorted(self.tmp.glob("produce*.*"))
        return "\n".join(_tail(path) for path in logs)

    def finish(
        self, producer: subprocess.Popen[bytes], out: Path | None = None
    ) -> tuple[int, dict[str, Any], str]:
        """Wait for the producer: exit status, last stdout line as JSON, stderr.

        Bounded three ways, each failing with every log's tail: the producer's own
        ``--timeout`` (then ``RUN_LIMIT`` + 30 s), every worker group gone, or no new PNG in
        *out* for ``STEP_LIMIT`` seconds while the producer still waits.
        """
        end = time.monotonic() + RUN_LIMIT + 30
        saved, progress = -1, time.monotonic()
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                producer.wait(timeout=0.2)
                break
            now = time.monotonic()
            if self.groups and all(group.poll() is not None for group in self.groups):
                self._fail("every worker group exited while the producer waits")
            if out is not None and _saved(out) != saved:
                saved, progress = _saved(out), now
            elif out is not None and now - progress > STEP_LIMIT:
                self._fail(f"no new PNG for {STEP_LIMIT:g} s ({saved} saved)")
            if now > end:
                self._fail(f"the producer ran over {RUN_LIMIT + 30:g} s")
        index = self.producers.index(producer)
        out_lines = (self.tmp / f"produce{index}.out").read_text(encoding="utf-8").splitlines()
        if not out_lines:
            self._fail(f"the producer exited {producer.returncode} printing nothing")
        return producer.returncode, json.loads(out_lines[-1]), self.err(producer)

    def _fail(self, why: str) -> None:
        self.close()  # the logs are complete once every process is gone
        pytest.fail(f"{why}\n{self.context()}", pytrace=False)

    def close(self) -> None:
        """SIGKILL every producer and worker group (all signalled before any is waited for)."""
        started = [(p, False) for p in self.producers] + [(g, True) for g in self.groups]
        for proc, group in started:
            _signal(proc, group=group)
        for proc, group in started:
            _stop(proc, "a taskiq worker group" if group else "the producer", group=group)


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str, fake: FakeApi) -> Iterator[Fleet]:
    """Worker groups for this test, pointed at the private Redis and the fake API."""
    started = Fleet(tmp_path, _env(redis_url, fake))
    try:
        yield started
    finally:
        started.close()


def _saved(out: Path) -> int:
    """How many PNGs are in *out* so far (names only: cheap enough to poll)."""
    with contextlib.suppress(FileNotFoundError):
        return sum(name.endswith(".png") for name in os.listdir(out))
    return 0


def _pngs(out: Path) -> dict[str, bytes]:
    if not out.exists():
        return {}
    return {p.name: p.read_bytes()[:8] for p in out.iterdir() if p.name.endswith(".png")}


def _redis_left(redis_url: str) -> tuple[int, int]:
    """(entries in the task stream, pending entries of its group) once a run is over."""
    with redis.Redis.from_url(redis_url) as client:
        pending = client.xpending(worker.QUEUE, worker.QUEUE)["pending"]
        return client.xlen(worker.QUEUE), pending


def _one_png_per_name(out: Path, names: list[str]) -> None:
    """Exactly one PNG per name (and at most the temporary files a SIGKILL cut short)."""
    pngs = _pngs(out)
    assert sorted(pngs) == sorted(f"{n}.png" for n in names)
    assert set(pngs.values()) == {PNG_SIGNATURE}
    assert [p.name for p in out.iterdir() if not p.name.endswith((".png", ".part"))] == []


def test_two_thousand_names_over_two_workers_give_one_png_each(
    fleet: Fleet, tmp_path: Path, redis_url: str
) -> None:
    """2,000 names, `--workers 2`: exit 0, ok 2000, exactly one PNG per name, Redis left empty."""
    fleet.start(2)
    out = tmp_path / "qr"
    code, summary, err = fleet.finish(fleet.produce(NAMES, out), out)
    assert (code, summary["ok"], summary["failed"], err) == (0, 2000, 0, "")
    assert set(summary) == {"ok", "failed", "seconds"}
    assert summary["seconds"] > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.png" for n in NAMES)
    _one_png_per_name(out, NAMES)
    assert _redis_left(redis_url) == (0, 0)
    assert KEY not in fleet.log(0)
    assert "Traceback" not in fleet.log(0)


def _consumers(redis_url: str) -> dict[int, int]:
    """Pending messages per consumer, keyed by the pid in the recipe's ``HOST-PID-RANDOM`` names."""
    with redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2) as client:
        try:
            rows = client.xpending(worker.QUEUE, worker.QUEUE)["consumers"]
        except (redis.ResponseError, redis.ConnectionError):  # no group yet; Redis away
            return {}
    return {int(row["name"].decode().split("-")[-2]): row["pending"] for row in rows}


def _worker_pid(group: subprocess.Popen[bytes]) -> int:
    """The pid of the one worker process a `--workers 1` taskiq manager forked."""
    children: list[int] = []

    def forked() -> bool:
        if group.poll() is not None:
            pytest.fail(f"the taskiq manager exited ({group.returncode}) before forking")
        path = Path(f"/proc/{group.pid}/task/{group.pid}/children")
        children[:] = [int(pid) for pid in path.read_text().split()] if path.exists() else []
        return len(children) == 1

    _until(forked, "the taskiq manager to fork its worker")
    return children[0]


def test_a_worker_killed_mid_run_loses_nothing(
    fleet: Fleet, tmp_path: Path, redis_url: str
) -> None:
    """SIGKILL one of two worker groups while it holds tasks: the other runs them, all 2,000."""
    victim, survivor = fleet.start(1), fleet.start(1)
    victim_pid = _worker_pid(victim)
    out = tmp_path / "qr"
    producer = fleet.produce(NAMES, out)
    # Late enough that the survivor alone has about as much left as the reclaim takes
    # (idle_timeout + reclaim_interval, 6 s), early enough that the victim holds tasks.
    _until(
        lambda: _saved(out) >= 1400 and _consumers(redis_url).get(victim_pid, 0) >= 10,
        "the victim to hold tasks after 1,400 results",
        limit=RUN_LIMIT / 2,
        context=fleet.context,
    )
    fleet.kill(victim)
    held_when_killed = _consumers(redis_url)[victim_pid]
    code, summary, err = fleet.finish(producer, out)
    assert (code, summary["ok"], summary["failed"], err) == (0, 2000, 0, "")
    _one_png_per_name(out, NAMES)
    assert held_when_killed >= 1
    assert "re-delivering" in fleet.log(1)
    assert "Traceback" not in fleet.log(1)
    assert survivor.poll() is None
    assert _redis_left(redis_url) == (0, 0)


OUTAGE = "Redis unreachable"
BACK = "Redis reachable again after"
OUTAGE_NAMES = NAMES[:1000]


def test_a_redis_restart_mid_run_loses_nothing(tmp_path: Path, fake: FakeApi) -> None:
    """Redis SIGKILLed mid-run and started again (same port, its append-only file): one line
    per process when it goes and one when it is back, no traceback, one PNG per name; a worker
    started while Redis is down waits for it, and after the restart the reclaim still works
    (the worker that ran through the outage is SIGKILLed holding tasks; the other runs them)."""
    server = RedisServer(tmp_path / "redis", durable=True)
    (tmp_path / "redis").mkdir()
    fleet = Fleet(tmp_path, {})
    try:
        server.start()
        fleet.env = _env(server.url, fake)
        through = fleet.start(1)  # runs before, through and after the outage
        through_pid = _worker_pid(through)
        out = tmp_path / "qr"
        producer = fleet.produce(OUTAGE_NAMES, out)
        _until(lambda: _saved(out) >= 150, "150 PNGs before the outage", context=fleet.context)
        server.kill()
        fleet.start(1)  # starts while Redis is down
        _until(
            lambda: (
                OUTAGE in fleet.log(0) and OUTAGE in fleet.log(1) and OUTAGE in fleet.err(producer)
            ),
            "every process to notice the outage",
            context=fleet.context,
        )
        saved_in_outage = _saved(out)
        server.restart()
        _until(
            lambda: (
                BACK in fleet.log(0)
                and _saved(out) >= 650
                and _consumers(server.url).get(through_pid, 0) >= 1
            ),
            "the first worker to reconnect and hold tasks after 650 results",
            context=fleet.context,
        )
        fleet.kill(through)
        code, summary, err = fleet.finish(producer, out)
        logs = [fleet.log(0), fleet.log(1)]
    finally:
        fleet.close()
        server.close()
    assert (code, summary["ok"], summary["failed"]) == (0, len(OUTAGE_NAMES), 0)
    _one_png_per_name(out, OUTAGE_NAMES)
    assert saved_in_outage < len(OUTAGE_NAMES)  # the outage was mid-run
    for text in (*logs, err):
        assert "Traceback" not in text
        assert text.count(OUTAGE) == 1
    assert [logs[0].count(BACK), logs[1].count(BACK), err.count(BACK)] == [1, 1, 1]
    assert len(err.splitlines()) == 2  # the two outage lines, nothing else
    assert "re-delivering" in logs[1]


def test_failures_are_outcomes_on_stderr_and_the_exit_status(
    tmp_path: Path, redis_url: str
) -> None:
    """Unknown and invalid names: exit 1, one stderr line each, the key nowhere in any output."""
    server = FakeWachatServer(KEY)  # no auto_create: unknown names answer 404
    server.add_instance("t1_known_store")
    with server.run_in_thread():
        fleet = Fleet(tmp_path, _env(redis_url, server))
        try:
            fleet.start(1)
            names = ["t1_known_store", "t1_gone_store", "t1_bad\x7fname"]
            code, summary, err = fleet.finish(fleet.produce(names, tmp_path / "qr"))
        finally:
            fleet.close()
    assert (code, summary["ok"], summary["failed"]) == (1, 1, 2)
    lines = err.splitlines()
    assert [line.split(": ")[:2] for line in lines] == [
        ["t1_gone_store", "InstanceNotFoundError"],
        ["t1_bad\x7fname", "InvalidInstanceNameError"],
    ]
    assert sorted(p.name for p in (tmp_path / "qr").iterdir()) == ["t1_known_store.png"]
    assert KEY not in err + fleet.log(0)


def test_no_worker_means_every_name_fails_after_the_timeout(
    tmp_path: Path, redis_url: str, fake: FakeApi
) -> None:
    """`--timeout` with no worker running: exit 1 and every name counted as failed."""
    fleet = Fleet(tmp_path, _env(redis_url, fake))
    try:
        producer = fleet.produce(["t1_a", "t1_b", "t1_a"], tmp_path / "qr", "--timeout", "0.3")
        code, summary, err = fleet.finish(producer)
    finally:
        fleet.close()
    assert (code, summary["ok"], summary["failed"]) == (1, 0, 2)
    assert err.splitlines() == ["t1_a: no result within 0.3 s", "t1_b: no result within 0.3 s"]


def test_redis_unreachable_is_one_line_and_exit_3(tmp_path: Path, fake: FakeApi) -> None:
    """No Redis at REDIS_URL: one line on stderr naming the cause, exit 3, no traceback."""
    fleet = Fleet(tmp_path, _env(f"redis://127.0.0.1:{_free_port()}/0", fake))
    try:
        producer = fleet.produce(["t1_a"], tmp_path / "qr")
        try:
            producer.wait(timeout=STEP_LIMIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the producer did not give up within {STEP_LIMIT:g} s", pytrace=False)
    finally:
        fleet.close()
    err = fleet.err(producer)
    assert producer.returncode == 3
    assert (tmp_path / "produce0.out").read_text() == ""
    assert len(err.splitlines()) == 1
    assert "cannot reach Redis" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [["--out-dir", "x"], ["--names-file", "f", "--out-dir", "x", "--timeout", "0"]],
    ids=["names-file-missing", "timeout-zero"],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A missing option or a timeout that is not > 0 is a usage error (exit 2), nothing sent."""
    with pytest.raises(SystemExit) as exc:
        produce.main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_unreadable_names_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A names file that does not exist: exit 2 naming it, before anything is sent."""
    with pytest.raises(SystemExit) as exc:
        produce.main(["--names-file", str(tmp_path / "none.txt"), "--out-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "none.txt" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["a", "b", "a"], ["a", "b"]),
        (["  a  ", "", "   ", "# comment", "b"], ["a", "b"]),
        ([], []),
    ],
    ids=["duplicates-once-in-first-order", "blank-and-comments-skipped", "empty"],
)
def test_read_names(lines: list[str], expected: list[str]) -> None:
    """Distinct names in first-seen order; blank lines and # comments skipped."""
    assert produce.read_names(lines) == expected


@given(st.text(min_size=1, max_size=40))
def test_png_path_is_one_file_per_name_inside_the_folder(name: str) -> None:
    """Any name maps to one file directly inside the folder, and different names differ."""
    path = worker.png_path("/srv/qr", name)
    assert path.parent == Path("/srv/qr")
    assert path.name.endswith(".png")
    assert worker.png_path("/srv/qr", name + "/") != path


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("t1_abc_store", "t1_abc_store.png"),
        ("../etc/passwd", "..%2Fetc%2Fpasswd.png"),
        ("a\\b%2F", "a%5Cb%252F.png"),
        ("..", "...png"),
    ],
    ids=["plain", "traversal", "backslash-and-percent", "dot-dot"],
)
def test_png_path_encodes_separators(name: str, file: str) -> None:
    """Separators and % are percent-encoded, so no name escapes the folder or collides."""
    assert worker.png_path("out", name) == Path("out") / file


async def test_fetch_qr_called_directly_opens_its_own_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wachat_server: FakeWachatServer
) -> None:
    """Outside a worker the task opens a client for the call: a saved PNG, or a 404 outcome."""
    monkeypatch.setenv("WACHAT_BASE_URL", wachat_server.base_url)
    monkeypatch.setenv("WACHAT_API_KEY", wachat_server.api_key)
    wachat_server.add_instance("t1_here_store")
    ok = await worker.fetch_qr("t1_here_store", str(tmp_path))
    gone = await worker.fetch_qr("t1_gone_store", str(tmp_path))
    assert ok == {
        "instance": "t1_here_store",
        "ok": True,
        "error": None,
        "file": str(tmp_path / "t1_here_store.png"),
    }
    assert (tmp_path / "t1_here_store.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (gone["ok"], gone["file"], gone["error"].split(":")[0]) == (
        False,
        None,
        "InstanceNotFoundError",
    )
    assert wachat_server.api_key not in json.dumps(gone)


@pytest.fixture
async def conn(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio Redis client on the private server."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def _broker(redis_url: str, **kwargs: Any) -> worker.ReclaimingStreamBroker:
    return worker.ReclaimingStreamBroker(
        redis_url, queue_name="q", consumer_group_name="g", **kwargs
    )


async def _dead_consumer_holds(conn: redis.asyncio.Redis, idle_ms: int) -> bytes:
    """A message read by consumer "dead" and never acknowledged, *idle_ms* idle (no sleeping)."""
    await conn.xgroup_create("q", "g", id="0", mkstream=True)
    msg_id: bytes = await conn.xadd("q", {b"data": b"payload"})
    await conn.xreadgroup("g", "dead", {"q": ">"}, count=1)
    await conn.xclaim("q", "g", "dead", 0, [msg_id], idle=idle_ms, justid=True)
    return msg_id


async def test_reclaim_delivers_an_idle_message_and_ack_deletes_it(
    conn: redis.asyncio.Redis, redis_url: str
) -> None:
    """A message idle past idle_timeout is delivered to a new worker; its ack leaves Redis empty."""
    await _dead_consumer_holds(conn, idle_ms=6000)
    broker = _broker(redis_url, idle_timeout=5000)
    broker.is_worker_process = True
    listener = broker.listen()
    try:
        message = await asyncio.wait_for(anext(listener), 10)
        assert message.data == b"payload"
        await message.ack()  # type: ignore[misc]
    finally:
        await listener.aclose()
        await broker.shutdown()
    assert (await conn.xlen("q"), (await conn.xpending("q", "g"))["pending"]) == (0, 0)


async def test_a_message_idle_for_less_than_idle_timeout_is_left_alone(
    conn: redis.asyncio.Redis, redis_url: str
) -> None:
    """A message idle for less than idle_timeout (its worker is alive) is not taken."""
    await _dead_consumer_holds(conn, idle_ms=1000)
    broker = _broker(redis_url, idle_timeout=5000)
    try:
        assert await broker._reclaim(b"q") == []
    finally:
        await broker.shutdown()
    consumers = (await conn.xpending("q", "g"))["consumers"]
    assert [(c["name"], c["pending"]) for c in consumers] == [(b"dead", 1)]


async def test_keep_alive_renews_what_a_worker_holds(
    conn: redis.asyncio.Redis, redis_url: str
) -> None:
    """A worker's keep-alive resets the idle time of a message it holds but has not acked."""
    broker = _broker(redis_url, idle_timeout=2000, keepalive_interval=0.01)
    await broker.startup()
    await conn.xadd("q", {b"data": b"job"})
    listener = broker.listen()
    try:
        message = await asyncio.wait_for(anext(listener), 10)
        assert message.data == b"job"
        (msg_id,) = broker.held[b"q"]
        await conn.xclaim("q", "g", broker.consumer_name, 0, [msg_id], idle=10**6, justid=True)

        async def idle() -> int:
            rows = await conn.xpending_range("q", "g", "-", "+", 10)
            return int(rows[0]["time_since_delivered"])

        async def renewed() -> None:
            while await idle() >= 10**6:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(renewed(), 10)
        assert await idle() < 2000
    finally:
        await listener.aclose()
        await broker.shutdown()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"idle_timeout": 1000, "keepalive_interval": 1.0},
        {"idle_timeout": 1000, "keepalive_interval": 0},
        {"reclaim_interval": 0},
    ],
    ids=["keepalive-not-below-idle", "keepalive-zero", "reclaim-zero"],
)
def test_broker_refuses_intervals_that_cannot_work(kwargs: dict[str, Any]) -> None:
    """A keep-alive not below the idle time (or zero), or a zero reclaim interval: ValueError."""
    with pytest.raises(ValueError, match="interval"):
        worker.ReclaimingStreamBroker("redis://127.0.0.1:1/0", **kwargs)


def _outage(**kwargs: Any) -> tuple[worker.RedisOutage, list[float]]:
    """A RedisOutage whose waits are recorded instead of slept (other tasks still run)."""
    outage = worker.RedisOutage(**kwargs)
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    outage._sleep = sleep
    return outage, delays


def _failing(errors: list[BaseException], result: str = "done") -> Callable[[], Any]:
    """An operation that raises *errors* one call at a time, then returns *result*."""

    async def operation() -> str:
        if errors:
            raise errors.pop(0)
        return result

    return operation


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "examples.taskiq_fleet"]


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
        redis.TimeoutError("Timeout reading from 127.0.0.1:6379"),
        redis.BusyLoadingError("Redis is loading the dataset in memory"),
    ],
    ids=["refused", "frozen-past-socket-timeout", "loading-after-restart"],
)
async def test_an_outage_is_one_line_when_it_goes_and_one_when_it_is_back(
    error: redis.RedisError, caplog: pytest.LogCaptureFixture
) -> None:
    """Five failed attempts: waits doubling up to the cap, two log lines, the result at last."""
    outage, delays = _outage(first_delay=0.1, max_delay=0.5)
    result = await outage.call(_failing([error] * 5))
    assert result == "done"
    assert delays == [0.1, 0.2, 0.4, 0.5, 0.5]
    lines = _lines(caplog)
    assert len(lines) == 2
    assert lines[0].startswith(f"Redis unreachable ({type(error).__name__}: {error}); retrying")
    assert lines[0].endswith("until it is back")
    assert lines[1].startswith("Redis reachable again after ")
    assert outage.since is None


async def test_calls_in_one_outage_log_it_once(caplog: pytest.LogCaptureFixture) -> None:
    """Many calls noticing the same outage: one line; a reply begun before it does not end it."""
    outage, _ = _outage()
    before = time.monotonic()
    calls = [_failing([redis.ConnectionError("reset")] * 3) for _ in range(10)]
    await asyncio.gather(*(outage.call(call) for call in calls[:5]))
    assert len(_lines(caplog)) == 2
    outage.failed(redis.ConnectionError("reset"))
    outage.succeeded(before)  # its reply was on its way before Redis went
    assert outage.since is not None
    assert len(_lines(caplog)) == 3
    await asyncio.gather(*(outage.call(call) for call in calls[5:]))
    assert outage.since is None
    assert _lines(caplog)[3].startswith("Redis reachable again")


async def test_an_outage_longer_than_the_limit_raises_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a limit (the producer's) an outage that lasts raises the last error, logged once."""
    outage, delays = _outage(limit=0)
    error = redis.ConnectionError("Error 111")
    with pytest.raises(redis.ConnectionError) as raised:
        await outage.call(_failing([error]))
    assert raised.value is error
    assert delays == []
    assert _lines(caplog) == [
        "Redis unreachable (ConnectionError: Error 111); retrying every 5 s at most until "
        "it is back, for 0 s"
    ]


async def test_other_redis_errors_are_not_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    """A ResponseError (a bug, a wrong command) is raised at once, not retried nor logged."""
    outage, delays = _outage()
    with pytest.raises(redis.ResponseError):
        await outage.call(_failing([redis.ResponseError("WRONGTYPE")]))
    assert (delays, _lines(caplog), outage.since) == ([], [], None)


@pytest.mark.parametrize(
    "kwargs",
    [{"first_delay": -1}, {"first_delay": 2, "max_delay": 1}],
    ids=["negative", "above-cap"],
)
def test_outage_refuses_delays_that_cannot_work(kwargs: dict[str, float]) -> None:
    """A negative first delay, or one above the cap: ValueError."""
    with pytest.raises(ValueError, match="first_delay"):
        worker.RedisOutage(**kwargs)


@pytest.mark.parametrize("in_worker", [True, False], ids=["worker-waits", "producer-raises"])
async def test_startup_with_redis_down(in_worker: bool, caplog: pytest.LogCaptureFixture) -> None:
    """A worker starting with Redis down waits for it (here: a zero limit ends the wait and
    the one line says so); the producer's startup raises at once, logging nothing."""
    outage, _ = _outage(limit=0)
    broker = worker.ReclaimingStreamBroker(
        f"redis://127.0.0.1:{_free_port()}/0",
        queue_name="q",
        consumer_group_name="g",
        outage=outage,
    )
    broker.is_worker_process = in_worker
    try:
        with pytest.raises(redis.ConnectionError):
            await broker._declare_consumer_group()
    finally:
        await broker.shutdown()
    assert [line.split(" (")[0] for line in _lines(caplog)] == (
        ["Redis unreachable"] if in_worker else []
    )


async def test_a_consumer_group_gone_with_redis_data_is_made_again(
    conn: redis.asyncio.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis back without its data (no persistence): the listener says so once, makes the
    group again and delivers what is sent from then on."""
    broker = _broker(redis_url)
    await broker.startup()
    await conn.xadd("q", {b"data": b"before"})
    listener = broker.listen()
    try:
        first = await asyncio.wait_for(anext(listener), 10)
        await conn.flushall()  # the stream, its group and the unacknowledged "before" are gone
        await conn.xadd("q", {b"data": b"after"})
        second = await asyncio.wait_for(anext(listener), 10)
    finally:
        await listener.aclose()
        await broker.shutdown()
    assert (first.data, second.data) == (b"before", b"after")
    assert [line for line in _lines(caplog) if "gone" in line] == [
        "the consumer group 'g' is gone (Redis restarted without its data?); creating it "
        "again: tasks sent before that are lost"
    ]
    assert set(broker.held[b"q"]) == {(await conn.xrange("q"))[0][0]}


async def test_take_result_reads_then_deletes(conn: redis.asyncio.Redis, redis_url: str) -> None:
    """A stored result is read once and removed; a result not there (yet) is None."""
    store = worker.ResultStore(
        redis_url, outage=worker.RedisOutage(), prefix_str="r", serializer=JSONSerializer()
    )
    try:
        assert await store.take_result("t1") is None
        result = TaskiqResult(is_err=False, return_value={"ok": True}, execution_time=0.1)
        await store.set_result("t1", result)
        assert await conn.exists("r:t1") == 1
        taken = await store.take_result("t1")
        assert taken is not None
        assert (taken.is_err, taken.return_value) == (False, {"ok": True})
        assert await conn.exists("r:t1") == 0
        assert await store.take_result("t1") is None
    finally:
        await store.shutdown()


async def _swallows_cancel(entered: asyncio.Event) -> list[Any]:
    """What redis-py does on Python 3.11 when a cancel comes as a send completes: the
    command returns as if nothing happened (``asyncio.wait_for`` before 3.12). Only the
    first call waits for that cancel; later ones return at once (so a regression fails the
    test instead of hanging it)."""
    if entered.is_set():
        return []
    entered.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
    return []


async def test_shutdown_ends_a_keep_alive_whose_cancel_was_swallowed(redis_url: str) -> None:
    """The keep-alive's Redis call swallows the cancel: shutdown still ends, and soon."""
    broker = _broker(redis_url, idle_timeout=1000, keepalive_interval=0.01)
    entered = asyncio.Event()
    broker.held[b"q"] = {b"1-1"}
    broker._redis.xclaim = lambda *a, **k: _swallows_cancel(entered)  # type: ignore[method-assign]
    broker._keepalive = asyncio.create_task(broker._keep_alive())
    await asyncio.wait_for(entered.wait(), 10)
    shutdown = asyncio.create_task(broker.shutdown())
    await asyncio.wait({shutdown}, timeout=10)  # never cancels: a hang shows as not done
    assert shutdown.done()
    assert broker._keepalive is None


async def test_a_cancel_swallowed_inside_a_redis_call_is_raised_again() -> None:
    """A cancel lost inside the operation (as redis-py loses it): the call raises it anyway."""
    outage, _ = _outage()
    entered = asyncio.Event()
    call = asyncio.create_task(outage.call(lambda: _swallows_cancel(entered)))
    await entered.wait()
    call.cancel()
    await asyncio.wait({call}, timeout=10)
    assert call.cancelled()


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("module", ["worker.py", "produce.py"])
def test_recipe_imports_only_the_public_api_and_the_fleet_extra(module: str) -> None:
    """The recipe uses wachat_async's public modules and what `.[fleet]` installs, nothing else."""
    source = (RECIPE / module).read_text(encoding="utf-8")
    assert "wachat_async._" not in source
    assert "pip install -e '.[fleet]'" in source
    third_party = _imports(RECIPE / module) - set(sys.stdlib_module_names) - {"__future__"}
    by_module = importlib.metadata.packages_distributions()
    dists = {d.lower() for top in third_party - {"wachat_async"} for d in by_module[top]}
    assert dists <= {"taskiq", "taskiq-redis", "redis"}
