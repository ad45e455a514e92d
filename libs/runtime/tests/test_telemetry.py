"""Tracing: spans are recorded only when they have somewhere to go; trace context travels either way."""

from __future__ import annotations

import pytest
from omni_runtime.telemetry import tracer_provider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = PARENT.split("-")[1]


def work_under_parent(provider: TracerProvider) -> tuple[Span, bool, dict[str, str]]:
    """A span continuing PARENT's trace: the span, whether it recorded, the headers it would send."""
    propagator = TraceContextTextMapPropagator()
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("work", context=propagator.extract({"traceparent": PARENT})) as span:
        recording = span.is_recording()
        carrier: dict[str, str] = {}
        propagator.inject(carrier)
    return span, recording, carrier


def test_without_an_exporter_spans_are_not_recorded_but_the_trace_id_travels_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    provider = tracer_provider("svc")

    _, recording, carrier = work_under_parent(provider)

    assert not recording
    assert carrier["traceparent"].split("-")[1] == TRACE_ID
    root = provider.get_tracer("test").start_span("root")
    assert root.get_span_context().is_valid  # a run started here still has a trace id for its logs


def test_with_an_exporter_spans_are_recorded_and_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    exporter = InMemorySpanExporter()
    provider = tracer_provider("svc", exporter=exporter)

    _, recording, carrier = work_under_parent(provider)
    provider.force_flush()

    assert recording
    assert carrier["traceparent"].split("-")[1] == TRACE_ID
    [span] = exporter.get_finished_spans()
    assert (span.name, f"{span.context.trace_id:032x}") == ("work", TRACE_ID)


def test_a_sampler_named_in_the_environment_records_without_an_exporter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")

    _, recording, _ = work_under_parent(tracer_provider("svc"))

    assert recording
