"""NATS connection and idempotent JetStream provisioning from the contract's specs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
import nats.errors
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


KV_DELETES = ("DEL", "PURGE")
"""``KeyValue.Entry.operation`` of a deleted key (a delete marker, or a purge)."""

WATCH_INACTIVE_S = 30.0
"""How long the server keeps a watch's consumer once nobody reads it: only a backstop for a watch
whose :func:`stop_watch` did not reach the server (nats-py's own default is 5 minutes)."""


async def watch(
    kv: KeyValue, keys: str, *, ignore_deletes: bool = False, inactive_s: float | None = WATCH_INACTIVE_S
) -> KeyValue.KeyWatcher:
    """A watch of ``keys`` (one ordered consumer on the bucket's stream); end it with
    :func:`stop_watch`, which also deletes its consumer. ``inactive_s`` None: nats-py's default
    (5 minutes), for a watch that lasts and must outlive a NATS outage."""
    return await kv.watch(keys, ignore_deletes=ignore_deletes, inactive_threshold=inactive_s)


async def stop_watch(watcher: KeyValue.KeyWatcher) -> None:
    """Stop ``watcher`` and delete its consumer on the server.

    nats-py's ``KeyWatcher.stop()`` only unsubscribes: the ordered consumer stays on the server
    until its inactivity threshold passes, so a watch per request piled up consumers until the
    server's limit refused every new one. Errors are logged, not raised: the threshold still
    removes a consumer whose deletion failed.
    """
    sub = watcher._sub  # nats-py keeps the subscription (and its consumer's name) here
    try:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
    except nats.errors.Error as exc:
        log.debug("stopping a KV watch: %s", exc)
    if sub is None:
        return
    try:
        await sub._js.delete_consumer(sub._stream, sub._consumer)
    except (nats.errors.Error, TimeoutError) as exc:
        log.debug("deleting the consumer %s of a KV watch: %s", sub._consumer, exc)


class KeyFollower:
    """Follows some keys of a KV bucket for as long as it runs, through one ordered consumer.

    ``take(entry)`` is called for every put and delete (deletes have ``operation`` in
    :data:`KV_DELETES`) and says whether it changed anything; ``settled()`` is called once the
    bucket's contents at the start have all been taken, and after every change taken while nothing
    more is pending, so that a burst of changes is acted on once. :meth:`start` returns after the
    first ``settled()``.
    """

    def __init__(
        self,
        kv: KeyValue,
        keys: str,
        take: Callable[[KeyValue.Entry], bool],
        settled: Callable[[], Awaitable[None]],
        *,
        name: str,
    ) -> None:
        self._kv = kv
        self._keys = keys
        self._take = take
        self._settled = settled
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        watcher = await watch(self._kv, self._keys, inactive_s=None)
        self._task = asyncio.create_task(self._follow(watcher), name=self._name)
        await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is None:  # the end of what the bucket held when the watch began
                    await self._settle()
                    self._ready.set()
                    continue
                changed = self._take(entry)
                # During the first replay, settle once at its end rather than per key.
                if changed and self._ready.is_set() and entry.delta == 0:
                    await self._settle()
        finally:
            await stop_watch(watcher)

    async def _settle(self) -> None:
        try:
            await self._settled()
        except Exception:
            log.exception("%s: acting on the bucket's change failed", self._name)
