"""Retry policy and retry budget.

Only the statuses Wachat documents as transient (502 and 504) are retried by default. Waits are
"full jitter" exponential backoff; a total deadline bounds the whole call; ``Retry-After`` is
honoured; and a :class:`RetryBudget` shared by a client stops retries from multiplying load when
most calls fail. The client enters tenacity only after a first retryable failure, so a call that
succeeds at once pays nothing for any of this.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import attrs

from ._errors import (
    DeadlineExceededError,
    InvalidImageError,
    UnexpectedStatusError,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)

_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")

__all__ = [
    "RetryBudget",
    "RetryEvent",
    "RetryPolicy",
    "backoff_wait",
    "is_transient",
    "is_transport_fault",
    "parse_retry_after",
]

#: The statuses the Wachat API documents as transient.
TRANSIENT_STATUSES: frozenset[int] = frozenset({502, 504})


def is_transport_fault(error: BaseException) -> bool:
    """Whether *error* is a fault of the way to the server, not of the request or the answer.

    True for a :class:`WachatConnectionError` (refused, reset, DNS, TLS, garbage instead of
    HTTP), a :class:`WachatTimeoutError` of one attempt, and an :class:`InvalidImageError`
    whose body was cut short (``truncated``). False for the policy's
    :class:`DeadlineExceededError` (the caller's time is spent) and for a complete 200 that is
    not a PNG (a captive portal's page, a proxy's error page: it comes back the same).
    """
    if isinstance(error, WachatTimeoutError):
        return not isinstance(error, DeadlineExceededError)
    if isinstance(error, WachatConnectionError):
        return True
    return isinstance(error, InvalidImageError) and error.truncated


def is_transient(error: BaseException) -> bool:
    """Whether a failed call is worth making again later: ``watch_qr`` keeps watching on these.

    The wider of the two predicates (``RetryPolicy.is_retryable`` decides retries *within* one
    call and is stricter by default)::

        error                                       is_transient  is_retryable (default policy)
        502 QRFetchFailedError, 504 GatewayTimeout  yes           yes
        429, any other 5xx (UnexpectedStatusError)  yes           no (add to ``statuses``)
        WachatConnectionError                       yes           with retry_transport_errors
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


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    Returns ``None`` for a missing, negative or unparsable value (the policy then uses its own
    backoff), ``0.0`` for a date in the past, and ``inf`` for a number of seconds too large for
    a float: a huge Retry-After means "not any time soon", so the policy gives up at once.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _SECONDS.fullmatch(value):
        return float(value)  # ASCII digits only: float() cannot fail, and overflows to inf
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = datetime.now(timezone.utc) if now is None else now
    return max(0.0, (when - now).total_seconds())


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


def _shown(value: object) -> str:
    """*value* for a validation message: a number as itself, anything else by type only (its
    repr is the caller's text and may hold a secret)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    return f"a {type(value).__name__}"


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1, got {_shown(value)}")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name} must be a number, got {_shown(value)}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _reserve(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value != math.inf:
        _non_negative(instance, attribute, value)


def _deadline(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        _non_negative(instance, attribute, value)
        if value == 0:
            raise ValueError("deadline must be > 0 (use None for no deadline)")


def _flag(instance: object, attribute: attrs.Attribute[bool], value: bool) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a bool, got {_shown(value)}")


def _callable_or_none(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{attribute.name} must be callable or None, got {_shown(value)}")


def _statuses(value: Iterable[int]) -> frozenset[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"statuses must be a collection of ints, got {_shown(value)}")
    statuses = frozenset(value)
    for status in statuses:
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ValueError(f"statuses must be HTTP status codes, got {_shown(status)}")
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

    ``on_retry`` is called with a :class:`RetryEvent` before every wait, for metrics.

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

    def deposit(self) -> None:
        """Record one call (its first attempt)."""
        window = self._window
        now = self.clock()
        if now >= window.end:  # a new second: file the one that ended
            window.roll(now)
        window.calls += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and count a refusal) if it is empty."""
        window = self._window
        if self.balance >= 1.0 - 1e-9:  # deposits are fractions: allow rounding error
            window.withdrawn += 1
            window.retries += 1
            return True
        window.refused += 1
        return False
