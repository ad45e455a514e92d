"""The workflow language and durable behaviour, against real NATS JetStream and PostgreSQL.

Each test registers a small workflow over the engine's API and scripts the tool runner
(``harness.respond``): failures, slowness, silence, usage figures.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import datetime
from typing import Any

import pytest
from engine_harness import Harness, failed, ok
from omni_contract import rpc, subjects
from omni_contract.events import ToolInvoke, ToolResult, Usage
from omni_testkit import wait_for

pytestmark = pytest.mark.integration


def workflow(name: str, steps: str, extra: str = "") -> str:
    """A definition with an any-typed optional payload field ``n`` and the given steps."""
    return (
        f"name: {name}\nversion: '1'\n"
        f"trigger:\n  event: app.test.{name}\n  payload:\n    n?: any\n    key?: string\n"
        f"{extra}steps:\n{steps}"
    )


def at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["at"])


async def test_timeout_falls_back_to_the_next_provider(harness: Harness) -> None:
    await harness.register(
        workflow(
            "fallback-timeout",
            "  - name: a\n    tool: util.echo\n    provider: slow|fast\n    config: {timeout: 300}\n"
            "    retry: {maxAttempts: 1}\n",
        )
    )

    async def respond(invoke: ToolInvoke) -> ToolResult | None:
        return None if invoke.provider == "slow" else ok(invoke)  # slow never answers

    harness.respond = respond
    run_id = await harness.start("fallback-timeout", {})
    run = await harness.finished(run_id)
    assert run["status"] == "completed"
    assert run["steps"][0]["provider"] == "fast"
    kinds = [e["type"] for e in await harness.history(run_id)]
    assert kinds.index("step.timed_out") < kinds.index("step.fallback") < kinds.index("step.completed")


async def test_a_failing_provider_falls_back_and_attempts_keep_their_own_keys(harness: Harness) -> None:
    await harness.register(
        workflow(
            "fallback-fail",
            "  - name: a\n    tool: util.echo\n    provider: first\n    config: {fallback: second}\n"
            "    retry: {maxAttempts: 1}\n",
        )
    )

    async def respond(invoke: ToolInvoke) -> ToolResult:
        return failed(invoke, "auth", "bad key", status=401) if invoke.provider == "first" else ok(invoke)

    harness.respond = respond
    run = await harness.finished(await harness.start("fallback-fail", {}))
    assert run["status"] == "completed"
    keys = [i.idempotency_key for i in harness.invokes("a")]
    assert [i.provider for i in harness.invokes("a")] == ["first", "second"]
    assert len(set(keys)) == 2


async def test_retry_backs_off_then_succeeds(harness: Harness) -> None:
    await harness.register(
        workflow(
            "retry-backoff",
            "  - name: a\n    tool: util.echo\n    provider: p\n"
            "    retry: {maxAttempts: 4, initialInterval: 150, backoffRate: 2, jitter: 0}\n",
        )
    )

    async def respond(invoke: ToolInvoke) -> ToolResult:
        if invoke.attempt < 3:
            return failed(invoke, "server", "busy", status=503)
        return ok(invoke)

    harness.respond = respond
    run_id = await harness.start("retry-backoff", {})
    run = await harness.finished(run_id)
    assert run["status"] == "completed"
    assert run["steps"][0]["attempt"] == 3
    history = await harness.history(run_id)
    scheduled = [at(e) for e in history if e["type"] == "step.scheduled"]
    retrying = [e for e in history if e["type"] == "step.retrying"]
    assert [e["data"]["delay_ms"] for e in retrying] == [150.0, 300.0]
    gaps = [(b - a).total_seconds() * 1000 for a, b in itertools.pairwise(scheduled)]
    assert gaps[0] >= 150
    assert gaps[1] >= 300


async def test_retry_after_is_honoured(harness: Harness) -> None:
    await harness.register(
        workflow(
            "retry-after",
            "  - name: a\n    tool: util.echo\n    provider: p\n"
            "    retry: {maxAttempts: 2, initialInterval: 10, jitter: 0}\n",
        )
    )

    async def respond(invoke: ToolInvoke) -> ToolResult:
        if invoke.attempt == 1:
            return failed(invoke, "rate_limited", "slow down", status=429, retry_after_s=0.6)
        return ok(invoke)

    harness.respond = respond
    run_id = await harness.start("retry-after", {})
    assert (await harness.finished(run_id))["status"] == "completed"
    history = await harness.history(run_id)
    retrying = next(e for e in history if e["type"] == "step.retrying")
    assert retrying["data"]["delay_ms"] == 600.0
    first, second = (at(e) for e in history if e["type"] == "step.scheduled")
    assert (second - first).total_seconds() >= 0.6


async def test_run_deadline_expires_during_a_slow_step(harness: Harness) -> None:
    await harness.register(
        workflow(
            "deadline",
            "  - name: slow\n    tool: util.echo\n    provider: p\n",
            extra="guards:\n  budget: {maxMs: 400}\n",
        )
    )

    async def respond(invoke: ToolInvoke) -> ToolResult:
        await asyncio.sleep(3)
        return ok(invoke)

    harness.respond = respond
    run = await harness.finished(await harness.start("deadline", {}))
    assert run["status"] == "timed_out"
    assert run["error"]["kind"] == "deadline"
    assert run["steps"][0]["status"] == "cancelled"
    assert run["duration_ms"] < 2500


async def test_budget_stops_the_run_before_a_step_it_cannot_cover(harness: Harness) -> None:
    steps = "".join(
        f"  - name: s{i}\n    tool: util.echo\n    provider: p\n    config: {{maxTokens: 40}}\n"
        + (f"    needs: [s{i - 1}]\n" if i else "")
        for i in range(4)
    )
    await harness.register(workflow("budget", steps, extra="guards:\n  budget: {maxTokens: 100}\n"))

    async def respond(invoke: ToolInvoke) -> ToolResult:
        return ok(invoke, usage=Usage(input_tokens=20, output_tokens=15, total_tokens=35, cost=0.001))

    harness.respond = respond
    run = await harness.finished(await harness.start("budget", {}))
    assert run["status"] == "budget_exceeded"
    # 35 + 35 = 70 used; s2 may need 40 of the 30 left: it is not dispatched.
    assert [s["status"] for s in run["steps"]] == ["completed", "completed", "skipped", "skipped"]
    assert run["error"]["used"]["tokens"] == 70
    assert run["error"]["limit"]["maxTokens"] == 100
    assert run["error"]["step"] == "s2"
    assert len(harness.seen) == 2


async def test_fan_out_runs_independent_steps_together_and_joins(harness: Harness) -> None:
    await harness.register(
        workflow(
            "fan",
            "  - name: a\n    tool: util.echo\n    provider: p\n"
            "  - name: b\n    tool: util.echo\n    provider: p\n    input: {x: '${steps.a.output.text}'}\n"
            "  - name: c\n    tool: util.echo\n    provider: p\n    needs: a\n"
            "  - name: d\n    tool: util.echo\n    provider: p\n"
            "    input: {b: '${steps.b.output.text}', c: '${steps.c.output.text}'}\n",
        )
    )
    both_running = asyncio.Event()

    async def respond(invoke: ToolInvoke) -> ToolResult:
        if invoke.step in ("b", "c"):
            if harness.in_flight.get("b") and harness.in_flight.get("c"):
                both_running.set()
            await asyncio.wait_for(both_running.wait(), timeout=5)
        return ok(invoke)

    harness.respond = respond
    run = await harness.finished(await harness.start("fan", {}))
    assert run["status"] == "completed"
    order = [i.step for i in harness.seen]
    assert order[0] == "a"
    assert set(order[1:3]) == {"b", "c"}
    assert order[3] == "d"
    assert harness.invokes("d")[0].input == {"b": "out-b", "c": "out-c"}


async def test_for_each_respects_its_concurrency_bound(harness: Harness) -> None:
    await harness.register(
        workflow(
            "each",
            "  - name: items\n    for_each: '${trigger.payload.n}'\n    concurrency: 3\n"
            "    tool: util.echo\n    provider: p\n    input: {value: '${item}', at: '${index}'}\n",
        )
    )

    async def respond(invoke: ToolInvoke) -> ToolResult:
        await asyncio.sleep(0.05)
        return ok(invoke, value=invoke.input["value"] * 10)

    harness.respond = respond
    run = await harness.finished(await harness.start("each", {"n": list(range(10))}))
    assert run["status"] == "completed"
    assert run["steps"][0]["output"] == {"items": [{"value": v * 10} for v in range(10)]}
    assert harness.max_in_flight["items"] == 3
    assert len(harness.seen) == 10
    assert sorted(i.input["at"] for i in harness.seen) == list(range(10))


async def test_wait_step_completes_on_the_matching_event(harness: Harness) -> None:
    await harness.register(
        workflow(
            "approval",
            "  - name: approve\n    wait: {event: app.test.decided, key: '${trigger.payload.key}',"
            " match: session.id, timeout: 20000}\n"
            "  - name: after\n    tool: util.echo\n    provider: p\n"
            "    input: {ok: '${steps.approve.output.approved}'}\n",
        )
    )
    run_id = await harness.start("approval", {"key": "s-42"})

    async def waiting() -> dict[str, Any] | None:
        run = await harness.run(run_id)
        return run if run["steps"][0]["status"] == "waiting" else None

    run = await wait_for(waiting, timeout=10)
    assert run["waiting"][0]["kind"] == "event"
    assert "app.test.decided" in run["waiting"][0]["detail"]
    js = harness.nc.jetstream()
    await js.publish("app.test.decided", json.dumps({"session": {"id": "other"}, "approved": False}).encode())
    await js.publish("app.test.decided", json.dumps({"session": {"id": "s-42"}, "approved": True}).encode())
    run = await harness.finished(run_id)
    assert run["status"] == "completed"
    assert run["steps"][0]["output"] == {"session": {"id": "s-42"}, "approved": True}
    assert harness.invokes("after")[0].input == {"ok": True}


async def test_wait_step_times_out(harness: Harness) -> None:
    await harness.register(
        workflow(
            "approval-late",
            "  - name: approve\n    wait: {event: app.test.late, key: x, match: id, timeout: 300}\n"
            "    on_error: continue\n"
            "  - name: after\n    tool: util.echo\n    provider: p\n    needs: approve\n",
        )
    )
    run = await harness.finished(await harness.start("approval-late", {}))
    assert run["status"] == "completed"
    assert run["steps"][0]["status"] == "failed"
    assert run["steps"][0]["error"]["kind"] == "timeout"
    assert run["steps"][1]["status"] == "completed"


async def test_cancel_stops_work_and_runs_compensation(harness: Harness) -> None:
    await harness.register(
        workflow(
            "cancel",
            "  - name: book\n    tool: util.echo\n    provider: p\n"
            "    compensate: {tool: util.echo, provider: p, input: {undo: '${steps.book.output.text}'}}\n"
            "  - name: slow\n    tool: util.echo\n    provider: p\n    needs: book\n",
        )
    )
    release = asyncio.Event()

    async def respond(invoke: ToolInvoke) -> ToolResult:
        if invoke.step == "slow":
            await release.wait()
        return ok(invoke)

    harness.respond = respond
    run_id = await harness.start("cancel", {})
    await wait_for(lambda: asyncio.sleep(0, bool(harness.invokes("slow"))), timeout=10)
    summary = await harness.result(
        subjects.ENGINE_RUNS_CANCEL, rpc.CancelRunRequest(run_id=run_id, reason="user")
    )
    assert summary["run_id"] == run_id
    run = await harness.finished(run_id)
    release.set()
    assert run["status"] == "cancelled"
    assert run["error"]["message"] == "user"
    statuses = {s["name"]: s["status"] for s in run["steps"]}
    assert statuses == {"book": "completed", "slow": "cancelled"}
    undo = harness.invokes("book~c")
    assert [i.input for i in undo] == [{"undo": "out-book"}]
    # A second cancel of an ended run changes nothing.
    again = await harness.result(subjects.ENGINE_RUNS_CANCEL, rpc.CancelRunRequest(run_id=run_id))
    assert again["status"] == "cancelled"


async def test_idempotency_key_yields_one_run_and_refuses_another_body(harness: Harness) -> None:
    await harness.register(workflow("idem", "  - name: a\n    tool: util.echo\n    provider: p\n"))
    first = await harness.start("idem", {"n": 1}, idempotency_key="k-1")
    second = await harness.start("idem", {"n": 1}, idempotency_key="k-1")
    assert first == second
    reply = await harness.call(
        subjects.ENGINE_RUNS_START,
        rpc.StartRunRequest(workflow="idem", payload={"n": 2}, idempotency_key="k-1"),
    )
    assert reply.error is not None
    assert reply.error.code == "idempotency_mismatch"
    await harness.finished(first)
    assert len(harness.invokes("a")) == 1


async def test_rerun_reuses_outputs_of_earlier_steps(harness: Harness) -> None:
    await harness.register(
        workflow(
            "rerun",
            "  - name: a\n    tool: util.echo\n    provider: p\n"
            "  - name: b\n    tool: util.echo\n    provider: p\n    input: {x: '${steps.a.output.text}'}\n"
            "  - name: c\n    tool: util.echo\n    provider: p\n    input: {x: '${steps.b.output.text}'}\n",
        )
    )
    old = await harness.start("rerun", {"n": 1})
    await harness.finished(old)
    harness.seen.clear()
    reply = await harness.result(subjects.ENGINE_RUNS_RERUN, rpc.RerunRequest(run_id=old, from_step="b"))
    new = await harness.finished(reply["run_id"])
    assert new["status"] == "completed"
    assert new["rerun_of"] == old
    assert [i.step for i in harness.seen] == ["b", "c"]
    assert new["steps"][0]["output"]["text"] == "out-a"
    bad = await harness.call(subjects.ENGINE_RUNS_RERUN, rpc.RerunRequest(run_id=old, from_step="zz"))
    assert bad.error is not None
    assert bad.error.details[0].field == "fromStep"


async def test_new_version_leaves_running_runs_on_theirs(harness: Harness) -> None:
    v1 = await harness.register(workflow("versions", "  - name: a\n    tool: util.echo\n    provider: p\n"))
    release = asyncio.Event()

    async def respond(invoke: ToolInvoke) -> ToolResult:
        await release.wait()
        return ok(invoke)

    harness.respond = respond
    run_id = await harness.start("versions", {})
    await wait_for(lambda: asyncio.sleep(0, bool(harness.seen)), timeout=10)
    v2 = await harness.register(
        workflow(
            "versions",
            "  - name: a\n    tool: util.echo\n    provider: p\n"
            "  - name: b\n    tool: util.echo\n    provider: p\n",
        ).replace("version: '1'", "version: '2'")  # a version is immutable: new content, new version
    )
    release.set()
    run = await harness.finished(run_id)
    assert [s["name"] for s in run["steps"]] == ["a"]  # still version 1's single step
    listing = await harness.result(subjects.ENGINE_WORKFLOWS_VERSIONS, rpc.GetRequest(name="versions"))
    hashes = [v["hash"] for v in listing["versions"]]
    assert hashes == [v2["hash"], v1["hash"]]
    assert [v["current"] for v in listing["versions"]] == [True, False]


async def test_a_timer_set_before_a_restart_fires_once_after_it(harness: Harness) -> None:
    await harness.register(
        workflow(
            "restart",
            "  - name: a\n    tool: util.echo\n    provider: p\n"
            "    retry: {maxAttempts: 2, initialInterval: 1500, jitter: 0}\n",
        )
    )

    async def respond(invoke: ToolInvoke) -> ToolResult:
        return failed(invoke, "server", "busy") if invoke.attempt == 1 else ok(invoke)

    harness.respond = respond
    run_id = await harness.start("restart", {})

    async def retrying() -> bool:
        return (await harness.run(run_id))["steps"][0]["status"] == "retrying"

    await wait_for(retrying, timeout=10)
    await harness.stop_engine()  # no engine while the back-off runs out
    await asyncio.sleep(1.8)
    await harness.start_engine()
    run = await harness.finished(run_id)
    assert run["status"] == "completed"
    assert [i.attempt for i in harness.invokes("a")] == [1, 2]


async def test_a_result_that_waited_out_a_restart_wins_over_its_expired_timeout(harness: Harness) -> None:
    await harness.register(
        workflow(
            "late",
            "  - name: a\n    tool: util.echo\n    provider: p\n    config: {timeout: 600}\n"
            "    retry: {maxAttempts: 2, initialInterval: 10, jitter: 0}\n",
        )
    )
    answer = asyncio.Event()

    async def respond(invoke: ToolInvoke) -> ToolResult:
        await answer.wait()
        return ok(invoke)

    harness.respond = respond
    run_id = await harness.start("late", {})
    await wait_for(lambda: asyncio.sleep(0, bool(harness.seen)), timeout=10)
    await harness.stop_engine()
    answer.set()  # the result is published while no engine runs...
    await asyncio.sleep(1.0)  # ...and the step's timeout passes before one starts again
    await harness.start_engine()
    run = await harness.finished(run_id)
    assert run["status"] == "completed"
    assert run["steps"][0]["attempt"] == 1
    assert [i.attempt for i in harness.invokes("a")] == [1]
