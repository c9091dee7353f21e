"""What a client has done: live :class:`Counts` and their :class:`ClientStats` snapshot; the
telemetry hook (``Counts.observer``, set by ``wachat_async.otel``); ``WACHAT_LOG``."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import attrs

__all__ = ["LOG_FORMAT", "ClientStats", "Counts", "apply_log_env"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LOG_LEVELS = {"info": logging.INFO, "debug": logging.DEBUG}
_applied: dict[str, str] = {}  # the WACHAT_LOG value applied last


@attrs.frozen(kw_only=True)
class PacingStats:
    """``ClientStats.pacing``, the client's pacer (docs/fleets.md, "Rate limits and outages"):
    ``active`` once a 429 or a transient failure woke it; ``paused_for``: seconds left of a
    429's pause; ``rate_cap``: requests/s (None: none); ``circuit``: ``"open"`` while new
    attempts wait for a probe, ``"refusing"`` once open past the deadline; counts of 429s,
    pauses, circuit openings and calls the circuit refused, since the client was made;
    ``waiting``: calls held now (a pause, the rate cap, the circuit, the retry budget)."""

    active: bool
    paused_for: float
    rate_cap: float | None
    circuit: Literal["closed", "open", "refusing"]
    rate_limited: int
    pauses: int
    circuit_openings: int
    refused: int
    waiting: int


@attrs.frozen(kw_only=True)
class ClientStats:
    """What a client and its views have done since it was made (``WachatClient.stats()``).

    ``calls_started`` = ``calls_succeeded`` + ``calls_failed`` + ``calls_cancelled`` + those
    running (a stream's call ends once its status is checked). ``responses`` counts answers by
    HTTP status; ``transport_failures`` by error class the requests that got no answer or lost
    their body (those count in ``responses`` too). ``in_flight``: requests holding a connection
    slot now; ``waiting``: calls queued for one; ``pacing``: the pacer's :class:`PacingStats`.
    Latencies: ``wachat_async.otel``.
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
    pacing: PacingStats


class Counts:
    """The live counters of a client and its views (200s in ``ok``: a short success path).
    ``observer``: ``wachat_async.otel``'s, with ``call``, ``request`` and ``refused``."""

    def __init__(self) -> None:
        self.requests = self.ok = self.calls = self.succeeded = 0
        self.failed = self.cancelled = self.retries = self.refused = 0
        self.statuses: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()
        self.observer: Any = None  # None: one attribute check per call and request

    def snapshot(self, in_flight: int, waiting: int, pacing: PacingStats) -> ClientStats:
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
            pacing=pacing,
        )


def apply_log_env(environ: Mapping[str, str] = os.environ) -> None:
    """``WACHAT_LOG=info|debug`` (read as each client is made; a value is applied once): the
    ``wachat_async`` logger's level, and a stderr handler if the application has none."""
    value = environ.get("WACHAT_LOG", "").strip()
    if not value or _applied.get("value") == value:
        return
    _applied["value"] = value
    logger = logging.getLogger("wachat_async")
    if (level := _LOG_LEVELS.get(value.lower())) is None:
        logger.warning("WACHAT_LOG=%.20r ignored: use info or debug", value)
        return
    logger.setLevel(level)
    if not logger.hasHandlers():  # on this logger or above it
        handler = logging.StreamHandler()  # stderr
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
