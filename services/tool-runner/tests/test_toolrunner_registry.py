"""The tool registry against a real nats-server: announced at start, kept alive, withdrawn, expired."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import msgspec
import nats
import pytest
from nats.js.kv import KeyValue
from omni_contract.kv import TOOL_REGISTRY
from omni_contract.tools import (
    AVAILABLE,
    UNAVAILABLE,
    ProviderHealth,
    ToolRegistration,
    health_key,
    registry_key,
)
from omni_runtime import nats as omni_nats
from omni_simulator import RunningSimulator
from omni_testkit import wait_for
from omni_toolrunner.catalogue import spec_for
from omni_toolrunner.registry import ToolAnnouncer, health_bucket, registry_bucket
from toolrunner_harness import runner_settings, running_runner

pytestmark = pytest.mark.integration


async def entries(kv: KeyValue) -> dict[str, ToolRegistration]:
    # Not kv.keys(): its end marker can come before entries on their way (it failed this test).
    return {
        entry.key: msgspec.json.decode(entry.value, type=ToolRegistration)
        for entry in await omni_nats.read_latest(kv)
        if entry.value
    }


async def test_a_runner_registers_its_tools_with_schemas_and_withdraws_them_at_stop(
    nats_url: str, simulator: RunningSimulator
) -> None:
    settings = runner_settings(nats_url, simulator)
    nc = await nats.connect(nats_url)
    async with running_runner(settings) as runner:
        kv = await registry_bucket(nc.jetstream())
        live = await entries(kv)
        tools = {entry.spec.name for entry in live.values()}
        assert tools == {"stt.transcribe", "nlu.analyze", "mt.translate", "feedback.generate", "tts.speak"}
        entry = live[registry_key("openrouter", "mt.translate", runner.ctx.instance)]
        assert entry.status == AVAILABLE
        assert entry.spec.provider == "openrouter"
        assert entry.spec.requires_auth
        assert entry.spec.category == "mt"
        assert set(entry.spec.input_schema["required"]) == {"text", "targetLanguage"}
        assert "translatedText" in entry.spec.output_schema["properties"]
        health = await (await health_bucket(nc.jetstream())).get(
            health_key("openrouter", runner.ctx.instance)
        )
        view = msgspec.json.decode(health.value or b"", type=ProviderHealth)
        assert (view.status, view.circuit, view.calls) == ("healthy", "closed", 0)
        await runner.stop()
        assert await entries(kv) == {}
    await nc.close()


async def test_a_runner_without_its_key_registers_its_tools_as_unavailable_with_the_reason(
    nats_url: str, simulator: RunningSimulator
) -> None:
    settings = runner_settings(nats_url, simulator, openrouter_api_key=None)
    async with running_runner(settings, expect_ready=False) as runner:
        live = await entries(await registry_bucket(runner.ctx.js))
    assert live
    assert {(e.status, e.reason) for e in live.values()} == {(UNAVAILABLE, "OPENROUTER_API_KEY is not set")}


async def test_heartbeats_keep_entries_alive_and_a_silent_runner_expires(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    kv = await omni_nats.ensure_key_value(js, replace(TOOL_REGISTRY, name="omni_tools_test", ttl_s=2.0))
    announcer = ToolAnnouncer(
        kv, [spec_for("util.echo", "local", requires_auth=False)], "replica-1", heartbeat_s=0.2
    )
    await announcer.start()
    await asyncio.sleep(2.5)  # longer than the TTL: only heartbeats keep the entry
    assert list(await entries(kv)) == [registry_key("local", "util.echo", "replica-1")]
    assert announcer._task is not None
    announcer._task.cancel()  # the runner falls silent without withdrawing

    async def gone() -> bool:
        return await entries(kv) == {}

    await wait_for(gone, timeout=10)
    await nc.close()
