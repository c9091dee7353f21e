"""``wachat-qr doctor``: one line per step and a distinct exit status per cause, against
loopback stand-ins (the fake server on a thread, a closed port, a server that hangs up, a TLS
server whose CA is not trusted). The rotation step runs on a clock the test moves."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.cli._support import Run
from tests.conftest import KEY, NAME
from wachat_async.cli import EXIT_CODES, _commands, main
from wachat_async.doctor import Cause, Check
from wachat_async.testing import FakeWachatServer, Fault

RESTRICTED = "sk-live-RESTRICTED-fedcba9876543210"
PROXY_SECRET = "pr0xy-PASSWORD-s3cret"
#: The statuses of the other commands: doctor's causes must not reuse any of them.
OTHER_STATUSES = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 70, 130, 141, 143}


class Clock:
    """The rotation step's clock: only its sleep moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    moved = Clock()
    monkeypatch.setattr(_commands, "SLEEP", moved.sleep)
    monkeypatch.setattr(_commands, "CLOCK", moved)
    return moved


@pytest.fixture
def hang_up() -> Iterator[int]:
    """A raw server that closes each connection without a word: its port."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = int(server.getsockname()[1])
    yield port
    stop.set()
    socket.create_connection(("127.0.0.1", port)).close()  # wakes accept() to see the flag
    thread.join(5)
    server.close()


def _grey_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buffer, format="PNG")
    return buffer.getvalue()


#: case -> (the cause, the step that reports it)
CASES = {
    "healthy": (Cause.HEALTHY, Check.ROTATION),
    "linked": (Cause.LINKED, Check.STATE),
    "refused": (Cause.REFUSED, Check.CONNECTION),
    "unreachable": (Cause.UNREACHABLE, Check.CONNECTION),
    "tls": (Cause.TLS, Check.CONNECTION),
    "wrong-base-url": (Cause.WRONG_BASE_URL, Check.CONNECTION),
    "401": (Cause.KEY_REJECTED, Check.KEY),
    "404": (Cause.NOT_FOUND, Check.INSTANCE),
    "409": (Cause.NOT_BAILEYS, Check.INTEGRATION),
    "403": (Cause.SUBSCRIPTION, Check.SUBSCRIPTION),
    "502-persists": (Cause.UPSTREAM, Check.QR),
    "200-not-png": (Cause.NOT_PNG, Check.QR),
    "200-not-qr": (Cause.NOT_QR, Check.DECODE),
    "not-rotating": (Cause.NOT_ROTATING, Check.ROTATION),
    "429": (Cause.RATE_LIMITED, Check.QR),
    "proxy": (Cause.PROXY, Check.CONNECTION),
}


@pytest.fixture
def stand_in(
    request: pytest.FixtureRequest,
    wachat_server_factory: Callable[..., FakeWachatServer],
    monkeypatch: pytest.MonkeyPatch,
    closed_port: int,
    clock: Clock,
) -> None:
    """The stand-in of the case, with the key and base URL in the environment."""
    case: str = request.param
    server = wachat_server_factory(
        api_key=KEY,
        tls=case == "tls",
        qr_rotation=None if case == "not-rotating" else 20.0,
        clock=clock,
    )
    server.add_api_key(RESTRICTED, restricted=True)
    if case != "404":
        owner = RESTRICTED if case == "403" else KEY
        server.add_instance(NAME, state="open" if case == "linked" else "connecting", api_key=owner)
    scripts: dict[str, list[int | Fault]] = {
        "409": [409],
        "502-persists": [502] * 8,
        "200-not-png": [Fault(status=200, body=b"<html/>", content_type="text/html")],
        "200-not-qr": [Fault(status=200, body=_grey_png())],
        "429": [Fault(status=429, retry_after="30")] * 8,
    }
    server.script(NAME, scripts.get(case, []))
    base_url = server.base_url
    if case == "refused":
        base_url = f"http://127.0.0.1:{closed_port}/api/v1"
    elif case == "unreachable":
        base_url = f"http://127.0.0.1:{request.getfixturevalue('hang_up')}/api/v1"
    elif case == "wrong-base-url":
        base_url = f"{server.url}/api/v2"
    elif case == "proxy":  # a dead proxy from the environment, never the Wachat host
        base_url = "https://app.wachat.test/api/v1"
        monkeypatch.setenv("HTTPS_PROXY", f"http://user:{PROXY_SECRET}@127.0.0.1:{closed_port}")
    key = {"401": "sk-wrong-000000000000", "403": RESTRICTED}.get(case, KEY)
    monkeypatch.setenv("WACHAT_API_KEY", key)
    monkeypatch.setenv("WACHAT_BASE_URL", base_url)


@pytest.mark.parametrize("stand_in", CASES, ids=CASES.keys(), indirect=True)
@pytest.mark.parametrize("json_output", [False, True], ids=["lines", "json"])
def test_doctor_tells_each_cause_apart_with_its_exit_status(
    run: Callable[..., Run], stand_in: None, request: pytest.FixtureRequest, json_output: bool
) -> None:
    cause, check = CASES[request.node.callspec.params["stand_in"]]
    result = run("doctor", NAME, *(["--json"] if json_output else []))
    assert result.code == cause.exit_status
    # A 429 also starts the client's pacing, which says so once (docs/fleets.md).
    pacing = "Wachat API answered 429" if cause is Cause.RATE_LIMITED else None
    assert [line for line in result.err.splitlines() if pacing is None or pacing not in line] == []
    assert PROXY_SECRET not in result.out
    if json_output:
        report = json.loads(result.out)
        assert report["cause"] == str(cause)
        assert report["exit_status"] == cause.exit_status
        assert [s["check"] for s in report["steps"]] == [str(c) for c in Check]
        return
    lines = result.out.splitlines()
    assert len(lines) == len(Check) + 1  # one line per step, then the cause
    at = list(Check).index(check)
    outcome = "ok" if cause in (Cause.HEALTHY, Cause.LINKED) else "failed"
    assert lines[at].split()[:2] == [outcome, str(check)]
    assert all(line.startswith("not run") for line in lines[at + 1 : -1])
    assert lines[-1] == f"cause: {cause} (exit status {cause.exit_status})"


def test_doctor_statuses_are_distinct_listed_and_collide_with_no_other_command() -> None:
    statuses = {cause.exit_status for cause in Cause}
    assert len(statuses) == len(Cause)
    assert statuses - {0} <= EXIT_CODES
    assert statuses & OTHER_STATUSES == {0}


def test_rotation_timeout_zero_skips_the_rotation_step(
    run: Callable[..., Run], env: FakeWachatServer, clock: Clock
) -> None:
    result = run("doctor", NAME, "--rotation-timeout", "0")
    assert result.code == 0
    assert result.out.splitlines()[-2].startswith("skipped  rotation")
    assert clock.now == 0
    assert env.request_count(NAME) == 2  # the state, one QR


def test_the_rotation_wait_is_bounded_by_the_option(
    run: Callable[..., Run], env: FakeWachatServer, clock: Clock
) -> None:
    result = run("doctor", NAME, "--rotation-timeout", "27")
    assert result.code == Cause.NOT_ROTATING.exit_status
    assert clock.now == 27
    assert "the same QR for 27 s" in result.out


@pytest.mark.parametrize("value", ["-1", "nan", "soon"], ids=["negative", "nan", "word"])
def test_a_bad_rotation_timeout_is_a_usage_error(run: Callable[..., Run], value: str) -> None:
    result = run("doctor", NAME, "--rotation-timeout", value)
    assert result.code == 2
    assert "--rotation-timeout" in result.err


def test_no_key_is_a_usage_error_not_a_diagnosis(run: Callable[..., Run]) -> None:
    result = run("doctor", NAME)
    assert result.code == 2
    assert "WACHAT_API_KEY" in result.err


KEYS = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_&/+=~.",
    min_size=12,
    max_size=64,
)


def test_the_key_never_reaches_the_output_or_the_debug_log(
    fake: FakeWachatServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Any key, accepted or not: stdout, stderr (``--debug`` logs everything) and ``--json``
    hold it only where a run with another key prints the same text."""
    monkeypatch.setenv("WACHAT_BASE_URL", fake.base_url)
    owners = {KEY}

    def output(key: str) -> str:
        monkeypatch.setenv("WACHAT_API_KEY", key)
        texts = []
        for extra in ([], ["--json"]):
            main(["doctor", NAME, "--rotation-timeout", "0", "--debug", *extra])
            captured = capsys.readouterr()
            texts += [captured.out, captured.err]
        return "\n".join(texts)

    reference = {True: output(KEY), False: output("sk-refused-00000000")}
    assert KEY not in reference[True]

    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(key=KEYS, accepted=st.booleans())
    def check(key: str, accepted: bool) -> None:
        assume(accepted or key not in owners)
        if accepted:
            owners.add(key)
            fake.remove_instance(NAME)
            fake.add_instance(NAME, api_key=key)
        assert key not in output(key) or key in reference[accepted]

    check()


def test_each_line_is_printed_as_its_step_is_known(
    run: Callable[..., Run],
    env: FakeWachatServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clock: Clock,
) -> None:
    """By the rotation step's first wait, every earlier step's line is already out."""
    early: list[str] = []

    async def sleep(seconds: float) -> None:
        if not early:
            early.append(capsys.readouterr().out)
        await clock.sleep(seconds)

    monkeypatch.setattr(_commands, "SLEEP", sleep)
    result = run("doctor", NAME, "--rotation-timeout", "27")
    lines = early[0].splitlines()
    assert [line.split()[1] for line in lines] == [str(c) for c in list(Check)[:-1]]
    assert result.out.splitlines()[0].split()[:2] == ["failed", "rotation"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"]
)
@pytest.mark.parametrize("json_output", [False, True], ids=["lines", "json"])
def test_a_signal_prints_what_was_found_and_says_interrupted(
    run: Callable[..., Run],
    env: FakeWachatServer,
    monkeypatch: pytest.MonkeyPatch,
    signum: int,
    code: int,
    json_output: bool,
) -> None:
    async def sleep(_seconds: float) -> None:  # the rotation step's first wait: a signal
        os.kill(os.getpid(), signum)
        await asyncio.sleep(3600)  # cancelled by the handler at once: never waited

    monkeypatch.setattr(_commands, "SLEEP", sleep)
    result = run("doctor", NAME, *(["--json"] if json_output else []))
    assert result.code == code
    assert result.err.startswith("wachat-qr: error: ")
    done = list(Check)[:-1]  # every step but the rotation
    if json_output:
        report = json.loads(result.out)
        assert report["interrupted"] is True
        assert [s["check"] for s in report["steps"]] == [str(c) for c in done]
    else:
        lines = result.out.splitlines()
        assert [line.split()[1] for line in lines[:-1]] == [str(c) for c in done]
        assert lines[-1] == f"interrupted after {len(done)} of {len(Check)} steps"


def test_healthy_without_the_decoder_says_the_decode_was_not_checked(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "zxingcpp", None)
    result = run("doctor", NAME, "--rotation-timeout", "0")
    assert result.code == 0
    assert result.out.splitlines()[-1] == (
        "cause: healthy (exit status 0); not checked: decode, rotation"
    )
    assert "pip install -e '.[doctor]' in the wachat-async clone" in result.out
