"""/deadletters: real DeadLetter envelopes in the real OMNI_DEADLETTERS stream, listed newest first,
read one at a time, and redriven to their original subject (once)."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from omni_contract import events, streams, subjects
from omni_contract.envelope import HDR_MSG_ID, encode_envelope, new_envelope
from omni_gateway.deadletters import DeadLetterStore
from omni_gateway.errors import ApiError
from omni_testkit import subscribed

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
STREAM = streams.DEADLETTERS.name
AT = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)


async def _dead_letter(
    nc: NATS,
    kind: str = "trigger.rejected",
    *,
    original_subject: str = "app.greet.requested",
    body: bytes = b'{"nom": "Ada"}',
    reason: str = "payload does not match the trigger schema (payload.name)",
) -> int:
    """Dead-letter ``body`` as the services do; the dead letter's id (its stream sequence)."""
    try:
        text, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(body).decode("ascii"), "base64"
    letter = events.DeadLetter(
        kind=kind,
        reason=reason,
        original_subject=original_subject,
        original_body=text,
        body_encoding=encoding,
        errors=[{"field": "payload.name", "message": "required"}],
        stream_seq=17,
        at=AT,
    )
    envelope = new_envelope(events.DEADLETTER_V1, "workflow-engine", letter)
    ack = await nc.jetstream().publish(subjects.deadletter(kind), encode_envelope(envelope), stream=STREAM)
    return ack.seq


async def _ids(gateway: Client, query: str = "") -> tuple[list[int], str | None]:
    response = await gateway.get(f"/deadletters{query}")
    assert response.status == 200, await response.text()
    page = await response.json()
    return [letter["id"] for letter in page["deadLetters"]], page["nextCursor"]


async def test_dead_letters_are_listed_newest_first_a_page_at_a_time(gateway: Client, nc: NATS) -> None:
    ids = [await _dead_letter(nc) for _ in range(5)]

    first, cursor = await _ids(gateway, "?limit=2")
    second, cursor2 = await _ids(gateway, f"?limit=2&cursor={cursor}")
    third, cursor3 = await _ids(gateway, f"?limit=2&cursor={cursor2}")

    assert first + second + third == ids[::-1]
    assert [len(first), len(second), len(third)] == [2, 2, 1]
    assert cursor3 is None
    everything, none = await _ids(gateway)
    assert everything == ids[::-1]
    assert none is None


async def test_an_empty_stream_lists_no_dead_letters(gateway: Client, nc: NATS) -> None:
    assert await _ids(gateway) == ([], None)


async def test_dead_letters_are_filtered_by_kind(gateway: Client, nc: NATS) -> None:
    rejected = []
    for index in range(40):
        if index in (3, 21, 22):
            rejected.append(await _dead_letter(nc, "trigger.rejected"))
        else:
            await _dead_letter(nc, "result.unprocessable", original_subject="omni.tool.result.mock")

    first, cursor = await _ids(gateway, "?kind=trigger.rejected&limit=2")
    rest, end = await _ids(gateway, f"?kind=trigger.rejected&limit=2&cursor={cursor}")

    assert first == rejected[:0:-1]
    assert rest == rejected[:1]
    assert end is None
    page = await (await gateway.get("/deadletters?kind=result.unprocessable&limit=500")).json()
    assert len(page["deadLetters"]) == 37
    assert {letter["kind"] for letter in page["deadLetters"]} == {"result.unprocessable"}
    assert await _ids(gateway, "?kind=nothing.here") == ([], None)


async def test_a_dead_letter_is_read_by_its_id(gateway: Client, nc: NATS) -> None:
    seq = await _dead_letter(nc)

    response = await gateway.get(f"/deadletters/{seq}")

    assert response.status == 200
    letter = await response.json()
    stored_at = letter.pop("storedAt")
    assert datetime.fromisoformat(stored_at).tzinfo is not None
    assert letter == {
        "id": seq,
        "subject": "omni.deadletter.trigger_rejected",
        "source": "workflow-engine",
        "kind": "trigger.rejected",
        "reason": "payload does not match the trigger schema (payload.name)",
        "originalSubject": "app.greet.requested",
        "originalBody": '{"nom": "Ada"}',
        "bodyEncoding": "utf-8",
        "errors": [{"field": "payload.name", "message": "required"}],
        "streamSeq": 17,
        "at": "2026-02-03T04:05:06Z",
    }


@pytest.mark.parametrize("dead_letter_id", ["99", "0", "-1", "abc", "1.5", "9" * 30])
async def test_an_unknown_dead_letter_is_404(gateway: Client, nc: NATS, dead_letter_id: str) -> None:
    await _dead_letter(nc)

    for path in (f"/deadletters/{dead_letter_id}", f"/deadletters/{dead_letter_id}/redrive"):
        response = await (gateway.get(path) if path.endswith(dead_letter_id) else gateway.post(path))
        assert response.status == 404, path
        assert (await response.json())["error"]["code"] == "not_found"


async def test_redrive_delivers_the_original_body_again_then_the_dead_letter_is_gone(
    gateway: Client, nc: NATS
) -> None:
    seq = await _dead_letter(nc)
    received: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        received.put_nowait(msg)

    sub = await nc.subscribe("app.greet.requested", cb=on_msg)
    await subscribed(nc)  # the gateway publishes over its own connection

    response = await gateway.post(f"/deadletters/{seq}/redrive")

    assert response.status == 202
    redriven = await response.json()
    assert redriven["id"] == seq
    assert redriven["subject"] == "app.greet.requested"
    assert redriven["stream"] == streams.APP_EVENTS.name
    assert redriven["duplicate"] is False
    msg = await asyncio.wait_for(received.get(), timeout=5)
    assert msg.data == b'{"nom": "Ada"}'
    assert msg.headers is not None
    assert msg.headers[HDR_MSG_ID] == f"redrive:{seq}"
    stored = await nc.jetstream().get_msg(streams.APP_EVENTS.name, seq=redriven["seq"])
    assert stored.data == b'{"nom": "Ada"}'
    assert (await gateway.get(f"/deadletters/{seq}")).status == 404
    again = await gateway.post(f"/deadletters/{seq}/redrive")
    assert again.status == 404
    assert await _ids(gateway) == ([], None)
    await sub.unsubscribe()


async def test_redrive_of_a_binary_body_delivers_the_bytes(gateway: Client, nc: NATS) -> None:
    body = b"\xff\x00binary\x80"
    seq = await _dead_letter(nc, "tool.invoke.malformed", original_subject="omni.tool.invoke.mock", body=body)
    letter = await (await gateway.get(f"/deadletters/{seq}")).json()
    assert letter["bodyEncoding"] == "base64"

    response = await gateway.post(f"/deadletters/{seq}/redrive")

    assert response.status == 202
    redriven = await response.json()
    assert redriven["stream"] == streams.TOOL_WORK.name
    stored = await nc.jetstream().get_msg(streams.TOOL_WORK.name, seq=redriven["seq"])
    assert stored.data == body


async def test_a_redrive_retried_after_the_publish_is_stored_once(gateway: Client, nc: NATS) -> None:
    seq = await _dead_letter(nc)
    # As if an earlier redrive had published but not deleted the dead letter (its answer was lost).
    earlier = await nc.jetstream().publish(
        "app.greet.requested", b'{"nom": "Ada"}', headers={HDR_MSG_ID: f"redrive:{seq}"}
    )

    response = await gateway.post(f"/deadletters/{seq}/redrive")

    assert response.status == 202
    redriven = await response.json()
    assert redriven["duplicate"] is True
    assert redriven["seq"] == earlier.seq
    assert (await gateway.get(f"/deadletters/{seq}")).status == 404


async def test_redriven_dead_letters_leave_gaps_the_list_skips(gateway: Client, nc: NATS) -> None:
    ids = [await _dead_letter(nc) for _ in range(6)]
    for seq in ids[1:5]:
        assert (await gateway.post(f"/deadletters/{seq}/redrive")).status == 202

    first, cursor = await _ids(gateway, "?limit=1")
    second, end = await _ids(gateway, f"?limit=1&cursor={cursor}")

    assert first + second == [ids[5], ids[0]]
    assert end is None


async def test_a_dead_letter_no_stream_takes_any_more_is_409_and_kept(gateway: Client, nc: NATS) -> None:
    seq = await _dead_letter(nc, original_subject="legacy.orders.created")

    response = await gateway.post(f"/deadletters/{seq}/redrive")

    assert response.status == 409
    error = (await response.json())["error"]
    assert error["code"] == "not_redrivable"
    assert "legacy.orders.created" in error["message"]
    assert (await gateway.get(f"/deadletters/{seq}")).status == 200


async def test_an_unreadable_message_in_the_stream_is_listed_but_not_redriven(
    gateway: Client, nc: NATS
) -> None:
    ack = await nc.jetstream().publish(subjects.deadletter("mystery"), b"not an envelope", stream=STREAM)

    [letter] = (await (await gateway.get("/deadletters")).json())["deadLetters"]
    response = await gateway.post(f"/deadletters/{ack.seq}/redrive")

    assert letter["id"] == ack.seq
    assert letter["kind"] == "mystery"
    assert letter["originalBody"] == "not an envelope"
    assert letter["reason"].startswith("the dead letter itself cannot be read")
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "not_redrivable"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=x", "limit"),
        ("cursor=abc", "cursor"),
        ("cursor=0", "cursor"),
        ("kind=a%20b", "kind"),
        ("kind=a.*", "kind"),
    ],
)
async def test_a_bad_dead_letter_query_is_400_naming_the_parameter(
    gateway: Client, nc: NATS, query: str, field: str
) -> None:
    response = await gateway.get(f"/deadletters?{query}")

    assert response.status == 400
    assert (await response.json())["error"]["details"][0]["field"] == field


async def test_without_the_stream_dead_letters_are_503(gateway: Client, nc: NATS) -> None:
    await nc.jetstream().delete_stream(STREAM)

    for response in (
        await gateway.get("/deadletters"),
        await gateway.get("/deadletters/1"),
        await gateway.post("/deadletters/1/redrive"),
    ):
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "deadletters_unavailable"


async def test_a_redrive_that_lost_a_race_for_the_same_dead_letter_is_404(gateway: Client, nc: NATS) -> None:
    seq = await _dead_letter(nc)
    js = nc.jetstream()

    class RivalRedrivesFirst:
        """The JetStream context, except that another redrive deletes the letter just before us."""

        def __getattr__(self, name: str) -> Any:
            return getattr(js, name)

        async def delete_msg(self, stream_name: str, seq: int) -> bool:
            await js.delete_msg(stream_name, seq)
            return await js.delete_msg(stream_name, seq)

    with pytest.raises(ApiError) as caught:
        await DeadLetterStore(cast(JetStreamContext, RivalRedrivesFirst())).redrive(seq, timeout_s=2)

    assert caught.value.status == 404
    assert (await gateway.get(f"/deadletters/{seq}")).status == 404
