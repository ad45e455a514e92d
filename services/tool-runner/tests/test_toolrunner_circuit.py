"""The shared circuit breaker against a real nats-server: two replicas of one provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js.kv import KeyValue
from omni_contract.kv import CIRCUITS
from omni_runtime import nats as omni_nats
from omni_toolrunner.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitSet

pytestmark = pytest.mark.integration


@pytest.fixture
async def kv(nats_url: str) -> AsyncIterator[KeyValue]:
    nc = await nats.connect(nats_url)
    yield await omni_nats.ensure_key_value(nc.jetstream(), CIRCUITS)
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


async def test_declared_integrations_trip_their_own_circuits_shared_by_replicas(kv: KeyValue) -> None:
    a = CircuitSet(kv, "integrations", per_category=True, threshold=2, cooldown_s=30)
    b = CircuitSet(kv, "integrations", per_category=True, threshold=2, cooldown_s=30)
    github = a.for_tool("github.create_issue")
    assert github is a.for_tool("github.get_issue")  # one circuit per integration, not per tool
    for _ in range(2):
        assert await github.allow()
        await github.record("server")
    assert a.state == OPEN
    # The other replica refuses GitHub too, and still calls Notion.
    assert not await b.for_tool("github.get_issue").allow()
    assert await b.for_tool("notion.create_page").allow()
    assert b.state == OPEN
    assert (await kv.get("integrations.github")).value
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get("integrations.notion")
    # A provider's runner keeps the one circuit whatever the tool.
    single = CircuitSet(kv, "gemini")
    assert single.for_tool("mt.translate") is single.for_tool("tts.speak")
    assert single.state == CLOSED
