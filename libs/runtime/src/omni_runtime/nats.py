"""NATS connection and idempotent JetStream provisioning from the contract's specs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from omni_contract.streams import ConsumerSpec, Retention, StreamSpec

log = logging.getLogger(__name__)


async def connect(
    url: str,
    name: str,
    *,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
) -> NATS:
    """Connect with unlimited reconnects: a service outlives a NATS restart."""

    async def _disconnected() -> None:
        log.warning("nats disconnected")
        if on_disconnect:
            await on_disconnect()

    async def _reconnected() -> None:
        log.info("nats reconnected")

    async def _error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    return await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        disconnected_cb=_disconnected,
        reconnected_cb=_reconnected,
        error_cb=_error,
    )


def _stream_config(spec: StreamSpec) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=(
            RetentionPolicy.WORK_QUEUE if spec.retention is Retention.WORK_QUEUE else RetentionPolicy.LIMITS
        ),
        storage=StorageType.FILE,
        max_age=spec.max_age_s or None,
        # The server refuses a de-duplication window longer than the stream keeps messages.
        duplicate_window=min(spec.duplicate_window_s, spec.max_age_s)
        if spec.max_age_s
        else spec.duplicate_window_s,
    )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec) -> None:
    """Create the stream, or bring an existing one to the spec. Safe for replicas starting together."""
    config = _stream_config(spec)
    try:
        await js.stream_info(spec.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except nats.js.errors.BadRequestError:
            pass  # another replica created it between our two calls: fall through to update
    await js.update_stream(config)


async def ensure_streams(js: JetStreamContext, specs: tuple[StreamSpec, ...] | list[StreamSpec]) -> None:
    for spec in specs:
        await ensure_stream(js, spec)


def consumer_config(spec: ConsumerSpec) -> ConsumerConfig:
    filters = list(spec.filter_subjects)
    return ConsumerConfig(
        durable_name=spec.durable,
        description=spec.description or None,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
    )


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Create the durable consumer (idempotent: the same config again is accepted by the server)."""
    await js.add_consumer(spec.stream, consumer_config(spec))


async def pull_subscription(js: JetStreamContext, spec: ConsumerSpec) -> JetStreamContext.PullSubscription:
    await ensure_consumer(js, spec)
    return await js.pull_subscribe_bind(spec.durable, stream=spec.stream)


async def ensure_key_value(
    js: JetStreamContext, bucket: str, *, ttl_s: float | None, description: str
) -> KeyValue:
    """Open the KV bucket, creating it when missing (a bucket made with other settings is used as
    is). ``ttl_s`` None: entries never expire."""
    config = KeyValueConfig(bucket=bucket, description=description, ttl=ttl_s, storage=StorageType.FILE)
    try:
        return await js.create_key_value(config)
    except BadRequestError as exc:
        log.warning("KV bucket %s exists with another configuration (%s); using it as is", bucket, exc)
        return await js.key_value(bucket)
