"""GET /servers and /servers/{name} against real NATS: provider health written by runner replicas."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client as NATS
from omni_contract.tools import PROVIDER_HEALTH_BUCKET, REGISTRATION_TTL_S, ProviderHealth, health_key
from omni_runtime.nats import ensure_key_value

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


async def publish(nc: NATS, **fields: Any) -> None:
    kv = await ensure_key_value(
        nc.jetstream(), PROVIDER_HEALTH_BUCKET, ttl_s=REGISTRATION_TTL_S, description="t"
    )
    view = ProviderHealth(**{"updated_at": T0, **fields})
    await kv.put(health_key(view.provider, view.runner), msgspec.json.encode(view))


async def test_without_any_runner_there_are_no_servers(gateway: TestClient[Any, Any]) -> None:
    response = await gateway.get("/servers")
    assert response.status == 200
    assert await response.json() == {"servers": []}


async def test_replicas_are_merged_per_provider(gateway: TestClient[Any, Any], nc: NATS) -> None:
    await publish(
        nc, provider="gemini", runner="a", status="healthy", calls=90, errors=0, latency_p50_ms=100.0
    )
    await publish(
        nc,
        provider="gemini",
        runner="b",
        status="degraded",
        reason="20 of the last 100 calls failed",
        calls=100,
        errors=20,
        latency_p50_ms=300.0,
        latency_p95_ms=900.0,
        last_error="server: upstream 503",
        last_error_at=T0,
    )
    await publish(
        nc, provider="deepseek", runner="c", status="unavailable", reason="DEEPSEEK_API_KEY is not set"
    )
    body = await (await gateway.get("/servers")).json()
    servers = {s["name"]: s for s in body["servers"]}
    assert list(servers) == ["deepseek", "gemini"]
    gemini = servers["gemini"]
    assert (gemini["status"], gemini["replicas"], gemini["calls"], gemini["errors"]) == (
        "degraded",
        2,
        190,
        20,
    )
    assert gemini["errorRate"] == round(20 / 190, 4)
    assert gemini["latencyP50Ms"] == 200.0
    assert gemini["lastError"] == "server: upstream 503"
    assert "runners" not in gemini
    assert servers["deepseek"]["status"] == "unavailable"
    assert servers["deepseek"]["reasons"] == ["DEEPSEEK_API_KEY is not set"]


async def test_one_server_with_its_runners_and_an_open_circuit(
    gateway: TestClient[Any, Any], nc: NATS
) -> None:
    await publish(
        nc, provider="openrouter", runner="a", status="circuit_open", circuit="open", reason="circuit open"
    )
    await publish(nc, provider="openrouter", runner="b", status="healthy")
    response = await gateway.get("/servers/openrouter")
    assert response.status == 200
    body = await response.json()
    assert (body["status"], body["circuit"]) == ("circuit_open", "open")
    assert [r["runner"] for r in body["runners"]] == ["a", "b"]


async def test_unknown_server_and_unknown_parameters(gateway: TestClient[Any, Any]) -> None:
    missing = await gateway.get("/servers/nope")
    assert missing.status == 404
    assert "nope" in (await missing.json())["error"]["message"]
    bad = await gateway.get("/servers?status=healthy")
    assert bad.status == 400
    assert "status" in json_text(await bad.json())


def json_text(body: Any) -> str:
    return msgspec.json.encode(body).decode()
