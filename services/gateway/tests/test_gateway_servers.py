"""GET /servers and /servers/{name} against real NATS: every provider Omni knows, with the health
written by its runner replicas, or why it has none."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client as NATS
from omni_contract.kv import PROVIDER_HEALTH
from omni_contract.providers import PROVIDER_KEYS
from omni_contract.tools import ProviderHealth, health_key
from omni_runtime.nats import ensure_key_value

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway reads the providers' key variables from its environment: none set here."""
    for names in PROVIDER_KEYS.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)


T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


async def publish(nc: NATS, **fields: Any) -> None:
    kv = await ensure_key_value(nc.jetstream(), PROVIDER_HEALTH)
    view = ProviderHealth(**{"updated_at": T0, **fields})
    await kv.put(health_key(view.provider, view.runner), msgspec.json.encode(view))


async def test_without_any_runner_every_known_provider_is_listed_with_why_it_is_not_serving(
    gateway: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test")
    response = await gateway.get("/servers")
    assert response.status == 200
    servers = {s["name"]: s for s in (await response.json())["servers"]}
    assert sorted(servers) == sorted(PROVIDER_KEYS)
    gemini = servers["gemini"]
    assert (gemini["status"], gemini["missingVariable"], gemini["replicas"]) == (
        "unconfigured",
        "GEMINI_API_KEY",
        0,
    )
    assert gemini["reasons"] == ["GEMINI_API_KEY is not set"]
    # Its key is set, so its runner should be there: down. A provider needing no key is down too.
    assert (servers["deepseek"]["status"], servers["deepseek"]["missingVariable"]) == ("down", None)
    assert servers["local"]["status"] == "down"
    assert servers["deepseek"]["reasons"] == ["no runner of deepseek is live"]


async def test_a_known_provider_without_runners_is_answered_not_404(gateway: TestClient[Any, Any]) -> None:
    response = await gateway.get("/servers/gemini")
    assert response.status == 200
    body = await response.json()
    assert (body["name"], body["status"], body["missingVariable"], body["runners"]) == (
        "gemini",
        "unconfigured",
        "GEMINI_API_KEY",
        [],
    )


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
    assert list(servers) == sorted(servers)
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
    # A live replica that cannot call its provider for want of the key: unconfigured, naming it.
    deepseek = servers["deepseek"]
    assert (deepseek["status"], deepseek["missingVariable"], deepseek["replicas"]) == (
        "unconfigured",
        "DEEPSEEK_API_KEY",
        1,
    )
    assert deepseek["reasons"] == ["DEEPSEEK_API_KEY is not set"]


async def test_a_provider_whose_replicas_all_fail_otherwise_is_down(
    gateway: TestClient[Any, Any], nc: NATS
) -> None:
    await publish(
        nc, provider="grok", runner="a", status="unavailable", reason="the provider refused the key"
    )
    body = await (await gateway.get("/servers/grok")).json()
    assert (body["status"], body["missingVariable"], body["reasons"]) == (
        "down",
        None,
        ["the provider refused the key"],
    )


async def test_a_provider_omni_does_not_list_appears_while_its_runner_is_live(
    gateway: TestClient[Any, Any], nc: NATS
) -> None:
    await publish(nc, provider="mock", runner="a", status="healthy")
    servers = {s["name"]: s for s in (await (await gateway.get("/servers")).json())["servers"]}
    assert servers["mock"]["status"] == "healthy"


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
    assert (body["status"], body["circuit"]) == ("open", "open")
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
