"""Relays outbox rows to NATS.

The fast path: right after a transaction commits, the writer publishes the rows it wrote
(pipelined JetStream publishes, each with its deterministic ``Nats-Msg-Id``) and deletes them.
The sweeper: rows that stay behind (the writer crashed, or NATS was down) are picked up by any
replica after ``stale_after_s`` under ``FOR UPDATE SKIP LOCKED``. A row published twice (fast
path and sweeper racing) is de-duplicated by JetStream through its message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from omni_contract.envelope import HDR_MSG_ID, HDR_TRACEPARENT
from prometheus_client import CollectorRegistry, Counter

from omni_engine.store import OutboxMessage, Store

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(
        self,
        nc: NATS,
        store: Store,
        registry: CollectorRegistry,
        *,
        stale_after_s: float = 2.0,
        sweep_interval_s: float = 0.1,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=publish_timeout_s)
        self.store = store
        self.stale_after_s = stale_after_s
        self.sweep_interval_s = sweep_interval_s
        self.publish_timeout_s = publish_timeout_s
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

    async def _send(self, messages: Sequence[OutboxMessage]) -> None:
        futures = []
        for m in messages:
            headers = {HDR_MSG_ID: m.msg_id}
            if m.traceparent:
                headers[HDR_TRACEPARENT] = m.traceparent
            if m.durable:
                futures.append(await self.js.publish_async(m.subject, m.body, headers=headers))
            else:
                await self.nc.publish(m.subject, m.body, headers=headers)
        if futures:
            await asyncio.wait_for(asyncio.gather(*futures), timeout=self.publish_timeout_s)

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        """Fast path. On failure the rows stay in the outbox for the sweeper.

        Published rows are deleted in batches by ``flush_deletes`` (one statement for many
        transitions); a row whose delete is still pending when a replica crashes is relayed
        again by the sweeper and de-duplicated by JetStream through its message id.
        """
        if not messages:
            return
        try:
            await self._send(messages)
        except (NatsError, TimeoutError) as exc:
            self.failures.inc()
            log.warning("outbox publish failed, left for the sweeper: %s", exc)
            return
        self._published_ids.extend(m.id for m in messages)
        self.published.labels("fast").inc(len(messages))

    async def flush_deletes(self) -> None:
        ids, self._published_ids = self._published_ids, []
        if ids:
            await self.store.delete_outbox(ids)

    async def sweep_once(self, limit: int = 500) -> int:
        async with self.store.pool.acquire() as conn, conn.transaction():
            messages = await self.store.claim_stale_outbox(conn, self.stale_after_s, limit)
            if not messages:
                return 0
            await self._send(messages)
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [m.id for m in messages])
        self.published.labels("sweeper").inc(len(messages))
        log.info("relayed %d outbox messages left behind", len(messages))
        return len(messages)

    async def sweep_forever(self, stopping: asyncio.Event) -> None:
        """Flush published rows' deletes every ``sweep_interval_s``; look for rows left behind only
        every half ``stale_after_s`` (a row cannot be stale sooner), not on every tick."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while not stopping.is_set():
            try:
                await self.flush_deletes()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + self.stale_after_s / 2
                    while await self.sweep_once() > 0:
                        pass
            except (NatsError, TimeoutError, OSError) as exc:
                self.failures.inc()
                log.warning("outbox sweep failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self.sweep_interval_s)
        await self.flush_deletes()
