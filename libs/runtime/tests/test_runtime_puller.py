"""The puller against a real nats-server: work is handed over the moment it arrives, never more
than one batch is held beyond what is taken, and pulling goes on after requests expire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from omni_contract.streams import ConsumerSpec, StreamSpec
from omni_runtime import nats as omni_nats
from omni_testkit import unique_name, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def jetstream(nats_url: str) -> AsyncIterator[tuple[NATS, JetStreamContext, ConsumerSpec]]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    name = unique_name("work")
    await omni_nats.ensure_stream(
        js, StreamSpec(name=name.upper(), subjects=(f"{name}.>",), description="puller test")
    )
    spec = ConsumerSpec(stream=name.upper(), durable=name, filter_subjects=(f"{name}.>",), ack_wait_s=30)
    try:
        yield nc, js, spec
    finally:
        await nc.close()


def subject_of(spec: ConsumerSpec, token: str) -> str:
    return spec.filter_subjects[0].replace(">", token)


async def test_messages_coming_close_together_after_a_quiet_moment_are_each_handed_over_at_once(
    jetstream: tuple[NATS, JetStreamContext, ConsumerSpec],
) -> None:
    # The pattern of a run's steps: one result, then two close together, then the next step's,
    # after a quiet moment longer than a pull request lasts. With nats-py's fetch(100, timeout=5)
    # in this loop the last one waited 5 s (a fetch's timeout); here it comes at once.
    _, js, spec = jetstream
    pull = await omni_nats.puller(js, spec, batch=100, expires_s=5)
    loop = asyncio.get_running_loop()
    sent: dict[bytes, float] = {}
    waited: dict[bytes, float] = {}
    handled: asyncio.Queue[bytes] = asyncio.Queue()

    async def consume() -> None:
        while True:
            msgs = await pull.take(max_wait_s=5)
            now = loop.time()
            for msg in msgs:
                waited[msg.data] = now - sent[msg.data]
                await msg.ack()
            await asyncio.sleep(0.005)  # handling the batch
            for msg in msgs:
                handled.put_nowait(msg.data)

    async def publish(data: bytes) -> None:
        sent[data] = loop.time()
        await js.publish(subject_of(spec, "step"), data)

    consumer = asyncio.create_task(consume())
    try:
        for round_ in range(1):
            await asyncio.sleep(6)  # a quiet moment: pull requests expire and are renewed
            await publish(b"%da" % round_)
            await asyncio.wait_for(handled.get(), timeout=20)
            await publish(b"%db" % round_)
            await asyncio.sleep(0.0015)
            await publish(b"%dc" % round_)
            for _ in range(2):
                await asyncio.wait_for(handled.get(), timeout=20)
            await asyncio.sleep(0.008)
            await publish(b"%dd" % round_)
            await asyncio.wait_for(handled.get(), timeout=20)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await pull.stop()
    slowest = max(waited.values())
    assert len(waited) == 4
    assert slowest < 2.5, waited  # far inside a pull request's 5 s


async def test_a_backlog_is_taken_in_batches_and_no_more_than_one_batch_is_held(
    jetstream: tuple[NATS, JetStreamContext, ConsumerSpec],
) -> None:
    _, js, spec = jetstream
    for i in range(25):
        await js.publish(subject_of(spec, str(i)), str(i).encode())
    # Requests last 20 s: a request that delivered its whole batch must be followed by the next at
    # once (the server sends no status for it), not when its time runs out.
    pull = await omni_nats.puller(js, spec, batch=10, expires_s=20)
    first = await pull.take(max_wait_s=10)
    assert 1 <= len(first) <= 10
    # Whatever else this replica holds is the rest of the same request, and is on view.
    info = await js.consumer_info(spec.stream, spec.durable)
    assert info.num_ack_pending <= 10
    assert len(first) + len(pull.queued()) <= 10
    taken, batch = [*first], first

    async def take_the_rest() -> None:
        nonlocal batch
        while len(taken) < 25:
            for msg in batch:
                await msg.ack()
            batch = await pull.take(max_wait_s=20)
            taken.extend(batch)

    await asyncio.wait_for(take_the_rest(), timeout=10)
    assert sorted(int(m.data) for m in taken) == list(range(25))
    await pull.stop()


async def test_pulling_goes_on_after_requests_expire_with_nothing_to_deliver(
    jetstream: tuple[NATS, JetStreamContext, ConsumerSpec],
) -> None:
    _, js, spec = jetstream
    pull = await omni_nats.puller(js, spec, batch=5, expires_s=0.2)
    assert await pull.take(max_wait_s=1.0) == []  # several requests expired meanwhile
    await js.publish(subject_of(spec, "late"), b"late")
    msgs = await pull.take(max_wait_s=10)
    assert [m.data for m in msgs] == [b"late"]
    await msgs[0].ack()
    await pull.stop()


async def test_messages_queued_at_stop_can_be_given_back_and_are_delivered_again(
    jetstream: tuple[NATS, JetStreamContext, ConsumerSpec],
) -> None:
    _, js, spec = jetstream
    for i in range(3):
        await js.publish(subject_of(spec, str(i)), str(i).encode())
    pull = await omni_nats.puller(js, spec, batch=1, expires_s=5)
    first = await pull.take(max_wait_s=10)
    assert len(first) == 1
    await pull.stop()
    for msg in [*first, *pull.drain_queued()]:
        await msg.nak()
    again = await omni_nats.puller(js, spec, batch=3, expires_s=5)
    seen: list[bytes] = []

    async def all_three() -> bool:
        for msg in await again.take(max_wait_s=1):
            seen.append(msg.data)
            await msg.ack()
        return sorted(seen) == [b"0", b"1", b"2"]

    await wait_for(all_three, timeout=15, message="the given-back message and the rest delivered")
    await again.stop()
