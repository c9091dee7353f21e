"""The pacer (wachat_async/_pacing.py): pauses on 429, the learned rate cap, the circuit; and
the client's fleets under it, against the fake server's Conditions. Time is a SkippingLoop's:
the pacer, the server, the budget and the retry loop all read ``loop.time``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator

import pytest

from tests.conftest import KEY, NAME, SkippingLoop, run_skipping, until
from wachat_async import (
    ClientClosedError,
    InstanceNotFoundError,
    QRFetchFailedError,
    RateLimitError,
    RetryBudget,
    RetryPolicy,
    WachatClient,
    WachatTimeoutError,
    _pacing,
)
from wachat_async._pacing import (
    BACK_OFF,
    GROWTH,
    MIN_OUTCOMES,
    PROBE_EVERY,
    QUIET,
    SLOW_START,
    Pacer,
)
from wachat_async.testing import Conditions, FakeWachatServer, Fault


def rands(*values: float) -> Callable[[float, float], float]:
    """A random source that answers *values* in turn (then the last one), scaled to [a, b]
    when a value is in [0, 1]: 0 is the low end, 1 the high end."""
    answers: Iterator[float] = iter(values)
    last = [values[-1]]

    def rand(low: float, high: float) -> float:
        last[0] = next(answers, last[0])
        return low + (high - low) * last[0]

    return rand


class Clock:
    """The pacer's clock, moved with the loop's timers by :meth:`skip` (exact readings)."""

    def __init__(self, loop: SkippingLoop) -> None:
        self.now, self.loop = 1000.0, loop

    def __call__(self) -> float:
        return self.now

    def skip(self, seconds: float) -> None:
        self.now += seconds
        self.loop.skip(seconds)


def skipping_pacer(loop: SkippingLoop, *fractions: float) -> Pacer:
    return Pacer(clock=Clock(loop), rand=rands(*(fractions or (0.0,))))


def skip(pacer: Pacer, seconds: float) -> None:
    assert isinstance(pacer.clock, Clock)
    pacer.clock.skip(seconds)


async def settle() -> None:
    """Let every task that can run, run (several turns: wakes chain)."""
    for _ in range(5):
        await asyncio.sleep(0)


def admit_all(pacer: Pacer, count: int, deadline: float | None = 30.0) -> list[asyncio.Task[bool]]:
    return [asyncio.ensure_future(pacer.admit(f"n{i}", deadline)) for i in range(count)]


def test_a_fresh_pacer_is_off_and_successes_or_answers_keep_it_off() -> None:
    """Nothing happens until a 429 or a transient failure: ``active`` stays False (the one
    attribute the success path reads), whatever else is recorded."""
    pacer = Pacer()
    pacer.record(None)
    pacer.record(InstanceNotFoundError())
    pacer.record(asyncio.CancelledError())
    assert not pacer.active
    assert pacer.snapshot().circuit == "closed"


def test_a_429_pauses_every_waiter_until_its_jittered_retry_after() -> None:
    """Retry-After 2 s: three waiters drawing 0, 0.5 and 1 of the jitter go at 2, 2.2 and 2.4 s,
    not together; nothing goes before 2 s."""

    async def body(loop: SkippingLoop) -> None:
        pacer = skipping_pacer(loop, 0.0, 0.5, 1.0)
        pacer.record(RateLimitError(retry_after=2.0))
        assert pacer.active
        assert pacer.snapshot().paused_for == pytest.approx(2.0)
        waiters = admit_all(pacer, 3)
        for step, done in ((1.99, 0), (0.02, 1), (0.2, 2), (0.2, 3)):
            skip(pacer, step)
            await settle()
            await asyncio.sleep(0.001)  # the timers due fire
            await settle()
            assert sum(w.done() for w in waiters) == done
            assert pacer.snapshot().waiting == 3 - done
        assert pacer.snapshot().pauses == 1

    run_skipping(body)


def test_429s_of_one_burst_make_one_pause_and_a_missing_retry_after_is_one_second() -> None:
    async def body(loop: SkippingLoop) -> None:
        pacer = skipping_pacer(loop)
        for _ in range(5):
            pacer.record(RateLimitError(retry_after=None))
        snap = pacer.snapshot()
        assert (snap.rate_limited, snap.pauses, snap.paused_for) == (5, 1, 1.0)

    run_skipping(body)


def test_the_rate_cap_slow_starts_is_cut_climbs_and_spaces_requests() -> None:
    """First 429: after its pause the cap starts at SLOW_START, doubling each second. A later
    pause cuts what it had reached by BACK_OFF; then it climbs by GROWTH a second, and
    admissions are spaced by 1/cap. It does not climb during a pause."""

    async def body(loop: SkippingLoop) -> None:
        pacer = skipping_pacer(loop)
        pacer.record(RateLimitError(retry_after=1.0))
        assert pacer.snapshot().rate_cap == SLOW_START
        skip(pacer, 1.0)
        assert pacer.snapshot().rate_cap == SLOW_START  # the pause just ended
        skip(pacer, 3.0)
        assert pacer.snapshot().rate_cap == pytest.approx(SLOW_START * 8)
        pacer.record(RateLimitError(retry_after=2.0))
        assert pacer.snapshot().rate_cap == pytest.approx(SLOW_START * 8 * BACK_OFF)
        skip(pacer, 4.0)  # 2 s of pause, 2 s of climbing
        assert pacer.snapshot().rate_cap == pytest.approx(SLOW_START * 8 * BACK_OFF * GROWTH**2)
        pacer.cap, pacer.growth, pacer.cap_at = 10.0, 1.0, pacer.clock()
        waiters = admit_all(pacer, 3)
        await settle()
        assert [w.done() for w in waiters] == [True, False, False]
        skip(pacer, 0.1)
        await asyncio.sleep(0.001)
        await settle()
        assert [w.done() for w in waiters] == [True, True, False]
        skip(pacer, 0.1)
        await asyncio.sleep(0.001)
        await settle()
        assert all(w.done() for w in waiters)

    run_skipping(body)


@pytest.mark.parametrize("retry_after", [0.0, -5.0, None], ids=["zero", "date-in-past", "none"])
def test_a_burst_of_429s_without_a_usable_retry_after_is_one_pause_of_a_second(
    retry_after: float | None,
) -> None:
    """A 429 storm of ``Retry-After: 0`` (or a date past) over 0.9 s: one 1 s pause, the cap
    cut once at most, not once per 429 down to its floor."""

    async def body(loop: SkippingLoop) -> None:
        pacer = skipping_pacer(loop)
        pacer.record(RateLimitError(retry_after=1.0))
        skip(pacer, 4.0)
        reached = pacer.snapshot().rate_cap
        assert reached is not None
        for _ in range(100):
            pacer.record(RateLimitError(retry_after=retry_after))
            skip(pacer, 0.009)
        snap = pacer.snapshot()
        assert (snap.rate_limited, snap.pauses) == (101, 2)
        assert snap.rate_cap == pytest.approx(reached * BACK_OFF)
        assert snap.paused_for == pytest.approx(1.0, abs=0.01)

    run_skipping(body)


def test_calm_counts_from_the_end_of_a_long_pause_and_a_call_it_outlasts_fails_at_once() -> None:
    """Retry-After 30 s (a deadline's worth): the pacer does not stand down when the pause
    ends, but climbs from SLOW_START; a call whose time left is under the pause left raises
    RateLimitError at once, not sent, ``retry_after`` the pause left."""

    async def body(loop: SkippingLoop) -> None:
        pacer = skipping_pacer(loop)
        pacer.record(RateLimitError(retry_after=30.0))
        skip(pacer, 10.0)
        with pytest.raises(RateLimitError) as late:
            await pacer.admit("late", 30.0, 19.0)
        assert late.value.retry_after == pytest.approx(20.0)
        assert late.value.attempts == 0
        assert "paused 20.0 s more" in "".join(late.value.__notes__)
        waiter = asyncio.ensure_future(pacer.admit("patient", 30.0, 25.0))
        skip(pacer, 20.0)
        await asyncio.sleep(0.001)
        await settle()
        assert waiter.done()
        assert waiter.result() is False
        assert pacer.active
        assert pacer.snapshot().rate_cap == SLOW_START
        later = admit_all(pacer, 3)  # spaced by 1 / SLOW_START after the first, not all at once
        skip(pacer, 1 / SLOW_START)
        await asyncio.sleep(0.001)
        await settle()
        assert [w.done() for w in later] == [True, False, False]

    run_skipping(body)


def _storm(pacer: Pacer, count: int = MIN_OUTCOMES) -> None:
    for _ in range(count):
        pacer.record(QRFetchFailedError(instance_name="x"))


def test_the_circuit_opens_probes_once_a_second_and_closes_on_a_success() -> None:
    async def body(loop: SkippingLoop) -> None:
        pacer = skipping_pacer(loop)
        _storm(pacer, MIN_OUTCOMES - 1)
        assert pacer.snapshot().circuit == "closed"
        _storm(pacer, 1)
        assert pacer.snapshot().circuit == "open"
        waiters = admit_all(pacer, 3)
        await settle()
        assert not any(w.done() for w in waiters)
        skip(pacer, PROBE_EVERY)
        await asyncio.sleep(0.001)
        await settle()
        probes = [w for w in waiters if w.done()]
        assert len(probes) == 1
        assert probes[0].result() is True
        pacer.record(QRFetchFailedError(), probe=True)  # it failed: still open
        skip(pacer, PROBE_EVERY)
        await asyncio.sleep(0.001)
        await settle()
        probes = [w for w in waiters if w.done()]
        assert len(probes) == 2
        pacer.record(None, probe=True)  # the API answers: closed, every waiter goes
        await settle()
        assert all(w.done() for w in waiters)
        snap = pacer.snapshot()
        assert (snap.circuit, snap.circuit_openings, snap.refused) == ("closed", 1, 0)

    run_skipping(body)


def test_an_open_circuit_refuses_after_the_deadline_with_the_last_failures_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Open longer than the deadline with every probe failing: waiting and new calls fail with
    the class of the last failure, not sent, a note saying so: QUICK_REFUSALS a second at
    once, the others after the next probe's outcome (a probe interval at most); a due probe
    still goes, so recovery is seen."""
    monkeypatch.setattr(_pacing, "QUICK_REFUSALS", 1)

    async def body(loop: SkippingLoop) -> None:
        pacer = skipping_pacer(loop)
        for _ in range(MIN_OUTCOMES):
            pacer.record(WachatTimeoutError("request timed out (TimeoutError)"))
        pacer.probing = True  # a probe hangs
        waiting = admit_all(pacer, 2, deadline=5.0)
        skip(pacer, 5.0)
        await asyncio.sleep(0.001)
        await settle()
        assert [w.done() for w in waiting] == [True, False]  # the second waits a probe
        skip(pacer, PROBE_EVERY)
        await asyncio.sleep(0.001)
        await settle()
        for task, open_for in zip(waiting, (5, 6), strict=True):
            error = task.exception()
            assert type(error) is WachatTimeoutError
            assert error.attempts == 0
            assert f"circuit has been open for {open_for} s" in "".join(error.__notes__)
        late = asyncio.ensure_future(pacer.admit("late", 5.0))
        await settle()
        assert not late.done()
        skip(pacer, PROBE_EVERY)
        await asyncio.sleep(0.001)
        await settle()
        refused = late.exception()
        assert isinstance(refused, WachatTimeoutError)
        assert refused.instance_name == "late"
        assert pacer.snapshot().circuit == "refusing"
        assert pacer.snapshot().refused == 3
        pacer.record(asyncio.CancelledError(), probe=True)  # the hanging probe, cancelled
        assert await pacer.admit("probe", 5.0) is True

    run_skipping(body)


def test_a_refused_status_error_names_its_own_instance() -> None:
    async def body(loop: SkippingLoop) -> None:
        pacer = skipping_pacer(loop)
        _storm(pacer)
        pacer.probing = True
        skip(pacer, 30.0)
        with pytest.raises(QRFetchFailedError) as refused:
            await pacer.admit("mine", 30.0)
        assert refused.value.status == 502
        assert "'mine'" in str(refused.value)
        assert "'x'" not in str(refused.value)

    run_skipping(body)


def test_cancelling_a_waiter_leaves_nothing_behind_and_close_wakes_the_rest() -> None:
    async def body(loop: SkippingLoop) -> None:
        pacer = skipping_pacer(loop)
        pacer.record(RateLimitError(retry_after=30.0))
        first, second = admit_all(pacer, 2)
        await settle()
        first.cancel()
        await settle()
        assert first.cancelled()
        assert len(pacer.sleepers) == 1
        pacer.close()
        await settle()
        assert isinstance(second.exception(), ClientClosedError)
        assert not pacer.sleepers
        with pytest.raises(ClientClosedError):
            await pacer.admit("later", None)

    run_skipping(body)


def test_zero_wait_never_waits() -> None:
    async def body(loop: SkippingLoop) -> None:
        pacer = skipping_pacer(loop)
        pacer.record(RateLimitError(retry_after=30.0))
        assert await pacer.admit(NAME, None, zero_wait=True) is False

    run_skipping(body)


def test_one_warning_when_trouble_starts_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Many 429s and failures: one WARNING as it starts (and one for the circuit), one when
    the pacer stands down after QUIET calm seconds, then it is off again."""

    async def body(loop: SkippingLoop) -> None:
        pacer = skipping_pacer(loop)
        for _ in range(50):
            pacer.record(RateLimitError(retry_after=1.0))
        _storm(pacer, 9)  # a storm below the circuit's count: no line of its own
        skip(pacer, QUIET + 1)
        await pacer.admit(NAME, None)
        skip(pacer, 1.0)
        await pacer.admit(NAME, None)
        assert not pacer.active
        _storm(pacer, 1)  # one transient failure alone: active again, quietly
        assert pacer.active

    with caplog.at_level(logging.INFO, logger="wachat_async"):
        run_skipping(body)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "429" in warnings[0]
    assert "calm again" in warnings[1]
    assert all(KEY not in r.getMessage() for r in caplog.records)


def test_fleet_width_is_bounded_by_the_slots_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pacer = Pacer()
    with caplog.at_level(logging.WARNING, logger="wachat_async"):
        assert pacer.fleet_width(200, 100) == 100
        assert pacer.fleet_width(300, 100) == 100
        assert pacer.fleet_width(50, 100) == 50
        assert pacer.fleet_width(500, None) == 500
    [line] = [r.getMessage() for r in caplog.records]
    assert "concurrency=200" in line
    assert "max_connections" in line


# -- the client, against the fake server ------------------------------------------------


def skipping_client(
    loop: SkippingLoop, server: FakeWachatServer, **options: object
) -> WachatClient:
    """A default client (but for *options*) whose clocks are the loop's."""
    budget = options.pop("retry_budget", None) or RetryBudget(clock=loop.time)
    client = WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        retry_budget=budget,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )
    client._retrier.clock = loop.time
    client._retrier.pacer.clock = loop.time
    client._retrier.pacer.rand = rands(0.5)
    return client


async def ticking(loop: SkippingLoop, work: Awaitable[object], step: float = 0.01) -> None:
    """Await *work* while the loop's clock moves *step* ahead each turn."""
    task = asyncio.ensure_future(work)
    while not task.done():
        loop.skip(step)
        await asyncio.sleep(0)
    await task


def test_a_lone_call_answered_429_raises_at_once_and_pauses_the_client() -> None:
    async def body(loop: SkippingLoop) -> None:
        async with FakeWachatServer(api_key=KEY, clock=loop.time) as server:
            server.add_instance(NAME)
            server.script(NAME, [Fault(status=429, retry_after="3")])
            async with skipping_client(loop, server) as client:
                with pytest.raises(RateLimitError) as info:
                    await client.get_qr_image(NAME)
                assert (info.value.retry_after, info.value.attempts) == (3.0, 1)
                assert server.request_count(NAME) == 1
                pacing = client.stats().pacing  # what the pacer's snapshot() says
                assert (pacing.active, pacing.rate_limited, pacing.pauses) == (True, 1, 1)
                assert pacing.paused_for == pytest.approx(3.0, abs=0.5)
                view = client.with_options(timeout=5)
                assert view._retrier.pacer is client._retrier.pacer  # one pacer for both
                call = asyncio.ensure_future(view.get_qr_image(NAME))
                await until(lambda: bool(client._retrier.pacer.sleepers))
                assert server.request_count(NAME) == 1  # the view's call waits the pause
                loop.skip(3.3)
                await call
                assert server.request_count(NAME) == 2

    run_skipping(body)


def test_fetch_many_under_a_rate_limit_loses_no_name() -> None:
    """20 requests/s accepted, 429 + Retry-After: 1 above: 100 names all succeed, each 429
    retried once paced, and few requests are answered 429."""

    async def body(loop: SkippingLoop) -> None:
        async with FakeWachatServer(api_key=KEY, clock=loop.time, auto_create=True) as server:
            server.set_conditions(Conditions(rate_limit=20, retry_after=1))
            async with skipping_client(loop, server) as client:
                names = [f"n{i}" for i in range(100)]
                results = []

                async def run() -> None:
                    async with client.fetch_many(names, concurrency=10) as fleet:
                        results.extend([r async for r in fleet])

                await ticking(loop, run())
                assert sum(r.ok for r in results) == 100
                total = server.request_count()
                assert total - 100 <= 25, total  # the 429s: two bursts of at most 10
                assert client._retrier.pacer.snapshot().rate_limited == total - 100

    run_skipping(body)


def test_fetch_many_rides_out_an_outage_with_few_requests() -> None:
    async def body(loop: SkippingLoop) -> None:
        async with FakeWachatServer(api_key=KEY, clock=loop.time, auto_create=True) as server:
            server.set_conditions(Conditions(outage=5.0))
            async with skipping_client(loop, server) as client:
                names = [f"n{i}" for i in range(200)]
                results = []

                async def run() -> None:
                    async with client.fetch_many(names, concurrency=20) as fleet:
                        results.extend([r async for r in fleet])

                await ticking(loop, run(), step=0.05)
                assert sum(r.ok for r in results) == 200
                assert server.request_count() <= 1.3 * 200
                assert client._retrier.pacer.snapshot().circuit_openings == 1

    run_skipping(body)


def test_aclose_ends_names_waiting_in_the_pacer_with_client_closed() -> None:
    async def body(loop: SkippingLoop) -> None:
        async with FakeWachatServer(api_key=KEY, clock=loop.time, auto_create=True) as server:
            server.set_conditions(Conditions(outage=1000.0))
            client = skipping_client(loop, server)
            names = [f"n{i}" for i in range(100)]
            pacer = client._retrier.pacer

            async def run() -> None:
                async with client.fetch_many(names, concurrency=25) as fleet:
                    async for _ in fleet:
                        pass

            fleet = asyncio.ensure_future(run())
            await until(lambda: pacer.opened is not None and len(pacer.sleepers) >= 5)
            await client.aclose()
            with pytest.raises(ClientClosedError):
                await asyncio.wait_for(fleet, 10)  # a hang guard: it ends on the next turns

    run_skipping(body)


def test_a_fleet_waits_for_the_budget_where_a_lone_call_gives_up() -> None:
    """A budget of one retry per 10 s: a lone call refused a retry fails at once ("budget");
    a name of fetch_many refused one waits until the budget grants it (its queue is as long
    as the budget's floor: one), and both names succeed."""

    async def body(loop: SkippingLoop) -> None:
        async with FakeWachatServer(api_key=KEY, clock=loop.time, auto_create=True) as server:
            budget = RetryBudget(ratio=0, min_retries_per_second=0.1, ttl=10, clock=loop.time)
            async with skipping_client(loop, server, retry_budget=budget) as client:
                names = ["n0", "n1"]
                for name in [*names, "lone"]:
                    server.script(name, [Fault(status=502, retry_after="0"), 200])
                results = []

                async def run() -> None:
                    async with client.fetch_many(names, concurrency=3) as fleet:
                        results.extend([r async for r in fleet])

                await ticking(loop, run(), step=0.5)
                assert [r.ok for r in results] == [True] * 2
                assert (budget.retries, budget.refused) == (2, 1)
                with pytest.raises(QRFetchFailedError) as lone:
                    await client.get_qr_image("lone")
                assert "retry budget exhausted" in "".join(lone.value.__notes__)

    run_skipping(body)


def test_a_watch_waits_the_pace_instead_of_failing() -> None:
    async def body(loop: SkippingLoop) -> None:
        async with FakeWachatServer(api_key=KEY, clock=loop.time) as server:
            server.add_instance(NAME)
            server.script(NAME, [Fault(status=429, retry_after="2")])
            async with skipping_client(loop, server) as client:
                watch = client.watch_qr(NAME)

                async def first() -> None:
                    await watch.__anext__()

                await ticking(loop, first(), step=0.1)
                assert (watch.failures, server.request_count(NAME)) == (0, 2)
                await watch.aclose()

    run_skipping(body)


def test_a_call_on_a_client_paused_past_its_deadline_fails_at_once_unsent() -> None:
    """A fleet's 429 paused the client for 60 s: an interactive call with a 5 s deadline
    raises RateLimitError at once (not after its deadline), ``retry_after`` the pause left;
    with a deadline longer than the pause it waits and gets its QR."""

    async def body(loop: SkippingLoop) -> None:
        async with FakeWachatServer(api_key=KEY, clock=loop.time) as server:
            server.add_instance(NAME)
            server.script(NAME, [Fault(status=429, retry_after="60")])
            async with skipping_client(loop, server, retry=RetryPolicy(deadline=5)) as client:
                with pytest.raises(RateLimitError):
                    await client.get_qr_image(NAME)
                loop.skip(1.0)
                with pytest.raises(RateLimitError) as info:
                    await client.get_qr_image(NAME)
                assert info.value.attempts == 0
                assert info.value.retry_after == pytest.approx(65.0, abs=0.01)  # 66 - 1
                assert "past the deadline" in "".join(info.value.__notes__)
                assert server.request_count(NAME) == 1
                patient = client.with_options(retry=RetryPolicy(deadline=90))
                await ticking(loop, patient.get_qr_image(NAME), step=1.0)
                assert server.request_count(NAME) == 2

    run_skipping(body)


def test_failed_probes_count_against_neither_max_attempts_nor_the_budget() -> None:
    """A call that probes an open circuit five times in vain (max_attempts=2, a budget that
    refuses every retry) still gets its QR from the sixth probe."""

    async def body(loop: SkippingLoop) -> None:
        async with FakeWachatServer(api_key=KEY, clock=loop.time) as server:
            server.add_instance(NAME)
            server.script(NAME, [502] * 5)
            budget = RetryBudget(min_retries_per_second=0, clock=loop.time)
            policy = RetryPolicy(max_attempts=2)
            async with skipping_client(loop, server, retry=policy, retry_budget=budget) as client:
                pacer = client._retrier.pacer
                pacer.clock = loop.time
                _storm(pacer)
                assert pacer.snapshot().circuit == "open"
                call = asyncio.ensure_future(client.get_qr_image(NAME))
                await ticking(loop, asyncio.wait([call]), step=0.25)
                assert call.result().data.startswith(b"\x89PNG")
                assert server.request_count(NAME) == 6
                assert (budget.retries, budget.refused) == (0, 0)
                assert pacer.snapshot().circuit == "closed"

    run_skipping(body)


def test_waiters_sleep_while_a_probe_hangs_then_one_takes_the_next_probe() -> None:
    """With a probe in flight past its second, a waiter sleeps once (until the refusal
    limit), not in a busy loop; the probe's failure wakes it to be the next probe."""

    async def body(loop: SkippingLoop) -> None:
        pacer = skipping_pacer(loop)
        _storm(pacer)
        pacer.probing = True
        skip(pacer, 5.0)
        naps: list[float] = []
        nap = pacer.nap

        async def counted(seconds: float) -> None:
            naps.append(seconds)
            await nap(seconds)

        pacer.nap = counted  # type: ignore[method-assign]
        [waiter] = admit_all(pacer, 1)
        for _ in range(50):
            await asyncio.sleep(0)
        assert naps == [25.0]  # until the 30 s deadline from the opening
        pacer.record(QRFetchFailedError(), probe=True)
        await settle()
        assert waiter.result() is True
        assert naps == [25.0]

    run_skipping(body)


async def test_fetch_many_over_the_slots_runs_at_the_slots_and_warns_once_per_client(
    server: FakeWachatServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with WachatClient(api_key=KEY, base_url=server.base_url, max_connections=2) as client:
        with caplog.at_level(logging.WARNING, logger="wachat_async"):
            first = client.fetch_many([NAME], concurrency=50)
            second = client.with_options(timeout=5).fetch_many([NAME], concurrency=60)
            async with first, second:
                assert [r.ok async for r in first] == [True]
                assert [r.ok async for r in second] == [True]
        assert "concurrency=2 " in repr(first)
    [line] = [r.getMessage() for r in caplog.records]
    assert "fetch_many(concurrency=50) runs 2 at a time" in line
    assert "max_connections" in line


def test_only_a_storms_first_circuit_opening_and_closing_log_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three openings in one storm: the first opens and closes at WARNING, the others at INFO;
    after the pacer stood down, a new storm's first opening warns again."""

    async def body(loop: SkippingLoop) -> None:
        pacer = skipping_pacer(loop)
        for _ in range(3):
            _storm(pacer)
            pacer.record(None)
        skip(pacer, QUIET + 1)
        await pacer.admit(NAME, None)
        skip(pacer, 1.0)
        await pacer.admit(NAME, None)
        assert not pacer.active
        _storm(pacer)
        assert pacer.snapshot().circuit_openings == 4

    with caplog.at_level(logging.INFO, logger="wachat_async"):
        run_skipping(body)
    circuit = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if "circuit c" in r.getMessage() or "circuit o" in r.getMessage()
    ]
    assert [level for level, _ in circuit] == [logging.WARNING] * 2 + [logging.INFO] * 4 + [
        logging.WARNING
    ]
