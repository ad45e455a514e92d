"""The runner's handling of one invoke: a real nats-server, a fake adapter and an in-memory store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import nats
import pytest
from msgspec.structs import replace
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from omni_contract import events as ev
from omni_contract import streams, subjects
from omni_contract.envelope import (
    HDR_MSG_ID,
    decode_envelope,
    encode_envelope,
    new_envelope,
    payload_of,
    utcnow,
)
from omni_contract.events import DeadLetter, ToolInvoke, ToolResult
from omni_runtime.nats import ensure_streams
from omni_testkit import wait_for
from omni_toolrunner.adapters import ProviderBinding
from omni_toolrunner.app import ToolRunnerApp
from omni_toolrunner.providers import ProviderError, ProviderErrorKind, ToolCall, ToolOutcome, Usage
from omni_toolrunner.runner import EXHAUSTED_KIND, FRESH_WITHIN_S, MALFORMED_KIND
from omni_toolrunner.settings import ToolRunnerSettings
from prometheus_client import CollectorRegistry
from toolrunner_harness import PROVIDER, make_invoke, work_drained

pytestmark = pytest.mark.integration

Behaviour = Callable[[ToolCall], Awaitable[ToolOutcome]]


async def echo(call: ToolCall) -> ToolOutcome:
    return ToolOutcome(
        output={"echo": call.input},
        usage=Usage(input_tokens=3, output_tokens=4, total_tokens=7, cost=None),
        model="fake/model-1",
        response_id="resp-1",
    )


class FakeAdapter:
    provider = PROVIDER
    tools = frozenset({"nlu.analyze"})

    def __init__(self, behaviour: Behaviour = echo) -> None:
        self.behaviour = behaviour
        self.calls: list[ToolCall] = []

    async def call(self, request: ToolCall) -> ToolOutcome:
        self.calls.append(request)
        return await self.behaviour(request)

    async def aclose(self) -> None:
        return None


class MemoryStore:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def get(self, idempotency_key: str) -> bytes | None:
        return self.values.get(idempotency_key)

    async def put(self, idempotency_key: str, body: bytes) -> None:
        self.values[idempotency_key] = body


@dataclass
class Harness:
    app: ToolRunnerApp
    js: JetStreamContext
    adapter: FakeAdapter
    store: MemoryStore
    registry: CollectorRegistry
    results: list[Msg] = field(default_factory=list)
    letters: list[Msg] = field(default_factory=list)

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def send(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        await self.js.publish(subjects.tool_invoke(PROVIDER), body, headers=headers)

    async def invoke_no_wait(self, invoke: ToolInvoke, msg_id: str | None = None) -> None:
        envelope = new_envelope(ev.TOOL_INVOKE_V1, "workflow-engine", invoke)
        await self.send(encode_envelope(envelope), {HDR_MSG_ID: msg_id or invoke.idempotency_key})

    async def invoke(self, invoke: ToolInvoke, msg_id: str | None = None) -> ToolResult:
        await self.invoke_no_wait(invoke, msg_id)
        await wait_for(lambda: self.results, message="a result")
        return payload_of(decode_envelope(self.results[-1].data), ToolResult)


@asynccontextmanager
async def harness(
    nats_url: str, adapter: FakeAdapter, store: MemoryStore | None = None, **overrides: Any
) -> AsyncIterator[Harness]:
    """A runner on its own connection, its results and dead letters collected as they are published."""
    settings = ToolRunnerSettings(
        nats_url=nats_url, openrouter_api_key="k", instance="unit-runner", **overrides
    )
    registry = CollectorRegistry()
    app = ToolRunnerApp(settings, registry=registry, instance="unit-runner")
    nc: NATS = await nats.connect(nats_url, name="tool-runner-handler-tests")
    js = nc.jetstream()
    await ensure_streams(js, streams.ALL_STREAMS)
    h = Harness(app=app, js=js, adapter=adapter, store=store or MemoryStore(), registry=registry)

    async def on_result(msg: Msg) -> None:
        h.results.append(msg)

    async def on_letter(msg: Msg) -> None:
        h.letters.append(msg)

    await nc.subscribe(subjects.tool_result(PROVIDER), cb=on_result)
    await nc.subscribe(subjects.DEADLETTER_ALL, cb=on_letter)
    binding = ProviderBinding(
        adapter=adapter,
        operation="chat",
        request_model=lambda tool, config: "fake/model-1",
        missing_credentials=None,
    )
    try:
        await app.start(js, binding, store=h.store)
        yield h
    finally:
        await app.stop(grace_s=1.0)
        await nc.drain()


async def test_a_success_carries_output_usage_model_and_the_invoke_identity(nats_url: str) -> None:
    adapter = FakeAdapter()
    async with harness(nats_url, adapter) as h:
        invoke = make_invoke(config={"model": "x/y"}, timeout_ms=1500)
        result = await h.invoke(invoke)
    assert result.success is True
    assert result.output == {"echo": invoke.input}
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens) == (3, 4)
    assert result.model == "fake/model-1"
    assert (result.run_id, result.step, result.attempt) == (invoke.run_id, invoke.step, invoke.attempt)
    assert result.runner == "unit-runner"
    assert result.started_at is not None
    assert result.started_at.tzinfo is not None
    (call,) = adapter.calls
    assert call.idempotency_key == invoke.idempotency_key
    assert call.config == {"model": "x/y"}
    assert call.timeout_s == 1.5


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(
            ProviderError(ProviderErrorKind.RATE_LIMITED, "slow down", status=429, retry_after_s=2.5),
            {
                "kind": "rate_limited",
                "message": "slow down",
                "status": 429,
                "retry_after_s": 2.5,
                "retryable": True,
            },
            id="rate-limited",
        ),
        pytest.param(
            ProviderError(ProviderErrorKind.AUTH, "bad key", status=401),
            {"kind": "auth", "message": "bad key", "status": 401, "retry_after_s": None, "retryable": False},
            id="auth",
        ),
        pytest.param(
            ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "not json"),
            {
                "kind": "malformed_response",
                "message": "not json",
                "status": None,
                "retry_after_s": None,
                "retryable": True,
            },
            id="malformed-response",
        ),
    ],
)
async def test_a_provider_error_becomes_a_failed_result_with_its_classification(
    nats_url: str, error: ProviderError, expected: dict[str, Any]
) -> None:
    async def fail(call: ToolCall) -> ToolOutcome:
        raise error

    async with harness(nats_url, FakeAdapter(fail)) as h:
        result = await h.invoke(make_invoke())
    assert result.success is False
    assert result.output is None
    assert result.error is not None
    got = {key: getattr(result.error, key) for key in expected}
    assert got == expected


async def test_an_unexpected_exception_becomes_a_failed_result_of_kind_internal(nats_url: str) -> None:
    async def crash(call: ToolCall) -> ToolOutcome:
        raise KeyError("choices")

    async with harness(nats_url, FakeAdapter(crash)) as h:
        result = await h.invoke(make_invoke())
    assert result.error is not None
    assert result.error.kind == "internal"
    assert "KeyError" in result.error.message
    assert result.error.retryable is False


async def test_a_stored_result_is_published_again_without_calling_the_provider(nats_url: str) -> None:
    adapter = FakeAdapter()
    store = MemoryStore()
    invoke = make_invoke()
    async with harness(nats_url, adapter, store) as h:
        first = await h.invoke(invoke)
        stored = store.values[invoke.idempotency_key]
        h.results.clear()
        # Published again under another Nats-Msg-Id, so that JetStream does not drop it.
        second = await h.invoke(invoke, msg_id=f"{invoke.idempotency_key}/again")
        republished = h.results[-1].data
    assert len(adapter.calls) == 1
    assert second == first
    assert republished == stored


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.looked_up: list[str] = []

    async def get(self, idempotency_key: str) -> bytes | None:
        self.looked_up.append(idempotency_key)
        return await super().get(idempotency_key)


async def test_an_engine_invoke_on_its_first_delivery_is_answered_without_a_look_at_the_store(
    nats_url: str,
) -> None:
    # The engine's keys are made for one invoke and published with Nats-Msg-Id = key: a first,
    # fresh delivery cannot have been answered before, and the look would cost a round trip.
    adapter = FakeAdapter()
    store = CountingStore()
    invoke = replace(make_invoke(), unique_key=True)
    async with harness(nats_url, adapter, store) as h:
        result = await h.invoke(invoke)
    assert result.success is True
    assert store.looked_up == []
    assert len(adapter.calls) == 1
    assert invoke.idempotency_key in store.values  # stored for a redelivery to find


@pytest.mark.parametrize(
    ("msg_id", "age"),
    [
        pytest.param("{key}/copy", timedelta(0), id="published-under-another-message-id"),
        pytest.param(
            "{key}", timedelta(seconds=FRESH_WITHIN_S + 5), id="older-than-half-the-duplicate-window"
        ),
    ],
)
async def test_an_engine_invoke_that_may_be_a_copy_gets_the_stored_result(
    nats_url: str, msg_id: str, age: timedelta
) -> None:
    adapter = FakeAdapter()
    store = CountingStore()
    invoke = replace(make_invoke(), unique_key=True)
    store.values[invoke.idempotency_key] = encode_envelope(
        new_envelope(
            ev.TOOL_RESULT_V1,
            "earlier",
            ToolResult(
                run_id=invoke.run_id,
                step=invoke.step,
                attempt=invoke.attempt,
                tool=invoke.tool,
                provider=invoke.provider,
                idempotency_key=invoke.idempotency_key,
                success=True,
                output={"from": "the store"},
            ),
        )
    )
    envelope = new_envelope(ev.TOOL_INVOKE_V1, "workflow-engine", invoke, time=utcnow() - age)
    async with harness(nats_url, adapter, store) as h:
        await h.send(encode_envelope(envelope), {HDR_MSG_ID: msg_id.format(key=invoke.idempotency_key)})
        await wait_for(lambda: h.results, message="a result")
    assert store.looked_up == [invoke.idempotency_key]
    assert adapter.calls == []
    assert h.results[-1].data == store.values[invoke.idempotency_key]


async def test_an_engine_invoke_delivered_again_is_looked_up_first(nats_url: str) -> None:
    class FailsToStoreOnce(CountingStore):
        failures_left = 1

        async def put(self, idempotency_key: str, body: bytes) -> None:
            if self.failures_left:
                self.failures_left -= 1
                raise RuntimeError("the runner's own fault: the work is given back")
            await super().put(idempotency_key, body)

    adapter = FakeAdapter()
    store = FailsToStoreOnce()
    invoke = replace(make_invoke(), unique_key=True)
    async with harness(nats_url, adapter, store) as h:
        await h.invoke_no_wait(invoke)
        await wait_for(
            lambda: invoke.idempotency_key in store.values, timeout=10, message="the result stored"
        )
    assert store.looked_up == [invoke.idempotency_key]  # on the second delivery only
    assert len(adapter.calls) == 2  # nothing was stored the first time


async def test_unreadable_work_is_dead_lettered_with_the_original_body(nats_url: str) -> None:
    adapter = FakeAdapter()
    async with harness(nats_url, adapter) as h:
        await h.send(b"{not json")
        await wait_for(lambda: h.letters, message="a dead letter")
        envelope = decode_envelope(h.letters[0].data)
        letter = payload_of(envelope, DeadLetter)
    assert envelope.type == ev.DEADLETTER_V1
    assert letter.kind == MALFORMED_KIND
    assert letter.original_body == "{not json"
    assert letter.original_subject == subjects.tool_invoke(PROVIDER)
    assert h.results == []
    assert adapter.calls == []


async def test_no_more_invokes_run_at_once_than_max_concurrency(nats_url: str) -> None:
    running = 0
    peak = 0
    release = asyncio.Event()

    async def slow(call: ToolCall) -> ToolOutcome:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return await echo(call)

    adapter = FakeAdapter(slow)
    async with harness(nats_url, adapter) as h:
        assert h.app.runner is not None
        sends = [
            asyncio.create_task(h.invoke(make_invoke(run_id=f"run-{i}")))
            for i in range(h.app.settings.max_concurrency + 8)
        ]
        await wait_for(lambda: len(adapter.calls) == h.app.settings.max_concurrency, message="slots filled")
        # The rest were fetched too, and wait for a slot.
        await wait_for(lambda: h.app.runner is not None and h.app.runner.held == len(sends), message="held")
        assert len(adapter.calls) == h.app.settings.max_concurrency
        release.set()
        await asyncio.gather(*sends)
        await wait_for(lambda: len(h.results) == h.app.settings.max_concurrency + 8, message="all answered")
    assert peak == h.app.settings.max_concurrency


class BrokenStore(MemoryStore):
    """A store whose lookups fail on every delivery: a fault of the runner's, not the provider's."""

    async def get(self, idempotency_key: str) -> bytes | None:
        raise RuntimeError("store is broken")


async def test_work_failing_on_its_last_delivery_is_dead_lettered_as_exhausted_and_terminated(
    nats_url: str,
) -> None:
    adapter = FakeAdapter()
    invoke = make_invoke()
    async with harness(nats_url, adapter, BrokenStore(), max_deliver=2) as h:
        await h.invoke_no_wait(invoke)
        await wait_for(lambda: h.letters, message="a dead letter")
        # Terminated: gone from the work queue, not left behind unacknowledged.
        await wait_for(lambda: work_drained(h.js), message="exhausted work terminated")
        handed_back = h.metric("omni_toolrunner_handback_total", provider=PROVIDER, reason="internal_error")
        exhausted = h.metric("omni_toolrunner_deadletters_total", provider=PROVIDER, kind=EXHAUSTED_KIND)
    (msg,) = h.letters
    letter = payload_of(decode_envelope(msg.data), DeadLetter)
    assert msg.subject == subjects.deadletter(EXHAUSTED_KIND)
    assert letter.kind == EXHAUSTED_KIND
    assert "delivered 2 times" in letter.reason
    assert "store is broken" in letter.reason
    assert letter.original_subject == subjects.tool_invoke(PROVIDER)
    assert payload_of(decode_envelope(letter.original_body.encode()), ToolInvoke) == invoke
    assert handed_back == 1  # the first delivery went back for another try
    assert exhausted == 1
    assert h.results == []
    assert adapter.calls == []
