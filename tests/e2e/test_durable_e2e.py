"""Durable execution across the whole stack: retries under load on several engine replicas, a
retry timer that outlives a SIGKILL of the engine, and a provider fallback chain ending in
text-only. The provider simulator's counters (calls and side effects per idempotency key) are
checked against each run's recorded history."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from omni_contract.events import RunEventType, RunStatus, StepStatus
from omni_devstack.supervisor import Stack
from omni_testkit import wait_for

from .test_bilingual_coach import finished, payload, run_of, sim

pytestmark = pytest.mark.e2e

E = RunEventType
RUNS = 60
# Every n-th run fails the first attempt of these steps with a 500.
FAULTS_EVERY = {"natural_language_understanding": 3, "coach_feedback": 4, "text_to_speech": 5}

TIMER_WORKFLOW = """
name: e2e-retry-timer
version: "1"
trigger:
  event: app.e2e.retry_timer
  payload:
    text: string
steps:
  - name: translate
    tool: mt.translate
    provider: openrouter
    input:
      text: "${trigger.payload.text}"
      sourceLanguage: en
      targetLanguage: es
    output:
      translatedText: string
    retry: {maxAttempts: 2, initialInterval: 3000, jitter: 0}
"""

FALLBACK_WORKFLOW = """
name: e2e-speak-or-write
version: "1"
trigger:
  event: app.e2e.speak_or_write
  payload:
    text: string
steps:
  - name: speak
    tool: tts.speak
    provider: openrouter
    config: {fallback: text-only}
    retry: {maxAttempts: 1}
    input:
      text: "${trigger.payload.text}"
      language: en
    output:
      audioData: string
      format: string
      text: string
"""


async def register(client: httpx.AsyncClient, source: str) -> None:
    response = await client.post("/workflows", content=source, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text


async def start(client: httpx.AsyncClient, workflow: str, body: dict[str, Any]) -> str:
    response = await client.post(f"/workflows/{workflow}/execute", params={"wait": "false"}, json=body)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["runId"]
    return run_id


async def history(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/runs/{run_id}/events")
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def of_type(events: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == event_type]


async def unfinished(client: httpx.AsyncClient, run_ids: list[str]) -> list[str]:
    """What each run that has not ended waits for, for a failure message."""
    lines = []
    for run_id in run_ids:
        run = await run_of(client, run_id)
        if run["status"] not in RunStatus.TERMINAL:
            waits = "; ".join(
                f"{w['kind']} {w['step']} {w['detail']} since {w['since']}" for w in run["waiting"]
            )
            lines.append(f"{run_id} {run['status']}: {waits}")
    return lines


def step_by_name(run: dict[str, Any], name: str) -> dict[str, Any]:
    step: dict[str, Any] = next(s for s in run["steps"] if s["name"] == name)
    return step


# The injected 500s must each reach the provider: with the runs advancing together (their starts
# are answered concurrently), five failures of one tool can come in a row and open the runner's
# circuit, which then fails the next attempt without calling (seen in CI: a fault never met). The
# circuit has tests of its own; here it stays closed.
NO_CIRCUIT = {"OMNI_TOOLRUNNER_CIRCUIT_THRESHOLD": "1000"}


@pytest.mark.parametrize("stack", [{"engine_replicas": 3, "extra_env": NO_CIRCUIT}], indirect=True)
async def test_concurrent_runs_on_three_engines_retry_and_perform_each_side_effect_once(
    stack: Stack,
) -> None:
    runner = stack.processes["tool-runner-openrouter-1"]
    # No tool work is done until every fault is in place: the runs' invokes wait in JetStream.
    runner.signal(signal.SIGTERM)
    assert runner.wait(10)
    limits = httpx.Limits(max_connections=RUNS)
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers=stack.auth_headers, timeout=60, limits=limits
    ) as client:

        async def start_one(i: int) -> str:
            # Half the learners speak (speech_to_text runs), half type (it is skipped).
            body = payload(sessionId=f"load-{i}")
            if i % 2:
                del body["audioData"]
                body["textInput"] = f"I has went to the market {i} times"
            return await start(client, "bilingual-coach", {"payload": body})

        run_ids = await asyncio.gather(*(start_one(i) for i in range(RUNS)))
        injected = {
            f"{run_id}:{step}:1"
            for i, run_id in enumerate(run_ids)
            for step, every in FAULTS_EVERY.items()
            if i % every == 0
        }
        await sim(
            stack,
            "/_sim/faults",
            [{"match": {"idempotency_key": k}, "status": 500, "times": 1} for k in injected],
        )
        stack.start_service(runner.name)

        async def none_running() -> bool:
            # One run per page: a page of runs carries their outputs, and 60 of them outgrow one
            # NATS reply (the gateway then answers 502).
            response = await client.get(
                "/runs", params={"workflow": "bilingual-coach", "status": RunStatus.RUNNING, "limit": 1}
            )
            if response.status_code == 503:
                return False  # the engine is busy past the gateway's RPC timeout
            assert response.status_code == 200, response.text
            runs: list[dict[str, Any]] = response.json()["runs"]
            return not runs

        try:
            await wait_for(none_running, timeout=60, interval=0.5, message=f"{RUNS} runs ended")
        except TimeoutError:
            pytest.fail("runs did not end:\n" + "\n".join(await unfinished(client, run_ids)))

        gate = asyncio.Semaphore(10)

        async def read(run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            async with gate:
                return await run_of(client, run_id), await history(client, run_id)

        recorded = dict(zip(run_ids, await asyncio.gather(*(read(r) for r in run_ids)), strict=True))
    assert {run["status"] for run, _ in recorded.values()} == {RunStatus.COMPLETED}
    stats = await sim(stack, "/_sim/stats")
    faults_left = (await sim(stack, "/_sim/faults"))["faults"]

    # Every injected fault was met once, and met by the attempt it was meant for.
    assert faults_left == []
    assert stats["faulted"] == len(injected) > 0
    by_key: dict[str, int] = stats["by_key"]
    completed_calls = 0
    retries = 0
    for run_id, (run, events) in recorded.items():
        scheduled = of_type(events, E.STEP_SCHEDULED)
        attempts = Counter(e["step"] for e in scheduled)
        retrying = of_type(events, E.STEP_RETRYING)
        retries += len(retrying)
        assert {r["step"] for r in retrying} == {k.split(":")[1] for k in injected if k.startswith(run_id)}
        for step in run["steps"]:
            if step["status"] == StepStatus.SKIPPED:
                assert step["name"] == "speech_to_text"
                assert attempts[step["name"]] == 0
                continue
            assert step["status"] == StepStatus.COMPLETED, step
            # The attempt the run reports is the number of attempts its history records ...
            assert step["attempt"] == attempts[step["name"]], (run_id, step)
            # ... and the provider was called exactly once per recorded attempt.
            calls = sum(n for k, n in by_key.items() if k.startswith(f"{run_id}:{step['name']}:"))
            assert calls == attempts[step["name"]], (run_id, step["name"], calls)
            completed_calls += 1
        # The provider saw no key the history does not name, and each key once.
        keys_sent = {k for k in by_key if k.startswith(f"{run_id}:")}
        assert keys_sent == {e["idempotency_key"] for e in scheduled}
        assert all(by_key[k] == 1 for k in keys_sent), {k: by_key[k] for k in keys_sent}
    assert retries == len(injected)
    # One side effect per completed step, none repeated (a repeated key is a duplicate).
    assert stats["side_effects"] == completed_calls == (RUNS // 2) * 5 + (RUNS // 2) * 4
    assert stats["duplicates"] == 0
    assert stats["calls"] == completed_calls + len(injected)


async def test_retry_timer_fires_once_after_the_engine_is_killed_while_it_waits(stack: Stack) -> None:
    await sim(stack, "/_sim/faults", {"match": {"schema": "mt_translate"}, "status": 500, "times": 1})
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers=stack.auth_headers, timeout=30
    ) as client:
        await register(client, TIMER_WORKFLOW)
        run_id = await start(client, "e2e-retry-timer", {"payload": {"text": "the cat sleeps"}})

        async def retrying() -> dict[str, Any] | None:
            run = await run_of(client, run_id)
            return run if step_by_name(run, "translate")["status"] == StepStatus.RETRYING else None

        run = await wait_for(retrying, timeout=20, interval=0.1, message="translate retrying")
        assert [(w["kind"], w["step"]) for w in run["waiting"]] == [("timer", "translate")]
        due = datetime.fromisoformat(run["waiting"][0]["until"])
        engines = [name for name in stack.processes if name.startswith("workflow-engine-")]
        for name in engines:
            stack.kill(name)
        # The engine died before the 3 s back-off ran out: only the first attempt reached the provider.
        assert (await sim(stack, "/_sim/stats"))["by_schema"] == {"mt_translate": 1}
        # Restart only once the timer is overdue: it lives in PostgreSQL, not in a dead process.
        await wait_for(lambda: datetime.now(UTC) > due, timeout=10, interval=0.1, message="timer due")
        assert (await sim(stack, "/_sim/stats"))["by_schema"] == {"mt_translate": 1}
        for name in engines:
            stack.start_service(name)
        run = await finished(client, run_id, timeout=60)
        events = await history(client, run_id)
    assert run["status"] == RunStatus.COMPLETED, run.get("error")
    step = step_by_name(run, "translate")
    assert step["attempt"] == 2
    assert step["output"]["translatedText"].startswith("[es]")
    assert [e["attempt"] for e in of_type(events, E.STEP_SCHEDULED)] == [1, 2]
    assert len(of_type(events, E.STEP_RETRYING)) == 1
    stats = await sim(stack, "/_sim/stats")
    assert stats["by_schema"] == {"mt_translate": 2}
    assert stats["by_key"] == {f"{run_id}:translate:1": 1, f"{run_id}:translate:2": 1}
    assert stats["side_effects"] == 1


async def test_a_provider_that_stays_unavailable_falls_back_to_text_only(stack: Stack) -> None:
    await sim(stack, "/_sim/faults", {"match": "any", "status": 503})
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers=stack.auth_headers, timeout=60
    ) as client:
        await register(client, FALLBACK_WORKFLOW)
        response = await client.post(
            "/workflows/e2e-speak-or-write/execute", json={"payload": {"text": "Well done!"}}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        events = await history(client, body["runId"])
    assert body["status"] == RunStatus.COMPLETED, body.get("error")
    step = step_by_name(body, "speak")
    assert step["status"] == StepStatus.COMPLETED
    assert step["provider"] == "text-only"
    assert step["output"] == {"text": "Well done!", "format": "text", "degraded": True}
    fallbacks = of_type(events, E.STEP_FALLBACK)
    assert [(f["from"], f["to"]) for f in fallbacks] == [("openrouter", "text-only")]
    assert fallbacks[0]["error"]["kind"] != "bad_request"
    assert of_type(events, E.STEP_RETRYING) == []
    stats = await sim(stack, "/_sim/stats")
    # One attempt at the provider (maxAttempts 1), which failed: nothing was performed there.
    assert stats["calls"] == stats["faulted"] == 1
    assert stats["side_effects"] == 0
