"""``wachat_async.otel.instrument``: spans and metrics, with the OpenTelemetry SDK's in-memory
exporters against the fake server: a call span with one child per attempt, HTTP attributes,
metric values after a 502-then-200 call and a 404, a cancelled attempt, ``fetch_many``, the
gauges, and the key nowhere in any span or metric (hypothesis over keys).
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from wachat_async import (
    AuthenticationError,
    InstanceNotFoundError,
    QRSuccess,
    RateLimitError,
    RetryPolicy,
    WachatClient,
)
from wachat_async.otel import instrument, uninstrument
from wachat_async.testing import FakeWachatServer, Fault

from .conftest import KEY, NAME, until

IMAGE = "/api/v1/instance/qr/image"


class Telemetry:
    """SDK providers whose spans and metrics land in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def instrument(self, client: WachatClient) -> WachatClient:
        instrument(client, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider)
        return client

    def spans(self) -> list[ReadableSpan]:
        return sorted(self.exporter.get_finished_spans(), key=lambda s: s.start_time or 0)

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Each metric's points: (attributes, value; a histogram's count)."""
        data = self.reader.get_metrics_data()
        assert isinstance(data, MetricsData)
        found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = point.count  # type: ignore[union-attr]
                        found.setdefault(metric.name, []).append(
                            (dict(point.attributes or {}), value)
                        )
        return found

    def texts(self) -> Iterator[str]:
        """Every span's name, status text, attribute and event, and every metric attribute."""
        for span in self.exporter.get_finished_spans():
            yield span.name
            yield str(span.status.description or "")
            yield from (f"{k}={v!s}" for k, v in (span.attributes or {}).items())
            for event in span.events:
                yield event.name
                yield from (f"{k}={v!s}" for k, v in (event.attributes or {}).items())
        for points in self.metrics().values():
            for attributes, _ in points:
                yield from (f"{k}={v}" for k, v in attributes.items())

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    harness = Telemetry()
    yield harness
    harness.shutdown()


@pytest.fixture
async def traced(server: FakeWachatServer, telemetry: Telemetry) -> AsyncIterator[WachatClient]:
    """An instrumented client of the fake server, retrying in zero-wait mode."""
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, retry=RetryPolicy(zero_wait=True)
    ) as client:
        yield telemetry.instrument(client)


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def calls(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith("WachatClient.")]


async def test_a_502_then_200_call_is_one_span_with_two_attempts(
    server: FakeWachatServer, traced: WachatClient, telemetry: Telemetry
) -> None:
    server.script(NAME, [502])
    await traced.get_qr_image(NAME)
    spans = telemetry.spans()
    (call,) = calls(spans)
    first, second = children(spans, call)
    assert len(spans) == 3
    assert call.name == "WachatClient.get_qr_image"
    assert call.kind == SpanKind.INTERNAL
    assert call.status.status_code == StatusCode.UNSET
    assert dict(call.attributes or {}) == {
        "wachat.call": "get_qr_image",
        "wachat.instance.name": NAME,
        "wachat.attempts": 2,
    }
    for attempt in (first, second):
        assert attempt.name == f"GET {IMAGE}"
        assert attempt.kind == SpanKind.CLIENT
        attributes = attempt.attributes or {}
        assert attributes["http.request.method"] == "GET"
        assert attributes["url.template"] == IMAGE
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == server.port
    assert first.status.status_code == StatusCode.ERROR
    assert (first.attributes or {})["http.response.status_code"] == 502
    assert (first.attributes or {})["error.type"] == "502"
    assert "http.request.resend_count" not in (first.attributes or {})
    assert second.status.status_code == StatusCode.UNSET
    assert (second.attributes or {})["http.response.status_code"] == 200
    assert (second.attributes or {})["http.request.resend_count"] == 1

    metrics = telemetry.metrics()
    durations = {
        a.get("http.response.status_code"): n for a, n in metrics["http.client.request.duration"]
    }
    assert durations == {502: 1, 200: 1}
    requests = {a["http.response.status_code"]: n for a, n in metrics["wachat.client.requests"]}
    assert requests == {502: 1, 200: 1}
    assert [n for _, n in metrics["wachat.client.retries"]] == [1]
    assert metrics["wachat.client.calls"] == [({"wachat.call": "get_qr_image"}, 1)]
    assert "wachat.client.retry_budget.refusals" not in metrics


async def test_a_404_is_an_error_span_and_a_failed_call(
    traced: WachatClient, telemetry: Telemetry
) -> None:
    with pytest.raises(InstanceNotFoundError):
        await traced.get_qr_image("no_such_instance")
    spans = telemetry.spans()
    (call,) = calls(spans)
    (attempt,) = children(spans, call)
    for span in (call, attempt):
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "404"
        assert (span.attributes or {})["error.type"] == "404"
    assert (attempt.attributes or {})["http.response.status_code"] == 404
    metrics = telemetry.metrics()
    assert metrics["wachat.client.calls"] == [
        ({"wachat.call": "get_qr_image", "error.type": "404"}, 1)
    ]
    ((attributes, count),) = metrics["http.client.request.duration"]
    assert (attributes["error.type"], count) == ("404", 1)


async def test_a_call_cancelled_mid_attempt_ends_both_spans_as_errors(
    server: FakeWachatServer, traced: WachatClient, telemetry: Telemetry
) -> None:
    server.script(NAME, [Fault(hang=True)])
    task = asyncio.create_task(traced.get_qr_image(NAME))
    await until(lambda: traced.stats().in_flight == 1 and server.request_count(NAME) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    spans = telemetry.spans()
    (call,) = calls(spans)
    (attempt,) = children(spans, call)
    for span in (call, attempt):
        assert span.end_time is not None
        assert span.status.status_code == StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "CancelledError"
    assert telemetry.metrics()["wachat.client.calls"] == [
        ({"wachat.call": "get_qr_image", "error.type": "CancelledError"}, 1)
    ]


async def test_fetch_many_is_one_call_span_per_name(
    server: FakeWachatServer, traced: WachatClient, telemetry: Telemetry
) -> None:
    server.add_instance("second")
    async with traced.fetch_many([NAME, "second", "missing"], concurrency=2) as results:
        outcomes = {r.instance_name: r.ok async for r in results}
    assert outcomes == {NAME: True, "second": True, "missing": False}
    spans = telemetry.spans()
    named = {(s.attributes or {})["wachat.instance.name"]: s for s in calls(spans)}
    assert set(named) == set(outcomes)
    for name, span in named.items():
        assert len(children(spans, span)) == 1
        assert (span.status.status_code == StatusCode.ERROR) == (not outcomes[str(name)])
    assert len(spans) == 6


async def test_each_public_call_names_its_span(
    traced: WachatClient, telemetry: Telemetry, tmp_path: Path
) -> None:
    await traced.get_instance_state(NAME)
    async with traced.stream_qr_image(NAME) as stream:
        await stream.read()
    await traced.save_qr_image(NAME, tmp_path / "qr.png")
    spans = telemetry.spans()
    assert [s.name for s in calls(spans)] == [
        "WachatClient.get_instance_state",
        "WachatClient.stream_qr_image",
        "WachatClient.save_qr_image",
    ]
    attempts = [s.name for s in spans if s.kind == SpanKind.CLIENT]
    assert attempts == ["GET /api/v1/instance/state", f"GET {IMAGE}", f"GET {IMAGE}"]


async def test_views_are_instrumented_with_their_client(
    server: FakeWachatServer, traced: WachatClient, telemetry: Telemetry
) -> None:
    await traced.with_options(timeout=5).get_qr_image(NAME)
    assert [s.name for s in calls(telemetry.spans())] == ["WachatClient.get_qr_image"]
    uninstrument(traced)
    await traced.get_qr_image(NAME)
    assert len(telemetry.spans()) == 2  # nothing more


async def test_the_gauges_count_requests_in_flight_and_calls_waiting(
    server: FakeWachatServer, telemetry: Telemetry
) -> None:
    async with WachatClient(api_key=KEY, base_url=server.base_url, max_connections=1) as client:
        telemetry.instrument(client)
        async with client.stream_qr_image(NAME):
            waiter = asyncio.create_task(client.get_qr_image(NAME))
            await until(lambda: client.stats().waiting == 1)
            metrics = telemetry.metrics()
            where = {"server.address": "127.0.0.1", "server.port": server.port}
            assert metrics["http.client.active_requests"] == [(where, 1)]
            assert metrics["wachat.client.requests.waiting"] == [(where, 1)]
        await waiter
        metrics = telemetry.metrics()
        assert [n for _, n in metrics["http.client.active_requests"]] == [0]


def test_instrument_refuses_what_is_not_a_client() -> None:
    with pytest.raises(TypeError, match="WachatClient"):
        instrument(object())  # type: ignore[arg-type]


KEYS = st.text(string.ascii_letters + string.digits + "-_.", min_size=16, max_size=64)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=KEYS)
def test_no_key_in_any_span_or_metric(key: str) -> None:
    """Whatever the key, no span name, status, attribute or event nor metric attribute has it:
    a success, a retried 502, a 401 (the key refused) and fetch_many."""
    telemetry = Telemetry()

    async def scenario() -> None:
        async with FakeWachatServer(api_key=key) as fake:
            fake.add_instance(NAME)
            fake.script(NAME, [502])
            policy = RetryPolicy(zero_wait=True)
            async with WachatClient(api_key=key, base_url=fake.base_url, retry=policy) as client:
                telemetry.instrument(client)
                await client.get_qr_image(NAME)
                async for result in client.fetch_many([NAME, "other"]):
                    assert isinstance(result, QRSuccess) == (result.instance_name == NAME)
            async with WachatClient(api_key=key + "x", base_url=fake.base_url) as wrong:
                telemetry.instrument(wrong)
                with pytest.raises(AuthenticationError):
                    await wrong.get_qr_image(NAME)

    try:
        asyncio.run(scenario())
        texts = list(telemetry.texts())
        assert len(texts) > 20
        assert [t for t in texts if key in t] == []
    finally:
        telemetry.shutdown()


async def test_a_429_pause_counts_once_in_wachat_client_pauses(
    server: FakeWachatServer, traced: WachatClient, telemetry: Telemetry
) -> None:
    """Two 429s of one burst: one pause, counted once by the pauses counter."""
    server.script(NAME, [Fault(status=429, retry_after="5"), Fault(status=429, retry_after="5")])
    for _ in range(2):
        with pytest.raises(RateLimitError):
            await traced.get_qr_image(NAME)
    assert traced.stats().pacing.pauses == 1
    [(attributes, value)] = telemetry.metrics()["wachat.client.pauses"]
    assert value == 1
    assert attributes["server.address"] == "127.0.0.1"
