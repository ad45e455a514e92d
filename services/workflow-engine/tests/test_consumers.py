"""The engine's consume loop against real NATS JetStream: failures, retries, dead letters."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg
from omni_contract import events as ev
from omni_contract import streams, subjects
from omni_contract.envelope import decode_envelope, payload_of
from omni_engine.consumers import consume
from omni_runtime import nats as omni_nats
from omni_testkit import wait_for

pytestmark = pytest.mark.integration


async def test_work_that_keeps_failing_is_dead_lettered_with_the_reason(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await omni_nats.ensure_streams(js, streams.ALL_STREAMS)
    letters = await js.subscribe(subjects.deadletter("result.exhausted"), stream=streams.DEADLETTERS.name)
    sub = await omni_nats.puller(js, streams.ENGINE_RESULTS, batch=100)
    attempts = 0

    async def always_fails(msg: Msg) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("the definition is missing")

    stopping = asyncio.Event()
    loop = asyncio.create_task(consume(js, sub, always_fails, stopping, name="result", max_failures=2))
    await js.publish(subjects.tool_result("local"), b'{"not": "looked at"}')
    letter_msg = await letters.next_msg(timeout=15)
    stopping.set()
    await asyncio.wait_for(loop, timeout=10)
    letter = payload_of(decode_envelope(letter_msg.data), ev.DeadLetter)
    assert letter.kind == "result.exhausted"
    assert "failed 2 times" in letter.reason
    assert "the definition is missing" in letter.reason
    assert letter.original_subject == subjects.tool_result("local")
    assert letter.original_body == '{"not": "looked at"}'
    assert attempts == 2
    # Acknowledged once dead-lettered: it is not delivered again. (The server applies an ack
    # asynchronously, so an info request right after it may still count it as pending.)

    async def settled() -> bool:
        info = await js.consumer_info(streams.ENGINE_RESULTS.stream, streams.ENGINE_RESULTS.durable)
        return info.num_ack_pending == 0 and info.num_pending == 0

    await wait_for(settled, timeout=10, message="the dead-lettered message acknowledged")
    assert attempts == 2
    await nc.close()
