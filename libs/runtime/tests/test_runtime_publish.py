"""Publishing to JetStream through ``omni_runtime.publish`` against a real NATS server: the headers
every message carries, duplicates as a flag, and each failure as transient or permanent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from omni_contract.envelope import CONTENT_TYPE, HDR_CONTENT_TYPE, HDR_MSG_ID, HDR_TRACEPARENT
from omni_contract.streams import StreamSpec
from omni_devstack.servers import NatsServer
from omni_runtime import nats as omni_nats
from omni_runtime.publish import (
    NoStream,
    Pipeline,
    Published,
    PublishRefused,
    PublishUnavailable,
    publish,
)
from omni_testkit import unique_name, wait_for
from opentelemetry.sdk.trace import TracerProvider

pytestmark = pytest.mark.integration


@dataclass
class Row:
    """An outbox row, as the engine's relay hands them over."""

    subject: str
    body: bytes
    msg_id: str
    durable: bool
    traceparent: str | None = None


@dataclass
class Names:
    stream: str
    prefix: str  # the stream takes <prefix>.>

    def subject(self, token: str) -> str:
        return f"{self.prefix}.{token}"


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def names(nc: NATS) -> Names:
    """A stream of this test's own (the NATS server may be shared through NATS_URL)."""
    token = unique_name("pub")
    found = Names(stream=token.upper(), prefix=token)
    spec = StreamSpec(name=found.stream, subjects=(f"{found.prefix}.>",), description="publish tests")
    await omni_nats.ensure_stream(nc.jetstream(), spec)
    return found


async def stored(js: JetStreamContext, stream: str, seq: int) -> RawStreamMsg:
    return await js.get_msg(stream, seq=seq)


async def test_an_envelope_carries_its_message_id_content_type_and_the_current_trace(
    nc: NATS, names: Names
) -> None:
    js = nc.jetstream()
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("publishing") as span:
        done = await publish(js, names.subject("a"), b"{}", msg_id="m-1", stream=names.stream)
        trace_id = format(span.get_span_context().trace_id, "032x")

    assert done == Published(stream=names.stream, seq=1, duplicate=False)
    headers = (await stored(js, names.stream, 1)).headers or {}
    assert headers[HDR_MSG_ID] == "m-1"
    assert headers[HDR_CONTENT_TYPE] == CONTENT_TYPE
    assert headers[HDR_TRACEPARENT].split("-")[1] == trace_id


async def test_a_body_that_is_not_an_envelope_claims_no_content_type(nc: NATS, names: Names) -> None:
    js = nc.jetstream()
    await publish(js, names.subject("raw"), b"not json", msg_id="m-raw", envelope=False)

    headers = (await stored(js, names.stream, 1)).headers or {}
    assert headers[HDR_MSG_ID] == "m-raw"
    assert HDR_CONTENT_TYPE not in headers


async def test_a_second_publish_with_the_same_id_is_a_duplicate_not_a_second_message(
    nc: NATS, names: Names
) -> None:
    js = nc.jetstream()
    first = await publish(js, names.subject("a"), b"{}", msg_id="same")
    again = await publish(js, names.subject("a"), b"{}", msg_id="same")

    assert not first.duplicate
    assert again == Published(stream=names.stream, seq=first.seq, duplicate=True)
    assert (await js.stream_info(names.stream)).state.messages == 1


async def test_a_subject_no_stream_takes_is_refused_as_no_stream(nc: NATS, names: Names) -> None:
    subject = f"{names.prefix}_elsewhere.a"
    with pytest.raises(NoStream) as caught:
        await publish(nc.jetstream(), subject, b"{}", msg_id="m", timeout_s=2)

    assert isinstance(caught.value, PublishRefused)
    assert caught.value.subject == subject
    assert str(caught.value) == f"publishing to {subject}: no JetStream stream takes the subject"
    assert isinstance(caught.value.__cause__, nats.js.errors.NoStreamResponseError)


async def test_a_subject_of_another_stream_than_the_expected_one_is_refused(nc: NATS, names: Names) -> None:
    with pytest.raises(PublishRefused) as caught:
        await publish(nc.jetstream(), names.subject("a"), b"{}", msg_id="m", stream="NOT_THIS_ONE")

    assert not isinstance(caught.value, NoStream)
    assert caught.value.reason.startswith("JetStream refused the message: expected stream does not match")


async def test_no_ack_within_the_timeout_is_transient(nc: NATS, names: Names) -> None:
    # Something that takes the message and never acknowledges it, as a JetStream that cannot answer.
    silent = await nc.subscribe(f"{names.prefix}_silent.>")
    subject = f"{names.prefix}_silent.a"
    try:
        with pytest.raises(PublishUnavailable) as caught:
            await publish(nc.jetstream(), subject, b"{}", msg_id="m", timeout_s=0.2)
    finally:
        await silent.unsubscribe()

    assert caught.value.reason == "JetStream did not acknowledge within 0.2 s"
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_a_closed_connection_is_refused(nats_url: str, names: Names) -> None:
    client = await nats.connect(nats_url)
    js = client.jetstream()
    await client.close()

    with pytest.raises(PublishRefused) as caught:
        await publish(js, names.subject("a"), b"{}", msg_id="m")

    assert caught.value.reason == "the NATS connection is closed"


async def test_while_nats_is_away_a_publish_is_transient_and_the_same_publish_lands_once_it_is_back(
    tmp_path: Path,
) -> None:
    server = NatsServer(tmp_path, port_setting=None, monitoring_port_setting=None)
    server.start()
    port = server.port
    again: NatsServer | None = None
    client = await omni_nats.connect(server.url, "publish-test")
    try:
        js = client.jetstream()
        await omni_nats.ensure_stream(js, StreamSpec(name="AWAY", subjects=("away.>",), description="t"))
        server.stop()
        await wait_for(lambda: not client.is_connected, timeout=10, message="the client to notice")
        with pytest.raises(PublishUnavailable):
            await publish(js, "away.a", b"{}", msg_id="m-away", timeout_s=0.3)

        again = NatsServer(tmp_path, port=port, port_setting=None, monitoring_port_setting=None)
        again.start()
        await wait_for(lambda: client.is_connected, timeout=30, message="the client reconnected")
        done = await publish(js, "away.a", b"{}", msg_id="m-away", timeout_s=5)
    finally:
        await client.close()
        if again is not None:
            again.stop()
        server.stop()

    assert done.stream == "AWAY"
    # The try during the outage was buffered by the client and may have landed on reconnecting;
    # either way the stream holds the message once.
    assert done.seq == 1


async def test_a_pipeline_publishes_durable_messages_to_jetstream_and_notices_as_plain_messages(
    nc: NATS, names: Names
) -> None:
    notices: list[Msg] = []

    async def heard(msg: Msg) -> None:
        notices.append(msg)

    listening = await nc.subscribe(f"{names.prefix}_notice.>", cb=heard)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    rows = [
        Row(names.subject("w1"), b'{"n":1}', "w1", durable=True, traceparent=traceparent),
        Row(f"{names.prefix}_notice.a", b'{"n":2}', "n1", durable=False),
        Row(names.subject("w2"), b'{"n":3}', "w2", durable=True),
        Row(names.subject("w1"), b'{"n":1}', "w1", durable=True, traceparent=traceparent),  # a copy
    ]
    try:
        await Pipeline(nc, timeout_s=5).publish(rows)
        await wait_for(lambda: notices, timeout=5, message="the notice")
    finally:
        await listening.unsubscribe()

    js = nc.jetstream()
    assert (await js.stream_info(names.stream)).state.messages == 2  # the copy was a duplicate
    first = (await stored(js, names.stream, 1)).headers or {}
    second = (await stored(js, names.stream, 2)).headers or {}
    assert first == {HDR_MSG_ID: "w1", HDR_CONTENT_TYPE: CONTENT_TYPE, HDR_TRACEPARENT: traceparent}
    assert second == {HDR_MSG_ID: "w2", HDR_CONTENT_TYPE: CONTENT_TYPE}
    assert notices[0].headers == {HDR_MSG_ID: "n1", HDR_CONTENT_TYPE: CONTENT_TYPE}


async def test_a_pipeline_maps_its_failures_like_a_single_publish(nc: NATS, names: Names) -> None:
    pipeline = Pipeline(nc, timeout_s=0.3)
    with pytest.raises(NoStream):
        await pipeline.publish([Row(f"{names.prefix}_elsewhere.a", b"{}", "x", durable=True)])

    silent = await nc.subscribe(f"{names.prefix}_silent.>")
    try:
        with pytest.raises(PublishUnavailable) as caught:
            await pipeline.publish(
                [
                    Row(names.subject("ok"), b"{}", "ok", durable=True),
                    Row(f"{names.prefix}_silent.a", b"{}", "s", durable=True),
                ]
            )
    finally:
        await silent.unsubscribe()
    assert caught.value.reason == "JetStream did not acknowledge 2 messages within 0.3 s"
    assert caught.value.subject == ", ".join(sorted([names.subject("ok"), f"{names.prefix}_silent.a"]))

    # The pipeline still works after failed batches.
    await pipeline.publish([Row(names.subject("after"), b"{}", "after", durable=True)])
    assert (await nc.jetstream().stream_info(names.stream)).state.messages == 2
