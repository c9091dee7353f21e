"""OpenTelemetry for a :class:`~wachat_async.WachatClient`: spans and metrics (the ``otel``
extra, ``pip install -e '.[otel]'`` in a clone: opentelemetry-api only)::

    from wachat_async.otel import instrument

    client = WachatClient()
    instrument(client)  # its views too; the global providers unless you pass yours

Each logical call (``get_qr_image``, ``stream_qr_image``, ``save_qr_image``,
``get_instance_state``, each name of ``fetch_many``) is an INTERNAL span ``WachatClient.<call>``
with one CLIENT span per attempt, ``GET <path>``, after OpenTelemetry's HTTP conventions: the
path without its query, never the key. Details and the metrics: docs/observability.md.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from wachat_async import WachatClient, __version__

from .._stats import Counts

__all__ = ["instrument", "uninstrument"]

T = TypeVar("T")
Attempt = Callable[..., Awaitable[T]]

#: The public call each attempt method of the transport serves, by the method's name.
CALLS = {
    "fetch_image": "get_qr_image",
    "open_stream": "stream_qr_image",
    "save_once": "save_qr_image",
    "fetch_state": "get_instance_state",
}
#: OpenTelemetry's advice for ``http.client.request.duration`` (seconds).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
_WATCHED: weakref.WeakKeyDictionary[Meter, weakref.WeakSet[WachatClient]] = (
    weakref.WeakKeyDictionary()
)


def _counts(client: WachatClient) -> Counts:
    if not isinstance(client, WachatClient):
        raise TypeError(f"instrument() takes a WachatClient, not {type(client).__name__}")
    return client._retrier.counts  # shared by the client and its views


def instrument(
    client: WachatClient,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> None:
    """Send *client*'s spans and metrics (its views' too) to OpenTelemetry, through the given
    providers or the global ones. Calling it again replaces the providers."""
    counts = _counts(client)
    counts.observer = _Telemetry(client, tracer_provider, meter_provider)


def uninstrument(client: WachatClient) -> None:
    """Stop *client*'s spans and metrics (its gauges stop at the next collection)."""
    _counts(client).observer = None
    for clients in _WATCHED.values():
        clients.discard(client)


def _failed(span: Span, error: BaseException) -> str:
    """Mark *span* failed with *error*'s status or class (never its message); return that."""
    status = getattr(error, "status", None)
    if isinstance(status, int):
        span.set_attribute("http.response.status_code", status)
        kind = str(status)
    else:
        kind = type(error).__name__
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, kind))
    return kind


class _Telemetry:
    """The client's observer (``Counts.observer``): the retry loop runs each call through
    :meth:`call` and reports each refusal of the budget, the transport each request."""

    def __init__(
        self,
        client: WachatClient,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
    ) -> None:
        url = urlsplit(client.base_url)
        self.server: dict[str, str | int] = {"server.address": url.hostname or ""}
        self.server["server.port"] = url.port or (443 if url.scheme == "https" else 80)
        base = url.path.rstrip("/")
        self.paths = {"get_instance_state": f"{base}/instance/state"}
        self.image_path = f"{base}/instance/qr/image"
        self.tracer = trace.get_tracer("wachat_async", __version__, tracer_provider)
        meter = metrics.get_meter("wachat_async", __version__, meter_provider)
        self.duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Time to each response's status line (or failure)",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )
        self.requests = meter.create_counter(
            "wachat.client.requests", unit="{request}", description="Requests, by outcome"
        )
        self.calls = meter.create_counter(
            "wachat.client.calls", unit="{call}", description="Logical calls, by outcome"
        )
        self.retries = meter.create_counter(
            "wachat.client.retries", unit="{retry}", description="Retries granted"
        )
        self.refusals = meter.create_counter(
            "wachat.client.retry_budget.refusals",
            unit="{retry}",
            description="Retries the retry budget refused",
        )
        #: Fed by the pacer (rate limits, outages) once it lands: ``paused()``.
        self.pauses = meter.create_counter(
            "wachat.client.pauses", unit="{pause}", description="Pauses of new requests"
        )
        _watch(meter, client)

    async def call(
        self, name: str, attempt: Attempt[T], run: Callable[[Attempt[T]], Awaitable[T]]
    ) -> T:
        """Run one logical call in its span, each attempt in a child span."""
        call = CALLS.get(getattr(attempt, "__name__", ""), "call")
        path = self.paths.get(call, self.image_path)
        tracer, number = self.tracer, 0

        async def observed(*given: Any) -> T:
            nonlocal number
            number += 1
            attributes: dict[str, str | int] = {
                "http.request.method": "GET",
                "url.template": path,
                **self.server,
            }
            if number > 1:
                attributes["http.request.resend_count"] = number - 1
            with tracer.start_as_current_span(
                f"GET {path}",
                kind=SpanKind.CLIENT,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    result = await attempt(*given)
                except BaseException as exc:
                    _failed(span, exc)
                    raise
                span.set_attribute("http.response.status_code", 200)
                return result

        with tracer.start_as_current_span(
            f"WachatClient.{call}",
            attributes={"wachat.call": call, "wachat.instance.name": name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            outcome: dict[str, str] = {"wachat.call": call}
            try:
                result = await run(observed)
            except BaseException as exc:
                outcome["error.type"] = _failed(span, exc)
                raise
            finally:
                span.set_attribute("wachat.attempts", number)
                self.calls.add(1, outcome)
                if number > 1:
                    self.retries.add(number - 1, self.server)
            return result

    def request(self, path: str, status: int | None, error: str | None, took: float) -> None:
        attributes: dict[str, str | int] = {
            "http.request.method": "GET",
            "url.template": path,
            **self.server,
        }
        if status is not None:
            attributes["http.response.status_code"] = status
        if error is not None or (status is not None and status >= 400):
            attributes["error.type"] = error or str(status)
        self.duration.record(took, attributes)
        self.requests.add(1, attributes)

    def refused(self) -> None:
        self.refusals.add(1, self.server)

    def paused(self) -> None:
        self.pauses.add(1, self.server)


def _watch(meter: Meter, client: WachatClient) -> None:
    """Count *client* in *meter*'s two gauges (made once per meter: a meter keeps the first
    callbacks of an instrument's name), read from ``client.stats()`` at each collection."""
    if meter in _WATCHED:
        _WATCHED[meter].add(client)
        return
    clients: weakref.WeakSet[WachatClient] = weakref.WeakSet([client])
    _WATCHED[meter] = clients

    def gauge(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            totals: dict[tuple[str | int, ...], int] = {}
            seen: set[int] = set()
            for each in list(clients):
                counts = each._retrier.counts
                observer = counts.observer
                if id(counts) in seen or not isinstance(observer, _Telemetry):
                    continue  # a view of a client counted already, or uninstrumented
                seen.add(id(counts))
                key = tuple(observer.server.values())
                totals[key] = totals.get(key, 0) + getattr(each.stats(), field)
            for (host, port), value in totals.items():
                yield Observation(value, {"server.address": host, "server.port": port})

        return observe

    meter.create_observable_up_down_counter(
        "http.client.active_requests",
        [gauge("in_flight")],
        unit="{request}",
        description="Requests holding a connection slot",
    )
    meter.create_observable_up_down_counter(
        "wachat.client.requests.waiting",
        [gauge("waiting")],
        unit="{request}",
        description="Calls waiting for a connection slot",
    )
