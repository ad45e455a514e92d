"""pytest fixtures that give each test real servers: NATS per test, PostgreSQL per session.

- ``nats_url``: a fresh ``nats-server`` with JetStream on a free port for every test (it starts in
  about 20 ms), in its own directory, stopped after the test. When ``NATS_URL`` is set, that
  server is used instead and shared by every test: tests must then use their own subjects,
  streams and consumers (``omni_testkit.unique_name``), as they should anyway.
- ``pg_server``: one PostgreSQL for the whole session, on a free port, in a temporary directory
  removed afterwards. When ``DATABASE_URL`` is set, that server is used instead; it must allow
  the URL's user to create databases.
- ``database_url``: a database of its own for every test, created on ``pg_server`` and dropped
  (disconnecting leftover sessions) after the test.

The fixtures are synchronous on purpose: they start processes, which needs no event loop, so
they fit any event-loop scope that pytest-asyncio gives the tests.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from omni_devstack.servers import ExistingPostgres, NatsServer, PostgresEndpoint, PostgresServer

NATS_URL_ENV = "NATS_URL"
DATABASE_URL_ENV = "DATABASE_URL"
_MAX_IDENTIFIER = 63


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs real NATS and PostgreSQL servers (started by the fixtures)"
    )


@pytest.fixture
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a NATS server with JetStream: a fresh one per test, or ``NATS_URL`` when set."""
    external = os.environ.get(NATS_URL_ENV)
    if external:
        yield external
        return
    server = NatsServer(tmp_path_factory.mktemp("nats"), port_setting=None, monitoring_port_setting=None)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresEndpoint]:
    """The session's PostgreSQL: one started for it, or the server named by ``DATABASE_URL``."""
    external = os.environ.get(DATABASE_URL_ENV)
    if external:
        yield ExistingPostgres(external)
        return
    # Not under pytest's basetemp: that directory is private to us, and when we are root the
    # server runs as an unprivileged user who must be able to reach its data directory.
    base = Path(tempfile.mkdtemp(prefix="omni-test-pg-"))
    base.chmod(0o755)  # the unprivileged server user must pass through it
    server = PostgresServer(base, port_setting=None)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _database_name(test_name: str) -> str:
    """A database name that is unique and still says which test made it."""
    suffix = uuid.uuid4().hex[:10]
    stem = re.sub(r"[^a-z0-9]+", "_", test_name.lower()).strip("_")
    return f"t_{stem[: _MAX_IDENTIFIER - len(suffix) - 3]}_{suffix}"


@pytest.fixture
def database_url(pg_server: PostgresEndpoint, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of an empty database created for this test alone and dropped after it."""
    name = _database_name(request.node.name)
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temporary directory that an unprivileged server user can enter (pytest's ``tmp_path``
    is private to the user running the tests), for tests that start an embedded PostgreSQL."""
    path = Path(tempfile.mkdtemp(prefix="omni-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
