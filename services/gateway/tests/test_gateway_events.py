"""POST /events/{subject}: application events stored in JetStream for callers without NATS."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client as NATS
from omni_contract import streams
from omni_contract.envelope import HDR_MSG_ID, decode_envelope

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


async def test_an_event_lands_in_the_app_events_stream_as_a_cloudevent(gateway: Client, nc: NATS) -> None:
    response = await gateway.post(
        "/events/app.coach.session.start", json={"userId": "u1"}, headers={"ce-id": "evt-1"}
    )

    assert response.status == 202
    accepted = await response.json()
    assert accepted == {
        "id": "evt-1",
        "subject": "app.coach.session.start",
        "stream": streams.APP_EVENTS.name,
        "seq": 1,
        "duplicate": False,
    }
    stored = await nc.jetstream().get_msg(streams.APP_EVENTS.name, accepted["seq"])
    assert stored.subject == "app.coach.session.start"
    assert stored.headers is not None
    assert stored.headers[HDR_MSG_ID] == "evt-1"
    envelope = decode_envelope(stored.data or b"")
    assert (envelope.id, envelope.type, envelope.source) == (
        "evt-1",
        "app.coach.session.start",
        "omni-gateway",
    )
    assert bytes(envelope.data) == b'{"userId":"u1"}'


async def test_a_repeated_idempotency_key_is_stored_once(gateway: Client, nc: NATS) -> None:
    first = await gateway.post("/events/app.a.b", json={"n": 1}, headers={"Idempotency-Key": "k-1"})
    again = await gateway.post("/events/app.a.b", json={"n": 1}, headers={"Idempotency-Key": "k-1"})

    assert (await first.json())["duplicate"] is False
    repeated = await again.json()
    assert repeated["duplicate"] is True
    assert repeated["seq"] == (await first.json())["seq"]
    info = await nc.jetstream().stream_info(streams.APP_EVENTS.name)
    assert info.state.messages == 1


async def test_an_event_without_an_id_gets_one(gateway: Client, nc: NATS) -> None:
    first = await (await gateway.post("/events/app.a.b", json={})).json()
    second = await (await gateway.post("/events/app.a.b", json={})).json()

    assert first["id"] != second["id"]
    assert second["seq"] == first["seq"] + 1


@pytest.mark.parametrize(
    "subject", ["omni.run.x", "app.", "app.*", "app.a.>", "app..a", "app.a.", "app.a%20b", "app", "x" * 300]
)
async def test_an_event_on_a_subject_outside_app_is_400_naming_subject(gateway: Client, subject: str) -> None:
    response = await gateway.post(f"/events/{subject}", json={})

    assert response.status == 400
    assert (await response.json())["error"]["details"][0]["field"] == "subject"


async def test_an_event_id_with_spaces_is_400_naming_the_header(gateway: Client) -> None:
    response = await gateway.post("/events/app.a", json={}, headers={"ce-id": "a b"})

    assert response.status == 400
    assert (await response.json())["error"]["details"][0]["field"] == "ce-id"


async def test_an_event_body_that_is_not_an_object_is_400(gateway: Client) -> None:
    response = await gateway.post("/events/app.a", data=b"[1]")

    assert response.status == 400
    assert (await response.json())["error"]["details"][0]["field"] == "body"
