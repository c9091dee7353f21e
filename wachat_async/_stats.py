"""What a client has done: live :class:`Counts`, their :class:`ClientStats` snapshot, and the
hook of ``wachat_async.otel`` (:class:`Observer`: one attribute check while there is none)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Protocol, TypeVar

import attrs

__all__ = ["ClientStats", "Counts", "Observer"]

T = TypeVar("T")
Attempt = Callable[..., Awaitable[T]]


class Observer(Protocol):
    """Telemetry: :meth:`call` runs a logical call as ``run(attempt)`` (the retry loop; it may
    wrap *attempt*), the transport reports each request, the retry loop retries and refusals."""

    def call(
        self, name: str, attempt: Attempt[T], run: Callable[[Attempt[T]], Awaitable[T]]
    ) -> Awaitable[T]: ...
    def request(self, path: str, status: int | None, error: str | None, took: float) -> None: ...
    def retried(self) -> None: ...
    def refused(self) -> None: ...


@attrs.frozen(kw_only=True)
class ClientStats:
    """What a client and its views have done since it was made (``WachatClient.stats()``).

    ``calls_started`` = ``calls_succeeded`` + ``calls_failed`` + ``calls_cancelled`` + those
    running (a stream's call ends once its status is checked). ``responses`` counts answers by
    HTTP status; ``transport_failures`` counts by error class the requests that got no answer
    or lost their body (those count in ``responses`` too). ``in_flight``: requests holding a
    connection slot now; ``waiting``: calls queued for one. (Latencies: ``wachat_async.otel``.)
    """

    requests: int
    responses: Mapping[int, int]
    transport_failures: Mapping[str, int]
    calls_started: int
    calls_succeeded: int
    calls_failed: int
    calls_cancelled: int
    retries: int
    budget_refusals: int
    in_flight: int
    waiting: int
    #: The pacer's snapshot (rate limits, outages): wired in when pacing lands.
    pacing: object | None = None


class Counts:
    """The live counters of a client and its views; ``ok`` counts 200s (a short success path),
    ``statuses`` the other answers."""

    def __init__(self) -> None:
        self.requests = self.ok = self.calls = self.succeeded = 0
        self.failed = self.cancelled = self.retries = self.refused = 0
        self.statuses: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()
        self.observer: Observer | None = None

    def snapshot(self, in_flight: int, waiting: int) -> ClientStats:
        responses = self.statuses + Counter({200: self.ok})
        return ClientStats(
            requests=self.requests,
            responses=MappingProxyType(dict(sorted(responses.items()))),
            transport_failures=MappingProxyType(dict(sorted(self.failures.items()))),
            calls_started=self.calls,
            calls_succeeded=self.succeeded,
            calls_failed=self.failed,
            calls_cancelled=self.cancelled,
            retries=self.retries,
            budget_refusals=self.refused,
            in_flight=in_flight,
            waiting=waiting,
        )
