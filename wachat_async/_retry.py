"""Retries: the policy, the budget and the retry loop itself.

Only the statuses Wachat documents as transient (502 and 504) are retried by default. Waits are
"full jitter" exponential backoff; a total deadline bounds the whole call; ``Retry-After`` is
honoured; and a :class:`RetryBudget` shared by a client stops retries from multiplying load when
most calls fail. :class:`Retrier` is the loop: given the policy, the budget, a sleep and a clock,
it runs attempts and decides after each failure. It enters tenacity only after a first
retryable failure, so a call that succeeds at once pays nothing for any of this.

The loop runs whatever attempt it is given and reads no client internals. Never imports the
client, the transport or the stream; only the errors, the argument checks and the
connection slots' type (:class:`~wachat_async._slots.Slots`, to see whether one is free).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, TypeVar

import attrs
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from ._errors import (
    DeadlineExceededError,
    InvalidImageError,
    ProxyAuthenticationError,
    TLSVerificationError,
    UnexpectedStatusError,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)
from ._slots import Slots
from ._validate import check_bool, check_number, shown

__all__ = [
    "GiveUpEvent",
    "GiveUpReason",
    "Retrier",
    "RetryBudget",
    "RetryEvent",
    "RetryPolicy",
    "backoff_wait",
    "is_transient",
    "is_transport_fault",
    "note_slot_wait",
    "slot_wait",
]

logger = logging.getLogger("wachat_async")

T = TypeVar("T")

#: The statuses the Wachat API documents as transient.
TRANSIENT_STATUSES: frozenset[int] = frozenset({502, 504})


def is_transport_fault(error: BaseException) -> bool:
    """Whether *error* is a fault of the way to the server, not of the request or the answer.

    True for a :class:`WachatConnectionError` (refused, reset, DNS, a broken TLS handshake, a
    proxy that failed, garbage instead of HTTP), a :class:`WachatTimeoutError` of one attempt,
    and an :class:`InvalidImageError` whose body was cut short (``truncated``). False for the
    policy's :class:`DeadlineExceededError` (the caller's time is spent), for a complete 200
    that is not a PNG (a captive portal's page, a proxy's error page: it comes back the same),
    and for the two connection failures that will not heal by themselves: a certificate that
    does not verify (:class:`TLSVerificationError`) and a proxy that wants other credentials
    (:class:`ProxyAuthenticationError`).
    """
    if isinstance(error, WachatTimeoutError):
        return not isinstance(error, DeadlineExceededError)
    if isinstance(error, WachatConnectionError):
        return not isinstance(error, (TLSVerificationError, ProxyAuthenticationError))
    return isinstance(error, InvalidImageError) and error.truncated


def is_transient(error: BaseException) -> bool:
    """Whether a failed call is worth making again later: ``watch_qr`` keeps watching on these.

    The wider of the two predicates (``RetryPolicy.is_retryable`` decides retries *within* one
    call and is stricter by default)::

        error                                       is_transient  is_retryable (default policy)
        502 QRFetchFailedError, 504 GatewayTimeout  yes           yes
        429, any other 5xx (UnexpectedStatusError)  yes           no (add to ``statuses``)
        WachatConnectionError                       yes           with retry_transport_errors
        TLSVerificationError (certificate)          no            never
        ProxyAuthenticationError (407)              no            never
        WachatTimeoutError of one attempt           yes           with retry_transport_errors
        InvalidImageError, truncated                yes           with retry_transport_errors
        DeadlineExceededError (policy deadline)     yes           never
        400, 401, 403, 404, 409, other 4xx/3xx      no            no (unless in ``statuses``)
        a 200 that is not a PNG, or over the cap    no            never
        CancelledError, anything not a WachatError  no            never

    The deadline ends one call, but the next poll has a deadline of its own, so a watch goes
    on; within the call it is never retried.
    """
    if not isinstance(error, WachatError):
        return False
    status = getattr(error, "status", None)
    if isinstance(status, int):
        if isinstance(error, UnexpectedStatusError):
            return status == 429 or status >= 500
        return status in TRANSIENT_STATUSES
    return isinstance(error, DeadlineExceededError) or is_transport_fault(error)


def backoff_wait(
    retry_number: int,
    *,
    initial_wait: float,
    max_wait: float,
    rand: Callable[[float, float], float] = random.uniform,
) -> float:
    """Full-jitter exponential backoff: ``uniform(0, min(max_wait, initial_wait * 2**n))``.

    *retry_number* ``n`` counts from 0 for the first retry. Full jitter (AWS Architecture Blog,
    "Exponential Backoff and Jitter") spreads clients that failed together across the whole
    window, which is what keeps thousands of pollers from retrying in lock step.
    """
    if retry_number < 0:
        raise ValueError("retry_number must be >= 0")
    # Cap the exponent: 2**1100 overflows a float long after max_wait has taken over.
    ceiling = min(max_wait, initial_wait * 2.0 ** min(retry_number, 1000))
    return rand(0.0, ceiling) if ceiling > 0 else 0.0


@attrs.frozen(kw_only=True)
class RetryEvent:
    """What ``RetryPolicy.on_retry`` receives before each retry's wait.

    ``attempt`` is the attempt that just failed (1 for the first), ``wait`` the computed seconds
    before the next one (reported even in zero-wait mode, where it is not slept), ``status``
    the HTTP status when the failure was one.
    """

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
    without retrying it (again).

    ``reason`` says which limit ended it: ``"max_attempts"``, ``"retry_after"`` (the server's
    ``Retry-After`` was over ``max_retry_after``), ``"deadline"`` (the next wait would cross it,
    or it expired mid-attempt; ``error`` is then the :class:`DeadlineExceededError`) or
    ``"budget"`` (the :class:`RetryBudget` refused the retry). ``attempts`` is how many attempts
    the call made; ``error`` is the exception the call raises next. With ``on_retry`` this
    counts everything: attempts = calls + retries, and refusals by reason. Errors that are never
    retried (a 404, a certificate failure) are not give-ups.
    """

    instance_name: str | None
    attempts: int
    reason: GiveUpReason
    error: WachatError
    status: int | None = None


# attrs validators: each is the one number (or flag) rule of _validate, named after the field.


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    # A wrong type is a ValueError here, as it always was for this field.
    check_number(value, attribute.name, integer=True, minimum=1, type_error=ValueError)


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    check_number(value, attribute.name)


def _reserve(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    check_number(value, attribute.name, infinite=True)


def _deadline(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        if value == 0 and not isinstance(value, bool):
            raise ValueError("deadline must be > 0 (use None for no deadline)")
        check_number(value, attribute.name, exclusive=True)


def _flag(instance: object, attribute: attrs.Attribute[bool], value: bool) -> None:
    check_bool(value, attribute.name)


def _is_async_callable(value: object) -> bool:
    """Whether calling *value* is known to give a coroutine (``async def``, a partial of one,
    or an object whose ``__call__``, its class's own or inherited, is one)."""
    while isinstance(value, functools.partial):
        value = value.func
    if inspect.iscoroutinefunction(value):
        return True
    if inspect.isroutine(value):
        return False
    # The __call__ a call runs: the first class of the MRO that defines one (own or inherited).
    for cls in type(value).__mro__:
        if "__call__" in vars(cls):
            return inspect.iscoroutinefunction(vars(cls)["__call__"])
    return False  # not callable at all (None: no hook)


def _callable_or_none(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{attribute.name} must be callable or None, got {shown(value)}")
    if _is_async_callable(value):
        raise TypeError(
            f"{attribute.name} must be a plain function, not an async one: hooks are called "
            "synchronously and never awaited (to feed an async backend, hand the event over, "
            "e.g. with queue.put_nowait(event) or loop.create_task(...))"
        )


def _call_hook(which: str, hook: Callable[[Any], object], event: object, logged: set[str]) -> None:
    """Call a hook; whatever it raises or returns cannot change the call's outcome.

    A hook observes (metrics): an exception it raises is logged once per call and per hook
    (WARNING on the ``wachat_async`` logger, with its type only: its text is not ours to
    show) and the call goes on; an awaitable it returns (a coroutine, which would never run)
    is closed and logged the same way. ``BaseException`` (cancellation) still propagates.
    """
    try:
        result = hook(event)
    except Exception as exc:  # a hook may fail in any way, and that must not matter
        if which not in logged:
            logged.add(which)
            logger.warning(
                "RetryPolicy.%s hook raised %s; ignored (hooks observe a call, they cannot "
                "change its outcome)",
                which,
                type(exc).__name__,
            )
        return
    if asyncio.isfuture(result):
        return  # a Task or Future runs (or resolves) on its own: loop.create_task(...) is fine
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if callable(close):
            close()  # never awaited: closing it also keeps "never awaited" warnings away
        if which not in logged:
            logged.add(which)
            logger.warning(
                "RetryPolicy.%s hook returned an awaitable (%s); closed without running it "
                "(hooks are called synchronously and never awaited)",
                which,
                type(result).__name__,
            )


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
    """When and how long to retry a failed call.

    Defaults: up to ``max_attempts=4`` attempts, retrying only ``statuses={502, 504}``; before
    retry *n* (0-based) the client waits ``uniform(0, min(max_wait, initial_wait * 2**n))``
    seconds (full jitter), or the server's ``Retry-After`` when ``respect_retry_after`` and it
    is present. A ``Retry-After`` above ``max_retry_after``, or a wait that would cross the
    ``deadline``, ends the call at once with the last error instead of sleeping. ``deadline``
    bounds the whole call, attempts and waits together, and is enforced by cancellation.

    ``on_retry`` is called with a :class:`RetryEvent` before every wait, and ``on_give_up``
    with a :class:`GiveUpEvent` when a retryable failure is not retried (which limit stopped
    it), for metrics. Hooks observe, they cannot change the outcome: they are plain functions
    called synchronously (an ``async def`` hook is a ``TypeError`` here; an awaitable a hook
    returns anyway is closed unrun), and an exception a hook raises is logged once per call
    (WARNING on the ``wachat_async`` logger, its type only) and otherwise ignored.

    ``retry_transport_errors`` also retries connection failures (refused, reset, a body cut
    short) and per-attempt timeouts before any byte reached the caller; the ``deadline``
    itself (:class:`DeadlineExceededError`) is never retried. See :meth:`is_retryable`.

    Tests: ``RetryPolicy(zero_wait=True)`` (or ``policy.without_waits()``) computes and reports
    waits exactly as usual but does not sleep. ``RetryPolicy.disabled()`` makes one attempt and
    sets no deadline, so only the client's ``timeout`` bounds the call.
    """

    max_attempts: int = attrs.field(default=4, validator=_positive_int)
    statuses: frozenset[int] = attrs.field(default=frozenset({502, 504}), converter=_statuses)
    initial_wait: float = attrs.field(default=0.5, validator=_non_negative)
    max_wait: float = attrs.field(default=8.0, validator=_non_negative)
    deadline: float | None = attrs.field(default=30.0, validator=_deadline)
    respect_retry_after: bool = attrs.field(default=True, validator=_flag)
    max_retry_after: float = attrs.field(default=30.0, validator=_non_negative)
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
        """A policy that makes exactly one attempt and has no deadline of its own.

        The client's ``timeout`` alone then bounds the call: ``WachatClient(timeout=60,
        retry=RetryPolicy.disabled())`` waits up to 60 s, not a default deadline's 30.
        """
        return cls(max_attempts=1, deadline=None)

    def without_waits(self) -> RetryPolicy:
        """This policy in zero-wait mode, for tests."""
        return attrs.evolve(self, zero_wait=True)

    def is_retryable(self, error: BaseException) -> bool:
        """Whether *error* is one this policy retries within a call.

        * An HTTP status error: when its status is in ``statuses`` (502 and 504 by default).
        * With ``retry_transport_errors``: a connection failure, a per-attempt
          :class:`WachatTimeoutError` and a truncated PNG (see :func:`is_transport_fault`),
          as long as no byte reached the caller.
        * Never: the policy's own :class:`DeadlineExceededError`, a complete 200 that is not a
          PNG, a body over the size cap, ``CancelledError`` or anything not a ``WachatError``.

        :func:`is_transient` is the wider rule ``watch_qr`` uses to keep watching; its
        docstring tabulates both.
        """
        if not isinstance(error, WachatError):
            return False
        status = getattr(error, "status", None)
        if isinstance(status, int):
            return status in self.statuses
        return self.retry_transport_errors and is_transport_fault(error)

    def compute_wait(self, retry_number: int, retry_after: float | None) -> float:
        """Seconds to wait before retry *retry_number* (0-based)."""
        if retry_after is not None and self.respect_retry_after:
            return retry_after
        return backoff_wait(retry_number, initial_wait=self.initial_wait, max_wait=self.max_wait)


class _Window:
    """The budget's live state: plain slots, so the per-call ``deposit`` pays no attrs hook.

    Deposits are not stored one by one: ``calls`` counts them all, ``start_calls`` is its value
    when the current second began, and only when a new second starts is the finished second
    written to its ring slot as ``(second, deposits, withdrawals)``.
    """

    __slots__ = (
        "calls",
        "end",
        "refused",
        "retries",
        "ring",
        "second",
        "start_calls",
        "withdrawn",
    )

    def __init__(self, slots: int) -> None:
        self.calls = 0
        self.retries = 0
        self.refused = 0
        self.second: float = -math.inf  # the current second (floor of the clock)
        self.end = -math.inf  # when it ends: the first deposit starts a second
        self.start_calls = 0  # ``calls`` when the current second began
        self.withdrawn = 0  # withdrawals in the current second
        # Finished seconds, one slot per second of the window: (second, deposits, withdrawals).
        self.ring: list[tuple[float, int, int]] = [(-math.inf, 0, 0)] * slots

    def roll(self, now: float) -> None:
        """Start the second that holds *now*, filing the current one in its ring slot."""
        second = math.floor(now)
        ring = self.ring
        if self.second != -math.inf:
            deposits = self.calls - self.start_calls
            ring[int(self.second) % len(ring)] = (self.second, deposits, self.withdrawn)
        self.second, self.end = second, float(second + 1)
        self.start_calls, self.withdrawn = self.calls, 0


@attrs.define(kw_only=True, eq=False)
class RetryBudget:
    """A token bucket that caps retries at a fraction of recent traffic (Finagle's RetryBudget).

    Every call deposits ``ratio`` of a token; every retry withdraws one. Deposits and
    withdrawals count for ``ttl`` seconds (whole seconds of the *clock*: the current one and
    the ``ceil(ttl) - 1`` before it), and ``min_retries_per_second * ttl`` tokens are always
    available on top, so a quiet client can still retry. With the defaults, retries add at most
    about 20% to the load of an API that fails every call, plus 20 retries per 10 s.
    When the budget is empty the first attempt of every call still goes out; retries do not,
    and the error raised says so. One budget is shared by all calls of a client; *clock* is a
    monotonic clock in seconds (``time.monotonic``; inject one in tests).

    ``calls``, ``retries`` and ``refused`` count what happened, for observability.

    ``deposit`` runs on every call, so it is lazy: it counts the call and looks at the clock;
    the window is tallied only when a second ends or a retry asks for a token.
    """

    ratio: float = attrs.field(default=0.2, validator=_non_negative)
    min_retries_per_second: float = attrs.field(default=2.0, validator=_reserve)
    ttl: float = attrs.field(default=10.0, validator=_non_negative)
    clock: Callable[[], float] = attrs.field(default=time.monotonic, repr=False)
    _window: _Window = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.ttl < 1:
            raise ValueError("ttl must be >= 1 second")
        self._window = _Window(math.ceil(self.ttl))

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
            window.roll(now)
        horizon = window.second - len(window.ring)
        deposits = window.calls - window.start_calls
        withdrawn = window.withdrawn
        for second, d, w in window.ring:
            if second > horizon:
                deposits += d
                withdrawn += w
        return self.ratio * deposits - withdrawn + self.min_retries_per_second * self.ttl

    def deposit(self) -> float:
        """Record one call (its first attempt); return the clock reading it was filed under
        (a retry loop on the same clock starts its call's deadline from it)."""
        window = self._window
        now = self.clock()
        if now >= window.end:  # a new second: file the one that ended
            window.roll(now)
        window.calls += 1
        return now

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and count a refusal) if it is empty."""
        window = self._window
        if self.balance >= 1.0 - 1e-9:  # deposits are fractions: allow rounding error
            window.withdrawn += 1
            window.retries += 1
            return True
        window.refused += 1
        return False


#: The attribute that marks a ``CancelledError`` which ended a wait for a connection slot.
_SLOT_WAIT = "_wachat_slots_in_use"


def note_slot_wait(cancelled: BaseException, in_use: int) -> None:
    """Mark *cancelled* (the ``CancelledError`` that ended an attempt's wait for a connection
    slot) with how many slots were in use, for :class:`Retrier` to explain a deadline that
    expired in the queue. The connection queue calls this; nothing else needs to."""
    setattr(cancelled, _SLOT_WAIT, in_use)


def slot_wait(error: BaseException) -> int | None:
    """How many slots were in use when the deadline found the attempt queueing for one (None
    if it was not queueing): read from the ``TimeoutError`` of the deadline, whose cause (or
    context) is the marked ``CancelledError``."""
    for cancelled in (error.__cause__, error.__context__):
        in_use = getattr(cancelled, _SLOT_WAIT, None)
        if isinstance(in_use, int):
            return in_use
    return None


async def _no_sleep(seconds: float) -> None:
    """Zero-wait mode's sleep: yield to the loop once, never wait."""
    await asyncio.sleep(0)


class Retrier:
    """The retry loop: runs one call's attempts under a :class:`RetryPolicy`.

    Given everything it decides with, and nothing else: the *policy*, the *budget* its retries
    draw on (shared by every call of a client), the *sleep* it waits with (``asyncio.sleep``,
    or a zero-wait sleep when ``policy.zero_wait``) and the *clock* its deadline is measured on
    (``time.monotonic`` by default; a test injects its own and so never waits for a deadline
    in real time). *attempt_timeout* is the longest one attempt may take by itself (the
    client's ``timeout.total``; ``None`` when unbounded).

    :meth:`call` runs an attempt (any coroutine function whose first argument is the instance
    name). Its fast path is bare: when an attempt cannot outlast the deadline on its own
    (``guards_first_attempt`` is false) and does not have to queue for a connection first, the
    first attempt runs with no deadline timer and no tenacity. After a retryable failure, or
    when the first attempt needs the deadline, the rest of the call runs under
    ``asyncio.timeout`` (armed with the time the clock says is left) with a fresh tenacity
    ``AsyncRetrying``:

    * before each retry one decision, in this order: ``max_attempts`` reached, ``Retry-After``
      over ``max_retry_after``, a wait that would cross the deadline (by the clock), an empty
      budget; any of them ends the call with the last real error;
    * otherwise one INFO line on the ``wachat_async`` logger, ``policy.on_retry``, the wait;
    * the error raised carries ``attempts`` and a note, ``gave up after N attempts in T s
      (reason)``; a deadline that expires mid-attempt or mid-wait is a
      :class:`DeadlineExceededError` chained to the last real error.

    It never reads client internals; a retried attempt must release what it holds (its
    response, its connection slot) before it raises.
    """

    __slots__ = ("budget", "clock", "guards_first_attempt", "policy", "sleep")

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        *,
        attempt_timeout: float | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.budget = budget
        if sleep is None:
            sleep = _no_sleep if policy.zero_wait else asyncio.sleep
        self.sleep: Callable[[float], Awaitable[None]] = sleep
        self.clock = clock
        deadline = policy.deadline
        #: Whether even the first attempt runs under the deadline timer: only when its own
        #: timeout may outlast the deadline.
        self.guards_first_attempt = deadline is not None and (
            attempt_timeout is None or attempt_timeout > deadline
        )

    async def call(
        self,
        name: str,
        queue: Slots | None,
        attempt: Callable[..., Awaitable[T]],
        *args: Any,
    ) -> T:
        """``await attempt(name, *args)`` under the policy; return its result or raise.

        *queue* is the :class:`Slots` the attempt first waits in for a connection (or ``None``):
        waiting counts toward the deadline, so when no slot is free the first attempt runs
        under the deadline timer too.
        """
        policy = self.policy
        budget = self.budget
        if budget.clock is self.clock:  # the default: one clock reading for both
            started = budget.deposit()
        else:
            budget.deposit()
            started = self.clock()
        if self.guards_first_attempt or (
            # No slot free (Slots hands a released slot straight to a waiter, so a free one
            # means nobody waits): the attempt will queue, and queueing counts.
            policy.deadline is not None and queue is not None and queue.free <= 0
        ):
            return await self._guarded(name, attempt, args, started, None)
        try:
            return await attempt(name, *args)
        except WachatError as exc:
            if policy.max_attempts == 1 or not policy.is_retryable(exc):
                self._one_attempt_give_up(name, exc)
                raise
            first = exc
        return await self._guarded(name, attempt, args, started, first)

    def _one_attempt_give_up(self, name: str, error: WachatError) -> None:
        """A retryable failure of a one-attempt policy is a give-up (``max_attempts``)."""
        policy = self.policy
        if (
            policy.on_give_up is not None
            and policy.max_attempts == 1
            and policy.is_retryable(error)
        ):
            self._give_up(name, 1, "max_attempts", error)

    def _give_up(self, name: str, attempts: int, reason: GiveUpReason, error: WachatError) -> None:
        hook = self.policy.on_give_up
        if hook is not None:
            status = getattr(error, "status", None)
            _call_hook(
                "on_give_up",
                hook,
                GiveUpEvent(
                    instance_name=name,
                    attempts=attempts,
                    reason=reason,
                    error=error,
                    status=status if isinstance(status, int) else None,
                ),
                set(),  # at most one give-up per call: logged at most once anyway
            )

    async def _guarded(
        self,
        name: str,
        attempt: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        started: float,
        first: WachatError | None,
    ) -> T:
        """The rest of a call under the deadline, retrying through tenacity."""
        policy = self.policy
        retry: _RetryState | None = None
        remaining = None
        if policy.deadline is not None:
            remaining = policy.deadline - (self.clock() - started)
        try:
            async with asyncio.timeout(remaining):
                if first is None:
                    try:
                        return await attempt(name, *args)
                    except WachatError as exc:
                        if policy.max_attempts == 1 or not policy.is_retryable(exc):
                            self._one_attempt_give_up(name, exc)
                            raise
                        first = exc
                retry = _RetryState(self, name, started)
                return await retry.run(first, attempt, args)
        except WachatError as exc:
            # First: a WachatTimeoutError is a TimeoutError too, and must not pass for the
            # deadline's.
            if retry is not None:
                exc.attempts = retry.attempts
                exc._note(retry.summary())
                if retry.code is not None and exc is retry.last_error:
                    self._give_up(name, retry.attempts, retry.code, exc)
            raise
        except TimeoutError as expired:
            if policy.deadline is None:  # pragma: no cover - no deadline, no timer to expire
                raise
            attempts = retry.attempts if retry else 1
            message = f"deadline of {policy.deadline:g} s exceeded"
            in_use = slot_wait(expired)
            if in_use is not None:
                # The attempt counted last was never sent: it was waiting for a slot.
                attempts -= 1
                queued = f"waiting for a connection slot ({in_use} in use: is a stream left open?)"
                if attempts:
                    message += f" after {_attempts(attempts)}, the next one {queued}"
                else:
                    message += f" while {queued}"
            else:
                message += f" after {_attempts(attempts)}"
            error = DeadlineExceededError(
                message, deadline=policy.deadline, instance_name=name, attempts=attempts
            )
            self._give_up(name, attempts, "deadline", error)
            raise error from (retry.last_error if retry else first)


def _attempts(n: int) -> str:
    return f"{n} attempt" + ("s" if n != 1 else "")


class _RetryState:
    """Per-call retry bookkeeping: a fresh tenacity ``AsyncRetrying`` per call, never shared."""

    __slots__ = (
        "attempts",
        "code",
        "decided_for",
        "hook_failures",
        "last_error",
        "name",
        "next_wait",
        "reason",
        "retrier",
        "started",
        "stopping",
    )

    def __init__(self, retrier: Retrier, name: str, started: float) -> None:
        self.retrier = retrier
        self.name = name
        self.started = started
        self.attempts = 1
        self.next_wait = 0.0
        self.reason = ""
        self.code: GiveUpReason | None = None
        self.last_error: BaseException | None = None
        self.decided_for = 0
        self.stopping = False
        #: The hooks whose failure this call has logged already (once per call each).
        self.hook_failures: set[str] = set()

    async def run(
        self, first: WachatError, attempt: Callable[..., Awaitable[T]], args: tuple[Any, ...]
    ) -> T:
        """The rest of a call under tenacity: *first*, the retryable error of the bare first
        attempt, is replayed as tenacity's first attempt, then *attempt* runs again."""
        replay: list[WachatError] = [first]

        async def once() -> T:
            if replay:
                raise replay.pop()
            self.attempts += 1
            return await attempt(self.name, *args)

        retrying = AsyncRetrying(
            stop=self._stop,
            wait=self._wait,
            retry=retry_if_exception(self.retrier.policy.is_retryable),
            before_sleep=self._before_sleep,
            sleep=self.retrier.sleep,
            reraise=True,
        )
        return await retrying(once)

    def _decide(self, state: RetryCallState) -> bool:
        """Decide once per failed attempt whether to retry, and how long to wait first.

        tenacity asks ``wait`` and ``stop`` separately (in an order that has changed between
        its versions); both read this one decision, so the budget is charged at most once.
        """
        if self.decided_for == state.attempt_number:
            return self.stopping
        self.decided_for = state.attempt_number
        self.stopping = True
        policy = self.retrier.policy
        error = state.outcome.exception() if state.outcome else None
        self.last_error = error
        if self.attempts >= policy.max_attempts:
            self.reason, self.code = "max_attempts reached", "max_attempts"
            return True
        retry_after = getattr(error, "retry_after", None) if policy.respect_retry_after else None
        if retry_after is not None and retry_after > policy.max_retry_after:
            self.reason = (
                f"Retry-After of {retry_after:g} s is over max_retry_after="
                f"{policy.max_retry_after:g} s"
            )
            self.code = "retry_after"
            return True
        wait = policy.compute_wait(self.attempts - 1, retry_after)
        elapsed = self.retrier.clock() - self.started
        if policy.deadline is not None and elapsed + wait >= policy.deadline:
            self.reason = f"waiting {wait:.2f} s would cross the {policy.deadline:g} s deadline"
            self.code = "deadline"
            return True
        if not self.retrier.budget.try_withdraw():
            self.reason, self.code = "retry budget exhausted", "budget"
            return True
        self.next_wait = wait
        self.stopping = False
        return False

    def _stop(self, state: RetryCallState) -> bool:
        return self._decide(state)

    def _wait(self, state: RetryCallState) -> float:
        return 0.0 if self._decide(state) else self.next_wait

    def _before_sleep(self, state: RetryCallState) -> None:
        policy = self.retrier.policy
        error = self.last_error
        assert isinstance(error, WachatError)
        status = getattr(error, "status", None)
        logger.info(
            "Retrying QR call for instance %r: attempt %d of %d failed with %s; waiting %.2f s",
            self.name,
            self.attempts,
            policy.max_attempts,
            status if status is not None else type(error).__name__,
            self.next_wait,
        )
        if policy.on_retry is not None:
            _call_hook(
                "on_retry",
                policy.on_retry,
                RetryEvent(
                    instance_name=self.name,
                    attempt=self.attempts,
                    wait=self.next_wait,
                    error=error,
                    status=status,
                ),
                self.hook_failures,
            )

    def summary(self) -> str:
        """The note on the error that ends the call: ``gave up after N attempts in T s``."""
        elapsed = self.retrier.clock() - self.started
        plural = "s" if self.attempts != 1 else ""
        text = f"gave up after {self.attempts} attempt{plural} in {elapsed:.1f} s"
        return f"{text} ({self.reason})" if self.reason else text
