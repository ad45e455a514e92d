"""PostgreSQL: a pool per service, and forward-only SQL migrations per service schema.

Migrations are files ``NNN_name.sql`` in a package directory, applied in order inside one
transaction each, under a transaction-scoped advisory lock keyed by the schema name, so that
replicas starting together apply each file exactly once.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg
from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)

Conn = asyncpg.Connection | PoolConnectionProxy
"""A connection, whether taken from a pool or not."""

_MIGRATION = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _schema_ident(schema: str) -> str:
    # Schema names are interpolated into SQL (identifiers cannot be bound), so only plain
    # lower-case identifiers are accepted.
    if not _IDENT.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return f'"{schema}"'


def _lock_key(schema: str) -> int:
    # Advisory locks take a bigint; derive a stable one from the schema name.
    return int.from_bytes(hashlib.sha256(f"omni-migrate:{schema}".encode()).digest()[:8], "big", signed=True)


def migration_files(package: str, subdir: str = "migrations") -> list[tuple[str, str]]:
    """``[(filename, sql)]`` sorted by number, from a package's ``migrations/`` directory."""
    root: Traversable = resources.files(package).joinpath(subdir)
    found = []
    for entry in root.iterdir():
        if _MIGRATION.match(entry.name):
            found.append((entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda item: int(_MIGRATION.match(item[0]).group(1)))  # type: ignore[union-attr]


async def apply_migrations(conn: Conn, schema: str, files: list[tuple[str, str]]) -> list[str]:
    """Apply the files not yet applied to ``schema``; returns the names applied now."""
    applied_now: list[str] = []
    ident = _schema_ident(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(schema))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ident}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {ident}.schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch(f"SELECT name FROM {ident}.schema_migrations")  # noqa: S608
        done = {r["name"] for r in rows}
        for name, sql in files:
            if name in done:
                continue
            await conn.execute(f"SET LOCAL search_path TO {ident}")
            await conn.execute(sql)
            await conn.execute(f"INSERT INTO {ident}.schema_migrations (name) VALUES ($1)", name)  # noqa: S608
            applied_now.append(name)
    if applied_now:
        log.info("applied migrations to schema %s: %s", schema, ", ".join(applied_now))
    return applied_now


async def _keep_session(_conn: asyncpg.Connection) -> None:
    return None


# Errors that mean "the database cannot be reached right now" (down, restarting, recovering).
UNREACHABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    OSError,
    TimeoutError,
)
POOL_WARN_EVERY_S = 30.0


class _PoolOutageFilter(logging.Filter):
    """asyncpg's pool logs a full traceback each time it fails to reconnect its minimum of
    connections: about once a second while the database is down. Keep one line instead, at
    most every ``POOL_WARN_EVERY_S``."""

    def __init__(self) -> None:
        super().__init__()
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not isinstance(exc, UNREACHABLE):
            return True
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + POOL_WARN_EVERY_S
        record.msg = f"{record.getMessage()}: the database is unreachable ({type(exc).__name__}: {exc})"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


def quiet_pool_outages() -> None:
    """Install the filter on asyncpg's pool logger (once)."""
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _PoolOutageFilter) for f in pool_log.filters):
        pool_log.addFilter(_PoolOutageFilter())


async def create_pool(
    dsn: str,
    schema: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    """A pool whose connections use ``schema`` first on their search path; ``init`` runs on each
    new connection (type codecs). While the database is unreachable, the pool's reconnection
    failures are logged as one line every ``POOL_WARN_EVERY_S``, not a traceback a second."""
    quiet_pool_outages()
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init,  # type: ignore[arg-type]  # asyncpg-stubs types init as a Protocol
        # Services keep no session state (no LISTEN, temporary tables or session SETs), so the
        # default reset query, a round trip on every release, buys nothing.
        reset=_keep_session,
        server_settings={
            "search_path": f"{_schema_ident(schema)},public",
            "application_name": f"omni-{schema}",
        },
    )
    assert pool is not None
    return pool
