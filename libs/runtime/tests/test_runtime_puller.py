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


async def test_a_message_published_while_idle_is_handed_over_before_the_pull_request_expires(
    jetstream: tuple[NATS, JetStreamContext, ConsumerSpec],
) -> None:
    # nats-py's fetch(10, timeout=20) returns this message only after 20 s: having got the first
    # message of a lingering pull, it waits for the rest of the batch until the timeout.
    _, js, spec = jetstream
    pull = await omni_nats.puller(js, spec, batch=10, expires_s=20)
    taking = asyncio.create_task(pull.take(max_wait_s=20))
    await asyncio.sleep(0.3)  # the pull request is now lingering on the server
    await js.publish(subject_of(spec, "one"), b"1")
    loop = asyncio.get_running_loop()
    published_at = loop.time()
    msgs = await asyncio.wait_for(taking, timeout=25)
    handed_over_after = loop.time() - published_at
    assert [m.data for m in msgs] == [b"1"]
    # Far inside the request's 20 s: the message did not wait for a batch to fill.
    assert handed_over_after < 10
    await pull.stop()


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
