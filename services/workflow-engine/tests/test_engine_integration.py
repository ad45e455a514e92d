"""The engine against real NATS JetStream and PostgreSQL, run in-process (see conftest.py).

Tool work is answered by the scripted runner of conftest.py (the real tool-runner has its own
tests, and the end-to-end tests in ``tests/`` run everything together).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from engine_harness import Harness, failed, ok
from omni_contract import events as ev
from omni_contract import rpc, streams, subjects
from omni_contract.envelope import decode_envelope, payload_of
from omni_contract.events import ToolInvoke, ToolResult
from omni_testkit import wait_for

pytestmark = pytest.mark.integration

PAYLOAD = {
    "userId": "u1",
    "sessionId": "s1",
    "targetLanguage": "es",
    "sourceLanguage": "en",
    "textInput": "hi",
}


async def history_of(harness: Harness, run_id: str) -> list[dict[str, Any]]:
    events = await harness.call(subjects.ENGINE_RUNS_EVENTS, rpc.RunEventsRequest(run_id=run_id))
    assert events.result is not None
    history: list[dict[str, Any]] = json.loads(bytes(events.result))["events"]
    return history


async def test_typed_input_skips_transcription_and_runs_the_rest_as_a_graph(harness: Harness) -> None:
    reply = await harness.call(
        subjects.ENGINE_RUNS_START, rpc.StartRunRequest(workflow="bilingual-coach", payload=PAYLOAD)
    )
    assert reply.error is None, reply.error
    assert reply.result is not None
    run_id = json.loads(bytes(reply.result))["run_id"]
    run = await harness.finished(run_id)
    assert run["status"] == "completed", run.get("error")
    steps = {s["name"]: s for s in run["steps"]}
    assert list(steps) == [
        "speech_to_text",
        "natural_language_understanding",
        "machine_translation",
        "coach_feedback",
        "text_to_speech",
    ]
    assert steps["speech_to_text"]["status"] == "skipped"
    assert "audioData" in steps["speech_to_text"]["reason"]
    assert all(s["status"] == "completed" for name, s in steps.items() if name != "speech_to_text")
    # Understanding and translation need only the text, so they were dispatched together, in the
    # same transaction; feedback waited for both.
    order = [i.step for i in harness.seen]
    assert set(order[:2]) == {"natural_language_understanding", "machine_translation"}
    assert order[2:] == ["coach_feedback", "text_to_speech"]
    # With no transcription, the typed text is used (``${steps.speech_to_text.output.text ?? ...}``).
    nlu = next(i for i in harness.seen if i.step == "natural_language_understanding")
    assert nlu.input["text"] == "hi"
    history = await history_of(harness, run_id)
    assert [e["seq"] for e in history] == list(range(1, len(history) + 1))
    assert history[0]["type"] == "run.started"
    assert history[1]["type"] == "step.skipped"
    assert history[-1]["type"] == "run.completed"


async def test_recorded_audio_is_transcribed_first(harness: Harness) -> None:
    payload = {**PAYLOAD, "audioData": "UklGRg=="}
    reply = await harness.call(
        subjects.ENGINE_RUNS_START, rpc.StartRunRequest(workflow="bilingual-coach", payload=payload)
    )
    assert reply.result is not None
    run = await harness.finished(json.loads(bytes(reply.result))["run_id"])
    assert run["status"] == "completed", run.get("error")
    assert all(s["status"] == "completed" for s in run["steps"])
    assert harness.seen[0].step == "speech_to_text"
    nlu = next(i for i in harness.seen if i.step == "natural_language_understanding")
    assert nlu.input["text"] == "out-speech_to_text"


async def test_trigger_event_starts_one_run_even_when_published_twice(harness: Harness) -> None:
    js = harness.nc.jetstream()
    body_ = json.dumps(
        {
            "specversion": "1.0",
            "id": "evt-1",
            "type": "app.coach.session.start",
            "source": "test",
            "data": PAYLOAD,
        }
    ).encode()
    await js.publish("app.coach.session.start", body_)
    await js.publish("app.coach.session.start", body_)  # a different stream message, same event id

    async def runs() -> list[dict[str, Any]] | None:
        reply = await harness.call(subjects.ENGINE_RUNS_LIST, rpc.ListRunsRequest(workflow="bilingual-coach"))
        assert reply.result is not None
        page: list[dict[str, Any]] = json.loads(bytes(reply.result))["runs"]
        return page if page and page[0]["status"] == "completed" else None

    page = await wait_for(runs, timeout=20)
    assert len(page) == 1


async def test_invalid_trigger_payload_is_dead_lettered_with_the_field(harness: Harness) -> None:
    js = harness.nc.jetstream()
    sub = await js.subscribe(subjects.deadletter("trigger.rejected"), stream=streams.DEADLETTERS.name)
    await js.publish("app.coach.session.start", json.dumps({"userId": "u1"}).encode())
    msg = await sub.next_msg(timeout=10)
    letter = payload_of(decode_envelope(msg.data), ev.DeadLetter)
    assert letter.kind == "trigger.rejected"
    assert "payload.sessionId" in letter.reason
    assert any(e["field"] == "payload.targetLanguage" for e in letter.errors)


async def _fail_nlu(invoke: ToolInvoke) -> ToolResult:
    if invoke.step == "natural_language_understanding":
        return failed(invoke, "server", "provider said 500", status=500)
    return ok(invoke)


async def test_a_failing_step_is_retried_falls_back_then_fails_the_run(harness: Harness) -> None:
    harness.respond = _fail_nlu
    reply = await harness.call(
        subjects.ENGINE_RUNS_START, rpc.StartRunRequest(workflow="bilingual-coach", payload=PAYLOAD)
    )
    assert reply.result is not None
    run_id = json.loads(bytes(reply.result))["run_id"]
    run = await harness.finished(run_id)
    assert run["status"] == "failed"
    assert run["error"]["step"] == "natural_language_understanding"
    assert run["error"]["message"] == "provider said 500"
    statuses = {s["name"]: s["status"] for s in run["steps"]}
    assert statuses["coach_feedback"] == "skipped"
    # The default policy: three attempts on each provider of the chain (openrouter|deepseek).
    tried = [(i.provider, i.attempt) for i in harness.seen if i.step == "natural_language_understanding"]
    assert tried == [
        ("openrouter", 1),
        ("openrouter", 2),
        ("openrouter", 3),
        ("deepseek", 4),
        ("deepseek", 5),
        ("deepseek", 6),
    ]
    history = await history_of(harness, run_id)
    nlu_events = [e for e in history if e["data"].get("step") == "natural_language_understanding"]
    kinds = [e["type"] for e in nlu_events if e["type"] in ("step.retrying", "step.fallback", "step.failed")]
    assert kinds == ["step.retrying"] * 2 + ["step.fallback"] + ["step.retrying"] * 2 + ["step.failed"]
    fallback = next(e for e in nlu_events if e["type"] == "step.fallback")
    assert (fallback["data"]["from"], fallback["data"]["to"]) == ("openrouter", "deepseek")
    assert "server" in fallback["data"]["reason"]


async def test_start_with_bad_payload_names_the_field(harness: Harness) -> None:
    reply = await harness.call(
        subjects.ENGINE_RUNS_START,
        rpc.StartRunRequest(workflow="bilingual-coach", payload={**PAYLOAD, "targetLanguage": 3}),
    )
    assert reply.error is not None
    assert reply.error.code == "invalid_payload"
    assert [d.field for d in reply.error.details] == ["payload.targetLanguage"]


async def test_unknown_workflow_is_not_found(harness: Harness) -> None:
    reply = await harness.call(subjects.ENGINE_WORKFLOWS_GET, rpc.GetRequest(name="nope"))
    assert reply.error is not None
    assert reply.error.code == "not_found"
