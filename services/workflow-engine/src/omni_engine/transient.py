"""What means "the database or NATS cannot be reached right now": such a failure is retried for as
long as it lasts and never counts towards dead-lettering (consumers, the outbox sweeper, timers)."""

from __future__ import annotations

import asyncpg
import nats.errors
import nats.js.errors

TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # refused by the server, lost, or gone (ConnectionDoesNotExist)
    asyncpg.CannotConnectNowError,  # the server is starting, recovering from a crash, or stopping
    asyncpg.AdminShutdownError,  # the server was stopped under the connection
    asyncpg.CrashShutdownError,  # another server process crashed: every session is ended
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,  # the client's side of a closed connection or pool
    # A pooled connection caught between two operations when the server died under it ("cannot
    # switch to state 11; another operation (2) is in progress"); the pool replaces it. Seen in CI
    # when PostgreSQL was killed with runs in flight.
    asyncpg.InternalClientError,
    OSError,  # connection refused or reset; also nats.errors.TimeoutError
    TimeoutError,  # connecting, or acquiring a pooled connection, took too long
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,  # JetStream is not up (yet)
    nats.js.errors.ServiceUnavailableError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc``, or what caused it, means the infrastructure is away for now."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, TRANSIENT):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False
