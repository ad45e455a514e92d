"""The tool runner against a real nats-server and the provider simulator, served in-process."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js import JetStreamContext
from omni_contract import streams, subjects
from omni_contract.envelope import HDR_MSG_ID, HDR_TRACEPARENT, encode_envelope, new_envelope
from omni_simulator import FaultMatch, FaultSpec, RunningSimulator
from omni_testkit import wait_for
from omni_toolrunner.runner import EXHAUSTED_KIND, MALFORMED_KIND
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from toolrunner_harness import (
    PROVIDER,
    RunningRunner,
    make_invoke,
    open_deadletters,
    open_results,
    publish_invoke,
    publish_raw,
    read_deadletter,
    read_invoke,
    read_result,
    runner_settings,
    running_runner,
    simulator_stats,
    stream_messages,
    work_drained,
)

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


async def test_an_invoke_yields_exactly_one_result_with_the_output(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    invoke = make_invoke()
    async with running_runner(runner_settings(nats_url, simulator)) as runner:
        await publish_invoke(js, invoke, traceparent=TRACEPARENT)
        msg = await results.next()
        await wait_for(lambda: work_drained(js), message="work acknowledged")

        result = read_result(msg)
        assert result.success is True
        assert result.error is None
        assert result.output is not None
        assert result.output.get("intent")
        assert (result.run_id, result.step, result.attempt, result.tool) == (
            invoke.run_id,
            invoke.step,
            invoke.attempt,
            invoke.tool,
        )
        assert result.idempotency_key == invoke.idempotency_key
        assert result.runner == runner.settings.instance
        assert result.usage is not None
        assert result.usage.total_tokens > 0
        assert result.model
        assert msg.subject == subjects.tool_result(PROVIDER)
        assert msg.headers is not None
        assert msg.headers[HDR_MSG_ID] == invoke.idempotency_key
        # The trace the engine started goes on through the runner into the result.
        assert msg.headers[HDR_TRACEPARENT].split("-")[1] == TRACE_ID
        assert await stream_messages(js, streams.TOOL_RESULTS.name) == 1
        assert (
            runner.metric(
                "omni_toolrunner_invocations_total", tool="nlu.analyze", provider=PROVIDER, outcome="success"
            )
            == 1
        )
    stats = await simulator_stats(simulator)
    assert stats["side_effects"] == 1
    assert stats["by_key"] == {invoke.idempotency_key: 1}


async def test_a_republished_invoke_is_answered_from_the_stored_result_without_calling_the_provider(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    invoke = make_invoke()
    async with running_runner(runner_settings(nats_url, simulator)) as runner:
        await publish_invoke(js, invoke)
        first = read_result(await results.next())
        await wait_for(lambda: work_drained(js), message="first invoke acknowledged")

        # The same attempt again, under another Nats-Msg-Id so that JetStream does not drop it.
        await publish_invoke(js, invoke, msg_id=f"{invoke.idempotency_key}/again")
        await wait_for(lambda: work_drained(js), message="second invoke acknowledged")

        cache_hits = runner.metric("omni_toolrunner_cache_hits_total", tool="nlu.analyze", provider=PROVIDER)
        assert cache_hits == 1
        # The republished result carried the same Nats-Msg-Id, so the result stream kept one copy.
        assert await stream_messages(js, streams.TOOL_RESULTS.name) == 1
    assert first.success is True
    stats = await simulator_stats(simulator)
    assert stats["side_effects"] == 1
    assert stats["calls"] == 1


async def test_two_deliveries_of_one_attempt_at_once_call_the_provider_once(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    invoke = make_invoke()
    simulator.state.add_fault(
        FaultSpec(match=FaultMatch(idempotency_key=invoke.idempotency_key), delay_ms=500)
    )
    async with running_runner(runner_settings(nats_url, simulator)):
        await publish_invoke(js, invoke)
        await publish_invoke(js, invoke, msg_id=f"{invoke.idempotency_key}/again")
        assert read_result(await results.next()).success is True
        await wait_for(lambda: work_drained(js), message="both invokes acknowledged")
        assert await stream_messages(js, streams.TOOL_RESULTS.name) == 1
    stats = await simulator_stats(simulator)
    assert stats["calls"] == 1
    assert stats["side_effects"] == 1


async def test_a_provider_500_is_a_failed_result_of_kind_server(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    simulator.state.add_fault(FaultSpec(status=500, message="upstream exploded"))
    invoke = make_invoke()
    async with running_runner(runner_settings(nats_url, simulator)) as runner:
        await publish_invoke(js, invoke)
        result = read_result(await results.next())
        await wait_for(lambda: work_drained(js), message="work acknowledged")
        failures = runner.metric(
            "omni_toolrunner_invocations_total", tool="nlu.analyze", provider=PROVIDER, outcome="server"
        )
    assert result.success is False
    assert result.output is None
    assert result.error is not None
    assert result.error.kind == "server"
    assert result.error.status == 500
    assert result.error.retryable is True
    assert failures == 1
    # One attempt per invoke: retrying is the engine's decision.
    assert (await simulator_stats(simulator))["calls"] == 1


async def test_a_tool_the_provider_does_not_serve_is_a_failed_result_of_kind_unknown_tool(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    async with running_runner(runner_settings(nats_url, simulator)):
        await publish_invoke(js, make_invoke(tool="image.paint", input={"prompt": "a cat"}))
        result = read_result(await results.next())
    assert result.success is False
    assert result.error is not None
    assert result.error.kind == "unknown_tool"
    assert result.error.retryable is False
    assert (await simulator_stats(simulator))["calls"] == 0


def _wrong_type_envelope() -> bytes:
    return encode_envelope(new_envelope("omni.tool.result.v1", "someone", {"run_id": "r"}))


def _invalid_payload_envelope() -> bytes:
    return encode_envelope(new_envelope("omni.tool.invoke.v1", "someone", {"run_id": "r", "tool": 3}))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"\x00\xffnot json at all", "not an event envelope", id="garbage"),
        pytest.param(_wrong_type_envelope(), "unexpected event type", id="wrong-type"),
        pytest.param(_invalid_payload_envelope(), "not a omni.tool.invoke.v1 payload", id="invalid-payload"),
    ],
)
async def test_a_malformed_work_message_is_dead_lettered_and_not_redelivered(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext, body: bytes, reason: str
) -> None:
    letters = await open_deadletters(js, subjects.deadletter(MALFORMED_KIND))
    async with running_runner(runner_settings(nats_url, simulator)) as runner:
        await publish_raw(js, body)
        letter = read_deadletter(await letters.next())
        # Terminated: gone from the work queue instead of coming back after ack_wait.
        await wait_for(lambda: work_drained(js), message="malformed work terminated")
        assert runner.metric("omni_toolrunner_deadletters_total", provider=PROVIDER, kind=MALFORMED_KIND) == 1
    assert letter.kind == MALFORMED_KIND
    assert reason in letter.reason
    assert letter.original_subject == subjects.tool_invoke(PROVIDER)
    assert letter.stream_seq == 1
    assert await stream_messages(js, streams.TOOL_RESULTS.name) == 0


async def test_work_that_cannot_be_answered_by_its_last_delivery_is_dead_lettered_and_terminated(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    letters = await open_deadletters(js, subjects.deadletter(EXHAUSTED_KIND))
    invoke = make_invoke()
    async with running_runner(runner_settings(nats_url, simulator, max_deliver=2)) as runner:
        # Results cannot be published any more: every delivery fails after the provider call.
        await js.delete_stream(streams.TOOL_RESULTS.name)
        await publish_invoke(js, invoke)
        msg = await letters.next()
        # Terminated: gone from the work queue instead of sitting there undeliverable.
        await wait_for(lambda: work_drained(js), message="exhausted work terminated")
        handed_back = runner.metric("omni_toolrunner_handback_total", provider=PROVIDER, reason="nats_error")
        exhausted = runner.metric("omni_toolrunner_deadletters_total", provider=PROVIDER, kind=EXHAUSTED_KIND)
    letter = read_deadletter(msg)
    assert letter.kind == EXHAUSTED_KIND
    assert letter.reason.startswith("delivered 2 times (max_deliver)")
    assert "NATS failed" in letter.reason
    assert letter.original_subject == subjects.tool_invoke(PROVIDER)
    assert read_invoke(letter.original_body) == invoke
    assert letter.stream_seq == 1
    assert msg.headers is not None
    assert msg.headers[HDR_MSG_ID] == f"{EXHAUSTED_KIND}:{subjects.tool_invoke(PROVIDER)}:1"
    assert handed_back == 1
    assert exhausted == 1
    # The first delivery's result was stored, so the second did not call the provider again.
    assert (await simulator_stats(simulator))["calls"] == 1
    consumer = streams.tool_runner_consumer(PROVIDER)
    info = await js.consumer_info(consumer.stream, consumer.durable)
    assert info.config.max_deliver == 2


async def test_work_of_a_runner_killed_mid_call_is_redelivered_to_another_runner_without_a_second_side_effect(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    invoke = make_invoke()
    # The first call is slow; the simulator records its side effect before it answers.
    simulator.state.add_fault(FaultSpec(delay_ms=30_000, times=1))
    first = runner_settings(nats_url, simulator, ack_wait_s=1.0)
    second = runner_settings(nats_url, simulator, ack_wait_s=1.0)

    async with running_runner(first) as doomed:
        await publish_invoke(js, invoke)
        await wait_for(lambda: simulator.state.calls == 1, message="first runner called the provider")
        await doomed.kill()

    async with running_runner(second):
        result = read_result(await results.next(timeout=20))
        await wait_for(lambda: work_drained(js), message="redelivered work acknowledged")

    assert result.success is True
    assert result.runner == second.instance
    stats = await simulator_stats(simulator)
    assert stats["by_key"] == {invoke.idempotency_key: 2}
    assert stats["side_effects"] == 1
    assert stats["duplicates"] == 1


async def test_in_progress_acks_keep_a_slow_call_from_being_redelivered_to_another_replica(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    invoke = make_invoke()
    simulator.state.add_fault(FaultSpec(delay_ms=3_000, times=1))  # three times the ack wait
    async with (
        running_runner(runner_settings(nats_url, simulator, ack_wait_s=1.0)),
        running_runner(runner_settings(nats_url, simulator, ack_wait_s=1.0)),
    ):
        await publish_invoke(js, invoke)
        assert read_result(await results.next()).success is True
        await wait_for(lambda: work_drained(js), message="work acknowledged")
    assert (await simulator_stats(simulator))["by_key"] == {invoke.idempotency_key: 1}


async def test_shutdown_lets_a_running_invoke_finish_and_publish_its_result(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    simulator.state.add_fault(FaultSpec(delay_ms=1_000, times=1))
    async with running_runner(runner_settings(nats_url, simulator, shutdown_grace_s=10.0)) as runner:
        await publish_invoke(js, make_invoke())
        await wait_for(lambda: simulator.state.calls == 1, message="provider called")
        await runner.stop()
        assert not runner.task.cancelled()
    assert read_result(await results.next(timeout=1)).success is True
    assert await work_drained(js)


async def test_an_invoke_span_continues_the_trace_with_gen_ai_attributes(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    results = await open_results(js)
    invoke = make_invoke()
    async with running_runner(runner_settings(nats_url, simulator), tracer_provider=tracer_provider):
        await publish_invoke(js, invoke, traceparent=TRACEPARENT)
        msg = await results.next()

    spans = [s for s in exporter.get_finished_spans() if s.name == "tool.invoke nlu.analyze"]
    assert len(spans) == 1
    span = spans[0]
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_SPAN_ID
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == PROVIDER
    assert attributes["gen_ai.request.model"] == "openai/gpt-4o-mini"
    assert attributes["gen_ai.response.model"]
    assert int(attributes["gen_ai.usage.input_tokens"]) > 0  # type: ignore[arg-type]
    assert int(attributes["gen_ai.usage.output_tokens"]) > 0  # type: ignore[arg-type]
    assert attributes["omni.run_id"] == invoke.run_id
    assert attributes["omni.step"] == invoke.step
    assert attributes["omni.attempt"] == invoke.attempt
    assert attributes["omni.tool"] == "nlu.analyze"
    # The result carries the trace on from the invoke span.
    assert msg.headers is not None
    assert msg.headers[HDR_TRACEPARENT].split("-")[1] == TRACE_ID
    assert msg.headers[HDR_TRACEPARENT].split("-")[2] == format(span.context.span_id, "016x")


async def test_a_runner_without_an_api_key_is_not_ready_and_says_why(
    nats_url: str, simulator: RunningSimulator
) -> None:
    settings = runner_settings(nats_url, simulator, openrouter_api_key=None)
    async with running_runner(settings, expect_ready=False) as runner:
        problems = await runner.ctx.health.readiness()
    assert problems == {"provider": "OPENROUTER_API_KEY is not set"}


async def test_replicas_share_the_work_of_one_durable_consumer(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    invokes = [make_invoke(run_id=f"run-{i}") for i in range(40)]
    simulator.state.latency_ms = 20
    async with (
        running_runner(runner_settings(nats_url, simulator, fetch_batch=2, max_concurrency=4)) as a,
        running_runner(runner_settings(nats_url, simulator, fetch_batch=2, max_concurrency=4)) as b,
    ):
        await asyncio.gather(*(publish_invoke(js, invoke) for invoke in invokes))
        seen = {read_result(await results.next()).run_id for _ in invokes}
        await wait_for(lambda: work_drained(js), message="all work acknowledged")
        served = {
            name: runner.metric(
                "omni_toolrunner_invocations_total", tool="nlu.analyze", provider=PROVIDER, outcome="success"
            )
            for name, runner in (("a", a), ("b", b))
        }
    assert seen == {invoke.run_id for invoke in invokes}
    assert served["a"] + served["b"] == len(invokes)
    assert served["a"] > 0
    assert served["b"] > 0


async def test_shutdown_gives_back_work_waiting_for_a_slot_and_another_runner_answers_it(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    invokes = [make_invoke(run_id=f"run-{i}") for i in range(3)]
    simulator.state.add_fault(FaultSpec(delay_ms=1_000, times=1))
    one_at_a_time = runner_settings(nats_url, simulator, max_concurrency=1, fetch_batch=3)
    async with running_runner(one_at_a_time) as runner:
        for invoke in invokes:
            await publish_invoke(js, invoke)
        await wait_for(lambda: simulator.state.calls == 1, message="first invoke running")
        # One running, the next fetched and waiting for the only slot (the third may not be fetched yet).
        await wait_for(lambda: _held(runner) >= 2, message="work waiting for a slot")
        held = _held(runner)
        await runner.stop()
        handed_back = runner.metric("omni_toolrunner_handback_total", provider=PROVIDER, reason="shutdown")
    assert handed_back == held - 1
    first = read_result(await results.next(timeout=1))
    assert first.success is True

    async with running_runner(runner_settings(nats_url, simulator)):
        rest = {read_result(await results.next()).run_id for _ in range(2)}
        await wait_for(lambda: work_drained(js), message="handed-back work acknowledged")
    assert rest | {first.run_id} == {invoke.run_id for invoke in invokes}
    assert (await simulator_stats(simulator))["side_effects"] == 3


def _held(runner: RunningRunner) -> float:
    return runner.metric("omni_toolrunner_in_flight", provider=PROVIDER)


async def test_the_shared_consumer_takes_the_configured_ack_wait(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    consumer = streams.tool_runner_consumer(PROVIDER)
    for ack_wait_s in (2.5, 4.0):
        async with running_runner(runner_settings(nats_url, simulator, ack_wait_s=ack_wait_s)):
            info = await js.consumer_info(consumer.stream, consumer.durable)
        assert info.config.ack_wait == ack_wait_s
        assert info.config.filter_subject == subjects.tool_invoke(PROVIDER)


async def test_a_provider_failing_again_and_again_opens_the_circuit_and_is_not_called(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    simulator.state.add_fault(FaultSpec(status=503, message="overloaded"))
    settings = runner_settings(nats_url, simulator, circuit_threshold=2, circuit_cooldown_s=60)
    async with running_runner(settings):
        outcomes = []
        for _ in range(4):
            await publish_invoke(js, make_invoke())
            outcomes.append(read_result(await results.next()))
    kinds = [r.error.kind for r in outcomes if r.error is not None]
    assert kinds == ["server", "server", "unavailable", "unavailable"]
    assert outcomes[2].error is not None
    assert "circuit open" in outcomes[2].error.message
    assert outcomes[2].error.retryable is True
    # The open circuit kept the last two invokes from reaching the provider.
    assert (await simulator_stats(simulator))["calls"] == 2


async def test_the_provider_concurrency_limit_holds_across_replicas_and_excess_work_waits(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    simulator.state.latency_ms = 150
    settings = runner_settings(nats_url, simulator, provider_concurrency=2)
    async with running_runner(settings), running_runner(settings):
        for _ in range(8):
            await publish_invoke(js, make_invoke())
        answered = [read_result(await results.next()) for _ in range(8)]
    assert all(r.success for r in answered)
    stats = await simulator_stats(simulator)
    assert stats["calls"] == 8
    assert stats["max_in_flight"] == 2  # two replicas with room for 32 each, yet two at a time


async def test_the_shared_rate_limit_spreads_calls_over_windows_and_excess_work_waits(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    window_s = 1.0
    settings = runner_settings(nats_url, simulator, requests_per_minute=3, rate_window_s=window_s)
    async with running_runner(settings) as first, running_runner(settings) as second:
        await asyncio.sleep(window_s - time.time() % window_s + 0.02)  # start as a window opens
        started = time.monotonic()
        for _ in range(9):
            await publish_invoke(js, make_invoke())
        answered = [read_result(await results.next()) for _ in range(9)]
        elapsed = time.monotonic() - started
        waited = sum(
            runner.metric("omni_toolrunner_rate_limited_total", provider="openrouter", outcome="waited")
            for runner in (first, second)
        )
    assert all(r.success for r in answered), [r.error for r in answered if not r.success]
    assert (await simulator_stats(simulator))["calls"] == 9
    # Three per window across both replicas: nine calls need the two windows after the first, and
    # the calls beyond the first window's three waited for theirs (none failed). (A call that only
    # arrives once its window is open does not wait, so a slow start may count fewer than six.)
    assert elapsed >= 2 * window_s - 0.1
    assert waited >= 3


async def test_work_arriving_at_idle_replicas_is_called_once_though_pulls_outlast_the_ack_wait(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    # A pull request lingers 8 s, the ack wait is 2.5 s. Work that arrives during a pull must be
    # handed over (and reported in progress) at once: held in the client until the pull ends, it
    # was redelivered to the other replica and the provider was called twice.
    results = await open_results(js)
    settings = runner_settings(nats_url, simulator, ack_wait_s=2.5, fetch_timeout_s=8.0, fetch_batch=10)
    invokes = [make_invoke() for _ in range(3)]
    async with running_runner(settings), running_runner(settings):
        for invoke in invokes:
            await asyncio.sleep(0.5)  # both replicas idle, each with a pull request lingering
            await publish_invoke(js, invoke)
        answered = {read_result(await results.next()).idempotency_key for _ in invokes}
        await wait_for(lambda: work_drained(js), timeout=30, message="all work acknowledged")
    assert answered == {invoke.idempotency_key for invoke in invokes}
    assert (await simulator_stats(simulator))["calls"] == len(invokes)


async def test_a_rate_limit_wait_longer_than_the_deadline_answers_rate_limited_with_retry_after(
    nats_url: str, simulator: RunningSimulator, js: JetStreamContext
) -> None:
    results = await open_results(js)
    window_s = 3.0
    settings = runner_settings(nats_url, simulator, requests_per_minute=1, rate_window_s=window_s)
    async with running_runner(settings) as runner:
        # Start just after a window opens, so the next one is more than the deadline away.
        await asyncio.sleep(window_s - time.time() % window_s + 0.05)
        await publish_invoke(js, make_invoke(timeout_ms=500))
        await publish_invoke(js, make_invoke(timeout_ms=500))
        answered = sorted([read_result(await results.next()) for _ in range(2)], key=lambda r: r.success)
        refused = runner.metric(
            "omni_toolrunner_rate_limited_total", provider="openrouter", outcome="refused"
        )
    failed, succeeded = answered
    assert succeeded.success
    assert failed.error is not None
    assert (failed.error.kind, failed.error.retryable) == ("rate_limited", True)
    assert failed.error.retry_after_s is not None
    assert 1.0 < failed.error.retry_after_s <= window_s
    assert refused == 1
    assert (await simulator_stats(simulator))["calls"] == 1
