"""Retries: the policy, the budget and the retry loop (:class:`Retrier`), paced by the
client's ``Pacer``. Never imports the client, the transport or the stream."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, TypeVar, cast

import attrs
from tenacity import AsyncRetrying, DoSleep, RetryCallState, retry_if_exception

from ._errors import (
    ConfigurationError,
    DeadlineExceededError,
    RateLimitError,
    UnexpectedStatusError,
    WachatError,
)
from ._pacing import JITTER, Pacer, is_transport_fault
from ._slots import ConnectionQueue, slot_wait
from ._stats import Counts
from ._validate import check_bool, check_number, shown

logger = logging.getLogger("wachat_async")

T = TypeVar("T")
_TOKEN = 1.0 - 1e-9  # one retry's worth: deposits are fractions, allow rounding error


def is_transient(error: BaseException) -> bool:
    """Whether a failed call is worth making again later (``watch_qr`` keeps watching on
    these): wider than ``RetryPolicy.is_retryable``. README's errors table gives both."""
    if not isinstance(error, WachatError):
        return False
    status = getattr(error, "status", None)
    if isinstance(status, int):
        if isinstance(error, UnexpectedStatusError):
            return status == 429 or status >= 500
        return status in (502, 504)  # what Wachat documents as transient
    return isinstance(error, DeadlineExceededError) or is_transport_fault(error)


def backoff_wait(
    retry_number: int,
    *,
    initial_wait: float,
    max_wait: float,
    rand: Callable[[float, float], float] = random.uniform,
) -> float:
    """Full-jitter exponential backoff: ``uniform(0, min(max_wait, initial_wait * 2**n))``
    before retry *n* (0 for the first); it spreads clients that failed together."""
    if retry_number < 0:
        raise ValueError("retry_number must be >= 0")
    # Cap the exponent: 2**1100 overflows a float long after max_wait has taken over.
    ceiling = min(max_wait, initial_wait * 2.0 ** min(retry_number, 1000))
    return rand(0.0, ceiling) if ceiling > 0 else 0.0


@attrs.frozen(kw_only=True)
class RetryEvent:
    """What ``RetryPolicy.on_retry`` receives before each retry's wait: ``attempt`` is the one
    that just failed (1 for the first), ``wait`` the seconds before the next (reported even in
    zero-wait mode, where it is not slept), ``status`` the HTTP status when there was one."""

    instance_name: str | None
    attempt: int
    wait: float
    error: WachatError
    status: int | None = None


#: Why a retryable failure was not retried (``GiveUpEvent.reason``).
GiveUpReason = Literal["max_attempts", "retry_after", "deadline", "budget"]


@attrs.frozen(kw_only=True)
class GiveUpEvent:
    """What ``RetryPolicy.on_give_up`` receives when a call ends on a *retryable* failure
    without retrying it (again): ``reason`` is the limit that ended it, ``"max_attempts"``,
    ``"retry_after"`` (over ``max_retry_after``), ``"deadline"`` (crossed or about to be:
    ``error`` may be the :class:`DeadlineExceededError`) or ``"budget"``; ``attempts`` how many
    the call made, ``error`` what it raises. With ``on_retry``: attempts = calls + retries."""

    instance_name: str | None
    attempts: int
    reason: GiveUpReason
    error: WachatError
    status: int | None = None


def _number(**rule: Any) -> Callable[[object, attrs.Attribute[Any], Any], object]:
    """An attrs validator: the one number rule of _validate, named after the field."""
    return lambda _, attribute, value: check_number(value, attribute.name, **rule)


def _ttl(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"ttl must be a number of seconds, got {shown(value)}")
    if not 1 <= value <= 60:  # Finagle's bounds (NaN is outside too)
        raise ConfigurationError(f"ttl must be between 1 and 60 seconds, got {value!r}")


def _deadline(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        if value == 0 and not isinstance(value, bool):
            raise ValueError("deadline must be > 0 (use None for no deadline)")
        check_number(value, attribute.name, exclusive=True)


def _flag(instance: object, attribute: attrs.Attribute[bool], value: bool) -> None:
    check_bool(value, attribute.name)


def _callable_or_none(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not callable(value):
        raise TypeError(f"{attribute.name} must be callable or None, got {shown(value)}")
    while isinstance(value, functools.partial):
        value = value.func
    # async def, a partial of one, or an object whose __call__ (own or inherited) is one
    if inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(type(value).__call__):
        raise TypeError(
            f"{attribute.name} must be a plain function, not an async one: hooks are called "
            "synchronously and never awaited (to feed an async backend, hand the event over, "
            "e.g. with queue.put_nowait(event) or loop.create_task(...))"
        )


def _call_hook(which: str, hook: Callable[[Any], object], event: object, logged: set[str]) -> None:
    """Call a hook, which cannot change the call's outcome: an exception, or an awaitable it
    returns (closed unrun), is logged once per call and hook, by type only."""
    try:
        result = hook(event)
    except Exception as exc:  # a hook may fail in any way, and that must not matter
        problem = f"raised {type(exc).__name__}; ignored (hooks observe a call, they cannot"
        problem += " change its outcome)"
    else:
        if asyncio.isfuture(result) or not inspect.isawaitable(result):
            return  # a Task or Future runs on its own: loop.create_task(...) is fine
        close = getattr(result, "close", None)
        if callable(close):
            close()  # never awaited: closing it also keeps "never awaited" warnings away
        problem = f"returned an awaitable ({type(result).__name__}); closed without running it"
        problem += " (hooks are called synchronously and never awaited)"
    if which not in logged:
        logged.add(which)
        logger.warning("RetryPolicy.%s hook %s", which, problem)


def _statuses(value: Iterable[int]) -> frozenset[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"statuses must be a collection of ints, got {shown(value)}")
    statuses = frozenset(value)
    for status in statuses:
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ValueError(f"statuses must be HTTP status codes, got {shown(status)}")
    return statuses


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When and how long to retry a failed call (docs/retries.md): up to ``max_attempts``,
    retrying ``statuses`` (and transport faults with ``retry_transport_errors``), after a full
    jitter backoff or the ``Retry-After`` (jittered), within the call's ``deadline``. Hooks
    ``on_retry`` and ``on_give_up`` are plain functions whose failures are logged and ignored;
    ``zero_wait=True`` reports waits but never sleeps, for tests.
    """

    # A wrong type of max_attempts is a ValueError, as it always was.
    max_attempts: int = attrs.field(
        default=4, validator=_number(integer=True, minimum=1, type_error=ValueError)
    )
    statuses: frozenset[int] = attrs.field(default=frozenset({502, 504}), converter=_statuses)
    initial_wait: float = attrs.field(default=0.5, validator=_number())
    max_wait: float = attrs.field(default=8.0, validator=_number())
    deadline: float | None = attrs.field(default=30.0, validator=_deadline)
    respect_retry_after: bool = attrs.field(default=True, validator=_flag)
    max_retry_after: float = attrs.field(default=30.0, validator=_number())
    retry_transport_errors: bool = attrs.field(default=False, validator=_flag)
    zero_wait: bool = attrs.field(default=False, validator=_flag)
    on_retry: Callable[[RetryEvent], object] | None = attrs.field(
        default=None, eq=False, validator=_callable_or_none
    )
    on_give_up: Callable[[GiveUpEvent], object] | None = attrs.field(
        default=None, eq=False, validator=_callable_or_none
    )

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """One attempt and no deadline: the client's ``timeout`` alone bounds the call
        (``WachatClient(timeout=60, retry=RetryPolicy.disabled())`` waits up to 60 s)."""
        return cls(max_attempts=1, deadline=None)

    def without_waits(self) -> RetryPolicy:
        """This policy in zero-wait mode, for tests."""
        return attrs.evolve(self, zero_wait=True)

    def is_retryable(self, error: BaseException) -> bool:
        """Whether this policy retries *error* within a call: a status in ``statuses``, and with
        ``retry_transport_errors`` a transport fault (:func:`is_transport_fault`) before any
        byte reached the caller. Never the deadline, a complete 200 that is not a PNG, a body
        over the cap, or anything not a ``WachatError``."""
        if not isinstance(error, WachatError):
            return False
        status = getattr(error, "status", None)
        if isinstance(status, int):
            return status in self.statuses
        return self.retry_transport_errors and is_transport_fault(error)

    def compute_wait(self, retry_number: int, retry_after: float | None) -> float:
        """Seconds to wait before retry *retry_number* (0-based): a ``Retry-After`` of *ra* is
        waited uniformly over [ra, 1.2 ra], so that calls told the same do not retry together."""
        if retry_after is not None and self.respect_retry_after:
            return random.uniform(retry_after, retry_after * (1 + JITTER))  # noqa: S311
        return backoff_wait(retry_number, initial_wait=self.initial_wait, max_wait=self.max_wait)


class _Window:
    """The budget's counts (plain attributes: ``deposit`` runs on every call)."""

    def __init__(self) -> None:
        self.calls = self.retries = self.refused = 0
        self.end = -math.inf  # when the current second ends
        self.marks: deque[tuple[float, int, int]] = deque()  # (second, calls, retries)
        self.expired = (0, 0)  # calls and retries before the window

    def roll(self, now: float, seconds: int) -> None:
        """Start the second that holds *now*, keeping the *seconds* - 1 before it."""
        self.marks.append((self.end - 1, self.calls, self.retries))
        self.end = math.floor(now) + 1
        while self.marks and self.marks[0][0] <= self.end - 1 - seconds:
            self.expired = self.marks.popleft()[1:]


@attrs.define(kw_only=True, eq=False)
class RetryBudget:
    """A token bucket that caps retries at a fraction of recent traffic (Finagle's RetryBudget):
    every call deposits ``ratio`` of a token, every retry withdraws one, over ``ttl`` seconds
    (1 to 60), with ``min_retries_per_second * ttl`` tokens on top. It refuses retries, never
    first attempts; ``calls``, ``retries`` and ``refused`` count what happened.
    """

    ratio: float = attrs.field(default=0.2, validator=_number())
    min_retries_per_second: float = attrs.field(default=2.0, validator=_number(infinite=True))
    ttl: float = attrs.field(default=10.0, validator=_ttl)
    clock: Callable[[], float] = attrs.field(default=time.monotonic, repr=False)
    _window: _Window = attrs.field(init=False, repr=False, factory=_Window)

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio!r}, min_retries_per_second="
            f"{self.min_retries_per_second!r}, ttl={self.ttl!r}, calls={self.calls}, "
            f"retries={self.retries}, refused={self.refused})"
        )

    @classmethod
    def unlimited(cls) -> RetryBudget:
        """A budget that never refuses a retry (the policy's other limits still apply)."""
        return cls(min_retries_per_second=math.inf)

    @property
    def calls(self) -> int:
        """Calls recorded (one deposit each)."""
        return self._window.calls

    @property
    def retries(self) -> int:
        """Retries granted."""
        return self._window.retries

    @property
    def refused(self) -> int:
        """Retries refused because the budget was empty."""
        return self._window.refused

    @property
    def balance(self) -> float:
        """Retries available right now."""
        window = self._window
        now = self.clock()
        if now >= window.end:
            window.roll(now, math.ceil(self.ttl))
        calls, retries = window.expired
        deposits, withdrawn = window.calls - calls, window.retries - retries
        return self.ratio * deposits - withdrawn + self.min_retries_per_second * self.ttl

    def deposit(self) -> float:
        """Record one call (its first attempt); return the clock reading it was filed under
        (a retry loop on the same clock starts its call's deadline from it)."""
        window = self._window
        now = self.clock()
        if now >= window.end:  # a new second
            window.roll(now, math.ceil(self.ttl))
        window.calls += 1
        return now

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and count a refusal) if it is empty."""
        window = self._window
        if self.balance >= _TOKEN:
            window.retries += 1
            return True
        window.refused += 1
        return False


async def _no_sleep(seconds: float) -> None:
    """Zero-wait mode's sleep: yield to the loop once, never wait."""
    await asyncio.sleep(0)


def _attempts(n: int) -> str:
    return f"{n} attempt" + ("s" if n != 1 else "")


class Retrier:
    """The retry loop: one call's attempts under a :class:`RetryPolicy`, retries drawn from
    *budget*. A retried attempt must release what it holds before it raises."""

    __slots__ = ("budget", "clock", "counts", "guards_first_attempt", "pacer", "policy", "sleep")

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        *,
        attempt_timeout: float | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy, self.budget, self.clock = policy, budget, clock
        self.counts = Counts()  # the client's, and its pacer: its views share them
        self.pacer = Pacer(counts=self.counts)
        self.sleep: Callable[[float], Awaitable[None]] = sleep or (
            _no_sleep if policy.zero_wait else asyncio.sleep
        )
        # Whether even the first attempt runs under the deadline timer.
        self.guards_first_attempt = policy.deadline is not None and (
            attempt_timeout is None or attempt_timeout > policy.deadline
        )

    def view(self, policy: RetryPolicy, attempt_timeout: float | None) -> Retrier:
        """A retrier of *policy* sharing this one's budget, counts and pacer (a client's view)."""
        view = Retrier(policy, self.budget, attempt_timeout=attempt_timeout)
        view.counts, view.pacer = self.counts, self.pacer
        return view

    async def call(
        self,
        name: str,
        queue: ConnectionQueue | None,
        attempt: Callable[..., Awaitable[T]],
        *args: Any,
        observed: bool = False,
        fleet: bool = False,
    ) -> T:
        """``await attempt(name, *args)`` under the policy. A first attempt that can neither
        outlast the deadline nor queue in *queue* for a connection (queueing counts) runs bare,
        unless the pacer is active: no timer, no tenacity; the rest of the call is a
        :class:`_Call`. A *fleet* call (``fetch_many``, ``watch_qr``) retries a 429 once paced
        and waits for a retry the budget refuses, within its deadline."""
        counts = self.counts
        if counts.observer is not None and not observed:
            again = lambda wrapped: self.call(  # noqa: E731
                name, queue, wrapped, *args, observed=True, fleet=fleet
            )
            return cast(T, await counts.observer.call(name, attempt, again))
        counts.calls += 1
        policy = self.policy
        started = self.budget.deposit()  # one clock reading for both, on a shared clock
        if self.budget.clock is not self.clock:
            started = self.clock()
        error: WachatError | None = None
        try:
            if not (self.guards_first_attempt or self.pacer.active) and not (
                # No slot free: the attempt will queue, and queueing counts.
                policy.deadline is not None and queue is not None and queue.locked()
            ):
                try:
                    result = await attempt(name, *args)
                except WachatError as exc:
                    self.pacer.record(exc)
                    paced = fleet and isinstance(exc, RateLimitError)  # retried once paced
                    if not (policy.is_retryable(exc) or paced):
                        raise
                    error = exc
                else:
                    counts.succeeded += 1
                    return result
            result = await _Call(self, name, started, error, fleet).run(attempt, args)
        except asyncio.CancelledError:
            counts.cancelled += 1
            raise
        except BaseException:
            counts.failed += 1
            raise
        counts.succeeded += 1
        return result


class _Call:
    """The rest of one call: a fresh tenacity ``AsyncRetrying`` under the deadline's timer.
    tenacity calls ``wait``, ``stop`` and ``before_sleep`` once per failed retryable attempt,
    in that order (8.3+); ``stop`` charges the budget last, so once per retry."""

    def __init__(
        self, retrier: Retrier, name: str, started: float, error: WachatError | None, fleet: bool
    ) -> None:
        self.retrier, self.name, self.started, self.fleet = retrier, name, started, fleet
        self.error = error  # the last real error
        # paced: a failed probe of the circuit, or a fleet's 429; owed: a refused fleet retry
        self.paced = self.owed = self.probe = False
        self.pacing = False  # waiting for the pacer's admission
        self.free = 0  # paced failures, not counted against max_attempts
        self.reason: tuple[GiveUpReason, str] | None = None  # why stop() ended the call
        self.hook_failures: set[str] = set()  # hooks whose failure was logged (once per call)
        self.retrying = AsyncRetrying(
            wait=self.wait,
            stop=self.stop,
            retry=retry_if_exception(self.retryable),
            before_sleep=self.before_sleep,
            reraise=True,
        )
        self.retrying.begin()
        self.state = RetryCallState(self.retrying, None, (), {})
        if error is not None:
            self.state.set_exception((type(error), error, error.__traceback__))

    def retryable(self, error: BaseException) -> bool:
        policy = self.retrier.policy
        retryable = policy.is_retryable(error)
        fleet_429 = self.fleet and isinstance(error, RateLimitError) and not retryable
        self.paced = fleet_429 or (self.probe and retryable)
        return self.paced or retryable

    async def run(self, attempt: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
        state = self.state
        retrier = self.retrier
        pacer, policy = retrier.pacer, retrier.policy
        deadline = policy.deadline
        try:
            async with asyncio.timeout(
                None if deadline is None else deadline - (retrier.clock() - self.started)
            ):
                while True:  # AsyncRetrying.__call__'s loop, entered with the first outcome
                    do = await self.retrying.iter(state)  # raises when the call ends
                    if isinstance(do, DoSleep):
                        await retrier.sleep(do)
                        state.prepare_for_next_attempt()  # after the wait: attempts sent
                        continue
                    self.pacing = True
                    if self.owed:
                        await self.repay()
                    self.probe = probe = pacer.active and await pacer.admit(
                        self.name,
                        deadline,
                        deadline and deadline - (retrier.clock() - self.started),
                        policy.zero_wait,
                    )
                    self.pacing = False
                    try:
                        value = await attempt(self.name, *args)
                    except BaseException as exc:
                        pacer.record(exc, probe)
                        if not isinstance(exc, WachatError):
                            raise
                        self.error = exc
                        state.set_exception((type(exc), exc, exc.__traceback__))
                        continue
                    if pacer.active:
                        pacer.record(None, probe)
                    return value
        except WachatError as exc:  # first: a WachatTimeoutError is a TimeoutError too
            if self.reason is not None or state.attempt_number > 1:  # else: as it was raised
                exc.attempts = state.attempt_number - self.pacing  # not sent if still pacing
                elapsed = retrier.clock() - self.started
                note = f"gave up after {_attempts(exc.attempts)} in {elapsed:.1f} s"
                exc.add_note(f"{note} ({self.reason[1]})" if self.reason else note)
            if self.reason is not None:
                self.give_up(self.reason[0], exc)
            raise
        except TimeoutError as expired:
            raise self.deadline_exceeded(expired) from self.error

    async def repay(self) -> None:
        """Wait (woken by nothing but time) until the budget grants the retry it refused."""
        budget, pacer = self.retrier.budget, self.retrier.pacer
        pacer.owing += 1
        try:
            while budget.balance < _TOKEN:
                await pacer.nap(pacer.rand(0.25, 0.75))
        finally:
            pacer.owing -= 1
        budget.try_withdraw()
        self.owed = False

    def wait(self, state: RetryCallState) -> float:
        if self.paced:
            return 0.0  # the pacer waits the pause
        return self.retrier.policy.compute_wait(
            state.attempt_number - 1, getattr(self.error, "retry_after", None)
        )

    def stop(self, state: RetryCallState) -> bool:
        """Whether a limit refuses a retry after this failure (the reason goes in the note)."""
        retrier = self.retrier
        policy = retrier.policy
        retry_after = getattr(self.error, "retry_after", None)
        wait, deadline, limit = state.upcoming_sleep, policy.deadline, policy.max_retry_after
        wait = max(wait, retrier.pacer.pause_left())
        self.free += self.paced
        if state.attempt_number - self.free >= policy.max_attempts:
            self.reason = ("max_attempts", "max_attempts reached")
        elif policy.respect_retry_after and (retry_after or 0) > limit and not self.paced:
            over = f"Retry-After of {retry_after:g} s is over max_retry_after={limit:g} s"
            self.reason = ("retry_after", over)
        elif deadline is not None and retrier.clock() - self.started + wait >= deadline:
            crossing = f"waiting {wait:.2f} s would cross the {deadline:g} s deadline"
            self.reason = ("deadline", crossing)
        elif not self.paced and not (budget := retrier.budget).try_withdraw():  # paced: free
            # A fleet's name waits its turn in a queue that time alone serves within a second:
            # a longer one would hold workers waiting for tokens that only new calls bring.
            retrier.counts.refused += 1
            if retrier.counts.observer is not None:
                retrier.counts.observer.refused()
            queue = budget.min_retries_per_second
            if self.fleet and not policy.zero_wait and retrier.pacer.owing < queue:
                self.owed = True
            else:
                self.reason = ("budget", "retry budget exhausted")
        return self.reason is not None

    def before_sleep(self, state: RetryCallState) -> None:
        """One INFO line and ``on_retry`` per retry, before its wait."""
        policy = self.retrier.policy
        error = cast(WachatError, self.error)
        status = getattr(error, "status", None)
        attempt, wait = state.attempt_number, state.upcoming_sleep
        self.retrier.counts.retries += 1
        logger.info(
            "Retrying QR call for instance %r: attempt %d of %d failed with %s; waiting %.2f s",
            self.name,
            attempt,
            policy.max_attempts,
            status or type(error).__name__,
            wait,
        )
        if policy.on_retry is not None:
            event = RetryEvent(
                instance_name=self.name, attempt=attempt, wait=wait, error=error, status=status
            )
            _call_hook("on_retry", policy.on_retry, event, self.hook_failures)

    def deadline_exceeded(self, expired: TimeoutError) -> DeadlineExceededError:
        deadline = cast(float, self.retrier.policy.deadline)  # a timer expired: there is one
        attempts = self.state.attempt_number
        message = f"deadline of {deadline:g} s exceeded"
        in_use = slot_wait(expired)
        if in_use is None and not self.pacing:
            message += f" after {_attempts(attempts)}"
        else:
            # The attempt counted last was never sent: it was waiting for a slot or the pacer.
            attempts -= 1
            queued = f"waiting for a connection slot ({in_use} in use: is a stream left open?)"
            if in_use is None:
                queued = "waiting for the pacer (a 429's pause, an open circuit) or the budget"
            after = f" after {_attempts(attempts)}, the next one " if attempts else " while "
            message += after + queued
        error = DeadlineExceededError(
            message, deadline=deadline, instance_name=self.name, attempts=attempts
        )
        self.give_up("deadline", error)
        return error

    def give_up(self, reason: GiveUpReason, error: WachatError) -> None:
        hook = self.retrier.policy.on_give_up
        if hook is not None:
            event = GiveUpEvent(
                instance_name=self.name,
                attempts=error.attempts,
                reason=reason,
                error=error,
                status=getattr(error, "status", None),
            )
            _call_hook("on_give_up", hook, event, self.hook_failures)
