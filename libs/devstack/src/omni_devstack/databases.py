"""Databases on any PostgreSQL server, ours or one named by ``DATABASE_URL``: DSNs, and CREATE/DROP
DATABASE from synchronous code (fixtures, the supervisor) without touching the caller's event loop.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

T = TypeVar("T")


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code.

    It runs on a private event loop in a helper thread, so it works whether or not the calling
    thread already runs a loop, and leaves the caller's event-loop state untouched.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="omni-devstack") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def quote_ident(name: str) -> str:
    """``name`` quoted as an SQL identifier; a name PostgreSQL cannot hold is refused here."""
    if not name or "\x00" in name or len(name.encode()) > 63:
        raise ValueError(f"invalid PostgreSQL database name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def dsn_with_database(dsn: str, database: str) -> str:
    """``dsn`` with its database replaced by ``database`` (user, password, host and query kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _ensure_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # created meanwhile: fine
            await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    finally:
        await conn.close()


class PostgresEndpoint(Protocol):
    """A PostgreSQL server databases can be created on: ours, or one named by ``DATABASE_URL``."""

    def dsn(self, database: str = ...) -> str:
        """The DSN of ``database``; without one, of the database used for administration."""
        ...

    def create_database(self, name: str) -> str: ...

    def ensure_database(self, name: str) -> str: ...

    def drop_database(self, name: str) -> None: ...


class DatabaseAdmin(abc.ABC):
    """CREATE/DROP DATABASE through the endpoint's administration database, ``dsn()``."""

    @abc.abstractmethod
    def dsn(self, database: str = "postgres") -> str:
        """The DSN of ``database``."""

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN. Blocks; safe to call inside an event loop's thread."""
        statement = f"CREATE DATABASE {quote_ident(name)}"
        run_coroutine(lambda: _execute(self.dsn(), statement))
        return self.dsn(name)

    def ensure_database(self, name: str) -> str:
        """Create database ``name`` unless it exists (as after a restart); return its DSN."""
        run_coroutine(lambda: _ensure_database(self.dsn(), name))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting whoever is still connected."""
        statement = f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)"
        run_coroutine(lambda: _execute(self.dsn(), statement))


class ExistingPostgres(DatabaseAdmin):
    """A server we did not start, named by a URL such as ``DATABASE_URL``.

    ``dsn(database)`` swaps the database of that URL; creating databases needs the CREATEDB
    privilege there. The database in the URL is the one used for administration.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    def dsn(self, database: str | None = None) -> str:
        return self.url if database is None else dsn_with_database(self.url, database)
