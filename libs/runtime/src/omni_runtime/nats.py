"""NATS connection and idempotent JetStream provisioning from the contract's specs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import nats
import nats.errors
from nats.aio.client import DEFAULT_INBOX_PREFIX
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
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
from omni_contract.kv import KvBucketSpec, Storage
from omni_contract.streams import ConsumerSpec, Retention, StreamSpec

from omni_runtime.outage import OutageLog
from omni_runtime.settings import NatsClientSettings

log = logging.getLogger(__name__)

# What the client's error callback reports when the connection is lost or cannot be made.
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    nats.errors.UnexpectedEOF,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
)


async def connect(
    url: str,
    name: str,
    *,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    credentials: NatsClientSettings | None = None,
) -> NATS:
    """Connect with unlimited reconnects: a service outlives a NATS restart.

    As the identity of ``credentials`` (an NKey seed file or a creds file, and its reply inbox
    prefix); when not given, the process's own (``OMNI_NATS_NKEY_SEED_FILE``, ...), so every
    connection a service process opens is that service. Neither set: no credentials.

    An outage is logged as a warning when the connection is lost, then at most one every
    ``OUTAGE_WARN_EVERY_S`` however often reconnecting fails, and one line when it is back."""
    outage = OutageLog(log, f"nats ({name})")
    connection: list[NATS] = []  # the client, once connected

    async def _disconnected() -> None:
        if connection and connection[0].is_closed:  # closed on purpose (nats-py calls that a disconnect)
            log.info("nats (%s): connection closed", name)
        else:
            outage.failed("disconnected; reconnecting")
        if on_disconnect:
            await on_disconnect()

    async def _reconnected() -> None:
        if not outage.recovered("reconnected"):
            log.info("nats (%s): reconnected", name)

    async def _error(exc: Exception) -> None:
        # The connection lost, or a failed reconnect (every reconnect_time_wait while NATS is away).
        if outage.down or isinstance(exc, _CONNECTION_LOST):
            outage.failed("unreachable (%s: %s); reconnecting", type(exc).__name__, exc)
        else:
            log.warning("nats (%s) error: %s: %s", name, type(exc).__name__, exc)

    auth = credentials if credentials is not None else NatsClientSettings()
    if auth.nats_nkey_seed_file and auth.nats_creds_file:
        raise ValueError(f"nats ({name}): give an NKey seed file or a creds file, not both")
    nc = await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        nkeys_seed=auth.nats_nkey_seed_file,
        user_credentials=auth.nats_creds_file,
        inbox_prefix=auth.nats_inbox_prefix or DEFAULT_INBOX_PREFIX,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        disconnected_cb=_disconnected,
        reconnected_cb=_reconnected,
        error_cb=_error,
    )
    connection.append(nc)
    return nc


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
        # The name too: nats-py then creates it with CONSUMER.CREATE.<stream>.<name>.<filter>, the
        # API subject NATS permissions can pin to the filter (CONSUMER.DURABLE.CREATE cannot be).
        name=spec.durable,
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


async def puller(js: JetStreamContext, spec: ConsumerSpec, *, batch: int, expires_s: float = 2.0) -> Puller:
    """Ensure the durable consumer of ``spec`` and start pulling from it."""
    await ensure_consumer(js, spec)
    # nats-py has no public accessor for the connection and API prefix of a JetStream context.
    pull = Puller(js._nc, spec.stream, spec.durable, batch=batch, expires_s=expires_s, api_prefix=js._prefix)
    await pull.start()
    return pull


_STATUS = "Status"
_HEARTBEAT = "100"
_BACK_OFF_S = 0.5


class Puller:
    """Pulls a durable consumer's messages and hands each over the moment it arrives.

    Why not ``PullSubscription.fetch(n, timeout)``: its pull request outlives the fetch that made
    it, and when messages come close together after a quiet moment (two results, then the next
    step's), a later one sits in the client until a fetch's timeout has passed: about a second
    per step with the engine's settings, unacknowledged and unreported in progress meanwhile
    (``test_runtime_puller.py`` has the pattern).

    Here one pull request of up to ``batch`` messages is outstanding at a time, lasting
    ``expires_s`` on the server; its messages queue here as they come, and :meth:`take` returns
    whatever has arrived as soon as there is anything. A new request goes out only when the
    previous one has ended (delivered its batch, or the server said it expired or was cut off),
    so this replica never holds more than ``batch`` messages beyond what it is handling. Each
    request has a reply subject of its own, so a late status from an old request cannot end the
    current one. (A request that delivered its whole batch gets no status: it ends by the count.)
    The caller reports what it holds in progress, :meth:`queued` included.
    """

    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        *,
        batch: int,
        expires_s: float = 2.0,
        api_prefix: str = "$JS.API",
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.batch = batch
        self._expires_s = expires_s
        self._inbox = ""
        self._sub: Subscription | None = None
        self._queue: deque[Msg] = deque()
        self._arrived = asyncio.Event()
        self._request = 0  # the id of the current request; its reply subject ends with it
        self._owed = 0  # messages the current request may still deliver
        self._request_ends = 0.0  # loop time after which the current request is over in any case
        self._not_before = 0.0  # loop time before which no new request goes out (after a refusal)
        self.on_arrival: Callable[[], None] | None = None  # told of each message queued

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_message)

    async def stop(self) -> None:
        """Unsubscribe: nothing more is delivered here; what was queued is the caller's to give back."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:
                log.debug("unsubscribing from %s: %s", self._next_subject, exc)

    def queued(self) -> list[Msg]:
        """Messages delivered to this replica and not yet taken."""
        return list(self._queue)

    def drain_queued(self) -> list[Msg]:
        """Take every queued message at once (to give them back on shutdown)."""
        out = list(self._queue)
        self._queue.clear()
        return out

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get(_STATUS) if msg.headers else None
        if status is None:
            # A message keeps its own subject (not the reply subject), so it cannot say which
            # request brought it; with one request at a time it is the current one's. (An older
            # request's message only comes after its end was assumed without the server saying so.)
            self._queue.append(msg)
            self._owed -= 1
            if self.on_arrival is not None:
                self.on_arrival()
        elif status == _HEARTBEAT:
            return
        elif msg.subject.rpartition(".")[2] == str(self._request):
            # 408: the request expired; 409: the server cut it short (consumer deleted, leader
            # changed, too many waiting); 404/503: nothing to pull from. The request is over either way.
            self._owed = 0
            if status not in ("404", "408"):
                description = msg.headers.get("Description", "") if msg.headers else ""
                log.info("pull from %s ended: %s %s", self._next_subject, status, description)
                self._not_before = asyncio.get_running_loop().time() + _BACK_OFF_S
        self._arrived.set()

    async def take(self, max_wait_s: float) -> list[Msg]:
        """Up to ``batch`` messages, returned as soon as at least one has arrived; [] after
        ``max_wait_s`` seconds without any."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        while True:
            if self._queue:
                n = min(self.batch, len(self._queue))
                return [self._queue.popleft() for _ in range(n)]
            now = loop.time()
            if now >= deadline:
                return []
            wait_until = deadline
            if self._owed <= 0 or now >= self._request_ends:
                if now < self._not_before:
                    wait_until = min(deadline, self._not_before)
                else:
                    await self._pull(now)
                    wait_until = min(deadline, self._request_ends)
            else:
                wait_until = min(deadline, self._request_ends)
            self._arrived.clear()
            if self._queue:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=max(0.0, wait_until - loop.time()))

    async def _pull(self, now: float) -> None:
        self._request += 1
        self._owed = self.batch
        # The server ends the request itself (408) after expires_s; the margin covers a lost status
        # (a reconnect drops the request with the old connection).
        self._request_ends = now + self._expires_s + 0.5
        body = json.dumps({"batch": self.batch, "expires": int(self._expires_s * 1e9)}).encode()
        try:
            await self._nc.publish(self._next_subject, body, reply=f"{self._inbox}.{self._request}")
        except nats.errors.Error as exc:
            log.warning("pulling from %s failed (%s); trying again shortly", self._next_subject, exc)
            self._owed = 0
            self._not_before = now + _BACK_OFF_S


async def ensure_key_value(js: JetStreamContext, spec: KvBucketSpec) -> KeyValue:
    """Open the bucket of ``spec``, creating it when missing. A bucket that exists with another
    configuration (an older release's, another replica's settings) is used as it is, with a warning."""
    config = KeyValueConfig(
        bucket=spec.name,
        description=spec.description,
        ttl=spec.ttl_s,
        history=spec.history,
        storage=StorageType.FILE if spec.storage is Storage.FILE else StorageType.MEMORY,
        max_value_size=spec.max_value_size,
        direct=spec.direct or None,  # None: the server's default (off), as buckets were always made
    )
    try:
        return await js.create_key_value(config)
    except BadRequestError as exc:
        log.warning("KV bucket %s exists with another configuration (%s); using it as is", spec.name, exc)
        return await js.key_value(spec.name)


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


async def read_latest(kv: KeyValue, keys: str = ">", *, wait_s: float = 10.0) -> list[KeyValue.Entry]:
    """The latest entry of every live key matching ``keys``, as the bucket holds them now.

    nats-py's ``keys()`` ends at the watcher's "nothing more" marker, which may come before
    entries already on their way (it is judged from the consumer's pending count, 0 as soon as the
    server has sent everything). Here the read ends at the entry delivered with nothing pending
    after it, or, when the watch falls quiet (after the marker, or when entries expired or were
    purged meanwhile), once every key the bucket's stream holds now has been read. Deleted keys
    are left out.
    """
    js, stream, prefix = kv._js, kv._stream, kv._pre  # nats-py keeps the bucket's stream here

    async def held() -> set[str]:
        info = await js.stream_info(stream, subjects_filter=f"{prefix}{keys}")
        return {subject[len(prefix) :] for subject in info.state.subjects or {}}

    if not await held():
        return []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    watcher = await watch(kv, keys)
    latest: dict[str, KeyValue.Entry] = {}
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=_READ_QUIET_S)  # type: ignore[no-untyped-call]
            except nats.errors.TimeoutError:
                entry = None
            if entry is not None:
                latest[entry.key] = entry
                if entry.delta == 0:
                    break
                continue
            if await held() <= set(latest):
                break
            if loop.time() > deadline:
                raise TimeoutError(f"reading {keys} of {stream} did not settle within {wait_s:g} s")
    finally:
        await stop_watch(watcher)
    return [entry for entry in latest.values() if entry.operation not in KV_DELETES]


_READ_QUIET_S = 0.05


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
