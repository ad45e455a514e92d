"""Prometheus metrics of the gateway, registered on the service's registry (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "omni_gateway_http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "omni_gateway_http_request_duration_seconds",
            "Time to answer an HTTP request (a server-sent event stream counts until it ends)",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "omni_gateway_http_requests_in_flight", "HTTP requests being answered", registry=registry
        )
        self.auth = Counter(
            "omni_gateway_auth_decisions",
            "Requests to protected routes by outcome: allowed, unauthorized, forbidden, rate_limited, ...",
            ["outcome"],
            registry=registry,
        )
        self.rpc_latency = Histogram(
            "omni_gateway_engine_rpc_duration_seconds",
            "Time of request/reply calls to the workflow engine, by endpoint and outcome",
            ["endpoint", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
