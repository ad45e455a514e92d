"""Embedded servers that die under the stack (kill -9) are reaped and started again on the same
port and data, and a stale PostgreSQL lock file does not keep PostgreSQL from starting."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
from omni_devstack.postgres_user import run_as
from omni_devstack.procfs import process_state
from omni_devstack.servers import NatsServer, PostgresServer
from omni_devstack.supervisor import _Watched

pytestmark = pytest.mark.integration


def restart_until_running(watched: _Watched, timeout: float = 60.0) -> None:
    """Drive the stack's watcher by hand until it has restarted its server once."""
    deadline = time.monotonic() + timeout
    while watched.restarts == 0:
        assert time.monotonic() < deadline, f"{watched.label} was not restarted within {timeout}s"
        watched.check()
        time.sleep(0.05)


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


async def select_one(dsn: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


@pytest.fixture
def postgres(shared_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(shared_dir, port_setting=None)
    try:
        yield server.start()
    finally:
        server.stop()


async def test_postgres_killed_with_sigkill_is_reaped_and_restarted_on_its_port_with_its_data(
    postgres: PostgresServer,
) -> None:
    conn = await asyncpg.connect(postgres.dsn())
    await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('survives')")
    # A session stays open: its backend outlives the postmaster for a moment, as under load.
    port, old_pid = postgres.port, postgres.pid
    assert old_pid is not None
    watched = _Watched("PostgreSQL", postgres)
    watched.check()
    assert watched.restarts == 0  # running: nothing to do

    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: process_state(old_pid) in (None, "Z"))
    restart_until_running(watched)

    assert process_state(old_pid) is None, "the killed postmaster was left a zombie"
    assert postgres.pid not in (None, old_pid)
    assert postgres.port == port
    again = await asyncpg.connect(postgres.dsn())
    try:
        assert await again.fetchval("SELECT v FROM kept") == "survives"
    finally:
        await again.close()
    conn.terminate()


@pytest.mark.parametrize("holder", ["zombie", "another program"])
def test_a_stale_postmaster_pid_naming_a_zombie_or_another_program_does_not_block_the_start(
    postgres: PostgresServer, holder: str
) -> None:
    lock = postgres.pgdata / "postmaster.pid"
    content = lock.read_text().splitlines(keepends=True)
    postgres.stop()
    # The holder runs as the server's user, as a postmaster would: PostgreSQL takes a process it
    # may not signal for a dead one.
    who = run_as()
    identity = {} if who is None else {"user": who.uid, "group": who.gid, "extra_groups": []}
    if holder == "zombie":
        # Exits at once and is not waited for: a zombie, as a killed postmaster is until reaped.
        proc = subprocess.Popen(["true"], **identity)  # type: ignore[call-overload]
        wait_until(lambda: process_state(proc.pid) == "Z")
    else:
        proc = subprocess.Popen(["sleep", "60"], **identity)  # type: ignore[call-overload]
    try:
        # As after a crash whose postmaster was not reaped, or a reboot that gave its id away.
        lock.write_text(f"{proc.pid}\n" + "".join(content[1:]))
        postgres.start()
        assert asyncio.run(select_one(postgres.dsn())) == 1
        assert int(lock.read_text().splitlines()[0]) == postgres.pid
    finally:
        proc.kill()
        proc.wait()


async def test_nats_killed_with_sigkill_is_restarted_on_its_port_with_its_streams(tmp_path: Path) -> None:
    server = NatsServer(tmp_path, port_setting=None, monitoring_port_setting=None).start()
    try:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(name="KEPT", subjects=["kept.>"])
        await nc.jetstream().publish("kept.one", b"survives")
        await nc.close()
        url, old_pid = server.url, server.pid
        assert old_pid is not None
        watched = _Watched("NATS", server)
        os.kill(old_pid, signal.SIGKILL)
        restart_until_running(watched)

        assert server.url == url
        assert server.pid not in (None, old_pid)
        assert process_state(old_pid) is None, "the killed server was left a zombie"
        nc = await nats.connect(url)
        try:
            msg = await nc.jetstream().get_last_msg("KEPT", "kept.one")
            assert msg.data == b"survives"
        finally:
            await nc.close()
    finally:
        server.stop()
