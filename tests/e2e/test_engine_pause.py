"""A paused engine repeats no side effect: results that reached JetStream before their steps'
deadlines win over the timeouts that fell due during the pause, whatever the engine reads first
when it resumes. The provider simulator counts every call per idempotency key."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import pytest
from omni_contract.events import RunEventType
from omni_devstack.supervisor import Stack
from omni_testkit import wait_for

from .test_bilingual_coach import run_of, sim

pytestmark = pytest.mark.e2e

RUNS = 60
LATENCY_MS = 4000
TIMEOUT_MS = 10_000
PAUSE_S = 13.0  # longer than a step's timeout: every timer of a step in flight falls due meanwhile
# Every first and second step is at the provider at once, so the pause begins (once all 120 calls
# are out) before any answer comes back: no result is folded and no third step dispatched before
# it. With answers in 0.3 s and 32 calls at a time, a loaded machine could fold some runs' first
# two steps and commit their third before the pause, and publish it only after: such a step's
# timeout rightly fell due with no result in JetStream (7 of 60 third steps, in a CI run on a loaded
# machine).
RUNNER_ENV = {"OMNI_TOOLRUNNER_MAX_CONCURRENCY": str(2 * RUNS + 8)}

# Two steps side by side, then a third: each allowed 10 s (the answers take 4 s) and two
# attempts, so a timeout would mean a second call. At the pause, results of 60 runs' steps are on
# their way (more than one pull's batch), and the answers of the steps in flight reach JetStream
# during it, before their timeouts fall due.
WORKFLOW = f"""
name: e2e-paused
version: "1"
trigger:
  event: app.e2e.paused
  payload:
    text: string
steps:
  - name: first
    tool: mt.translate
    provider: openrouter
    config: {{timeout: {TIMEOUT_MS}}}
    retry: {{maxAttempts: 2, initialInterval: 100, jitter: 0}}
    input: {{text: "${{trigger.payload.text}}", sourceLanguage: en, targetLanguage: es}}
    output: {{translatedText: string}}
  - name: second
    tool: mt.translate
    provider: openrouter
    config: {{timeout: {TIMEOUT_MS}}}
    retry: {{maxAttempts: 2, initialInterval: 100, jitter: 0}}
    input: {{text: "${{trigger.payload.text}}", sourceLanguage: en, targetLanguage: fr}}
    output: {{translatedText: string}}
  - name: third
    tool: mt.translate
    provider: openrouter
    needs: [first, second]
    config: {{timeout: {TIMEOUT_MS}}}
    retry: {{maxAttempts: 2, initialInterval: 100, jitter: 0}}
    input: {{text: "${{steps.first.output.translatedText}}", sourceLanguage: es, targetLanguage: en}}
    output: {{translatedText: string}}
"""


async def start(client: httpx.AsyncClient, n: int) -> str:
    response = await client.post(
        "/workflows/e2e-paused/execute", params={"wait": "false"}, json={"payload": {"text": f"run {n}"}}
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["runId"]
    return run_id


@pytest.mark.parametrize("stack", [{"extra_env": RUNNER_ENV}], indirect=True)
async def test_results_that_arrived_while_the_engine_was_paused_win_over_the_timeouts(stack: Stack) -> None:
    await sim(stack, "/_sim/config", {"latency_ms": LATENCY_MS})
    engine = stack.processes["workflow-engine-1"]
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers=stack.auth_headers, timeout=30
    ) as client:
        response = await client.post(
            "/workflows", content=WORKFLOW, headers={"Content-Type": "application/yaml"}
        )
        assert response.status_code == 201, response.text
        run_ids = await asyncio.gather(*(start(client, n) for n in range(RUNS)))

        async def all_calls_out() -> bool:
            stats = await sim(stack, "/_sim/stats")
            return int(stats["calls"]) >= 2 * RUNS  # every run's first two steps are at the provider

        await wait_for(all_calls_out, timeout=30, message="the first two steps of every run called")
        engine.signal(signal.SIGSTOP)
        try:
            # Meanwhile the runner answers: every result lands in JetStream well before its deadline.
            await asyncio.sleep(PAUSE_S)
        finally:
            engine.signal(signal.SIGCONT)

        async def all_finished() -> list[dict[str, Any]] | None:
            runs = [await run_of(client, run_id) for run_id in run_ids]
            return runs if all(r["status"] not in ("running", "pending") for r in runs) else None

        runs = await wait_for(all_finished, timeout=90, message="every run finished")
        timed_out: list[str] = []
        for run_id in run_ids:
            events = (await client.get(f"/runs/{run_id}/events")).json()["events"]
            timed_out += [
                f"{run_id}:{e['data']['step']}" for e in events if e["type"] == RunEventType.STEP_TIMED_OUT
            ]
    assert [r["status"] for r in runs] == ["completed"] * RUNS, [r.get("error") for r in runs]
    assert timed_out == []
    stats = await sim(stack, "/_sim/stats")
    keys = [key for key in stats["by_key"] if key.split(":")[0] in set(run_ids)]
    # One call per step of every run, all first attempts: nothing ran twice.
    assert sorted(keys) == sorted(f"{r}:{step}:1" for r in run_ids for step in ("first", "second", "third"))
    assert all(stats["by_key"][key] == 1 for key in keys), {k: stats["by_key"][k] for k in keys}
