"""While NATS is away, the runner keeps the work it holds: a result it cannot store or publish is
tried again in hand, never given back, so an outage far longer than ``max_deliver`` deliveries
neither dead-letters the work nor calls the provider twice; it is answered once NATS is back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from omni_contract import streams
from omni_devstack.servers import NatsServer
from omni_testkit import wait_for
from omni_toolrunner import runner
from omni_toolrunner.providers import ToolCall, ToolOutcome
from test_toolrunner_handler import FakeAdapter, MemoryStore, echo, harness
from toolrunner_harness import PROVIDER, make_invoke, stream_messages, work_drained

pytestmark = pytest.mark.integration

MAX_DELIVER = 2
FAILURES = 25  # many more than MAX_DELIVER


class StoreAwayForAWhile(MemoryStore):
    """A result store whose first ``FAILURES`` writes time out, as a KV put does while NATS is away."""

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0

    async def put(self, idempotency_key: str, body: bytes) -> None:
        self.puts += 1
        if self.puts <= FAILURES:
            raise nats.errors.TimeoutError()
        await super().put(idempotency_key, body)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_NATS_RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(runner, "_NATS_RETRY_CAP_S", 0.05)


async def test_a_result_that_cannot_be_stored_many_times_over_is_kept_and_answered_once_not_exhausted(
    nats_url: str,
) -> None:
    adapter = FakeAdapter()
    store = StoreAwayForAWhile()
    invoke = make_invoke()
    async with harness(nats_url, adapter, store, max_deliver=MAX_DELIVER) as h:
        await h.invoke_no_wait(invoke)
        await wait_for(lambda: h.results, timeout=30, message="the result, once the store answers")
        await wait_for(lambda: work_drained(h.js), timeout=30, message="the work acknowledged")
        info = await h.js.consumer_info(streams.TOOL_WORK.name, h.app.consumer.durable)
        handed_back = h.metric("omni_toolrunner_handback_total", provider=PROVIDER, reason="nats_error")

    assert store.puts == FAILURES + 1
    assert len(adapter.calls) == 1  # the provider was called once, through every failed write
    assert len(h.results) == 1
    assert h.letters == []
    assert handed_back == 0
    assert info.num_redelivered == 0  # kept in hand: never given back, never counted as a delivery


async def test_work_whose_result_publish_fails_through_a_nats_outage_is_answered_once_nats_is_back(
    tmp_path: Path,
) -> None:
    """A real outage: the NATS server stops while the provider answers, so the runner cannot store
    nor publish the result; it comes back on the same port and storage later."""
    first = NatsServer(tmp_path, port_setting=None, monitoring_port_setting=None)
    first.start()
    port = first.port
    answering = asyncio.Event()
    answer = asyncio.Event()

    async def slow(call: ToolCall) -> ToolOutcome:
        answering.set()
        await answer.wait()
        return await echo(call)

    adapter = FakeAdapter(slow)
    invoke = make_invoke()
    again: NatsServer | None = None
    # publish_timeout_s is short so that the outage is many failed publishes.
    async with harness(first.url, adapter, max_deliver=MAX_DELIVER, publish_timeout_s=0.2) as h:
        try:
            await h.invoke_no_wait(invoke)
            await wait_for(answering.is_set, timeout=30, message="the provider called")
            first.stop()
            answer.set()
            app_runner = h.app.runner
            assert app_runner is not None

            def publish_failures() -> int:
                outage = app_runner._outages.get("publishing the result")
                return 0 if outage is None else outage.failures

            await wait_for(
                lambda: publish_failures() > 3 * MAX_DELIVER,
                timeout=60,
                message="the result publish failing through the outage",
            )
            again = NatsServer(tmp_path, port=port, port_setting=None, monitoring_port_setting=None)
            again.start()
            checker: NATS = await nats.connect(again.url)
            js = checker.jetstream()
            await wait_for(
                lambda: stream_messages(js, streams.TOOL_RESULTS.name),
                timeout=60,
                message="the result, once NATS is back",
            )
            await wait_for(lambda: work_drained(js), timeout=30, message="the work acknowledged")
            results = await stream_messages(js, streams.TOOL_RESULTS.name)
            letters = await stream_messages(js, streams.DEADLETTERS.name)
            await checker.close()
        finally:
            answer.set()
    if again is not None:
        again.stop()

    assert len(adapter.calls) == 1
    assert results == 1
    assert letters == 0


class StoreAway(MemoryStore):
    """A result store whose writes always time out: NATS does not come back before shutdown."""

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0

    async def put(self, idempotency_key: str, body: bytes) -> None:
        self.puts += 1
        raise nats.errors.TimeoutError()


async def test_shutdown_ends_a_result_waiting_for_nats_and_leaves_the_work_in_the_stream(
    nats_url: str,
) -> None:
    adapter = FakeAdapter()
    store = StoreAway()
    async with harness(nats_url, adapter, store, max_deliver=MAX_DELIVER) as h:
        await h.invoke_no_wait(make_invoke())
        await wait_for(lambda: store.puts >= 3, timeout=30, message="the result store failing")
        await asyncio.wait_for(h.app.stop(grace_s=0.2), timeout=10)
        left = await stream_messages(h.js, streams.TOOL_WORK.name)
        puts_at_stop = store.puts

    assert left == 1  # unacknowledged: redelivered after ack_wait, to whichever replica runs then
    assert store.puts == puts_at_stop  # no retry goes on after the shutdown
    assert len(adapter.calls) == 1
    assert h.letters == []
