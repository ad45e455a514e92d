"""Relays outbox rows to NATS.

The fast path: right after a transaction commits, the writer publishes the rows it wrote
(pipelined JetStream publishes through ``omni_runtime.publish.Pipeline``, each with its
deterministic ``Nats-Msg-Id``) and deletes them.
The sweeper: rows that stay behind (the writer crashed, or NATS was down) are picked up by any
replica after ``stale_after_s`` under ``FOR UPDATE SKIP LOCKED``. A row published twice (fast
path and sweeper racing) is de-duplicated by JetStream through its message id.

The sweeper outlives any failure: while the database or NATS is away it tries again with a capped
back-off (saying so once, then every ``OUTAGE_WARN_EVERY_S``), and a failure of any other kind is
logged with its traceback and swept past, so rows left behind are relayed once things work again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from nats.aio.client import Client as NATS
from omni_runtime.outage import OutageLog
from omni_runtime.publish import PUBLISH_TIMEOUT_S, Pipeline, PublishError
from prometheus_client import CollectorRegistry, Counter

from omni_engine.store import OutboxMessage, Store
from omni_engine.transient import is_transient

log = logging.getLogger(__name__)

# After a failed sweep the sweeper waits FIRST, then twice as long each time, at most CAP.
SWEEP_RETRY_FIRST_S = 0.25
SWEEP_RETRY_CAP_S = 5.0


class OutboxRelay:
    def __init__(
        self,
        nc: NATS,
        store: Store,
        registry: CollectorRegistry,
        *,
        stale_after_s: float = 2.0,
        sweep_interval_s: float = 0.1,
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        self.pipeline = Pipeline(nc, timeout_s=publish_timeout_s)
        self.store = store
        self.stale_after_s = stale_after_s
        self.sweep_interval_s = sweep_interval_s
        self.published = Counter(
            "omni_engine_outbox_published_total",
            "Outbox messages relayed to NATS",
            ["path"],
            registry=registry,
        )
        self._published_ids: list[int] = []
        self.failures = Counter(
            "omni_engine_outbox_failures_total", "Outbox relay attempts that failed", registry=registry
        )
        self._fast_outage = OutageLog(log, "outbox publish")
        self._sweep_outage = OutageLog(log, "outbox sweeper")
        self._sweep_faults = OutageLog(log, "outbox sweeper")

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        """Fast path. On failure the rows stay in the outbox for the sweeper.

        Published rows are deleted in batches by ``flush_deletes`` (one statement for many
        transitions); a row whose delete is still pending when a replica crashes is relayed
        again by the sweeper and de-duplicated by JetStream through its message id.
        """
        if not messages:
            return
        try:
            await self.pipeline.publish(messages)
        except PublishError as exc:
            self.failures.inc()
            self._fast_outage.failed("failed (%s: %s); rows left for the sweeper", type(exc).__name__, exc)
            return
        self._fast_outage.recovered("publishing again")
        self._published_ids.extend(m.id for m in messages)
        self.published.labels("fast").inc(len(messages))

    async def flush_deletes(self) -> None:
        ids, self._published_ids = self._published_ids, []
        if ids:
            try:
                await self.store.delete_outbox(ids)
            except BaseException:
                self._published_ids.extend(ids)  # deleted by the next flush (or relayed again, deduplicated)
                raise

    async def sweep_once(self, limit: int = 500) -> int:
        async with self.store.pool.acquire() as conn, conn.transaction():
            messages = await self.store.claim_stale_outbox(conn, self.stale_after_s, limit)
            if not messages:
                return 0
            await self.pipeline.publish(messages)
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [m.id for m in messages])
        self.published.labels("sweeper").inc(len(messages))
        log.info("relayed %d outbox messages left behind", len(messages))
        return len(messages)

    async def sweep_forever(self, stopping: asyncio.Event) -> None:
        """Flush published rows' deletes every ``sweep_interval_s``; look for rows left behind only
        every half ``stale_after_s`` (a row cannot be stale sooner), not on every tick.

        Runs until ``stopping``, whatever fails: after a failure it waits ``SWEEP_RETRY_FIRST_S``,
        doubling up to ``SWEEP_RETRY_CAP_S`` while failures go on, then sweeps again."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        delay = SWEEP_RETRY_FIRST_S
        while not stopping.is_set():
            wait = self.sweep_interval_s
            try:
                await self.flush_deletes()
                if loop.time() >= next_sweep:
                    while await self.sweep_once() > 0:
                        pass
                    next_sweep = loop.time() + self.stale_after_s / 2
            except Exception as exc:  # noqa: BLE001 - the sweeper must outlive any failure: rows left behind depend on it
                self.failures.inc()
                if is_transient(exc):
                    self._sweep_outage.failed(
                        "database or NATS unreachable (%s: %s); sweeping again shortly",
                        type(exc).__name__,
                        exc,
                    )
                else:
                    self._sweep_faults.failed("sweep failed; sweeping again shortly", exc_info=True)
                wait = max(wait, delay)
                delay = min(SWEEP_RETRY_CAP_S, delay * 2)
            else:
                delay = SWEEP_RETRY_FIRST_S
                self._sweep_outage.recovered("sweeping again")
                self._sweep_faults.recovered("sweeping again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=wait)
        try:
            await self.flush_deletes()
        except Exception as exc:  # noqa: BLE001 - shutting down: rows not deleted now are relayed again, deduplicated
            log.warning("outbox: could not delete the last published rows (%s: %s)", type(exc).__name__, exc)
