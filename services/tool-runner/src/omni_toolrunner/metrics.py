"""Prometheus metrics of the tool runner, registered on the service's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Provider calls range from a few milliseconds (simulator, cache) to minutes (long generations).
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

OUTCOME_SUCCESS = "success"


class RunnerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.invocations = Counter(
            "omni_toolrunner_invocations_total",
            "Tool invocations answered, by outcome (success, or the error kind)",
            ["tool", "provider", "outcome"],
            registry=registry,
        )
        self.call_duration = Histogram(
            "omni_toolrunner_provider_call_duration_seconds",
            "Duration of provider calls",
            ["tool", "provider"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.cache_hits = Counter(
            "omni_toolrunner_cache_hits_total",
            "Invokes answered from the stored result of an earlier delivery, without a provider call",
            ["tool", "provider"],
            registry=registry,
        )
        self.deadletters = Counter(
            "omni_toolrunner_deadletters_total",
            "Work messages sent to the dead-letter stream, by kind (tool.invoke.malformed: could not be"
            " read; tool.invoke.exhausted: failed on its last delivery)",
            ["provider", "kind"],
            registry=registry,
        )
        self.handback = Counter(
            "omni_toolrunner_handback_total",
            "Work messages given back to JetStream unanswered (shutdown, NATS failure, internal error)",
            ["provider", "reason"],
            registry=registry,
        )
        self.throttled = Counter(
            "omni_toolrunner_rate_limited_total",
            "Calls held back by the provider's shared rate limits, by outcome (waited: called once the "
            "window allowed; refused: the wait would outlast the call's deadline)",
            ["provider", "outcome"],
            registry=registry,
        )
        self.throttle_wait = Histogram(
            "omni_toolrunner_rate_limit_wait_seconds",
            "How long calls waited for the provider's rate limits",
            ["provider"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "omni_toolrunner_in_flight",
            "Work messages held by this replica (running or waiting for a slot)",
            ["provider"],
            registry=registry,
        )
