"""What this replica has seen of its provider lately, for ``GET /servers``: published with the
registry heartbeat into the KV bucket ``omni_providers`` (entries expire with the replica)."""

from __future__ import annotations

import statistics
from collections import deque
from datetime import UTC, datetime

from omni_contract.tools import (
    CIRCUIT_OPEN,
    DEGRADED,
    HEALTHY,
    UNAVAILABLE,
    ProviderHealth,
)

# Caller mistakes say nothing about the provider's health.
_NOT_THE_PROVIDERS = frozenset({"bad_request", "unknown_tool"})
DEGRADED_AT = 0.1  # error rate from which the provider is reported degraded


class ProviderStats:
    def __init__(self, provider: str, runner: str, window: int = 100) -> None:
        self.provider = provider
        self.runner = runner
        self._calls: deque[tuple[float, bool]] = deque(maxlen=window)  # (latency ms, failed)
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None

    def observe(self, latency_ms: float, error_kind: str | None, message: str | None = None) -> None:
        if error_kind in _NOT_THE_PROVIDERS:
            return
        self._calls.append((latency_ms, error_kind is not None))
        if error_kind is not None:
            self.last_error = f"{error_kind}: {message}" if message else error_kind
            self.last_error_at = datetime.now(UTC)

    def snapshot(
        self, *, circuit: str = "closed", unavailable_reason: str | None = None, throttled: int = 0
    ) -> ProviderHealth:
        latencies = sorted(latency for latency, _ in self._calls)
        errors = sum(1 for _, failed in self._calls if failed)
        rate = errors / len(self._calls) if self._calls else 0.0
        if unavailable_reason:
            status, reason = UNAVAILABLE, unavailable_reason
        elif circuit != "closed":
            status, reason = CIRCUIT_OPEN, f"circuit {circuit}"
        elif rate >= DEGRADED_AT:
            status, reason = DEGRADED, f"{errors} of the last {len(self._calls)} calls failed"
        else:
            status, reason = HEALTHY, None
        return ProviderHealth(
            provider=self.provider,
            runner=self.runner,
            status=status,
            reason=reason,
            circuit=circuit,
            calls=len(self._calls),
            errors=errors,
            error_rate=round(rate, 4),
            latency_p50_ms=round(statistics.median(latencies), 2) if latencies else None,
            latency_p95_ms=round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))], 2)
            if latencies
            else None,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            throttled=throttled,
            updated_at=datetime.now(UTC),
        )
