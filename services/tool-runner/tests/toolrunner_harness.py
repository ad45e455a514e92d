"""Test helpers: a tool runner served in-process, invokes to send it, results to read back."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from omni_contract import events as ev
from omni_contract import streams, subjects
from omni_contract.envelope import (
    HDR_MSG_ID,
    HDR_TRACEPARENT,
    decode_envelope,
    encode_envelope,
    new_envelope,
    payload_of,
)
from omni_contract.events import DeadLetter, ToolInvoke, ToolResult
from omni_runtime.service import ServiceContext, serve
from omni_simulator import RunningSimulator
from omni_testkit import unique_name, wait_for
from omni_toolrunner.app import make_body, service_name
from omni_toolrunner.settings import ToolRunnerSettings
from opentelemetry.trace import TracerProvider

log = logging.getLogger(__name__)

PROVIDER = "openrouter"
API_KEY = "sk-or-test-key"
NLU_INPUT = {"text": "I goes to school every days", "language": "en"}


def runner_settings(nats_url: str, simulator: RunningSimulator, **overrides: Any) -> ToolRunnerSettings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "openrouter_api_key": API_KEY,
        "openrouter_base_url": simulator.base_url,
        "instance": unique_name("runner"),
        "ack_wait_s": 5.0,
        "shutdown_grace_s": 5.0,
        "log_format": "console",
    }
    values.update(overrides)
    return ToolRunnerSettings(**values)


@dataclass
class RunningRunner:
    settings: ToolRunnerSettings
    ctx: ServiceContext
    stopping: asyncio.Event
    task: asyncio.Task[None]

    def metric(self, name: str, **labels: str) -> float:
        return self.ctx.registry.get_sample_value(name, labels) or 0.0

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(self.task, timeout=30)

    async def kill(self) -> None:
        """End the service task at once: no graceful shutdown, nothing more acknowledged."""
        await _cancelled(self.task)


@asynccontextmanager
async def running_runner(
    settings: ToolRunnerSettings,
    *,
    tracer_provider: TracerProvider | None = None,
    expect_ready: bool = True,
) -> AsyncIterator[RunningRunner]:
    """Serve a tool runner in this event loop until the block ends (or it is stopped or killed)."""
    stopping = asyncio.Event()
    contexts: list[ServiceContext] = []
    body = make_body(settings, tracer_provider=tracer_provider)

    async def main(ctx: ServiceContext) -> None:
        contexts.append(ctx)
        await body(ctx)

    task = asyncio.create_task(
        serve(service_name(settings.provider), settings, main, install_signals=False, stopping=stopping)
    )

    async def started() -> bool:
        if task.done():
            task.result()  # surfaces a failed start
            raise AssertionError("the runner ended while starting")
        if not contexts or "consumer" not in contexts[0].health.checks:
            return False
        problems = await contexts[0].health.readiness()
        if expect_ready:
            return not problems
        return not {"consumer", "nats", "registry"} & set(problems)

    try:
        await wait_for(started, timeout=20, message="tool runner started")
        yield RunningRunner(settings=settings, ctx=contexts[0], stopping=stopping, task=task)
    finally:
        if not task.done():
            stopping.set()
            await asyncio.wait({task}, timeout=30)
            if task.done():
                task.result()  # a stop that failed fails the test
            else:
                await _cancelled(task)


async def _cancelled(task: asyncio.Task[None], grace_s: float = 10.0) -> None:
    """Cancel ``task`` and give it ``grace_s`` to unwind. A crashed process waits for nothing, so
    neither does this beyond the grace; and a cancellation of the caller itself goes through
    (``suppress(CancelledError)`` around ``await task`` would swallow it)."""
    if task.done():
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=grace_s)
    if not done:
        log.warning("runner task still unwinding %.0fs after it was cancelled; left behind", grace_s)


def make_invoke(
    *,
    tool: str = "nlu.analyze",
    input: dict[str, Any] | None = None,
    step: str = "analyze",
    attempt: int = 1,
    run_id: str | None = None,
    config: dict[str, Any] | None = None,
    timeout_ms: int | None = None,
) -> ToolInvoke:
    run_id = run_id or uuid.uuid4().hex
    return ToolInvoke(
        run_id=run_id,
        step=step,
        attempt=attempt,
        tool=tool,
        provider=PROVIDER,
        input=NLU_INPUT if input is None else input,
        idempotency_key=f"{run_id}:{step}:{attempt}",
        config=config or {},
        timeout_ms=timeout_ms,
        workflow="coach",
    )


async def publish_invoke(
    js: JetStreamContext,
    invoke: ToolInvoke,
    *,
    msg_id: str | None = None,
    traceparent: str | None = None,
) -> None:
    """Publish as the engine's outbox relay does: ``Nats-Msg-Id`` is the idempotency key by default."""
    envelope = new_envelope(
        ev.TOOL_INVOKE_V1, "workflow-engine", invoke, correlation_id=invoke.run_id, subject=invoke.step
    )
    headers = {HDR_MSG_ID: msg_id or invoke.idempotency_key}
    if traceparent:
        headers[HDR_TRACEPARENT] = traceparent
    await publish_raw(js, encode_envelope(envelope), headers=headers)


async def publish_raw(js: JetStreamContext, body: bytes, *, headers: dict[str, str] | None = None) -> None:
    await js.publish(subjects.tool_invoke(PROVIDER), body, headers=headers or {HDR_MSG_ID: uuid.uuid4().hex})


class StreamReader:
    """Reads one subject of a stream through a durable pull consumer of the test's own."""

    def __init__(self, sub: JetStreamContext.PullSubscription) -> None:
        self._sub = sub

    @classmethod
    async def open(cls, js: JetStreamContext, stream: str, subject: str) -> StreamReader:
        return cls(await js.pull_subscribe(subject, durable=unique_name("test"), stream=stream))

    async def next(self, timeout: float = 15.0) -> Msg:  # noqa: ASYNC109 - the fetch's own deadline
        msgs = await self._sub.fetch(1, timeout=timeout)
        return msgs[0]


async def open_results(js: JetStreamContext) -> StreamReader:
    return await StreamReader.open(js, streams.TOOL_RESULTS.name, subjects.tool_result(PROVIDER))


async def open_deadletters(js: JetStreamContext, subject: str) -> StreamReader:
    return await StreamReader.open(js, streams.DEADLETTERS.name, subject)


def read_result(msg: Msg) -> ToolResult:
    envelope = decode_envelope(msg.data)
    assert envelope.type == ev.TOOL_RESULT_V1
    return payload_of(envelope, ToolResult)


def read_invoke(body: str) -> ToolInvoke:
    envelope = decode_envelope(body.encode())
    assert envelope.type == ev.TOOL_INVOKE_V1
    return payload_of(envelope, ToolInvoke)


def read_deadletter(msg: Msg) -> DeadLetter:
    envelope = decode_envelope(msg.data)
    assert envelope.type == ev.DEADLETTER_V1
    return payload_of(envelope, DeadLetter)


async def stream_messages(js: JetStreamContext, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


async def work_drained(js: JetStreamContext) -> bool:
    """Every invoke published so far has been acknowledged (the work stream is a work queue)."""
    return await stream_messages(js, streams.TOOL_WORK.name) == 0


async def simulator_stats(simulator: RunningSimulator) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{simulator.root_url}/_sim/stats")
        response.raise_for_status()
        stats: dict[str, Any] = msgspec.json.decode(response.content)
        return stats
