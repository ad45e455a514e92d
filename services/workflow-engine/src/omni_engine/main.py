"""Entry point of the workflow engine."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from omni_contract import streams, subjects
from omni_runtime import db
from omni_runtime import nats as omni_nats
from omni_runtime.service import ServiceContext, run_service
from omni_runtime.settings import DatabaseSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from omni_engine.api import DEFAULT_RPC_CONCURRENCY, EngineApi
from omni_engine.consumers import ResultHandler, TriggerHandler, consume
from omni_engine.definitions import DEFAULT_CACHE_SIZE, Definitions
from omni_engine.engine import DEFAULT_CACHE_BYTES, MAX_WORKFLOW_LABELS, Engine, EngineMetrics
from omni_engine.relay import OutboxRelay
from omni_engine.store import Store, init_connection
from omni_engine.timers import TimerPoller, oldest_unprocessed_result

log = logging.getLogger(__name__)

SCHEMA = "engine"


class EngineSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMNI_ENGINE_", extra="ignore")

    workflows_dir: Path = Field(default=Path("workflows"), description="Workflow files loaded at start")
    result_batch: int = Field(default=100, description="Tool results fetched per batch")
    trigger_batch: int = Field(default=50, description="Trigger events fetched per batch")
    outbox_stale_after_s: float = Field(default=2.0, description="Age at which the sweeper relays a row")
    max_failures: int = Field(
        default=5, description="Failed deliveries of a trigger or result before it is dead-lettered"
    )
    timer_poll_s: float = Field(
        default=0.5, description="Longest sleep between looks for due timers set by other replicas"
    )
    definition_cache_size: int = Field(
        default=DEFAULT_CACHE_SIZE,
        ge=1,
        description="Parsed workflow definitions (versions) kept in memory, the least recently used dropped",
    )
    run_cache_bytes: int = Field(
        default=DEFAULT_CACHE_BYTES,
        ge=0,
        description="Bytes (JSON size) of the states of runs in progress kept in memory",
    )
    rpc_concurrency: int = Field(
        default=DEFAULT_RPC_CONCURRENCY,
        ge=1,
        description="Engine RPC requests (run starts, reads, registrations) answered at once",
    )
    metrics_max_workflows: int = Field(
        default=MAX_WORKFLOW_LABELS,
        ge=0,
        description="Workflows named in the workflow label of the engine's metrics; others count as 'other'",
    )


async def body(ctx: ServiceContext, settings: EngineSettings) -> None:
    pool = await db.create_pool(
        settings.database_url,
        SCHEMA,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        init=init_connection,
    )
    ctx.stack.push_async_callback(pool.close)
    async with pool.acquire() as conn:
        await db.apply_migrations(conn, SCHEMA, db.migration_files("omni_engine"))

    async def db_ready() -> str | None:
        await pool.fetchval("SELECT 1")
        return None

    ctx.health.add_check("postgres", db_ready)
    await omni_nats.ensure_streams(ctx.js, streams.ENGINE_STREAMS)

    assert ctx.nc is not None
    assert ctx.micro is not None
    store = Store(pool)
    definitions = Definitions(store, cache_size=settings.definition_cache_size)
    await definitions.load_dir(settings.workflows_dir)
    relay = OutboxRelay(ctx.nc, store, ctx.registry, stale_after_s=settings.outbox_stale_after_s)
    metrics = EngineMetrics(ctx.registry, max_workflow_labels=settings.metrics_max_workflows)
    engine = Engine(store, definitions, relay, metrics, cache_bytes=settings.run_cache_bytes)
    js = ctx.js
    timers = TimerPoller(
        engine, store, poll_s=settings.timer_poll_s, pending_since=lambda: oldest_unprocessed_result(js)
    )
    api = EngineApi(
        engine, definitions, store, max_reply_bytes=ctx.nc.max_payload, concurrency=settings.rpc_concurrency
    )
    await api.register(ctx.micro)

    triggers = await omni_nats.puller(ctx.js, streams.ENGINE_TRIGGERS, batch=settings.trigger_batch)
    results = await omni_nats.puller(ctx.js, streams.ENGINE_RESULTS, batch=settings.result_batch)
    tasks = [
        asyncio.create_task(
            consume(
                ctx.js,
                triggers,
                TriggerHandler(engine, definitions),
                ctx.stopping,
                name="trigger",
                max_failures=settings.max_failures,
            )
        ),
        asyncio.create_task(
            consume(
                ctx.js,
                results,
                ResultHandler(engine),
                ctx.stopping,
                name="result",
                max_failures=settings.max_failures,
            )
        ),
        asyncio.create_task(relay.sweep_forever(ctx.stopping)),
        asyncio.create_task(timers.run(ctx.stopping)),
    ]
    log.info("workflow engine ready")
    await ctx.stopping.wait()
    # Consumers finish the batch in hand; what is not acknowledged by then is redelivered.
    done, pending = await asyncio.wait(tasks, timeout=settings.shutdown_grace_s)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception():
            log.error("engine task failed: %r", task.exception())
    await api.drain(settings.shutdown_grace_s)  # requests being answered finish before the pool closes


def main() -> None:
    settings = EngineSettings()
    run_service(
        subjects.ENGINE_SERVICE_NAME,
        settings,
        lambda ctx: body(ctx, settings),
        description="Omni workflow engine: definitions, runs, run history",
    )


if __name__ == "__main__":
    main()
