from __future__ import annotations

import nats
import nats.errors
import pytest
from nats.aio.msg import Msg
from omni_testkit import subscribed

pytestmark = pytest.mark.integration


async def test_after_subscribed_another_connection_always_finds_the_responder(nats_url: str) -> None:
    # With nc.flush() alone about one fresh connection in a hundred found no responder here (the
    # flush's PING overtook the SUB still in the client's buffer).
    responder = await nats.connect(nats_url)
    no_responder = 0

    async def answer(msg: Msg) -> None:
        await msg.respond(b"ok")

    try:
        for i in range(300):
            caller = await nats.connect(nats_url)
            sub = await responder.subscribe(f"omni.test.subscribed.{i}", cb=answer)
            await subscribed(responder)
            try:
                await caller.request(f"omni.test.subscribed.{i}", b"", timeout=5)
            except nats.errors.NoRespondersError:
                no_responder += 1
            finally:
                await sub.unsubscribe()
                await caller.close()
    finally:
        await responder.close()

    assert no_responder == 0
