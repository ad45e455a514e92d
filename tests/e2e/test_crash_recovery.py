"""A crash of any one process loses no accepted work and repeats no side effect."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from omni_devstack.supervisor import Stack
from omni_testkit import wait_for

from .test_bilingual_coach import finished, payload, sim

pytestmark = pytest.mark.e2e


async def start_run(client: httpx.AsyncClient) -> str:
    response = await client.post(
        "/workflows/bilingual-coach/execute", params={"wait": "false"}, json={"payload": payload()}
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["runId"]
    return run_id


def each_key_executed_once(stats: dict[str, Any], run_id: str) -> list[str]:
    keys = [k for k in stats["by_key"] if k.startswith(run_id)]
    return sorted(keys)


async def test_engine_killed_mid_run_then_restarted_completes_the_run_once(stack: Stack) -> None:
    # Slow the third step so the engine is killed while the run is in flight.
    await sim(stack, "/_sim/faults", {"match": {"schema": "mt_translate"}, "delay_ms": 1500, "times": 1})
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers=stack.auth_headers, timeout=30
    ) as client:
        run_id = await start_run(client)

        async def translating() -> bool:
            stats = await sim(stack, "/_sim/stats")
            return stats["by_schema"].get("mt_translate", 0) >= 1

        await wait_for(translating, timeout=30)
        stack.kill("workflow-engine-1")
        stack.start_service("workflow-engine-1")
        run = await finished(client, run_id, timeout=60)
    assert run["status"] == "completed", run.get("error")
    stats = await sim(stack, "/_sim/stats")
    assert stats["side_effects"] == 5, stats["by_key"]
    assert len(each_key_executed_once(stats, run_id)) == 5
    assert all(stats["by_key"][k] == 1 for k in each_key_executed_once(stats, run_id))


@pytest.mark.parametrize("stack", [{"runner_replicas": 2}], indirect=True)
async def test_runner_killed_mid_step_work_is_redelivered_to_another_replica_and_done_once(
    stack: Stack,
) -> None:
    # Only replica 1 takes work at first, so we know which one holds the step when it dies.
    stack.processes["tool-runner-openrouter-2"].signal(15)
    assert stack.processes["tool-runner-openrouter-2"].wait(10)
    await sim(stack, "/_sim/faults", {"match": {"schema": "nlu_analyze"}, "delay_ms": 2000, "times": 1})
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers=stack.auth_headers, timeout=30
    ) as client:
        run_id = await start_run(client)

        async def analysing() -> bool:
            stats = await sim(stack, "/_sim/stats")
            return stats["by_schema"].get("nlu_analyze", 0) >= 1

        await wait_for(analysing, timeout=30)
        stack.start_service("tool-runner-openrouter-2")
        stack.kill("tool-runner-openrouter-1")
        run = await finished(client, run_id, timeout=60)
    assert run["status"] == "completed", run.get("error")
    stats = await sim(stack, "/_sim/stats")
    # The provider executed each step once; the redelivered call was answered from its cache.
    assert stats["side_effects"] == 5
    nlu_key = f"{run_id}:natural_language_understanding:1"
    assert stats["by_key"][nlu_key] == 2
    assert stats["duplicates"] == 1
