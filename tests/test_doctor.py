"""wachat_async.doctor: each cause told apart against a loopback stand-in, one line per step.

The stand-ins: the fake server (instance kinds, a restricted key, a linked phone, scripted
faults), a closed port, a raw server that hangs up, a resolver that fails, a TLS server whose
CA the client does not trust. No test sleeps: retries wait zero, and the rotation step runs on
a :class:`Clock` that its own ``sleep`` moves (the fake server reads the same clock).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import attrs
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import KEY, NAME
from wachat_async import InvalidInstanceNameError, RetryPolicy, WachatClient
from wachat_async.doctor import (
    Cause,
    Check,
    Diagnosis,
    Outcome,
    Step,
    diagnose,
)
from wachat_async.testing import FakeWachatServer, Fault

ZERO_WAIT = RetryPolicy(zero_wait=True)
OTHER_KEY = "sk-live-RESTRICTED-fedcba9876543210"


class Clock:
    """A clock that only :meth:`sleep` moves: the rotation step's (and the fake server's) time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class FailingResolver(AbstractResolver):
    """A resolver for which no name exists: aiohttp's DNS failure, without a real lookup."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        pass


def not_a_qr_png() -> bytes:
    """A valid PNG with no QR code in it (a grey square)."""
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buffer, format="PNG")
    return buffer.getvalue()


@attrs.frozen
class Expect:
    """A cause, the step that reports it, and the outcome of that step."""

    cause: Cause
    check: Check
    outcome: Outcome = Outcome.FAILED


#: Every cause, the step that finds it, and the stand-in that produces it (`stand_in`).
CASES = {
    "healthy": Expect(Cause.HEALTHY, Check.ROTATION, Outcome.OK),
    "linked": Expect(Cause.LINKED, Check.STATE, Outcome.OK),
    "refused": Expect(Cause.REFUSED, Check.CONNECTION),
    "unreachable": Expect(Cause.UNREACHABLE, Check.CONNECTION),
    "dns": Expect(Cause.DNS, Check.CONNECTION),
    "tls": Expect(Cause.TLS, Check.CONNECTION),
    "wrong-base-url": Expect(Cause.WRONG_BASE_URL, Check.CONNECTION),
    "401": Expect(Cause.KEY_REJECTED, Check.KEY),
    "404": Expect(Cause.NOT_FOUND, Check.INSTANCE),
    "409": Expect(Cause.NOT_BAILEYS, Check.INTEGRATION),
    "409-by-integration": Expect(Cause.NOT_BAILEYS, Check.INTEGRATION),
    "403": Expect(Cause.SUBSCRIPTION, Check.SUBSCRIPTION),
    "502-persists": Expect(Cause.UPSTREAM, Check.QR),
    "200-not-png": Expect(Cause.NOT_PNG, Check.QR),
    "200-not-qr": Expect(Cause.NOT_QR, Check.DECODE),
    "not-rotating": Expect(Cause.NOT_ROTATING, Check.ROTATION),
    "429-undocumented": Expect(Cause.UNEXPECTED, Check.QR),
}


@asynccontextmanager
async def _hang_up_server() -> AsyncIterator[str]:
    """A raw server that closes every connection without a word: its base URL."""

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/api/v1"
    finally:
        server.close()
        await server.wait_closed()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def stand_in(case: str, clock: Clock) -> AsyncIterator[WachatClient]:
    """A zero-wait client whose diagnosis of NAME is *case*."""
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            FakeWachatServer(
                KEY,
                clock=clock,
                qr_rotation=None if case == "not-rotating" else 20.0,
                tls=case == "tls",
            )
        )
        server.add_api_key(OTHER_KEY, restricted=True)
        key, base_url, session = KEY, server.base_url, None
        state = "open" if case == "linked" else "connecting"
        if case == "409-by-integration":
            server.add_instance(NAME, integration="WHATSAPP-BUSINESS")
        elif case != "404":
            server.add_instance(NAME, state=state, api_key=OTHER_KEY if case == "403" else KEY)
        key = {"401": "sk-wrong-0000000000", "403": OTHER_KEY}.get(case, KEY)
        script: dict[str, list[int | Fault]] = {
            "409": [409],
            "502-persists": [502] * ZERO_WAIT.max_attempts,
            "200-not-png": [
                Fault(status=200, body=b"<html>sign in</html>", content_type="text/html")
            ],
            "200-not-qr": [Fault(status=200, body=not_a_qr_png())],
            "429-undocumented": [429],
        }
        server.script(NAME, script.get(case, []))
        if case == "refused":
            base_url = f"http://127.0.0.1:{_closed_port()}/api/v1"
        elif case == "unreachable":
            base_url = await stack.enter_async_context(_hang_up_server())
        elif case == "dns":
            base_url = "https://api.wachat.test/api/v1"
            session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=FailingResolver()))
            )
        elif case == "wrong-base-url":
            base_url = server.url + "/v2"
        client = WachatClient(key, base_url=base_url, retry=ZERO_WAIT, session=session)
        async with client:
            yield client


@pytest.mark.parametrize("case", CASES, ids=CASES.keys())
async def test_each_cause_is_told_apart_in_one_line_per_step(case: str) -> None:
    """The cause, the step that found it, one line per step; later steps not run."""
    expect, clock = CASES[case], Clock()
    async with stand_in(case, clock) as client:
        report = await diagnose(client, NAME, sleep=clock.sleep, clock=clock)
    assert report.cause is expect.cause
    assert [step.check for step in report.steps] == list(Check)
    at = list(Check).index(expect.check)
    assert report.steps[at].outcome is expect.outcome
    assert all(step.outcome is Outcome.NOT_RUN for step in report.steps[at + 1 :])
    assert all(
        step.outcome is Outcome.OK for step in report.steps[:at] if step.check != "subscription"
    )
    lines = str(report).split("\n")
    assert len(lines) == len(Check) + 1
    assert lines[at].startswith(f"{expect.outcome:<8} {expect.check:<13} ")
    assert lines[-1] == f"cause: {expect.cause} (exit status {expect.cause.exit_status})"
    if expect.outcome is Outcome.FAILED:
        assert report.failed is report.steps[at]
        assert report.steps[at].advice  # what to do next
    else:
        assert report.failed is None
    assert report.exit_status == expect.cause.exit_status


def test_every_cause_has_its_own_exit_status_and_only_healthy_is_zero() -> None:
    statuses = [cause.exit_status for cause in Cause]
    assert len(set(statuses)) == len(Cause)
    assert Cause.HEALTHY.exit_status == 0
    assert all(10 <= status <= 24 for status in statuses[1:])
    assert {c.cause for c in CASES.values()} == set(Cause)  # every cause is tested above


async def test_a_linked_phone_asks_for_no_qr() -> None:
    """Already linked: the report says no QR is needed, and no QR request is made."""
    clock = Clock()
    async with stand_in("linked", clock) as client:
        report = await diagnose(client, NAME, sleep=clock.sleep, clock=clock)
        assert "already linked" in report.steps[list(Check).index(Check.STATE)].found
    assert report.steps[list(Check).index(Check.SUBSCRIPTION)].outcome is Outcome.SKIPPED


async def test_rotation_is_bounded_by_its_timeout_and_polls_every_two_seconds() -> None:
    clock = Clock()
    async with stand_in("not-rotating", clock) as client:
        report = await diagnose(client, NAME, rotation_timeout=7, sleep=clock.sleep, clock=clock)
    assert report.cause is Cause.NOT_ROTATING
    assert clock.slept == [2.0, 2.0, 2.0, 1.0]
    assert "7 s" in report.steps[-1].found


@pytest.mark.parametrize("timeout", [0, None], ids=["zero", "none"])
async def test_rotation_can_be_skipped(timeout: float | None) -> None:
    clock = Clock()
    async with stand_in("not-rotating", clock) as client:
        report = await diagnose(
            client, NAME, rotation_timeout=timeout, sleep=clock.sleep, clock=clock
        )
    assert report.cause is Cause.HEALTHY
    assert report.steps[-1].outcome is Outcome.SKIPPED
    assert clock.slept == []


async def test_without_the_decoder_the_decode_step_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "zxingcpp", None)  # import zxingcpp raises ImportError
    clock = Clock()
    async with stand_in("200-not-qr", clock) as client:
        report = await diagnose(client, NAME, rotation_timeout=0, sleep=clock.sleep, clock=clock)
    decode = report.steps[list(Check).index(Check.DECODE)]
    assert decode.outcome is Outcome.SKIPPED
    assert "pip install 'wachat-async[doctor]'" in decode.advice
    assert report.cause is Cause.HEALTHY  # nothing found wrong: not checked


@pytest.mark.parametrize(
    "value", [-1, float("nan"), float("inf"), True, "45"], ids=["neg", "nan", "inf", "bool", "str"]
)
async def test_a_bad_rotation_timeout_is_refused_before_any_request(value: object) -> None:
    async with WachatClient(KEY, base_url=f"http://127.0.0.1:{_closed_port()}/api/v1") as client:
        with pytest.raises((TypeError, ValueError), match="rotation_timeout"):
            await diagnose(client, NAME, rotation_timeout=value)  # type: ignore[arg-type]


async def test_a_bad_instance_name_is_raised_not_diagnosed() -> None:
    async with WachatClient(KEY, base_url=f"http://127.0.0.1:{_closed_port()}/api/v1") as client:
        with pytest.raises(InvalidInstanceNameError):
            await diagnose(client, " \n")


def test_the_report_is_frozen_and_round_trips_as_json() -> None:
    step = Step(check=Check.KEY, outcome=Outcome.FAILED, found="401", advice="fix it")
    report = Diagnosis(
        instance_name=NAME, base_url="https://x/api/v1", cause=Cause.KEY_REJECTED, steps=(step,)
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        report.cause = Cause.HEALTHY  # type: ignore[misc]
    data = json.loads(report.to_json())
    assert data == report.to_dict()
    assert data == {
        "instance": NAME,
        "base_url": "https://x/api/v1",
        "cause": "key-rejected",
        "exit_status": 16,
        "steps": [{"check": "key", "outcome": "failed", "found": "401", "advice": "fix it"}],
    }
    assert str(step) == "failed   key           401; fix it"


KEYS = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_&/+=~.",
    min_size=12,
    max_size=64,
)


def test_the_key_is_in_no_report_repr_json_or_log(caplog: pytest.LogCaptureFixture) -> None:
    """Whatever the key, accepted or refused, it is in no report (str, repr, JSON) nor log line
    at DEBUG, unless the same run with another key prints it too (a coincidence of text)."""
    caplog.set_level(logging.DEBUG, logger="wachat_async")
    with FakeWachatServer(KEY, qr_rotation=None).run_in_thread() as server:
        server.add_instance(NAME)

        def texts(key: str) -> list[str]:
            caplog.clear()

            async def run() -> Diagnosis:
                async with WachatClient(key, base_url=server.base_url, retry=ZERO_WAIT) as c:
                    return await diagnose(c, NAME, rotation_timeout=0)

            report = asyncio.run(run())
            assert report.cause in (Cause.HEALTHY, Cause.KEY_REJECTED)
            return [str(report), repr(report), report.to_json(), *caplog.messages]

        reference = {True: " ".join(texts(KEY)), False: " ".join(texts("sk-refused-00000000"))}
        assert KEY not in reference[True]
        owners = {KEY}

        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(key=KEYS, accepted=st.booleans())
        def check(key: str, accepted: bool) -> None:
            assume(accepted or key not in owners)  # a key once accepted stays known
            if accepted:  # NAME moves to the key
                owners.add(key)
                server.remove_instance(NAME)
                server.add_instance(NAME, api_key=key)
            for text in texts(key):
                assert key not in text or key in reference[accepted]

        check()
