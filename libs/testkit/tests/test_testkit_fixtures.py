from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import nats
import pytest
from omni_devstack.servers import PostgresEndpoint
from omni_testkit import unique_name
from omni_testkit.plugin import _database_name

pytestmark = pytest.mark.integration

fresh_servers_only = pytest.mark.skipif(
    bool(os.environ.get("NATS_URL")), reason="NATS_URL is set: the server is shared, not fresh"
)


async def test_nats_url_fixture_gives_a_server_that_accepts_jetstream_streams(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        # Unique names, since NATS_URL may point every test at one shared server.
        stream, subject = unique_name("FIXTURE"), unique_name("fixture")
        await js.add_stream(name=stream, subjects=[f"{subject}.>"])
        ack = await js.publish(f"{subject}.one", b"x")
        assert ack.stream == stream
        await js.delete_stream(stream)
    finally:
        await nc.drain()


@fresh_servers_only
async def test_nats_url_fixture_gives_each_test_an_empty_server(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        assert (await nc.jetstream().account_info()).streams == 0
    finally:
        await nc.drain()


async def test_database_url_fixture_gives_an_empty_database_of_its_own(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        assert name.startswith("t_test_database_url_fixture_gives")
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables == 0
    finally:
        await conn.close()


def test_pg_server_fixture_is_shared_by_the_session(pg_server: PostgresEndpoint) -> None:
    assert pg_server.dsn().startswith("postgresql://")


def test_database_names_stay_within_the_postgres_identifier_limit() -> None:
    name = _database_name("test_" + "x" * 200 + "[param-Ä]")
    assert len(name.encode()) <= 63
    assert name.startswith("t_test_xxx")
    assert _database_name("same") != _database_name("same")


def _run_inner_pytest(
    tmp_path: Path, test_source: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(test_source))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_inner.py")],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_database_url_uses_database_url_server_and_drops_the_database_afterwards(
    pg_server: PostgresEndpoint, tmp_path: Path
) -> None:
    record = tmp_path / "database-name"
    result = _run_inner_pytest(
        tmp_path,
        f"""
        import asyncio, asyncpg

        def test_inner(database_url):
            async def name():
                conn = await asyncpg.connect(database_url)
                try:
                    return await conn.fetchval("SELECT current_database()")
                finally:
                    await conn.close()
            open({str(record)!r}, "w").write(asyncio.run(name()))
        """,
        {"DATABASE_URL": pg_server.dsn()},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    created = record.read_text()
    assert created.startswith("t_test_inner_")
    conn = await asyncpg.connect(pg_server.dsn())
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", created) == 0
    finally:
        await conn.close()


def test_nats_url_fixture_uses_nats_url_when_set(tmp_path: Path) -> None:
    result = _run_inner_pytest(
        tmp_path,
        """
        def test_inner(nats_url):
            assert nats_url == "nats://192.0.2.1:4999"
        """,
        {"NATS_URL": "nats://192.0.2.1:4999"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
