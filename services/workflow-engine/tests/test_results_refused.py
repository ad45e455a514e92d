"""Tool results that answer nothing the engine scheduled are refused and dead-lettered, with a log
line, and never folded into a run; the run goes on with the genuine result."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from engine_harness import Harness, ok
from nats.js import JetStreamContext
from omni_contract import events as ev
from omni_contract import streams, subjects
from omni_contract.envelope import HDR_MSG_ID, decode_envelope, encode_envelope, new_envelope, payload_of
from omni_contract.events import ToolInvoke, ToolResult
from omni_engine.consumers import RESULT_REFUSED_KIND
from omni_testkit import unique_name, wait_for

pytestmark = pytest.mark.integration

WORKFLOW = (
    "name: refusals\nversion: '1'\ntrigger:\n  event: app.test.refusals\n  payload:\n    n?: any\n"
    "steps:\n  - name: a\n    tool: util.echo\n    provider: local\n"
)


async def publish_result(js: JetStreamContext, result: ToolResult) -> None:
    env = new_envelope(ev.TOOL_RESULT_V1, "test-forger", result)
    await js.publish(
        subjects.tool_result(result.provider), encode_envelope(env), headers={HDR_MSG_ID: unique_name("r")}
    )


async def next_letter(js: JetStreamContext) -> ev.DeadLetter:
    sub = await js.pull_subscribe(
        subjects.deadletter(RESULT_REFUSED_KIND),
        durable=unique_name("letters"),
        stream=streams.DEADLETTERS.name,
    )
    msgs = await sub.fetch(1, timeout=15)
    await msgs[0].ack()
    return payload_of(decode_envelope(msgs[0].data), ev.DeadLetter)


async def test_a_result_for_a_run_that_does_not_exist_is_dead_lettered(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    js = harness.nc.jetstream()
    forged = ToolResult(
        run_id="no-such-run",
        step="a",
        attempt=1,
        tool="util.echo",
        provider="local",
        idempotency_key="no-such-run:a:1",
        success=True,
        output={"text": "forged"},
    )
    with caplog.at_level("WARNING"):
        await publish_result(js, forged)
        letter = await next_letter(js)
    assert letter.kind == RESULT_REFUSED_KIND
    assert "no run 'no-such-run'" in letter.reason
    assert msgspec.json.decode(letter.original_body)["data"]["run_id"] == "no-such-run"
    assert any("dead-lettered" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"idempotency_key": "someone-else:a:1"}, "is not the one scheduled"),
        ({"attempt": 7}, "never scheduled attempt 7"),
        ({"step": "b"}, "has no step 'b'"),
    ],
)
async def test_a_result_that_does_not_match_what_was_scheduled_is_refused_and_the_genuine_one_counts(
    harness: Harness, change: dict[str, object], reason: str
) -> None:
    js = harness.nc.jetstream()
    await harness.register(WORKFLOW)
    held: asyncio.Future[ToolInvoke] = asyncio.get_running_loop().create_future()

    async def hold(invoke: ToolInvoke) -> ToolResult | None:
        held.set_result(invoke)
        return None  # the genuine answer is published by the test, after the forged one

    harness.respond = hold
    run_id = await harness.start("refusals", {})
    invoke = await asyncio.wait_for(held, timeout=15)
    genuine = ok(invoke, text="genuine")
    forged = msgspec.structs.replace(genuine, output={"text": "forged"}, **change)
    await publish_result(js, forged)
    letter = await next_letter(js)
    assert reason in letter.reason
    run = await harness.run(run_id)
    assert run["status"] == "running"  # the forged result moved nothing

    await publish_result(js, genuine)
    run = await harness.finished(run_id)
    assert run["status"] == "completed"
    assert run["steps"][0]["output"] == {"text": "genuine"}
    completed = [e for e in await harness.history(run_id) if e["type"] == "step.completed"]
    assert len(completed) == 1


async def test_a_late_result_of_a_finished_run_is_ignored_without_a_dead_letter(harness: Harness) -> None:
    js = harness.nc.jetstream()
    await harness.register(WORKFLOW)
    seen: list[ToolInvoke] = []

    async def answer(invoke: ToolInvoke) -> ToolResult | None:
        seen.append(invoke)
        return ok(invoke, text="first")

    harness.respond = answer
    run_id = await harness.start("refusals", {})
    await harness.finished(run_id)
    # The same result again (a redelivery): a no-op, not a refusal.
    await publish_result(js, ok(seen[0], text="first"))

    async def consumed() -> bool:
        info = await js.consumer_info(streams.ENGINE_RESULTS.stream, streams.ENGINE_RESULTS.durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await wait_for(consumed, timeout=15, message="the repeated result handled")
    info = await js.stream_info(streams.DEADLETTERS.name, subjects_filter=subjects.DEADLETTER_ALL)
    assert not info.state.subjects
