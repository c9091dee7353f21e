"""wachat_async.doctor: each cause told apart against a loopback stand-in, one line per step.

The stand-ins: the fake server (instance kinds, a restricted key, a linked phone, scripted
faults), a closed port, a raw server that hangs up, a resolver that fails, a TLS server whose
CA the client does not trust. No test sleeps: retries wait zero, and the rotation step runs on
a :class:`Clock` that its own ``sleep`` moves (the fake server reads the same clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import struct
import sys
import threading
import zlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import attrs
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import KEY, NAME, SkippingLoop, run_skipping, until
from wachat_async import InvalidInstanceNameError, RetryPolicy, WachatClient
from wachat_async.doctor import (
    Cause,
    Check,
    Diagnosis,
    Outcome,
    Step,
    diagnose,
)
from wachat_async.doctor import _diagnose as _diagnose_module
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
    "429": Expect(Cause.RATE_LIMITED, Check.QR),
    "500-undocumented": Expect(Cause.UNEXPECTED, Check.QR),
    "truncated": Expect(Cause.UNREACHABLE, Check.QR),
    "proxy": Expect(Cause.PROXY, Check.CONNECTION),
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


#: The fake server behind each stand-in's base URL (to script it further).
SERVERS: dict[str, FakeWachatServer] = {}


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
            "429": [429] * ZERO_WAIT.max_attempts,
            "500-undocumented": [500] * ZERO_WAIT.max_attempts,
            "truncated": [Fault(truncate=True)] * ZERO_WAIT.max_attempts,
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
        proxy = None
        if case == "proxy":  # nothing listens at the proxy's port
            base_url, proxy = "https://api.wachat.test/api/v1", f"http://127.0.0.1:{_closed_port()}"
        client = WachatClient(key, base_url=base_url, retry=ZERO_WAIT, session=session, proxy=proxy)
        SERVERS[client.base_url] = server
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
    assert all(10 <= status <= 26 for status in statuses[1:])
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
        report = await diagnose(client, NAME, rotation_timeout=27, sleep=clock.sleep, clock=clock)
    assert report.cause is Cause.NOT_ROTATING
    assert clock.slept == [2.0] * 13 + [1.0]
    assert "27 s" in report.steps[-1].found


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
    assert "pip install -e '.[doctor]' in the wachat-async clone" in decode.advice
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


# --- the PNG that does not decode, or is too large to try (never an exception) ---------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png(width: int, height: int, idat: bytes) -> bytes:
    """A grey PNG whose chunks and CRCs are valid, whatever *idat* holds."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"".join(
        (b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header), _chunk(b"IDAT", idat), _chunk(b"IEND", b""))
    )


#: A PNG the client accepts (its chunks are sound) that no decoder can read, or that is too
#: large to try: the cause the decode step reports for each.
BROKEN_PNGS = {
    "idat-not-zlib": (_png(64, 64, b"not zlib data at all"), Cause.NOT_PNG),
    "idat-too-short": (_png(64, 64, zlib.compress(b"\x00\xff")), Cause.NOT_PNG),
    "20000x20000": (_png(20000, 20000, zlib.compress(b"\x00" * 1000)), Cause.NOT_QR),
    "12000x12000": (_png(12000, 12000, zlib.compress(b"\x00" * 1000)), Cause.NOT_QR),
    "4097x4096": (_png(4097, 4096, zlib.compress(b"\x00" * 1000)), Cause.NOT_QR),
}


@pytest.mark.parametrize("case", BROKEN_PNGS, ids=BROKEN_PNGS.keys())
async def test_a_png_that_does_not_decode_is_a_finding_not_an_exception(case: str) -> None:
    """Broken image data or a decompression-bomb size: the decode step fails with its reason
    (warnings are errors in this suite: none leaks), and a bomb is refused from its header."""
    png, cause = BROKEN_PNGS[case]
    clock = Clock()
    async with stand_in("healthy", clock) as client:
        report = await _diagnose_with_script(client, [Fault(status=200, body=png)], clock)
    decode = report.steps[list(Check).index(Check.DECODE)]
    assert (report.cause, decode.outcome) == (cause, Outcome.FAILED)
    assert decode.advice
    if cause is Cause.NOT_QR:
        assert "not decoded" in decode.found
    else:
        assert "does not decode" in decode.found


async def _diagnose_with_script(
    client: WachatClient, script: list[int | Fault], clock: Clock
) -> Diagnosis:
    server = SERVERS[client.base_url]
    server.script(NAME, script)
    return await diagnose(client, NAME, rotation_timeout=0, sleep=clock.sleep, clock=clock)


async def test_the_decode_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    decode = _diagnose_module._decode

    def spy(png: bytes) -> int | None:
        threads.append(threading.get_ident())
        return decode(png)

    monkeypatch.setattr(_diagnose_module, "_decode", spy)
    clock = Clock()
    async with stand_in("healthy", clock) as client:
        report = await diagnose(client, NAME, rotation_timeout=0, sleep=clock.sleep, clock=clock)
    assert report.cause is Cause.HEALTHY
    assert threads
    assert threads[0] != threading.get_ident()


async def test_without_the_decoder_healthy_says_the_decode_was_not_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "zxingcpp", None)
    clock = Clock()
    async with stand_in("healthy", clock) as client:
        report = await _diagnose_with_script(
            client, [Fault(status=200, body=BROKEN_PNGS["idat-not-zlib"][0])], clock
        )
    assert report.cause is Cause.HEALTHY
    assert report.cause_line.startswith("cause: healthy (exit status 0); not checked: decode")
    assert str(report).endswith(report.cause_line)


# --- a dead or misnamed proxy is named, not the Wachat host --------------------------------

PROXY_SECRET = "pr0xy-PASSWORD-s3cret"


@pytest.mark.parametrize("how", ["argument", "environment", "dns"])
async def test_a_dead_proxy_is_blamed_on_the_proxy_never_showing_its_password(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _closed_port()
    proxy = f"http://user:{PROXY_SECRET}@127.0.0.1:{port}"
    options: dict[str, object] = {"proxy": proxy}
    async with AsyncExitStack() as stack:
        if how == "environment":
            monkeypatch.setenv("HTTPS_PROXY", proxy)
            options = {"trust_env": True}
        elif how == "dns":
            options["proxy"] = f"http://user:{PROXY_SECRET}@proxy.corp.test:3128"
            options["session"] = await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=FailingResolver()))
            )
        client = await stack.enter_async_context(
            WachatClient(
                KEY,
                base_url="https://app.wachat.test/api/v1",
                retry=ZERO_WAIT,
                **options,  # type: ignore[arg-type]
            )
        )
        report = await diagnose(client, NAME, rotation_timeout=0)
    first = report.steps[0]
    assert (report.cause, first.check, first.outcome) == (Cause.PROXY, Check.CONNECTION, "failed")
    assert ("proxy.corp.test:3128" if how == "dns" else f"127.0.0.1:{port}") in first.found
    assert "app.wachat.test" not in first.found
    assert "proxy" in first.advice.lower()
    assert PROXY_SECRET not in report.to_json() + repr(report)


# --- a step is ok only when an answer showed it ----------------------------------------------


@asynccontextmanager
async def _answering(response: bytes) -> AsyncIterator[str]:
    """A raw server that answers every request with *response*: its base URL."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/api/v1"
    finally:
        server.close()
        await server.wait_closed()


def _response(status: str, body: bytes, content_type: str, *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", *extra]
    head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(head).encode() + body


JSON = "application/json"
#: Answers to every request (the state's first) that show nothing of the key or the instance:
#: the cause, the step it fails, and a word its line must hold.
NO_VERDICT = {
    "429": (
        _response("429 Too Many Requests", b'{"message":"slow down"}', JSON, "Retry-After: 30"),
        Cause.RATE_LIMITED,
        Check.STATE,
        "wait 30 s",
    ),
    "500": (
        _response("500 Oops", b'{"message":"boom"}', JSON),
        Cause.UNEXPECTED,
        Check.STATE,
        "500",
    ),
    "301": (
        _response("301 Moved", b"", JSON, "Location: https://example.test/api/v1"),
        Cause.UNEXPECTED,
        Check.STATE,
        "301",
    ),
    "html-200": (
        _response("200 OK", b"<html><form>Sign in to the Wi-Fi</form></html>", "text/html"),
        Cause.UNEXPECTED,
        Check.STATE,
        "state",
    ),
    "state-without-state": (
        _response("200 OK", b'{"success": true}', JSON),
        Cause.UNEXPECTED,
        Check.STATE,
        "state",
    ),
    "400-header-too-long": (
        _response("400 Bad Request", b'{"message":"Request header field too long"}', JSON),
        Cause.UNEXPECTED,
        Check.STATE,
        "does not mention the instance name",
    ),
    "html-404-everywhere": (
        _response("404 Not Found", b"<html><title>404 Not Found</title>nginx</html>", "text/html"),
        Cause.WRONG_BASE_URL,
        Check.CONNECTION,
        "not the API",
    ),
}


@pytest.mark.parametrize("case", NO_VERDICT, ids=NO_VERDICT.keys())
async def test_a_step_is_ok_only_when_an_answer_showed_it(case: str) -> None:
    response, cause, check, word = NO_VERDICT[case]
    async with (
        _answering(response) as base_url,
        WachatClient(KEY, base_url=base_url, retry=ZERO_WAIT) as client,
    ):
        report = await diagnose(client, NAME, rotation_timeout=0)
    at = list(Check).index(check)
    assert (report.cause, report.steps[at].outcome) == (cause, Outcome.FAILED)
    assert word in report.steps[at].found
    if case == "429":  # said once, not again in the advice
        assert str(report.steps[at]).count(word) == 1
    shown = {s.check: s.outcome for s in report.steps[:at]}
    assert shown.get(Check.CONNECTION, Outcome.OK) is Outcome.OK  # something answered
    assert {o for c, o in shown.items() if c != Check.CONNECTION} <= {Outcome.UNKNOWN}
    assert "a 200 that is not a PNG" not in str(report)


# --- the rotation step: its window, a phone linked meanwhile, polls through, Retry-After ----


@pytest.mark.parametrize("timeout", [0.5, 10, 24])
async def test_a_rotation_window_shorter_than_the_period_gives_no_verdict(timeout: float) -> None:
    clock = Clock()
    async with stand_in("not-rotating", clock) as client:
        report = await diagnose(
            client, NAME, rotation_timeout=timeout, sleep=clock.sleep, clock=clock
        )
    rotation = report.steps[-1]
    assert (report.cause, rotation.outcome) == (Cause.HEALTHY, Outcome.UNKNOWN)
    assert f"no new QR within {timeout:g} s" in rotation.found
    assert "--rotation-timeout 30" in rotation.found
    assert "not checked: rotation" in report.cause_line


@pytest.mark.parametrize("timeout", [10, 45])
async def test_a_phone_linked_during_the_rotation_wait_is_linked_not_stuck(timeout: float) -> None:
    clock = Clock()
    async with stand_in("not-rotating", clock) as client:
        server = SERVERS[client.base_url]

        async def sleep(seconds: float) -> None:
            await clock.sleep(seconds)
            if clock.now >= 3:
                server.set_state(NAME, "open")  # the person scanned it meanwhile

        report = await diagnose(client, NAME, rotation_timeout=timeout, sleep=sleep, clock=clock)
    assert report.cause is Cause.LINKED
    assert report.steps[-1].outcome is Outcome.OK
    assert "linked while" in report.steps[-1].found


#: Failures of one rotation poll that the step polls through, within its window.
PASSING: dict[str, list[int | Fault]] = {
    "429-retry-after": [Fault(status=429, retry_after="5")] * ZERO_WAIT.max_attempts,
    "502": [502] * ZERO_WAIT.max_attempts,
    "truncated": [Fault(truncate=True)] * ZERO_WAIT.max_attempts,
    "dropped": [Fault(drop=True)] * ZERO_WAIT.max_attempts,
}


@pytest.mark.parametrize("case", PASSING, ids=PASSING.keys())
async def test_a_failed_rotation_poll_is_polled_through(case: str) -> None:
    clock = Clock()
    async with stand_in("healthy", clock) as client:
        SERVERS[client.base_url].script(NAME, [Fault(), *PASSING[case]])
        report = await diagnose(client, NAME, rotation_timeout=45, sleep=clock.sleep, clock=clock)
    assert (report.cause, report.steps[-1].outcome) == (Cause.HEALTHY, Outcome.OK)
    if case == "429-retry-after":
        assert 5.0 in clock.slept  # Retry-After honoured, within the window


def test_no_rotation_poll_outlasts_the_rotation_timeout() -> None:
    """A poll that hangs is cut when the rotation window ends, not at the client's timeout:
    the loop's clock only moves when the test moves it, once the hanging poll has arrived."""

    async def body(loop: SkippingLoop) -> tuple[Diagnosis, float]:
        async def sleep(seconds: float) -> None:
            loop.skip(seconds)
            await asyncio.sleep(0)

        async with FakeWachatServer(KEY, qr_rotation=None) as server:
            server.add_instance(NAME)
            server.script(NAME, [Fault(), Fault(hang=True)])
            async with WachatClient(
                KEY, base_url=server.base_url, retry=RetryPolicy(max_attempts=1), timeout=600
            ) as client:
                started = loop.time()
                task = asyncio.create_task(
                    diagnose(client, NAME, rotation_timeout=30, sleep=sleep, clock=loop.time)
                )
                await until(lambda: server.request_count(NAME) == 3)  # state, QR, the hang
                loop.skip(30)
                report = await task
                return report, loop.time() - started

    report, took = run_skipping(body)
    assert took < 600  # cut at the window's end, long before the client's timeout
    assert report.cause is Cause.UNREACHABLE
    assert "within 30 s" in report.steps[-1].found


# --- TLS and wrong-port wording ---------------------------------------------------------------


async def test_https_to_a_plain_http_port_says_so() -> None:
    async with FakeWachatServer(KEY) as server:
        base_url = server.base_url.replace("http://", "https://")
        async with WachatClient(KEY, base_url=base_url, retry=ZERO_WAIT) as client:
            report = await diagnose(client, NAME, rotation_timeout=0)
    first = report.steps[0]
    assert (report.cause, first.outcome) == (Cause.WRONG_BASE_URL, Outcome.FAILED)
    assert "speaks plain HTTP" in first.found
    assert "use http://" in first.advice


async def test_a_certificate_for_another_host_name_gets_host_name_advice() -> None:
    async with FakeWachatServer(KEY, tls=True, tls_hostnames=["example.test"]) as server:
        ctx = server.ssl_context  # its CA is trusted: only the name is wrong
        async with WachatClient(KEY, base_url=server.base_url, ssl=ctx, retry=ZERO_WAIT) as client:
            report = await diagnose(client, NAME, rotation_timeout=0)
    first = report.steps[0]
    assert report.cause is Cause.TLS
    assert "another host name" in first.found
    assert "host name" in first.advice
    assert "trust its CA" not in first.advice


async def test_a_service_that_is_not_http_says_so() -> None:
    async with (
        _answering(b"SSH-2.0-OpenSSH_9.6\r\nnot http\r\n") as base_url,
        WachatClient(KEY, base_url=base_url, retry=ZERO_WAIT) as client,
    ):
        report = await diagnose(client, NAME, rotation_timeout=0)
    assert report.cause is Cause.WRONG_BASE_URL
    assert "not an HTTP server" in report.steps[0].found


# --- streaming ------------------------------------------------------------------------------


async def test_each_step_is_handed_over_as_it_is_known() -> None:
    clock = Clock()
    seen: list[tuple[Step, float]] = []
    async with stand_in("healthy", clock) as client:
        report = await diagnose(
            client,
            NAME,
            sleep=clock.sleep,
            clock=clock,
            on_step=lambda step: seen.append((step, clock.now)),
        )
    assert tuple(step for step, _ in seen) == report.steps
    assert seen[-2][1] == 0 < seen[-1][1]  # decode before the rotation's wait, rotation after


async def test_a_rate_limit_longer_than_the_rotation_window_leaves_the_rotation_unknown() -> None:
    clock = Clock()
    async with stand_in("healthy", clock) as client:
        SERVERS[client.base_url].script(
            NAME, [Fault(), *[Fault(status=429, retry_after="30")] * 40]
        )
        report = await diagnose(client, NAME, rotation_timeout=27, sleep=clock.sleep, clock=clock)
    rotation = report.steps[-1]
    assert (report.cause, rotation.outcome) == (Cause.HEALTHY, Outcome.UNKNOWN)
    assert "rate limited by the API; wait 30 s" in rotation.found
    assert clock.now == 27  # waited within the window, not past it
