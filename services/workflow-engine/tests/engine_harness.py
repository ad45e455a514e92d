"""The engine in-process against real NATS JetStream and PostgreSQL, with a scripted tool runner.

(The ``harness`` fixture is in conftest.py.)

``harness`` starts one engine (``harness.start_engine()`` starts more, ``stop_engine`` stops
one) and a runner that answers every ``omni.tool.invoke.>`` message through ``harness.respond``,
a coroutine the test may replace: it returns the ``ToolResult`` to publish, or None to never
answer (a provider that hangs). Each message is handled in a task of its own, so slow answers
overlap as they would with a real runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from omni_contract import events as ev
from omni_contract import rpc, streams, subjects
from omni_contract.envelope import decode_envelope, encode, encode_envelope, new_envelope, payload_of
from omni_contract.events import RunStatus, ToolInvoke, ToolResult, Usage
from omni_engine.main import EngineSettings, body
from omni_runtime.service import serve
from omni_testkit import wait_for

WORKFLOWS = Path(__file__).resolve().parents[3] / "workflows"

Responder = Callable[[ToolInvoke], Awaitable[ToolResult | None]]


def ok(invoke: ToolInvoke, usage: Usage | None = None, **output: Any) -> ToolResult:
    return ToolResult(
        run_id=invoke.run_id,
        step=invoke.step,
        attempt=invoke.attempt,
        tool=invoke.tool,
        provider=invoke.provider,
        idempotency_key=invoke.idempotency_key,
        success=True,
        usage=usage,
        output=output
        or {
            "echo": invoke.input,
            "text": f"out-{invoke.step}",
            "translatedText": "hola",
            "feedback": "bien",
        },
    )


def failed(invoke: ToolInvoke, kind: str, message: str = "failed", **extra: Any) -> ToolResult:
    result = ok(invoke)
    result.success = False
    result.output = None
    result.error = ev.ToolError(kind=kind, message=message, **extra)
    return result


async def echo(invoke: ToolInvoke) -> ToolResult | None:
    return ok(invoke)


class Harness:
    def __init__(self, nc: NATS, nats_url: str, database_url: str) -> None:
        self.nc = nc
        self.nats_url = nats_url
        self.database_url = database_url
        self.seen: list[ToolInvoke] = []
        self.respond: Responder = echo
        self.in_flight: dict[str, int] = {}  # step -> invocations of it being answered now
        self.max_in_flight: dict[str, int] = {}
        self.engines: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start_engine(self, **overrides: Any) -> None:
        settings = EngineSettings(
            nats_url=self.nats_url,
            database_url=self.database_url,
            workflows_dir=WORKFLOWS,
            log_format="console",
            **{"timer_poll_s": 0.2, **overrides},
        )
        stopping = asyncio.Event()
        task = asyncio.create_task(
            serve(
                "workflow-engine",
                settings,
                lambda ctx: body(ctx, settings),
                install_signals=False,
                stopping=stopping,
            )
        )
        self.engines.append((stopping, task))

        async def ready() -> bool:
            try:
                await self.nc.request(subjects.ENGINE_WORKFLOWS_LIST, b"{}", timeout=0.5)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                return False
            return True

        await wait_for(ready, timeout=30)

    async def stop_engine(self, index: int = 0) -> None:
        stopping, task = self.engines.pop(index)
        stopping.set()
        await asyncio.wait_for(task, timeout=20)

    async def call(self, subject: str, request: Any) -> rpc.RpcReply:
        reply = await self.nc.request(subject, encode(request), timeout=5)
        return msgspec.json.decode(reply.data, type=rpc.RpcReply)

    async def result(self, subject: str, request: Any) -> Any:
        reply = await self.call(subject, request)
        assert reply.error is None, reply.error
        return json.loads(bytes(reply.result))

    async def register(self, yaml_text: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self.result(
            subjects.ENGINE_WORKFLOWS_REGISTER, rpc.RegisterWorkflowRequest(source=yaml_text)
        )
        return doc

    async def start(self, workflow: str, payload: dict[str, Any], **kwargs: Any) -> str:
        reply = await self.result(
            subjects.ENGINE_RUNS_START, rpc.StartRunRequest(workflow=workflow, payload=payload, **kwargs)
        )
        run_id: str = reply["run_id"]
        return run_id

    async def run(self, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = await self.result(subjects.ENGINE_RUNS_GET, rpc.GetRequest(name=run_id))
        return run

    async def finished(self, run_id: str, within_s: float = 20) -> dict[str, Any]:
        async def done() -> dict[str, Any] | None:
            run = await self.run(run_id)
            return run if run["status"] in RunStatus.TERMINAL else None

        result: dict[str, Any] = await wait_for(done, timeout=within_s)
        return result

    async def history(self, run_id: str) -> list[dict[str, Any]]:
        reply = await self.result(subjects.ENGINE_RUNS_EVENTS, rpc.RunEventsRequest(run_id=run_id))
        events: list[dict[str, Any]] = reply["events"]
        return events

    def invokes(self, step: str) -> list[ToolInvoke]:
        return [i for i in self.seen if i.step == step]


async def _answer(harness: Harness, js: Any, msg: Any) -> None:
    invoke = payload_of(decode_envelope(msg.data), ToolInvoke)
    harness.seen.append(invoke)
    step = invoke.step.partition("#")[0]  # the items of a for_each step count together
    harness.in_flight[step] = harness.in_flight.get(step, 0) + 1
    harness.max_in_flight[step] = max(harness.max_in_flight.get(step, 0), harness.in_flight[step])
    try:
        await msg.ack()  # the work is ours now; what follows may take long or never answer
        result = await harness.respond(invoke)
    finally:
        harness.in_flight[step] -= 1
    if result is None:
        return
    env = new_envelope(ev.TOOL_RESULT_V1, "test-runner", result, id_=invoke.idempotency_key)
    await js.publish(
        subjects.tool_result(invoke.provider),
        encode_envelope(env),
        headers={"Nats-Msg-Id": invoke.idempotency_key},
    )


async def _run_runner(harness: Harness, stop: asyncio.Event) -> None:
    js = harness.nc.jetstream()
    sub = await js.pull_subscribe(
        subjects.TOOL_INVOKE_ALL, durable="test-runner", stream=streams.TOOL_WORK.name
    )
    tasks: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        try:
            msgs = await sub.fetch(50, timeout=0.1)
        except (nats.errors.TimeoutError, TimeoutError):
            continue
        for msg in msgs:
            task = asyncio.create_task(_answer(harness, js, msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)


async def open_harness(nats_url: str, database_url: str) -> AsyncIterator[Harness]:
    nc = await nats.connect(nats_url)
    h = Harness(nc, nats_url, database_url)
    await h.start_engine()
    stop = asyncio.Event()
    runner = asyncio.create_task(_run_runner(h, stop))
    try:
        yield h
    finally:
        stop.set()
        await asyncio.wait_for(runner, timeout=10)
        while h.engines:
            await h.stop_engine()
        await nc.close()
