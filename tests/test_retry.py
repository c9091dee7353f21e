"""The retry policy and budget: pure functions first, then real calls against the fake server."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import FrameType
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

import wachat_async._polling
import wachat_async._retry
from wachat_async import (
    ConfigurationError,
    DeadlineExceededError,
    GatewayTimeoutError,
    GiveUpEvent,
    InstanceNotFoundError,
    InvalidImageError,
    InvalidResponseError,
    QRFetchFailedError,
    ResponseTooLargeError,
    RetryBudget,
    RetryEvent,
    RetryPolicy,
    WachatClient,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)
from wachat_async._errors import status_error
from wachat_async._pacing import is_transport_fault
from wachat_async._retry import (
    Retrier,
    backoff_wait,
    is_transient,
)
from wachat_async._slots import ConnectionQueue, note_slot_wait
from wachat_async.testing import FakeWachatServer, Fault

from .conftest import (
    KEY,
    NAME,
    assert_no_connection_checked_out,
    assert_no_key,
    exception_texts,
    status_cases,
)


class FakeClock:
    """A settable clock for the retry budget."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_client(server: FakeWachatServer, **policy: object) -> WachatClient:
    """A zero-wait client on the fake server with the given policy fields."""
    policy.setdefault("zero_wait", True)
    return WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        retry=RetryPolicy(**policy),  # type: ignore[arg-type]
        retry_budget=RetryBudget.unlimited(),
    )


# -- pure functions -----------------------------------------------------------------------


@given(
    retry_number=st.integers(min_value=0, max_value=5000),
    initial=st.floats(min_value=0, max_value=100, allow_nan=False),
    cap=st.floats(min_value=0, max_value=1000, allow_nan=False),
    fraction=st.floats(min_value=0, max_value=1),
)
def test_backoff_stays_within_full_jitter_bounds(
    retry_number: int, initial: float, cap: float, fraction: float
) -> None:
    """Every wait lies in [0, min(max_wait, initial_wait * 2**n)]."""
    wait = backoff_wait(
        retry_number,
        initial_wait=initial,
        max_wait=cap,
        rand=lambda low, high: low + (high - low) * fraction,
    )
    ceiling = min(cap, initial * 2.0 ** min(retry_number, 1000))
    assert 0.0 <= wait <= ceiling


def test_backoff_ceiling_doubles_until_the_cap() -> None:
    """With the random draw at its top the waits are 0.5, 1, 2, 4, 8, 8."""
    top = [
        backoff_wait(n, initial_wait=0.5, max_wait=8.0, rand=lambda _low, high: high)
        for n in range(6)
    ]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


@pytest.mark.parametrize(
    ("retry_number", "ceiling"),
    [
        pytest.param(0, 0.5, id="first"),
        pytest.param(2, 2.0, id="third"),
        pytest.param(9, 8.0, id="capped"),
    ],
)
def test_backoff_draws_the_wait_from_zero_to_the_ceiling(retry_number: int, ceiling: float) -> None:
    """The wait is whatever rand draws from [0, ceiling]: full jitter, not the ceiling itself."""
    calls: list[tuple[float, float]] = []

    def rand(low: float, high: float) -> float:
        calls.append((low, high))
        return high / 4

    wait = backoff_wait(retry_number, initial_wait=0.5, max_wait=8.0, rand=rand)
    assert (wait, calls) == (ceiling / 4, [(0.0, ceiling)])


def test_backoff_rejects_negative_retry_number() -> None:
    """A negative retry number is a bug in the caller."""
    with pytest.raises(ValueError, match="retry_number"):
        backoff_wait(-1, initial_wait=1, max_wait=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_attempts": 0}, id="zero-attempts"),
        pytest.param({"max_attempts": True}, id="bool-attempts"),
        pytest.param({"initial_wait": -1}, id="negative-wait"),
        pytest.param({"max_wait": math.inf}, id="infinite-wait"),
        pytest.param({"deadline": 0}, id="zero-deadline"),
        pytest.param({"statuses": [200, 1000]}, id="bad-status"),
        pytest.param({"statuses": [600]}, id="status-600"),
        pytest.param({"statuses": [99]}, id="status-99"),
        pytest.param({"statuses": [True]}, id="bool-status"),
        pytest.param({"statuses": "502"}, id="status-string"),
        pytest.param({"initial_wait": "1"}, id="string-wait"),
    ],
)
def test_policy_validates_its_fields(kwargs: dict[str, object]) -> None:
    """Nonsense configuration fails when the policy is made, not at the first retry."""
    with pytest.raises((ValueError, TypeError)):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("zero", [0, 0.0], ids=["int", "float"])
def test_a_zero_deadline_says_how_to_have_none(zero: float) -> None:
    """deadline=0 (a call that could never start) is refused with the way to ask for no
    deadline at all."""
    with pytest.raises(ValueError, match=r"deadline must be > 0 \(use None for no deadline\)"):
        RetryPolicy(deadline=zero)


def test_policy_accepts_every_http_status() -> None:
    """The whole 100-599 range can be configured."""
    assert RetryPolicy(statuses=[100, 429, 599]).statuses == {100, 429, 599}


def test_policy_defaults_retry_only_502_and_504() -> None:
    """The documented transient statuses, and nothing else, are retried by default."""
    policy = RetryPolicy()
    assert policy.statuses == {502, 504}
    assert policy.max_attempts == 4
    assert policy.deadline == 30.0
    assert not policy.retry_transport_errors


def test_disabled_and_without_waits_are_variants() -> None:
    """disabled() makes one attempt with no deadline; without_waits() keeps every other field."""
    policy = RetryPolicy(max_attempts=6)
    assert RetryPolicy.disabled() == RetryPolicy(max_attempts=1, deadline=None)
    fast = policy.without_waits()
    assert fast.zero_wait
    assert fast.max_attempts == 6
    assert not policy.zero_wait


def test_retry_after_overrides_backoff_only_when_respected() -> None:
    """compute_wait uses Retry-After when respected (jittered over [ra, 1.2 ra], so calls told
    the same do not retry in lockstep), else the jittered backoff."""
    waits = {RetryPolicy().compute_wait(0, 12.0) for _ in range(200)}
    assert 12.0 <= min(waits) < max(waits) <= 14.4
    assert len(waits) > 100
    assert RetryPolicy(respect_retry_after=False).compute_wait(0, 12.0) <= 0.5


class _Foreign502(Exception):
    """Not a WachatError, yet with a ``status`` (as aiohttp's ClientResponseError has)."""

    status = 502


# (error, is_transient, is_retryable by default, is_retryable with retry_transport_errors)
TRANSIENCE = [
    pytest.param(QRFetchFailedError(), True, True, True, id="502"),
    pytest.param(GatewayTimeoutError(), True, True, True, id="504"),
    pytest.param(status_error(429), True, False, False, id="429"),
    pytest.param(status_error(500), True, False, False, id="500"),
    pytest.param(status_error(503), True, False, False, id="503"),
    pytest.param(status_error(599), True, False, False, id="599"),
    pytest.param(status_error(400), False, False, False, id="400"),
    pytest.param(status_error(401), False, False, False, id="401"),
    pytest.param(status_error(403), False, False, False, id="403"),
    pytest.param(InstanceNotFoundError(), False, False, False, id="404"),
    pytest.param(status_error(409), False, False, False, id="409"),
    pytest.param(status_error(418), False, False, False, id="418"),
    pytest.param(status_error(302), False, False, False, id="302"),
    pytest.param(WachatConnectionError("reset"), True, False, True, id="connection"),
    pytest.param(WachatTimeoutError("slow"), True, False, True, id="attempt-timeout"),
    pytest.param(DeadlineExceededError("late", deadline=1.0), True, False, False, id="deadline"),
    pytest.param(InvalidImageError("cut", truncated=True), True, False, True, id="truncated-png"),
    pytest.param(InvalidImageError("bad signature"), False, False, False, id="not-a-png"),
    pytest.param(
        InvalidImageError("expected image/png, got text/html", content_type="text/html"),
        False,
        False,
        False,
        id="captive-portal-page",
    ),
    pytest.param(ResponseTooLargeError("big", limit=64), False, False, False, id="over-size-cap"),
    pytest.param(InvalidResponseError("no state"), False, False, False, id="bad-state-body"),
    pytest.param(ConfigurationError("bad"), False, False, False, id="configuration"),
    pytest.param(asyncio.CancelledError(), False, False, False, id="cancelled"),
    pytest.param(TimeoutError(), False, False, False, id="bare-timeout-error"),
    pytest.param(ValueError("bug"), False, False, False, id="not-a-wachat-error"),
    pytest.param(_Foreign502(), False, False, False, id="foreign-error-with-status-502"),
]


@pytest.mark.parametrize(("error", "transient", "default", "transport"), TRANSIENCE)
def test_one_table_for_transient_and_retryable(
    error: BaseException, transient: bool, default: bool, transport: bool
) -> None:
    """is_transient (watch_qr) and is_retryable (one call) follow the documented table."""
    assert (
        is_transient(error),
        RetryPolicy().is_retryable(error),
        RetryPolicy(retry_transport_errors=True).is_retryable(error),
    ) == (transient, default, transport)


@pytest.mark.parametrize(("error", "transient", "default", "transport"), TRANSIENCE)
def test_transport_faults_are_what_the_transport_switch_adds(
    error: BaseException, transient: bool, default: bool, transport: bool
) -> None:
    """retry_transport_errors adds exactly is_transport_fault, and nothing it adds is terminal."""
    assert (transport and not default) == is_transport_fault(error)
    assert not transport or transient


def test_watch_uses_the_same_predicate() -> None:
    """_polling.is_transient is the one in _retry, not a second definition."""
    assert wachat_async._polling.is_transient is is_transient


@given(st.integers(min_value=100, max_value=599))
def test_custom_statuses_are_exactly_what_is_retried(status: int) -> None:
    """A status error is retryable iff its status is in the policy's statuses."""
    error = status_error(status)
    assert RetryPolicy(statuses={status}).is_retryable(error)
    assert not RetryPolicy(statuses={s for s in (502, 504) if s != status}).is_retryable(error)


def test_budget_caps_retries_at_ratio_plus_reserve() -> None:
    """100 calls at ratio 0.2 with a reserve of 5 allow exactly 25 retries in the window."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.5, ttl=10, clock=clock)
    for _ in range(100):
        budget.deposit()
    granted = sum(budget.try_withdraw() for _ in range(100))
    assert granted == 25
    assert (budget.calls, budget.retries, budget.refused) == (100, 25, 75)


def test_budget_deposits_expire_after_ttl() -> None:
    """After ttl seconds old deposits and withdrawals no longer count."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0, ttl=2, clock=clock)
    budget.deposit()
    assert budget.balance == 1.0
    clock.now += 2
    assert budget.balance == 0.0
    assert not budget.try_withdraw()
    budget.deposit()
    assert budget.try_withdraw()


def test_budget_reused_slot_forgets_its_old_second() -> None:
    """ttl seconds later a second maps to the same slot again, which starts from zero."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0, ttl=10, clock=clock)
    for _ in range(5):
        budget.deposit()
    clock.now += 10  # same slot index, ten seconds on
    budget.deposit()
    assert budget.balance == 1.0


@pytest.mark.parametrize(
    "ttl",
    [0.5, 0, -1, 61, 1e7, math.nan, math.inf],
    ids=["half-second", "zero", "negative", "61", "1e7", "nan", "inf"],
)
def test_budget_ttl_outside_finagles_bounds_is_refused(ttl: float) -> None:
    """ttl is 1 to 60 seconds, as in Finagle; anything else is a ConfigurationError saying so."""
    with pytest.raises(ConfigurationError, match=r"^ttl must be between 1 and 60 seconds, got"):
        RetryBudget(ttl=ttl)


@pytest.mark.parametrize("ttl", [1, 1.5, 60], ids=["1", "1.5", "60"])
def test_budget_ttl_within_the_bounds_is_accepted(ttl: float) -> None:
    assert RetryBudget(ttl=ttl).ttl == ttl


@pytest.mark.parametrize("ttl", ["10", True, None], ids=["str", "bool", "none"])
def test_budget_ttl_must_be_a_number(ttl: object) -> None:
    with pytest.raises(TypeError, match="ttl must be a number of seconds"):
        RetryBudget(ttl=ttl)  # type: ignore[arg-type]


def _lines_run(work: Callable[[], object]) -> int:
    """How many lines of wachat_async/_retry.py *work* runs: a count, not a time."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if frame.f_code.co_filename == wachat_async._retry.__file__:
            count += event == "line"
            return tracer
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        work()
    finally:
        sys.settrace(previous)
    return count


def test_budget_decisions_cost_the_same_whatever_the_ttl() -> None:
    """Ten minutes of traffic, a deposit and a retry each second: a 60 s window runs no more
    lines than a 1 s one (no scan of the window per decision)."""

    def traffic(ttl: float) -> Callable[[], object]:
        clock = FakeClock()
        budget = RetryBudget(ratio=1.0, min_retries_per_second=0, ttl=ttl, clock=clock)

        def run() -> None:
            for _ in range(600):
                clock.now += 1
                budget.deposit()
                assert budget.try_withdraw()

        return run

    assert _lines_run(traffic(60)) <= _lines_run(traffic(1))


class ReferenceBudget:
    """The budget as it was first written (one float per second, updated on every deposit):
    the specification the lazy :class:`RetryBudget` must agree with, decision for decision."""

    def __init__(self, ratio: float, min_retries_per_second: float, ttl: float, clock: FakeClock):
        self.ratio, self.reserve, self.clock = ratio, min_retries_per_second * ttl, clock
        self.slots = [0.0] * math.ceil(ttl)
        self.slot_times = [-1] * math.ceil(ttl)
        self.calls = self.retries = self.refused = 0

    def _slot(self) -> int:
        second = int(self.clock())
        index = second % len(self.slots)
        if self.slot_times[index] != second:
            self.slot_times[index], self.slots[index] = second, 0.0
        return index

    @property
    def balance(self) -> float:
        horizon = int(self.clock()) - len(self.slots)
        live = sum(v for v, t in zip(self.slots, self.slot_times, strict=True) if t > horizon)
        return live + self.reserve

    def deposit(self) -> None:
        self.calls += 1
        self.slots[self._slot()] += self.ratio

    def try_withdraw(self) -> bool:
        if self.balance >= 1.0 - 1e-9:
            self.slots[self._slot()] -= 1.0
            self.retries += 1
            return True
        self.refused += 1
        return False


_BUDGET_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), st.integers(1, 30)),
        st.tuples(st.just("withdraw"), st.integers(1, 10)),
        st.tuples(
            st.just("advance"),
            st.one_of(st.integers(0, 25).map(float), st.floats(0, 25, allow_nan=False)),
        ),
    ),
    max_size=60,
)


@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5, 1.0, 3.0]),
    reserve=st.sampled_from([0.0, 0.1, 0.5, 2.0]),
    ttl=st.one_of(st.integers(1, 12).map(float), st.floats(1, 12, allow_nan=False)),
    start=st.floats(0, 1e6, allow_nan=False),
    steps=_BUDGET_STEPS,
)
def test_lazy_budget_decides_like_the_per_second_window(
    ratio: float, reserve: float, ttl: float, start: float, steps: list[tuple[str, float]]
) -> None:
    """Any interleaving of calls, retries and clock moves: the same grants, refusals, balance."""
    clock = FakeClock()
    clock.now = start
    budget = RetryBudget(ratio=ratio, min_retries_per_second=reserve, ttl=ttl, clock=clock)
    reference = ReferenceBudget(ratio, reserve, ttl, clock)
    for op, amount in steps:
        if op == "advance":
            clock.now += amount
        elif op == "deposit":
            for _ in range(int(amount)):
                budget.deposit()
                reference.deposit()
        else:
            decisions = [budget.try_withdraw() for _ in range(int(amount))]
            expected = [reference.try_withdraw() for _ in range(int(amount))]
            assert expected == decisions
        assert budget.balance == pytest.approx(reference.balance, abs=1e-9)
    assert (reference.calls, reference.retries, reference.refused) == (
        budget.calls,
        budget.retries,
        budget.refused,
    )


def test_budget_window_counts_the_current_second_and_the_ones_before() -> None:
    """ttl=3: a deposit at 10.9 counts at 12.99 (seconds 10, 11, 12) and is gone at 13.0."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0, ttl=3, clock=clock)
    clock.now = 10.9
    budget.deposit()
    clock.now = 12.99
    assert budget.balance == 1.0
    clock.now = 13.0
    assert budget.balance == 0.0


def test_budget_withdrawals_expire_with_their_second() -> None:
    """A retry taken at second 5 stops counting against the budget at second 5 + ttl."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.5, ttl=2, clock=clock)
    clock.now = 5.5
    assert budget.try_withdraw()  # the reserve of 1 token
    assert not budget.try_withdraw()
    clock.now = 6.5
    assert not budget.try_withdraw()  # the withdrawal at second 5 still counts
    clock.now = 7.0
    assert budget.try_withdraw()
    assert (budget.retries, budget.refused) == (2, 2)


def test_budget_repr_shows_counters_not_the_clock() -> None:
    """repr() shows the configuration and live counters, never the clock or the window."""
    budget = RetryBudget(ratio=0.5, clock=FakeClock())
    budget.deposit()
    assert repr(budget) == (
        "RetryBudget(ratio=0.5, min_retries_per_second=2.0, ttl=10.0, calls=1, retries=0, "
        "refused=0)"
    )


def test_unlimited_budget_never_refuses() -> None:
    """RetryBudget.unlimited() grants every retry."""
    budget = RetryBudget.unlimited()
    assert all(budget.try_withdraw() for _ in range(1000))
    assert budget.refused == 0


# -- the retry loop (Retrier), on a fake clock and fake attempts ---------------------------


def make_retrier(clock: FakeClock, **policy: object) -> tuple[Retrier, list[float]]:
    """A Retrier on *clock* whose sleep records each wait and advances the clock by it."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    retrier = Retrier(
        RetryPolicy(**policy),  # type: ignore[arg-type]
        RetryBudget.unlimited(),
        attempt_timeout=1.0,
        sleep=sleep,
        clock=clock,
    )
    return retrier, slept


def failing(clock: FakeClock, *, took: float, then: object = None) -> tuple[Any, list[str]]:
    """An attempt that takes *took* seconds of the fake clock and fails with a 502 (or, once
    the script runs out, returns *then*)."""
    calls: list[str] = []

    async def attempt(name: str) -> object:
        calls.append(name)
        clock.now += took
        if then is not None and len(calls) > 2:
            return then
        raise QRFetchFailedError(instance_name=name)

    return attempt, calls


async def test_loop_gives_up_when_the_next_wait_would_cross_the_deadline() -> None:
    """Attempts of 4 s against a 10 s deadline: the third one's failure ends the call, by the
    injected clock, with no real waiting."""
    clock = FakeClock()
    retrier, _ = make_retrier(clock, deadline=10.0, initial_wait=0, max_attempts=10)
    attempt, calls = failing(clock, took=4.0)
    with pytest.raises(QRFetchFailedError) as info:
        await retrier.call(NAME, None, attempt)
    assert len(calls) == info.value.attempts == 3
    assert info.value.__notes__[-1] == (
        "gave up after 3 attempts in 12.0 s (waiting 0.00 s would cross the 10 s deadline)"
    )


async def test_loop_sleeps_the_computed_waits_and_returns_the_result() -> None:
    """Waits come from Retry-After when the error has one; the result of the attempt that
    succeeds is returned as it is."""
    clock = FakeClock()
    retrier, slept = make_retrier(clock, deadline=None, max_retry_after=60)
    calls: list[int] = []

    async def attempt(name: str, extra: int) -> int:
        calls.append(extra)
        if len(calls) < 3:
            raise QRFetchFailedError(instance_name=name, retry_after=float(len(calls) * 5))
        return extra * 2

    assert await retrier.call(NAME, None, attempt, 21) == 42
    assert calls == [21, 21, 21]
    assert 5.0 <= slept[0] <= 6.0
    assert 10.0 <= slept[1] <= 12.0
    assert clock.now == pytest.approx(1000.0 + sum(slept))


async def test_the_deadline_timer_is_armed_with_what_the_clock_says_is_left() -> None:
    """After a first attempt that took 9.99 s of a 10 s deadline (by the clock), a retry that
    would hang forever is cancelled 10 ms later: DeadlineExceededError, chained to the last
    real error, both attempts counted."""
    clock = FakeClock()
    retrier, _ = make_retrier(clock, deadline=10.0, initial_wait=0)
    attempts = 0

    async def attempt(name: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            clock.now += 9.99  # the retry still fits, by the clock...
            raise QRFetchFailedError(instance_name=name)
        clock.now += 1.0
        await asyncio.Event().wait()  # ...but this attempt never ends by itself

    with pytest.raises(DeadlineExceededError) as info:
        await asyncio.wait_for(retrier.call(NAME, None, attempt), timeout=30)
    assert (attempts, info.value.attempts, info.value.deadline) == (2, 2, 10.0)
    assert isinstance(info.value.__cause__, QRFetchFailedError)


async def test_a_full_queue_puts_the_first_attempt_under_the_deadline() -> None:
    """A first attempt that must queue for a connection runs under the deadline timer: with
    no slot ever freed and the deadline spent, it ends as DeadlineExceededError."""
    clock = FakeClock()
    retrier = Retrier(
        RetryPolicy(deadline=5.0),
        RetryBudget.unlimited(),
        attempt_timeout=1.0,
        clock=iter([clock.now, clock.now + 6.0]).__next__,  # 6 s pass before the guard
    )
    queue = ConnectionQueue(1)
    await queue.acquire()  # the only slot is taken, and never given back

    async def attempt(name: str) -> None:
        await queue.acquire()

    assert not retrier.guards_first_attempt
    with pytest.raises(DeadlineExceededError, match="while waiting for a connection slot"):
        await asyncio.wait_for(retrier.call(NAME, queue, attempt), timeout=30)


def queueing(in_use: int, *, fail_first: bool) -> Any:
    """An attempt that waits forever for a connection slot, marking its cancellation the way
    the client's connection queue does (after one failing attempt, if *fail_first*)."""
    calls: list[str] = []

    async def attempt(name: str) -> None:
        calls.append(name)
        if fail_first and len(calls) == 1:
            raise QRFetchFailedError(instance_name=name)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            note_slot_wait(exc, in_use)
            raise

    return attempt


@pytest.mark.parametrize(
    ("fail_first", "message", "attempts"),
    [
        pytest.param(
            False,
            "deadline of 5 s exceeded while waiting for a connection slot "
            "(3 in use: is a stream left open?)",
            0,
            id="first-attempt-never-sent",
        ),
        pytest.param(
            True,
            "deadline of 5 s exceeded after 1 attempt, the next one waiting for a connection "
            "slot (3 in use: is a stream left open?)",
            1,
            id="retry-never-sent",
        ),
    ],
)
async def test_a_deadline_spent_queueing_says_so_and_counts_only_sent_attempts(
    fail_first: bool, message: str, attempts: int
) -> None:
    """When the deadline strikes while an attempt waits for a connection slot, the error says
    it was waiting (how many slots were busy, and the likely cause), and ``attempts`` counts
    only the attempts that were sent."""
    readings = itertools.chain([0.0], itertools.repeat(4.999))  # then 1 ms of deadline left
    retrier = Retrier(
        RetryPolicy(deadline=5.0, initial_wait=0),
        RetryBudget.unlimited(),
        attempt_timeout=1.0,
        clock=readings.__next__,
    )
    queue = ConnectionQueue(1)
    await queue.acquire()  # no slot free: the first attempt runs under the deadline
    with pytest.raises(DeadlineExceededError) as info:
        await asyncio.wait_for(
            retrier.call(NAME, queue, queueing(3, fail_first=fail_first)), timeout=30
        )
    assert str(info.value) == message
    assert info.value.attempts == attempts


async def test_a_guarded_first_attempt_that_is_not_retryable_is_raised_as_it_is() -> None:
    """Under the deadline timer from the start (no attempt timeout), a 404 is raised after one
    attempt, with no gave-up note: there was nothing to give up."""
    retrier = Retrier(RetryPolicy(zero_wait=True), RetryBudget.unlimited(), attempt_timeout=None)

    async def attempt(name: str) -> None:
        raise InstanceNotFoundError(instance_name=name)

    assert retrier.guards_first_attempt
    with pytest.raises(InstanceNotFoundError) as info:
        await retrier.call(NAME, None, attempt)
    assert (info.value.attempts, getattr(info.value, "__notes__", [])) == (1, [])


@pytest.mark.parametrize(
    ("deadline", "attempt_timeout", "guarded"),
    [
        pytest.param(30.0, 20.0, False, id="timeout-fits-the-deadline"),
        pytest.param(0.5, 0.5, False, id="timeout-equals-the-deadline"),
        pytest.param(10.0, 20.0, True, id="timeout-outlasts-the-deadline"),
        pytest.param(10.0, None, True, id="no-total-timeout"),
        pytest.param(None, None, False, id="no-deadline"),
    ],
)
def test_first_attempt_is_guarded_only_when_it_could_outlast_the_deadline(
    deadline: float | None, attempt_timeout: float | None, guarded: bool
) -> None:
    """The fast path runs bare unless the attempt's own timeout may outlast the deadline."""
    retrier = Retrier(
        RetryPolicy(deadline=deadline), RetryBudget.unlimited(), attempt_timeout=attempt_timeout
    )
    assert retrier.guards_first_attempt is guarded


async def test_an_empty_budget_ends_the_call_after_the_first_attempt() -> None:
    """With a budget that refuses every retry, one attempt is made and the note says why."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0, min_retries_per_second=0, clock=clock)
    retrier = Retrier(RetryPolicy(zero_wait=True), budget, attempt_timeout=1.0, clock=clock)
    attempt, calls = failing(clock, took=0.0)
    with pytest.raises(QRFetchFailedError) as info:
        await retrier.call(NAME, None, attempt)
    assert (len(calls), budget.calls, budget.refused) == (1, 1, 1)
    assert "retry budget exhausted" in info.value.__notes__[-1]


def test_zero_wait_policy_gets_a_sleep_that_does_not_wait() -> None:
    """Without an injected sleep, zero_wait selects the no-wait sleep, else asyncio.sleep."""
    budget = RetryBudget.unlimited()
    assert Retrier(RetryPolicy(), budget).sleep is asyncio.sleep
    assert Retrier(RetryPolicy(zero_wait=True), budget).sleep is not asyncio.sleep


# -- behaviour on real sockets ------------------------------------------------------------


async def test_502_502_200_succeeds_in_three_attempts(server: FakeWachatServer) -> None:
    """Two transient failures are absorbed; the server saw exactly three requests."""
    server.script(NAME, [502, 502, 200])
    async with make_client(server) as client:
        qr = await client.get_qr_image(NAME)
        assert_no_connection_checked_out(client)
    assert qr.instance_name == NAME
    assert server.request_count(NAME) == 3


async def test_504_storm_gives_up_after_max_attempts(server: FakeWachatServer) -> None:
    """The last real 504 is raised with attempts == max_attempts and a note."""
    server.script(NAME, [504] * 10)
    async with make_client(server, max_attempts=5) as client:
        with pytest.raises(GatewayTimeoutError) as info:
            await client.get_qr_image(NAME)
        assert_no_connection_checked_out(client)
    assert info.value.attempts == 5
    assert server.request_count(NAME) == 5
    assert info.value.__notes__[-1].startswith("gave up after 5 attempts in ")
    budget = client.retry_budget  # charged once per retry, not when giving up
    assert (budget.calls, budget.retries, budget.refused) == (1, 4, 0)


@pytest.mark.parametrize(
    ("status", "exc_type"),
    status_cases(400, 401, 403, 404, 409, 500, 503),
)
async def test_non_transient_statuses_are_tried_once(
    server: FakeWachatServer, status: int, exc_type: type[WachatError]
) -> None:
    """4xx and undocumented statuses are never retried."""
    server.script(NAME, [status, 200])
    async with make_client(server) as client:
        with pytest.raises(exc_type) as info:
            await client.get_qr_image(NAME)
    assert server.request_count(NAME) == 1
    assert info.value.attempts == 1


async def test_error_after_retries_reports_all_attempts(server: FakeWachatServer) -> None:
    """A 404 after two 502s is raised as the 404, with attempts == 3."""
    server.script(NAME, [502, 502, 404])
    async with make_client(server) as client:
        with pytest.raises(InstanceNotFoundError) as info:
            await client.get_qr_image(NAME)
    assert info.value.attempts == 3


async def test_custom_statuses_are_retried(server: FakeWachatServer) -> None:
    """statuses= widens what is retried (here 503)."""
    server.script(NAME, [503, 200])
    async with make_client(server, statuses={502, 503, 504}) as client:
        await client.get_qr_image(NAME)
    assert server.request_count(NAME) == 2


@pytest.mark.parametrize(
    ("header", "expected_wait"),
    [
        pytest.param("2", 2.0, id="seconds"),
        pytest.param("0", 0.0, id="zero"),
    ],
)
async def test_retry_after_seconds_is_the_wait(
    server: FakeWachatServer, header: str, expected_wait: float
) -> None:
    """The wait reported before the retry is the server's Retry-After (jittered up to 1.2x)."""
    events: list[RetryEvent] = []
    server.script(NAME, [Fault(status=502, retry_after=header), 200])
    async with make_client(server, on_retry=events.append) as client:
        await client.get_qr_image(NAME)
    assert len(events) == 1
    assert expected_wait <= events[0].wait <= expected_wait * 1.2
    assert events[0].status == 502
    assert events[0].attempt == 1
    assert events[0].instance_name == NAME


async def test_retry_after_http_date_is_honoured(server: FakeWachatServer) -> None:
    """An HTTP-date a few seconds ahead becomes a wait of at most those seconds."""
    events: list[RetryEvent] = []
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    server.script(NAME, [Fault(status=504, retry_after=when), 200])
    async with make_client(server, on_retry=events.append) as client:
        await client.get_qr_image(NAME)
    assert len(events) == 1
    assert 0 < events[0].wait <= 5 * 1.2


async def test_retry_after_at_the_cap_is_honoured(server: FakeWachatServer) -> None:
    """A Retry-After equal to max_retry_after is still waited for (in zero-wait mode: reported)."""
    events: list[RetryEvent] = []
    server.script(NAME, [Fault(status=502, retry_after="60"), 200])
    async with make_client(server, max_retry_after=60, deadline=None, on_retry=events.append) as c:
        await c.get_qr_image(NAME)
    assert len(events) == 1
    assert 60.0 <= events[0].wait <= 72.0


async def test_over_cap_retry_after_gives_up_at_once(server: FakeWachatServer) -> None:
    """A Retry-After above max_retry_after raises after one attempt, saying why."""
    server.script(NAME, [Fault(status=502, retry_after="3600"), 200])
    async with make_client(server, max_retry_after=60) as client:
        with pytest.raises(QRFetchFailedError) as info:
            await client.get_qr_image(NAME)
    assert server.request_count(NAME) == 1
    assert info.value.retry_after == 3600
    assert "max_retry_after" in info.value.__notes__[-1]


async def test_retry_after_that_would_cross_the_deadline_gives_up(
    server: FakeWachatServer,
) -> None:
    """A wait that ends past the deadline is not taken."""
    server.script(NAME, [Fault(status=502, retry_after="20"), 200])
    async with make_client(server, deadline=10, max_retry_after=60) as client:
        with pytest.raises(QRFetchFailedError) as info:
            await client.get_qr_image(NAME)
    assert "deadline" in info.value.__notes__[-1]
    assert server.request_count(NAME) == 1


async def test_ignored_retry_after_uses_backoff(server: FakeWachatServer) -> None:
    """respect_retry_after=False keeps the jittered backoff, even for a huge header."""
    events: list[RetryEvent] = []
    server.script(NAME, [Fault(status=502, retry_after="3600"), 200])
    async with make_client(server, respect_retry_after=False, on_retry=events.append) as c:
        await c.get_qr_image(NAME)
    assert events[0].wait <= 0.5


@pytest.mark.parametrize("transport", [False, True], ids=["default", "retry-transport-errors"])
async def test_deadline_ends_a_hanging_call(server: FakeWachatServer, transport: bool) -> None:
    """The deadline, not the 20 s request timeout, ends a call whose server hangs; it is never
    retried, even when transport errors are."""
    server.script(NAME, [Fault(hang=True), 200])
    # A hang is a hang at any deadline: 1 s only leaves a loaded machine room to send the request.
    async with make_client(server, deadline=1.0, retry_transport_errors=transport) as client:
        with pytest.raises(DeadlineExceededError, match=r"deadline of 1 s exceeded") as info:
            await client.get_qr_image(NAME)
        assert_no_connection_checked_out(client)
    assert isinstance(info.value, TimeoutError)
    assert (info.value.attempts, info.value.deadline) == (1, 1.0)
    assert server.request_count(NAME) == 1


async def test_attempt_timeout_is_retried_with_transport_retries(
    server: FakeWachatServer,
) -> None:
    """With retry_transport_errors=True a per-attempt timeout is retried like a reset."""
    server.script(NAME, [Fault(hang=True), 200])
    events: list[RetryEvent] = []
    async with WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        # The retry's answer must come within sock_read: 1 s, not 0.1 s, on a loaded machine.
        timeout=aiohttp.ClientTimeout(total=5.0, sock_read=1.0),
        retry=RetryPolicy(zero_wait=True, retry_transport_errors=True, on_retry=events.append),
    ) as client:
        qr = await client.get_qr_image(NAME)
        assert_no_connection_checked_out(client)
    assert qr.data
    assert server.request_count(NAME) == 2
    assert [type(e.error) for e in events] == [WachatTimeoutError]


async def test_attempt_timeout_is_not_retried_by_default(server: FakeWachatServer) -> None:
    """Without retry_transport_errors a per-attempt timeout is raised at once, and it is not
    mistaken for the deadline."""
    server.script(NAME, [Fault(hang=True), 200])
    async with WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        timeout=aiohttp.ClientTimeout(total=5.0, sock_read=0.1),
        retry=RetryPolicy(zero_wait=True),
    ) as client:
        with pytest.raises(WachatTimeoutError, match="timed out") as info:
            await client.get_qr_image(NAME)
    assert not isinstance(info.value, DeadlineExceededError)
    assert isinstance(info.value, TimeoutError)
    assert server.request_count(NAME) == 1


async def test_exhausted_attempt_timeouts_raise_the_last_one_not_a_deadline(
    server: FakeWachatServer,
) -> None:
    """Attempt timeouts retried to max_attempts end with the last WachatTimeoutError and the
    gave-up note: a TimeoutError from an attempt is not taken for the deadline's."""
    server.script(NAME, [Fault(hang=True)] * 3)
    async with WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        timeout=aiohttp.ClientTimeout(total=5.0, sock_read=0.1),
        retry=RetryPolicy(zero_wait=True, retry_transport_errors=True, max_attempts=3),
    ) as client:
        with pytest.raises(WachatTimeoutError, match="timed out") as info:
            await client.get_qr_image(NAME)
    assert not isinstance(info.value, DeadlineExceededError)
    assert info.value.attempts == 3
    assert any("gave up after 3 attempts" in n for n in info.value.__notes__)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(
            Fault(content_type="text/html", body=b"<html><form>Room number</form></html>"),
            id="captive-portal-html",
        ),
        pytest.param(Fault(body=b"<html>not a png</html>"), id="html-labelled-image/png"),
        pytest.param(Fault(content_type="application/json", body=b"{}"), id="json"),
    ],
)
async def test_a_complete_200_that_is_not_a_png_is_tried_once(
    server: FakeWachatServer, fault: Fault
) -> None:
    """Even with retry_transport_errors=True, a whole 200 that is not a PNG is not retried:
    only a body cut short is a transport fault."""
    server.script(NAME, [fault, 200])
    async with make_client(server, retry_transport_errors=True) as client:
        with pytest.raises(InvalidImageError) as info:
            await client.get_qr_image(NAME)
        assert_no_connection_checked_out(client)
    assert not info.value.truncated
    assert info.value.attempts == 1
    assert server.request_count(NAME) == 1


async def test_deadline_during_retries_keeps_the_last_error_as_cause(
    server: FakeWachatServer,
) -> None:
    """A deadline hit on the second attempt chains the first attempt's 502."""
    server.script(NAME, [502, Fault(hang=True)])
    # The first 502 must come within the deadline: 1 s leaves a loaded machine room.
    async with make_client(server, deadline=1.0, initial_wait=0) as client:
        with pytest.raises(WachatTimeoutError) as info:
            await client.get_qr_image(NAME)
    assert info.value.attempts == 2
    assert isinstance(info.value.__cause__, QRFetchFailedError)


async def test_deadline_covers_retries_after_an_unguarded_first_attempt(
    server: FakeWachatServer,
) -> None:
    """With total <= deadline the first attempt runs bare, yet a hanging retry hits the deadline."""
    # The slow first 502 puts the deadline (1 s after the start) at least 0.2 s before the
    # second attempt's own timeout (1 s after *its* start), on one loop clock, so the deadline
    # is what ends the call; 1 s leaves a loaded machine room for the 502 to arrive in time.
    server.script(NAME, [Fault(status=502, delay=0.2), Fault(hang=True)])
    async with WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        timeout=1.0,
        retry=RetryPolicy(zero_wait=True, deadline=1.0, initial_wait=0),
        retry_budget=RetryBudget.unlimited(),
    ) as client:
        with pytest.raises(WachatTimeoutError, match="deadline") as info:
            await client.get_qr_image(NAME)
        assert_no_connection_checked_out(client)
    assert info.value.attempts == 2
    assert isinstance(info.value.__cause__, QRFetchFailedError)


async def test_cancellation_during_backoff_propagates_and_frees_connections(
    server: FakeWachatServer,
) -> None:
    """Cancelling a call while it sleeps before a retry raises CancelledError at once."""
    sleeping = asyncio.Event()
    server.script(NAME, [Fault(status=502, retry_after="30"), 200])
    async with WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        retry=RetryPolicy(max_retry_after=60, deadline=60, on_retry=lambda _e: sleeping.set()),
    ) as client:
        task = asyncio.create_task(client.get_qr_image(NAME))
        await sleeping.wait()
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_no_connection_checked_out(client)
    assert server.request_count(NAME) == 1


async def test_cancellation_is_never_retried(server: FakeWachatServer) -> None:
    """A cancelled attempt is not retried: the server sees one request."""
    server.script(NAME, [Fault(hang=True), 200])
    async with make_client(server) as client:
        task = asyncio.create_task(client.get_qr_image(NAME))
        while server.request_count(NAME) == 0:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert server.request_count(NAME) == 1


async def test_budget_caps_retries_in_a_storm(server: FakeWachatServer) -> None:
    """300 concurrent calls against a 100%-502 server add at most ratio*calls + reserve."""
    server.script(NAME, [502] * 5000)
    budget = RetryBudget(ratio=0.2, min_retries_per_second=1, ttl=10, clock=FakeClock())
    async with WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        retry=RetryPolicy(zero_wait=True),
        retry_budget=budget,
    ) as client:
        results = await asyncio.gather(
            *(client.get_qr_image(NAME) for _ in range(300)), return_exceptions=True
        )
        assert_no_connection_checked_out(client)
    assert all(isinstance(r, QRFetchFailedError) for r in results)
    assert budget.retries <= 0.2 * 300 + 10
    assert server.request_count(NAME) == 300 + budget.retries
    assert budget.refused > 0
    notes = [n for r in results for n in getattr(r, "__notes__", [])]
    assert any("retry budget exhausted" in n for n in notes)


async def test_transport_errors_are_not_retried_by_default(server: FakeWachatServer) -> None:
    """A dropped connection is raised unless the policy opts in.

    aiohttp itself resends an idempotent GET once when the connection drops before any
    response (RFC 9112, 9.3.1), so two drops are needed to see the error.
    """
    server.script(NAME, [Fault(drop=True), Fault(drop=True), 200])
    async with make_client(server) as client:
        with pytest.raises(WachatConnectionError):
            await client.get_qr_image(NAME)
    assert server.request_count(NAME) == 2


@pytest.mark.parametrize(
    ("faults", "requests"),
    [
        pytest.param([Fault(drop=True)] * 2, 3, id="drop"),
        pytest.param([Fault(truncate=True)], 2, id="truncate"),
    ],
)
async def test_transport_errors_are_retried_when_asked(
    server: FakeWachatServer, faults: list[Fault], requests: int
) -> None:
    """retry_transport_errors=True retries drops and cut-short bodies of get_qr_image."""
    server.script(NAME, [*faults, 200])
    async with make_client(server, retry_transport_errors=True) as client:
        qr = await client.get_qr_image(NAME)
        assert_no_connection_checked_out(client)
    assert qr.data
    assert server.request_count(NAME) == requests


async def test_no_retry_after_a_chunk_reached_the_caller(server: FakeWachatServer) -> None:
    """Once stream_qr_image yielded bytes, a cut-short body is raised, not retried."""
    from wachat_async import InvalidImageError

    server.script(NAME, [Fault(truncate=True), 200])
    chunks: list[bytes] = []

    async def consume(client: WachatClient) -> None:
        async with client.stream_qr_image(NAME, chunk_size=16) as stream:
            async for chunk in stream:
                chunks.append(chunk)

    async with make_client(server, retry_transport_errors=True) as client:
        with pytest.raises(InvalidImageError):
            await consume(client)
    assert chunks  # bytes did reach the caller before the cut
    assert server.request_count(NAME) == 1


async def test_concurrent_calls_keep_separate_retry_state(server: FakeWachatServer) -> None:
    """Calls retrying at the same time each count their own attempts."""
    server.add_instance("a")
    server.add_instance("b")
    server.script("a", [502, 502, 200])
    server.script("b", [504] * 4)
    async with make_client(server) as client:
        a, b = await asyncio.gather(
            client.get_qr_image("a"), client.get_qr_image("b"), return_exceptions=True
        )
    assert not isinstance(a, BaseException)
    assert isinstance(b, GatewayTimeoutError)
    assert b.attempts == 4
    assert server.request_count("a") == 3


async def test_every_call_deposits_into_the_budget(server: FakeWachatServer) -> None:
    """With no reserve, a call's own deposit is what pays for its retry."""
    server.script(NAME, [502, 200, 502, 200])
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0, clock=FakeClock())
    async with WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        retry=RetryPolicy(zero_wait=True),
        retry_budget=budget,
    ) as client:
        await client.get_qr_image(NAME)
        await client.get_qr_image(NAME)
    assert (budget.calls, budget.retries, budget.refused) == (2, 2, 0)


async def test_a_failure_that_is_never_retried_never_builds_a_tenacity_object(
    server: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 404 is raised as it is: no tenacity, no note."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("tenacity entered for a failure that is never retried")

    monkeypatch.setattr(wachat_async._retry, "AsyncRetrying", forbidden)
    async with make_client(server) as client:
        with pytest.raises(InstanceNotFoundError) as info:
            await client.get_qr_image("t1_missing")
    assert (info.value.attempts, getattr(info.value, "__notes__", [])) == (1, [])


async def test_a_one_attempt_policy_gives_up_like_any_other(server: FakeWachatServer) -> None:
    """max_attempts=1: a 502 is sent once, and the call gives up on it as on a last retry."""
    events: list[GiveUpEvent] = []
    server.script(NAME, [502])
    async with make_client(server, max_attempts=1, on_give_up=events.append) as client:
        with pytest.raises(QRFetchFailedError) as info:
            await client.get_qr_image(NAME)
    assert server.request_count(NAME) == info.value.attempts == 1
    assert re.fullmatch(
        r"gave up after 1 attempt in \d+\.\d s \(max_attempts reached\)", info.value.__notes__[-1]
    )
    assert [(e.reason, e.attempts, e.error) for e in events] == [("max_attempts", 1, info.value)]


async def test_success_path_never_builds_a_tenacity_object(
    server: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that succeeds at once does not touch tenacity at all."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("tenacity entered on the success path")

    monkeypatch.setattr(wachat_async._retry, "AsyncRetrying", forbidden)
    async with make_client(server) as client:
        for _ in range(3):
            await client.get_qr_image(NAME)


async def test_retry_log_lines_name_instance_status_and_wait_but_no_key(
    server: FakeWachatServer, all_logs: pytest.LogCaptureFixture
) -> None:
    """One INFO line per retry on logger wachat_async, without the key."""
    server.script(NAME, [502, 504, 200])
    async with make_client(server) as client:
        await client.get_qr_image(NAME)
    lines = [r for r in all_logs.records if r.name == "wachat_async"]
    assert len(lines) == 2
    assert all(r.levelno == logging.INFO for r in lines)
    assert "502" in lines[0].getMessage()
    assert "504" in lines[1].getMessage()
    assert NAME in lines[0].getMessage()
    assert_no_key(*(r.getMessage() for r in all_logs.records))


async def test_disabled_policy_leaves_the_timeout_alone(server: FakeWachatServer) -> None:
    """With RetryPolicy.disabled() only the client's timeout bounds a call: no deadline timer
    guards the attempt and the error is the attempt's own timeout."""
    server.script(NAME, [Fault(hang=True)])
    async with WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        timeout=aiohttp.ClientTimeout(total=60.0, sock_read=0.1),
        retry=RetryPolicy.disabled(),
    ) as client:
        with pytest.raises(WachatTimeoutError) as info:
            await client.get_qr_image(NAME)
    assert not isinstance(info.value, DeadlineExceededError)
    assert (
        WachatClient(api_key=KEY, timeout=60, retry=RetryPolicy.disabled()).retry_policy.deadline
        is None
    )


async def test_disabled_policy_makes_one_attempt(server: FakeWachatServer) -> None:
    """RetryPolicy.disabled() raises the first 502."""
    server.script(NAME, [502, 200])
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, retry=RetryPolicy.disabled()
    ) as client:
        with pytest.raises(QRFetchFailedError) as info:
            await client.get_qr_image(NAME)
    assert info.value.attempts == 1
    assert_no_key(*exception_texts(info.value))


async def test_real_waits_are_slept_when_not_zero_wait(server: FakeWachatServer) -> None:
    """Outside zero-wait mode the client really sleeps (here a tiny backoff)."""
    server.script(NAME, [502, 200])
    async with WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        retry=RetryPolicy(initial_wait=0.001, max_wait=0.001),
    ) as client:
        assert client.retry_policy.max_wait == 0.001
        await client.get_qr_image(NAME)
    assert server.request_count(NAME) == 2


class CountingClock:
    """A clock that advances by one second per reading and counts its readings."""

    def __init__(self) -> None:
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return 1000.0 + self.readings


@pytest.mark.parametrize("shared", [True, False], ids=["one-clock", "two-clocks"])
async def test_a_call_reads_a_shared_clock_once(shared: bool) -> None:
    """deposit() returns its clock reading, and a retrier on the budget's clock starts the
    call's deadline from it: one reading per successful call. On a clock of its own the
    retrier reads that one for the start instead."""
    clock, other = CountingClock(), CountingClock()
    budget = RetryBudget(clock=clock)
    retrier = Retrier(RetryPolicy(), budget, attempt_timeout=1.0, clock=clock if shared else other)

    async def attempt(name: str) -> str:
        return name

    assert await retrier.call(NAME, None, attempt) == NAME
    assert (clock.readings, other.readings) == ((1, 0) if shared else (1, 1))
    assert budget.deposit() == 1000.0 + clock.readings  # the reading it filed the call under
    assert budget.calls == 2


# -- hooks observe: they cannot change a call's outcome ------------------------------------


class _HookFailure(Exception):
    """What a broken metrics backend raises from a hook (it mentions the key)."""


def _raising_hook(event: object) -> None:
    raise _HookFailure(f"metrics backend down, key {KEY}")


def _awaitable_hook(event: object) -> object:
    async def later() -> None:
        raise AssertionError("an awaitable a hook returns is never run")

    return later()


@pytest.mark.parametrize(
    "hook",
    [
        pytest.param(_raising_hook, id="raises"),
        pytest.param(_awaitable_hook, id="returns-a-coroutine"),
    ],
)
async def test_a_failing_on_retry_hook_does_not_change_the_outcome(
    server: FakeWachatServer, hook: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The 502s are retried as without the hook; the hook's failure is logged once per call,
    with its type and never the key."""
    server.script(NAME, [502, 502, 200])
    caplog.set_level(logging.WARNING, logger="wachat_async")
    async with make_client(server, on_retry=hook) as client:
        image = await client.get_qr_image(NAME)
    assert image.data.startswith(b"\x89PNG")
    hook_lines = [r for r in caplog.records if "on_retry hook" in r.getMessage()]
    assert len(hook_lines) == 1  # two retries, one line
    assert hook_lines[0].name == "wachat_async"
    assert hook_lines[0].levelno == logging.WARNING
    assert ("_HookFailure" if hook is _raising_hook else "coroutine") in hook_lines[0].getMessage()
    assert KEY not in caplog.text


@pytest.mark.parametrize(
    "hook",
    [
        pytest.param(_raising_hook, id="raises"),
        pytest.param(_awaitable_hook, id="returns-a-coroutine"),
    ],
)
async def test_a_failing_on_give_up_hook_keeps_the_real_error(
    server: FakeWachatServer, hook: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(NAME, [502] * 3)
    caplog.set_level(logging.WARNING, logger="wachat_async")
    async with make_client(server, max_attempts=2, on_give_up=hook) as client:
        with pytest.raises(QRFetchFailedError) as caught:
            await client.get_qr_image(NAME)
    assert caught.value.status == 502
    assert caught.value.attempts == 2
    assert [r.getMessage() for r in caplog.records].count(
        next(r.getMessage() for r in caplog.records if "on_give_up hook" in r.getMessage())
    ) == 1
    assert KEY not in caplog.text


class _AsyncCallable:
    async def __call__(self, event: object) -> None:  # pragma: no cover - never called
        pass


class _InheritedAsyncCallable(_AsyncCallable):
    """Its async ``__call__`` comes from the base class."""


class _SyncOverride(_AsyncCallable):
    def __call__(self, event: object) -> None:  # type: ignore[override]
        pass


async def _async_hook(event: object) -> None:  # pragma: no cover - never called
    pass


@pytest.mark.parametrize(
    "hook",
    [
        pytest.param(_SyncOverride(), id="sync-call-overriding-an-async-one"),
        pytest.param(functools.partial(_raising_hook), id="partial-of-sync-def"),
        pytest.param(print, id="builtin"),
    ],
)
def test_sync_hooks_are_accepted(hook: object) -> None:
    assert RetryPolicy(on_retry=hook).on_retry is hook  # type: ignore[arg-type]


async def test_a_hook_that_schedules_a_task_runs_it_without_a_warning(
    server: FakeWachatServer, caplog: pytest.LogCaptureFixture
) -> None:
    """``loop.create_task(...)`` (what the async-hook TypeError suggests) returns a Task: it
    runs on its own, so nothing is closed and nothing is logged."""
    seen: list[int] = []

    async def report(attempt: int) -> None:
        seen.append(attempt)

    def hook(event: Any) -> object:
        return asyncio.get_running_loop().create_task(report(event.attempt))

    server.script(NAME, [502, 200])
    caplog.set_level(logging.DEBUG, logger="wachat_async")
    async with make_client(server, on_retry=hook) as client:
        await client.get_qr_image(NAME)
        for _ in range(3):
            await asyncio.sleep(0)
    assert seen == [1]
    assert not [r for r in caplog.records if "hook" in r.getMessage()]


@pytest.mark.parametrize("field", ["on_retry", "on_give_up"])
@pytest.mark.parametrize(
    "hook",
    [
        pytest.param(_async_hook, id="async-def"),
        pytest.param(functools.partial(_async_hook), id="partial-of-async-def"),
        pytest.param(_AsyncCallable(), id="async-call-method"),
        pytest.param(_InheritedAsyncCallable(), id="inherited-async-call-method"),
        pytest.param(functools.partial(_AsyncCallable()), id="partial-of-async-call-method"),
        pytest.param(
            functools.partial(functools.partial(_async_hook)), id="partial-of-partial-of-async-def"
        ),
    ],
)
def test_async_hooks_are_rejected_at_construction(field: str, hook: object) -> None:
    with pytest.raises(TypeError, match=rf"{field} must be a plain function, not an async one"):
        RetryPolicy(**{field: hook})  # type: ignore[arg-type]


async def test_a_cancelled_hook_still_cancels(server: FakeWachatServer) -> None:
    """Only Exception is swallowed: cancellation raised in a hook propagates."""

    def cancel(event: object) -> None:
        raise asyncio.CancelledError

    server.script(NAME, [502, 200])
    async with make_client(server, on_retry=cancel) as client:
        with pytest.raises(asyncio.CancelledError):
            await client.get_qr_image(NAME)
