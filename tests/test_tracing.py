"""Observability: OpenTelemetry's aiohttp instrumentation on this client, and the retry hooks.

The README recipe (``trace_configs=[create_trace_config(...)]``, or the global
``AioHttpClientInstrumentor``) runs against the fake server with the OpenTelemetry SDK's
in-memory exporter: one CLIENT span per attempt (retries included), and no attribute or event
of any span carries the key or a proxy password. ``on_retry``/``on_give_up`` count attempts,
retries and budget refusals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation.aiohttp_client import (
    AioHttpClientInstrumentor,
    create_trace_config,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from wachat_async import (
    ConfigurationError,
    GiveUpEvent,
    ProxyError,
    QRFetchFailedError,
    RetryBudget,
    RetryEvent,
    RetryPolicy,
    TLSVerificationError,
    WachatClient,
)
from wachat_async.testing import FakeWachatServer, Fault

from .conftest import KEY, NAME

PROXY_PASSWORD = "tr4ce-PROXY-pw-5e6f"


class Tracing:
    """A tracer provider whose spans land in an in-memory exporter."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> tuple[ReadableSpan, ...]:
        return tuple(self.exporter.get_finished_spans())

    def texts(self) -> Iterator[str]:
        """Every name, attribute value, event attribute and status text of every span."""
        for span in self.spans():
            yield span.name
            yield str(span.status.description or "")
            for value in (span.attributes or {}).values():
                yield str(value)
            for event in span.events:
                yield event.name
                yield from (str(v) for v in (event.attributes or {}).values())


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    """An SDK tracer provider with an in-memory exporter, shut down after the test."""
    harness = Tracing()
    yield harness
    harness.provider.shutdown()


@pytest.fixture
async def server() -> AsyncIterator[FakeWachatServer]:
    """A started fake server (key KEY) with one Baileys instance NAME."""
    async with FakeWachatServer(api_key=KEY) as fake:
        fake.add_instance(NAME)
        yield fake


def traced_client(server: FakeWachatServer, tracing: Tracing, **kwargs: Any) -> WachatClient:
    """The README recipe: a client whose own session carries OpenTelemetry's trace config."""
    kwargs.setdefault("retry", RetryPolicy(zero_wait=True))
    return WachatClient(
        api_key=KEY,
        base_url=server.base_url,
        trace_configs=[create_trace_config(tracer_provider=tracing.provider)],
        **kwargs,
    )


def assert_secret_free(tracing: Tracing, *secrets: str) -> None:
    """No span text holds the key or any of *secrets*."""
    texts = list(tracing.texts())
    assert texts, "no span recorded"
    for secret in (KEY, *secrets):
        assert not [t for t in texts if secret in t], f"{secret[:6]}... leaked into a span"


async def test_one_client_span_per_call(server: FakeWachatServer, tracing: Tracing) -> None:
    """A successful QR fetch is one CLIENT span with the status and no key anywhere."""
    async with traced_client(server, tracing) as client:
        await client.get_qr_image(NAME)
    (span,) = tracing.spans()
    assert span.kind == SpanKind.CLIENT
    attributes = dict(span.attributes or {})
    assert 200 in (attributes.get("http.status_code"), attributes.get("http.response.status_code"))
    assert_secret_free(tracing)


async def test_one_span_per_attempt_when_retrying(
    server: FakeWachatServer, tracing: Tracing
) -> None:
    """502, 504, then 200: three spans, the first two marked as errors."""
    server.script(NAME, [502, Fault(status=504, retry_after="0")])
    async with traced_client(server, tracing) as client:
        await client.get_qr_image(NAME)
    spans = sorted(tracing.spans(), key=lambda s: s.start_time or 0)
    assert len(spans) == 3 == server.request_count(NAME)
    assert [s.status.status_code for s in spans] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert_secret_free(tracing)


async def test_captured_headers_with_sanitising_keep_the_key_out(
    server: FakeWachatServer, tracing: Tracing
) -> None:
    """Capturing every request header is safe with the README's sensitive_headers list."""
    config = create_trace_config(
        tracer_provider=tracing.provider,
        captured_request_headers=[".*"],
        sensitive_headers=["authorization", "proxy-authorization"],
    )
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, trace_configs=[config]
    ) as client:
        await client.get_qr_image(NAME)
    attributes = dict(tracing.spans()[0].attributes or {})
    assert any("authorization" in name for name in attributes)  # captured, and sanitised
    assert_secret_free(tracing)


async def test_global_instrumentor_traces_the_clients_own_session(
    server: FakeWachatServer, tracing: Tracing
) -> None:
    """AioHttpClientInstrumentor().instrument() covers a client created afterwards."""
    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(tracer_provider=tracing.provider)
    try:
        async with WachatClient(api_key=KEY, base_url=server.base_url) as client:
            await client.get_qr_image(NAME)
            await client.get_instance_state(NAME)
    finally:
        instrumentor.uninstrument()
    assert len(tracing.spans()) == 2
    assert_secret_free(tracing)


async def test_failed_connections_are_spans_without_secrets(tracing: Tracing) -> None:
    """A TLS failure and a dead proxy each leave one error span, free of key and password."""
    async with FakeWachatServer(api_key=KEY, tls=True) as tls:
        tls.add_instance(NAME)
        async with traced_client(tls, tracing) as client:
            with pytest.raises(TLSVerificationError):
                await client.get_qr_image(NAME)
        async with traced_client(
            tls, tracing, proxy=f"http://tracer:{PROXY_PASSWORD}@127.0.0.1:9"
        ) as client:
            with pytest.raises(ProxyError):
                await client.get_qr_image(NAME)
    assert [s.status.status_code for s in tracing.spans()] == [StatusCode.ERROR] * 2
    assert_secret_free(tracing, PROXY_PASSWORD)


# -- counting attempts, retries and refusals ------------------------------------------------


class Counter:
    """What a metrics recipe counts from the hooks."""

    def __init__(self) -> None:
        self.retries: list[RetryEvent] = []
        self.give_ups: list[GiveUpEvent] = []

    def policy(self, **kwargs: Any) -> RetryPolicy:
        return RetryPolicy(
            zero_wait=True, on_retry=self.retries.append, on_give_up=self.give_ups.append, **kwargs
        )


async def test_on_retry_and_attempts_count_what_the_spans_show(
    server: FakeWachatServer, tracing: Tracing
) -> None:
    """Two retries: two RetryEvents (attempts 1 and 2), no give-up, three spans."""
    counter = Counter()
    server.script(NAME, [502, 502])
    async with traced_client(server, tracing, retry=counter.policy()) as client:
        await client.get_qr_image(NAME)
    assert [e.attempt for e in counter.retries] == [1, 2]
    assert (counter.give_ups, len(tracing.spans())) == ([], 3)


@pytest.mark.parametrize(
    ("script", "kwargs", "budget", "reason", "attempts"),
    [
        pytest.param([502] * 5, {"max_attempts": 3}, None, "max_attempts", 3, id="max_attempts"),
        pytest.param(
            [Fault(status=502, retry_after="3600")] * 2,
            {},
            None,
            "retry_after",
            1,
            id="retry_after",
        ),
        pytest.param(
            [502] * 5,
            {},
            RetryBudget(ratio=0.0, min_retries_per_second=0.0),
            "budget",
            1,
            id="budget",
        ),
    ],
)
async def test_on_give_up_says_why_a_retryable_failure_was_not_retried(
    server: FakeWachatServer,
    script: list[Any],
    kwargs: dict[str, Any],
    budget: RetryBudget | None,
    reason: str,
    attempts: int,
) -> None:
    """on_give_up gets one GiveUpEvent with the reason, the attempts and the raised error."""
    counter = Counter()
    server.script(NAME, script)
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, retry=counter.policy(**kwargs), retry_budget=budget
    ) as client:
        with pytest.raises(QRFetchFailedError) as info:
            await client.get_qr_image(NAME)
    (event,) = counter.give_ups
    assert (event.reason, event.attempts, event.instance_name) == (reason, attempts, NAME)
    assert (event.error, event.status) == (info.value, 502)
    if reason == "budget":
        assert client.retry_budget.refused == 1


async def test_on_give_up_is_not_called_for_errors_that_are_never_retried(
    server: FakeWachatServer,
) -> None:
    """A 404 is not a give-up: nothing was retryable."""
    counter = Counter()
    async with WachatClient(
        api_key=KEY, base_url=server.base_url, retry=counter.policy()
    ) as client:
        with pytest.raises(Exception, match="404"):
            await client.get_qr_image("t1_missing")
    assert (counter.retries, counter.give_ups) == ([], [])


def test_on_give_up_must_be_callable() -> None:
    """on_give_up=42 is refused like on_retry."""
    with pytest.raises(TypeError, match="on_give_up"):
        RetryPolicy(on_give_up=42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(object(), id="object"),
        pytest.param("trace", id="str"),
        pytest.param([object()], id="list-of-objects"),
    ],
)
def test_bad_trace_configs_are_configuration_errors(value: object) -> None:
    """trace_configs takes a sequence of aiohttp.TraceConfig (None for none)."""
    with pytest.raises(ConfigurationError, match="trace_configs"):
        WachatClient(api_key=KEY, base_url="https://h.example/v1", trace_configs=value)  # type: ignore[arg-type]
