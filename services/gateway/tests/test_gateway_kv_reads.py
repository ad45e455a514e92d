"""Reading the KV buckets leaves nothing behind on the server: each read is one watch (an ordered
consumer) that is deleted when the read ends, so no number of requests piles consumers up until
JetStream refuses new ones (issue 9, item 12)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client as NATS
from omni_contract.declared import DECLARED_TOOLS_BUCKET
from omni_contract.kv import DECLARED_TOOLS, PROVIDER_HEALTH, TOOL_REGISTRY
from omni_contract.tools import (
    PROVIDER_HEALTH_BUCKET,
    TOOL_REGISTRY_BUCKET,
    ProviderHealth,
    ToolRegistration,
    ToolSpec,
    health_key,
    registry_key,
)
from omni_runtime.nats import ensure_key_value

pytestmark = pytest.mark.integration

BUCKETS = (TOOL_REGISTRY_BUCKET, PROVIDER_HEALTH_BUCKET, DECLARED_TOOLS_BUCKET)
READS = (
    "/tools",
    "/tools?provider=mock",
    "/tools/mt.translate",
    "/tools/mt.translate/mock",
    "/tools/declarations",
    "/servers",
    "/servers/mock",
)


async def consumers(nc: NATS) -> dict[str, int]:
    js = nc.jetstream()
    return {bucket: len(await js.consumers_info(f"KV_{bucket}")) for bucket in BUCKETS}


async def test_repeated_reads_of_tools_and_servers_leave_no_consumer_behind(
    gateway: TestClient[Any, Any], nc: NATS
) -> None:
    js = nc.jetstream()
    tools = await ensure_key_value(js, TOOL_REGISTRY)
    spec = ToolSpec(name="mt.translate", provider="mock", description="d", category="mt")
    await tools.put(
        registry_key("mock", "mt.translate", "a"),
        msgspec.json.encode(ToolRegistration(spec=spec, runner="a")),
    )
    health = await ensure_key_value(js, PROVIDER_HEALTH)
    view = ProviderHealth(provider="mock", runner="a", status="healthy")
    await health.put(health_key("mock", "a"), msgspec.json.encode(view))
    await ensure_key_value(js, DECLARED_TOOLS)
    before = await consumers(nc)

    for _ in range(10):
        statuses = await asyncio.gather(*(_status(gateway, path) for path in READS))
        assert statuses == [200] * len(READS)
    direct = await gateway.post("/tools/mt/translate/nowhere", json={"input": {}})
    assert direct.status == 404

    assert await consumers(nc) == before


async def _status(gateway: TestClient[Any, Any], path: str) -> int:
    response = await gateway.get(path)
    await response.read()
    return response.status
