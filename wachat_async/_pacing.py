"""The client's :class:`Pacer`: 429 pauses, a learned rate cap, a circuit (docs/fleets.md)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from ._errors import (
    APIStatusError,
    ClientClosedError,
    DeadlineExceededError,
    InvalidImageError,
    ProxyAuthenticationError,
    RateLimitError,
    TLSVerificationError,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)
from ._stats import Counts, PacingStats

logger = logging.getLogger("wachat_async")

JITTER = 0.2  # a Retry-After of ra is waited uniformly over [ra, (1 + JITTER) * ra]
MAX_PAUSE = 60.0  # a longer Retry-After pauses this long (calls give up on their deadline)
QUIET = 10.0  # seconds without a 429 or a transient failure before the pacer stands down
RING, WINDOW, MIN_OUTCOMES, OPEN_SHARE = 50, 60.0, 20, 0.8  # the circuit's judgement
PROBE_EVERY = 1.0  # seconds between probes of an open circuit
REFUSE_AFTER = 30.0  # an open circuit refuses calls after the deadline, or this without one
QUICK_REFUSALS = 1000  # a second: more wait for a probe's outcome (an endless fleet must not spin)
SLOW_START = 50.0  # requests/s after a first pause, doubling each second until a 429
BACK_OFF, GROWTH = 0.7, 1.1  # a later pause multiplies the cap by BACK_OFF; then GROWTH a second


def is_transport_fault(error: BaseException) -> bool:
    """Whether *error* is a fault of the way to the server: a connection failure (but not a
    certificate that does not verify, nor a proxy that wants credentials: those do not heal by
    themselves), one attempt's timeout (not the deadline's) or a PNG cut short."""
    if isinstance(error, WachatTimeoutError):
        return not isinstance(error, DeadlineExceededError)
    if isinstance(error, WachatConnectionError):
        return not isinstance(error, (TLSVerificationError, ProxyAuthenticationError))
    return isinstance(error, InvalidImageError) and error.truncated


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Pacer:
    """The retry loop calls :meth:`admit` before an attempt and :meth:`record` after it while
    ``active``, and :meth:`record` for every failure. *rand*: ``random.uniform``'s signature."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[float, float], float] = random.uniform,
        counts: Counts | None = None,
    ) -> None:
        self.clock, self.rand, self.counts = clock, rand, counts or Counts()
        self.active = False  # the one attribute the success path reads
        self.closed = self.warned = self.probing = self.loud = False
        self.rate_limited = self.pauses = self.circuit_openings = self.refused = 0
        self.owing = 0  # fleet calls waiting for the retry budget
        self.sleepers: set[asyncio.Future[None]] = set()
        self._ring: deque[tuple[float, bool]] = deque(maxlen=RING)  # (when, failed)
        self._last_error: WachatError | None = None
        self._stand_down()

    def _stand_down(self) -> None:
        self.pause = (-1e18, 0.0)  # (start, Retry-After) of the latest 429
        self.cap: float | None = None  # requests/s at cap_at, times growth each second since
        self.cap_at = self.next_slot = 0.0
        self.growth = 2.0
        self.opened: float | None = None  # when the circuit opened
        self.quiet_from = self.circuit_openings + 1  # later openings of this storm log at INFO
        self.refusing = False  # the open circuit has refused a call
        self.quick = (-1e18, 0)  # (since, count) of the refusals this second
        self.next_probe = self.trouble = 0.0
        self.marked = (0.0, 0)  # (when, admitted) for the observed rate
        self.admitted = 0
        self._ring.clear()

    def _now_cap(self, now: float) -> float | None:
        if self.cap is None:
            return None
        return float(self.cap * self.growth ** max(0.0, now - self.cap_at))

    def pause_left(self) -> float:
        """Seconds left of the current pause (0.0 when none)."""
        start, ra = self.pause
        return max(0.0, start + ra - self.clock())

    async def admit(
        self, name: str, deadline: float | None, left: float | None = None, zero_wait: bool = False
    ) -> bool:
        """Wait until an attempt may go: past a pause (RateLimitError at once if it outlasts
        *left*, the call's time left), in its turn under the rate cap, and, with the circuit
        open, as its probe (True) or refused once it has been open longer than *deadline* (at
        once QUICK_REFUSALS a second; then after the next probe's outcome, if it did not close
        it). ``zero_wait`` (a test's) never waits."""
        share = self.rand(1.0, 1.0 + JITTER)  # this waiter's place in a pause
        told = False  # waited for a probe's outcome before its refusal
        while True:
            if self.closed:
                raise ClientClosedError("WachatClient was closed", attempts=0)
            now = self.clock()
            if self.opened is not None:
                if not self.probing and now >= self.next_probe:
                    self.probing, self.next_probe = True, now + PROBE_EVERY
                    return True
                limit = self.opened + (REFUSE_AFTER if deadline is None else deadline)
                if now >= limit:
                    since, count = self.quick if now - self.quick[0] < 1.0 else (now, 0)
                    self.quick = (since, count + 1)
                    if told or count < QUICK_REFUSALS:
                        raise self._refusal(name, now - self.opened)
                    told, limit = True, now + PROBE_EVERY
                wait = (limit if self.probing else min(self.next_probe, limit)) - now
            else:
                start, ra = self.pause
                wait = start + ra * share - now
                if wait <= 0:
                    break
                if left is not None and wait > left and not zero_wait:
                    error = RateLimitError(retry_after=wait, instance_name=name, attempts=0)
                    error.add_note(f"not sent: paused {wait:.1f} s more, past the deadline")
                    raise error
            if zero_wait:
                return False
            await self.nap(wait)
        cap = self._now_cap(now)
        self.admitted += 1
        if cap is not None:
            slot = max(now, self.next_slot)
            self.next_slot = slot + 1.0 / cap
            if slot > now and not zero_wait:
                await self.nap(slot - now)
        self._settle(now, cap)
        return False

    def _settle(self, now: float, cap: float | None) -> None:
        """Once a second: drop a cap well above the observed rate; stand down when calm."""
        when, admitted = self.marked
        if now - when < 1.0:
            return
        rate = (self.admitted - admitted) / (now - when)
        self.marked = (now, self.admitted)
        if cap is not None and now - self.trouble > QUIET and cap > 2 * rate:
            self.cap = None  # the fleet asks well below it
        if self.cap is None and self.opened is None and now - self.trouble > QUIET:
            if self.loud:
                logger.warning("Wachat API calm again: pacing stands down (%r)", self.snapshot())
            self.active = self.loud = False
            self._stand_down()

    def _refusal(self, name: str, open_for: float) -> WachatError:
        """The error of a call the open circuit refuses: the class of the last failure."""
        self.refused += 1
        self.refusing = True
        last = self._last_error
        assert last is not None  # what opened the circuit
        if isinstance(last, APIStatusError):
            error: WachatError = type(last)(status=last.status, instance_name=name, attempts=0)
        else:
            error = type(last)(last.message, instance_name=name, attempts=0)
        ago = f"open for {open_for:.0f} s"
        error.add_note(f"not sent: the circuit has been {ago}, every probe failing")
        return error

    def record(self, error: BaseException | None, probe: bool = False) -> None:
        """The outcome of an attempt: None (a success), or what it raised."""
        if probe:  # the next probe may go: wake the waiters to take it
            self.probing = False
            self.wake_all()
        if error is not None and not isinstance(error, WachatError):
            return  # cancelled: no outcome
        now = self.clock()
        if isinstance(error, RateLimitError):
            self._rate_limited(error, now)
        elif error is not None and (  # the API failing
            getattr(error, "status", None) in (502, 504) or is_transport_fault(error)
        ):
            self._failed(error, now)
        elif self.active and (error is None or isinstance(error, APIStatusError)):
            self._ring.append((now, False))  # the API answered
            if self.opened is not None:
                level = logging.INFO if self.circuit_openings > self.quiet_from else logging.WARNING
                logger.log(
                    level,
                    "Wachat API answers again: circuit closed after %.1f s",
                    now - self.opened,
                )
                self.opened, self.refusing = None, False
                self._ring.clear()
                self.wake_all()

    def _activate(self, now: float, why: str) -> None:
        self.active, self.trouble = True, now
        if not self.loud and why:
            self.loud = True
            logger.warning("Wachat API %s: pacing requests until it is calm again", why)

    def _rate_limited(self, error: RateLimitError, now: float) -> None:
        self.rate_limited += 1
        ra = min(MAX_PAUSE, max(1.0, error.retry_after or 0.0))  # 0 or past: as none, 1 s
        self._activate(now, f"answered 429 (Retry-After {ra:g} s)")
        start, old = self.pause
        if now >= start + old:  # a new pause, not another 429 of the same burst
            self.pauses += 1
            cap = self._now_cap(now)  # none yet: slow start, doubling from SLOW_START
            self.cap, self.growth = (
                (SLOW_START, 2.0) if cap is None else (max(cap * BACK_OFF, 1.0), GROWTH)
            )
            if self.counts.observer is not None:
                self.counts.observer.paused()
            logger.info("429: pausing new requests for %g s (rate cap %s)", ra, self.cap)
        self.pause = max(self.pause, (now, ra), key=sum)  # the burst's 429s extend it, not halve
        self.cap_at = self.trouble = sum(self.pause)  # calm and the climb count from its end

    def _failed(self, error: WachatError, now: float) -> None:
        self._last_error = error
        ring = self._ring
        ring.append((now, True))
        recent = [failed for when, failed in ring if now - when < WINDOW]
        storm = sum(recent) >= MIN_OUTCOMES // 2
        self._activate(now, f"failing ({type(error).__name__}, {sum(recent)} lately)" * storm)
        if self.opened is not None:
            return
        if len(recent) >= MIN_OUTCOMES and sum(recent) >= OPEN_SHARE * len(recent):
            self.opened, self.next_probe = now, now + PROBE_EVERY
            self.circuit_openings += 1
            failing = f"{sum(recent)} of the last {len(recent)} attempts"
            level = logging.INFO if self.circuit_openings > self.quiet_from else logging.WARNING
            logger.log(level, "Wachat API failing %s: circuit open, probing once a second", failing)

    async def nap(self, seconds: float) -> None:
        """Sleep *seconds*, or less if woken (the circuit closes, the client closes)."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(seconds, _wake, waiter)
        self.sleepers.add(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.sleepers.discard(waiter)
        if self.closed:
            raise ClientClosedError("WachatClient was closed", attempts=0)

    def wake_all(self) -> None:
        for waiter in self.sleepers:
            _wake(waiter)

    def close(self) -> None:
        """The client closed: waiters and later :meth:`admit` raise ClientClosedError."""
        self.closed = True
        self.wake_all()

    def fleet_width(self, concurrency: int, limit: int | None) -> int:
        """*concurrency* bounded by the connection slots: a WARNING once per client if over."""
        if limit is None or type(concurrency) is not int or concurrency <= limit:
            return concurrency
        if not self.warned:
            self.warned = True
            over = f"fetch_many(concurrency={concurrency}) runs {limit} at a time"
            logger.warning("%s: raise the client's max_connections (%d) for more", over, limit)
        return limit

    def snapshot(self) -> PacingStats:
        """The state now, cheaply (for ``client.stats()``)."""
        now = self.clock()
        circuit: Literal["closed", "open", "refusing"] = "closed"
        if self.opened is not None:
            circuit = "refusing" if self.refusing else "open"
        return PacingStats(
            active=self.active,
            paused_for=self.pause_left(),
            rate_cap=self._now_cap(now),
            circuit=circuit,
            rate_limited=self.rate_limited,
            pauses=self.pauses,
            circuit_openings=self.circuit_openings,
            refused=self.refused,
            waiting=len(self.sleepers),
        )
