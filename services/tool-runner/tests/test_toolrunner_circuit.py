"""The shared circuit breaker against a real nats-server: two replicas of one provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js.kv import KeyValue
from omni_runtime import nats as omni_nats
from omni_toolrunner.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker

pytestmark = pytest.mark.integration


@pytest.fixture
async def kv(nats_url: str) -> AsyncIterator[KeyValue]:
    nc = await nats.connect(nats_url)
    yield await omni_nats.ensure_key_value(nc.jetstream(), "omni_circuits", ttl_s=None, description="test")
    await nc.close()


def replica(kv: KeyValue) -> CircuitBreaker:
    return CircuitBreaker(kv, "gemini", threshold=3, cooldown_s=0.3, probe_s=5.0, refresh_s=0.0)


async def test_failures_in_a_row_open_the_circuit_for_every_replica(kv: KeyValue) -> None:
    a, b = replica(kv), replica(kv)
    for _ in range(2):
        assert await a.allow()
        await a.record("server")
    assert await b.allow()  # two failures: still closed
    assert await a.allow()
    await a.record("timeout")
    assert not await a.allow()
    assert not await b.allow()
    assert b.circuit.state == OPEN
    assert "timeout after 3 failure(s) in a row" in (b.circuit.reason or "")


async def test_a_success_between_failures_keeps_it_closed_and_caller_errors_never_trip_it(
    kv: KeyValue,
) -> None:
    a = replica(kv)
    for kind in ("server", "server", None, "server", "bad_request", "auth", "rate_limited", "server"):
        assert await a.allow()
        await a.record(kind)
    assert a.circuit.state == CLOSED


async def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes_it(kv: KeyValue) -> None:
    a, b = replica(kv), replica(kv)
    for _ in range(3):
        await a.allow()
        await a.record("unavailable")
    assert not await b.allow()
    await asyncio.sleep(0.35)
    assert await b.allow()  # b takes the probe
    assert b.circuit.state == HALF_OPEN
    assert not await a.allow()  # only one probe at a time
    await b.record(None)
    assert b.circuit.state == CLOSED
    assert await a.allow()


async def test_a_failed_probe_opens_it_again(kv: KeyValue) -> None:
    a = replica(kv)
    for _ in range(3):
        await a.allow()
        await a.record("server")
    await asyncio.sleep(0.35)
    assert await a.allow()
    await a.record("server")
    assert a.circuit.state == OPEN
    assert "probe failed" in (a.circuit.reason or "")
    assert not await a.allow()
