"""The shared service runtime against real NATS and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace

import asyncpg
import httpx
import nats
import pytest
from nats.js.api import StorageType
from omni_contract.kv import KvBucketSpec
from omni_contract.streams import StreamSpec
from omni_runtime import db
from omni_runtime import nats as omni_nats
from omni_runtime.service import ServiceContext, serve
from omni_runtime.settings import ServiceSettings
from omni_testkit import wait_for

pytestmark = pytest.mark.integration

MIGRATIONS = [
    ("001_items.sql", "CREATE TABLE items (id int PRIMARY KEY);"),
    ("002_more.sql", "ALTER TABLE items ADD COLUMN name text;"),
]


async def test_replicas_starting_together_apply_each_migration_once(database_url: str) -> None:
    async def replica() -> list[str]:
        conn = await asyncpg.connect(database_url)
        try:
            return await db.apply_migrations(conn, "svc", MIGRATIONS)
        finally:
            await conn.close()

    applied = await asyncio.gather(*(replica() for _ in range(4)))
    assert sorted(name for names in applied for name in names) == ["001_items.sql", "002_more.sql"]
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM svc.schema_migrations") == 2
        await conn.execute("INSERT INTO svc.items (id, name) VALUES (1, 'x')")
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_half_applied(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await db.apply_migrations(conn, "svc", [*MIGRATIONS, ("003_bad.sql", "CREATE TABLE oops (;")])
        assert await conn.fetchval("SELECT to_regclass('svc.items')") is None
    finally:
        await conn.close()


def test_schema_names_are_plain_identifiers() -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        db._schema_ident('x"; DROP TABLE y; --')


async def test_streams_are_provisioned_idempotently_and_updated(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        spec = StreamSpec(name="T_STREAM", subjects=("t.>",), description="test")
        await omni_nats.ensure_stream(js, spec)
        await omni_nats.ensure_stream(js, spec)
        await omni_nats.ensure_stream(
            js, StreamSpec(name="T_STREAM", subjects=("t.>",), description="x", max_age_s=60)
        )
        info = await js.stream_info("T_STREAM")
        assert info.config.max_age == 60
    finally:
        await nc.close()


async def test_a_bucket_is_made_from_its_spec_and_one_made_otherwise_is_used_as_it_is(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    spec = KvBucketSpec(
        name="t_bucket", description="test bucket", ttl_s=60.0, history=3, max_value_size=1024, direct=True
    )
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        kv = await omni_nats.ensure_key_value(js, spec)
        await kv.put("k", b"v")
        with caplog.at_level(logging.WARNING, logger="omni_runtime.nats"):
            await omni_nats.ensure_key_value(js, spec)
            assert caplog.records == []  # the same configuration again: nothing to say
            other = await omni_nats.ensure_key_value(js, replace(spec, ttl_s=5.0, direct=False))
        entry = await other.get("k")
        config = (await js.stream_info("KV_t_bucket")).config
    finally:
        await nc.close()

    assert entry.value == b"v"
    assert (config.description, config.max_age, config.max_msgs_per_subject) == ("test bucket", 60, 3)
    assert (config.max_msg_size, config.allow_direct, config.storage) == (1024, True, StorageType.FILE)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "KV bucket t_bucket exists with another configuration"
    ]


async def test_a_service_answers_discovery_and_health_and_stops_on_request(nats_url: str) -> None:
    stopping = asyncio.Event()
    seen: list[ServiceContext] = []

    async def body(ctx: ServiceContext) -> None:
        seen.append(ctx)
        await ctx.stopping.wait()

    settings = ServiceSettings(nats_url=nats_url, log_format="console")
    task = asyncio.create_task(
        serve("probe-service", settings, body, install_signals=False, stopping=stopping)
    )
    await wait_for(lambda: seen, timeout=10)
    ctx = seen[0]
    nc = await nats.connect(nats_url)
    try:
        reply = await nc.request("$SRV.PING.probe-service", b"", timeout=2)
        assert json.loads(reply.data)["name"] == "probe-service"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ctx.health.port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).json()["status"] == "ready"
            assert "process_cpu_seconds_total" in (await client.get("/metrics")).text
            stopping.set()
            await asyncio.wait_for(task, timeout=10)
    finally:
        await nc.close()
