"""A replica's view of its provider, as GET /servers will show it."""

from __future__ import annotations

from omni_toolrunner.provider_health import ProviderStats


def test_a_quiet_provider_is_healthy() -> None:
    view = ProviderStats("gemini", "r1").snapshot()
    assert (view.status, view.calls, view.latency_p50_ms) == ("healthy", 0, None)


def test_failures_make_it_degraded_with_the_last_error_and_latencies() -> None:
    stats = ProviderStats("gemini", "r1", window=10)
    for latency in range(1, 9):
        stats.observe(float(latency * 10), None)
    stats.observe(500.0, "server", "upstream 503")
    stats.observe(5.0, "bad_request", "not the provider's fault")  # not counted
    view = stats.snapshot()
    assert view.status == "degraded"
    assert (view.calls, view.errors) == (9, 1)
    assert view.last_error == "server: upstream 503"
    assert view.last_error_at is not None
    assert view.latency_p50_ms == 50.0
    assert view.latency_p95_ms == 500.0


def test_an_open_circuit_and_a_missing_key_take_precedence() -> None:
    stats = ProviderStats("gemini", "r1")
    assert stats.snapshot(circuit="open").status == "circuit_open"
    view = stats.snapshot(unavailable_reason="GEMINI_API_KEY is not set")
    assert (view.status, view.reason) == ("unavailable", "GEMINI_API_KEY is not set")


def test_the_window_forgets_old_calls() -> None:
    stats = ProviderStats("gemini", "r1", window=3)
    stats.observe(10.0, "timeout")
    for _ in range(3):
        stats.observe(10.0, None)
    view = stats.snapshot()
    assert (view.calls, view.errors, view.status) == (3, 0, "healthy")
