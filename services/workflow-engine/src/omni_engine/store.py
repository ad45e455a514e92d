"""PostgreSQL access for the engine: definitions, run history with its projection, the outbox.

Appending is optimistic: the caller says which ``last_seq`` it folded from; a concurrent append
(another replica, a redelivery) finds ``last_seq`` moved on, and the caller reloads and decides
again. The events, the projection and the outbox rows of one decision are written in one
transaction. Under load the appends of different runs share a statement and a transaction
(``append_runs``), each still checked against its own run's ``last_seq``.

Tenants (see ``tenants.py``): each run row has its tenant (``runs.tenant``), each workflow its owner
(``workflows.owner``, NULL for a shared one); reads given a tenant return only what it may see,
in the same statement as before (never a query more).

History rows are written with their type and version (``omni_contract.history``) and read back
straight into their structs: ``data`` is selected as text and decoded once, by msgspec, for the
struct of its type (older versions are upcast on the way).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from omni_contract.history import HistoryEvent, decode_data
from omni_runtime.db import Conn

from omni_engine.state import NewEvent, RunState, apply
from omni_engine.tenants import DEFAULT_TENANT
from omni_engine.timer_kinds import AnyTimer, TimerData

_state_decoder = msgspec.json.Decoder(RunState)
_timer_decoder = msgspec.json.Decoder(AnyTimer)
_encoder = msgspec.json.Encoder()


APPEND_CONFLICT = "OX001"  # raised by append_run (migrations/002_append_functions.sql)


class AppendConflict(Exception):
    """Another writer appended to the run first."""


class OutboxMessage(msgspec.Struct, kw_only=True):
    subject: str
    msg_id: str
    body: bytes
    durable: bool
    traceparent: str | None = None
    id: int = 0


class Effects(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Timers and waits to set or clear in the transaction of an append."""

    timers: list[dict[str, Any]] = []
    cancel_timers: list[str] = []
    waits: list[dict[str, Any]] = []
    cancel_waits: list[str] = []
    clear_all: bool = False  # the run has ended: drop every timer and wait it has

    def timer(self, name: str, fire_at: datetime, data: TimerData) -> None:
        self.timers.append({"name": name, "fire_at": fire_at, "data": data})

    def cancel_timer(self, name: str) -> None:
        self.cancel_timers.append(name)

    def wait(self, step: str, subject: str, key: str, match: str) -> None:
        self.waits.append({"step": step, "subject": subject, "key": key, "match": match})

    def cancel_wait(self, step: str) -> None:
        self.cancel_waits.append(step)

    def encoded(self) -> str | None:
        """The jsonb argument of append_run (None when there is nothing to do: the common case)."""
        if not (self.timers or self.cancel_timers or self.waits or self.cancel_waits or self.clear_all):
            return None
        return _encoder.encode(self).decode()

    @property
    def earliest(self) -> datetime | None:
        return min((t["fire_at"] for t in self.timers), default=None)


class DueTimer(msgspec.Struct, kw_only=True):
    run_id: str
    name: str
    fire_at: datetime
    data: AnyTimer


class StoredEvent(msgspec.Struct, kw_only=True):
    """A history row as read: its payload decoded into the struct of its type."""

    seq: int
    type: str
    at: datetime
    data: HistoryEvent


class WaitMatch(msgspec.Struct, kw_only=True):
    run_id: str
    step: str


class DefinitionRow(msgspec.Struct, kw_only=True):
    id: str
    hash: str
    definition: dict[str, Any]


class VersionExists(Exception):
    """The workflow already has this version, with other content: a version is immutable."""

    def __init__(self, id_: str, version: str, hash_: str) -> None:
        super().__init__(f"workflow {id_!r} already has a version {version!r} ({hash_[:12]})")
        self.id = id_
        self.version = version
        self.hash = hash_


class ForeignWorkflow(Exception):
    """The workflow belongs to a tenant other than the one saving a version of it (or is shared,
    and the one saving is not the default tenant). Says nothing of the owner."""

    def __init__(self, id_: str) -> None:
        super().__init__(f"the id {id_!r} belongs to a workflow of another tenant")
        self.id = id_


def may_write(writer: str | None, owner: str | None) -> bool:
    """Whether tenant ``writer`` (None: an internal caller) may save versions of a workflow of
    ``owner`` (None: shared): its own, and, for the default tenant, the shared ones."""
    if writer is None:
        return True
    return writer == (owner or DEFAULT_TENANT)


class IdTaken(Exception):
    """The address derived from a display name belongs to a workflow with another display name."""

    def __init__(self, id_: str, name: str) -> None:
        super().__init__(f"the id {id_!r} belongs to workflow {name!r}")
        self.id = id_
        self.name = name


async def init_connection(conn: asyncpg.Connection) -> None:
    """Pool ``init``: jsonb in and out as Python values, encoded with msgspec (datetimes, Structs)."""
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda v: _encoder.encode(v).decode(),
        decoder=json.loads,
        format="text",
    )


class Store:
    def __init__(self, pool: asyncpg.Pool, *, appends_in_flight: int = 2) -> None:
        self.pool = pool
        self._appends = _AppendBatcher(self._append_one, self._append_many, appends_in_flight)

    # -- definitions ---------------------------------------------------------------------------
    async def save_definition(
        self,
        id_: str,
        name: str,
        hash_: str,
        version: str,
        trigger: str | None,
        definition: dict[str, Any],
        origin: str,
        *,
        id_from_name: bool = False,
        owner: str | None = None,
        writer: str | None = None,
    ) -> bool:
        """Store a new version of workflow ``id_`` and make it current. Returns False, changing
        nothing else, when this content was stored before.

        A new workflow belongs to ``owner`` (None: shared, as a file's); a shared save (``owner``
        None, a file) makes a workflow of the default tenant shared. ``writer`` is the tenant saving
        (None: an internal caller): a workflow it may not write (``may_write``) raises
        ``ForeignWorkflow`` before anything else is compared, so the answer tells nothing of the
        other workflow. Raises ``VersionExists`` when ``version`` is stored with other content, and,
        when the id was derived from the display name (``id_from_name``), ``IdTaken`` when the
        workflow holding it is named differently. Saves of one id are serialised by an advisory
        lock, so two replicas cannot store two contents under one version.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"omni-workflow:{id_}"
            )
            current = await conn.fetchrow(
                "SELECT w.owner, d.name FROM workflows w"
                " JOIN workflow_definitions d ON d.id = w.id AND d.hash = w.hash WHERE w.id = $1",
                id_,
            )
            if current is not None and not may_write(writer, current["owner"]):
                raise ForeignWorkflow(id_)
            stored = await conn.fetch(
                "SELECT hash FROM workflow_definitions WHERE id = $1 AND version = $2 ORDER BY created_at",
                id_,
                version,
            )
            hashes = [r["hash"] for r in stored]
            if hash_ in hashes:
                if owner is None and current is not None and current["owner"] is not None:
                    # A file with content registered before over the API: the file shares it.
                    await conn.execute("UPDATE workflows SET owner = NULL WHERE id = $1", id_)
                return False
            if id_from_name and current is not None and current["name"] != name:
                raise IdTaken(id_, current["name"])
            if hashes:
                raise VersionExists(id_, version, hashes[0])
            await conn.execute(
                "INSERT INTO workflow_definitions (id, name, hash, version, origin, definition)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                id_,
                name,
                hash_,
                version,
                origin,
                definition,
            )
            # The owner is the first save's: a later version keeps it, unless a file shares it.
            await conn.execute(
                "INSERT INTO workflows (id, hash, trigger, updated_at, owner) VALUES ($1, $2, $3, now(), $4)"
                " ON CONFLICT (id) DO UPDATE SET hash = $2, trigger = $3, updated_at = now(),"
                " owner = CASE WHEN $4::text IS NULL THEN NULL ELSE workflows.owner END",
                id_,
                hash_,
                trigger,
                owner,
            )
            return True

    async def current_definitions(
        self, trigger: str | None = None, tenant: str | None = None
    ) -> list[DefinitionRow]:
        """The current version of every workflow ``tenant`` sees (None: every workflow), or of
        those ``trigger`` starts."""
        query = (
            "SELECT w.id, w.hash, d.definition FROM workflows w"
            " JOIN workflow_definitions d ON d.id = w.id AND d.hash = w.hash"
            # What the tenant sees (NULL: every workflow): the shared ones and its own.
            " WHERE ($1::text IS NULL OR w.owner IS NULL OR w.owner = $1)"
        )
        args: list[Any] = [tenant]
        if trigger is not None:
            query += " AND w.trigger = $2"
            args.append(trigger)
        rows = await self.pool.fetch(query + " ORDER BY w.id", *args)
        return [DefinitionRow(id=r["id"], hash=r["hash"], definition=r["definition"]) for r in rows]

    async def definition(
        self, id_: str, hash_: str | None = None, tenant: str | None = None
    ) -> DefinitionRow | None:
        """Workflow ``id_``'s current version when ``tenant`` sees it (None: always), or its version
        ``hash_`` (the version of a run, which its tenant saw when it started)."""
        if hash_ is None:
            row = await self.pool.fetchrow(
                "SELECT w.id, w.hash, d.definition FROM workflows w"
                " JOIN workflow_definitions d ON d.id = w.id AND d.hash = w.hash"
                " WHERE w.id = $1 AND ($2::text IS NULL OR w.owner IS NULL OR w.owner = $2)",
                id_,
                tenant,
            )
        else:
            row = await self.pool.fetchrow(
                "SELECT id, hash, definition FROM workflow_definitions WHERE id = $1 AND hash = $2",
                id_,
                hash_,
            )
        if row is None:
            return None
        return DefinitionRow(id=row["id"], hash=row["hash"], definition=row["definition"])

    # -- runs ----------------------------------------------------------------------------------
    async def run_exists(self, run_id: str) -> bool:
        return bool(await self.pool.fetchval("SELECT true FROM runs WHERE run_id = $1", run_id))

    async def run_tenant(self, run_id: str) -> str | None:
        """The tenant of run ``run_id``; None when there is no such run."""
        tenant: str | None = await self.pool.fetchval("SELECT tenant FROM runs WHERE run_id = $1", run_id)
        return tenant

    async def load_run(self, run_id: str) -> RunState | None:
        """The run's state: its snapshot with the events after it folded on."""
        row = await self.pool.fetchrow(
            "SELECT state::text AS state, snapshot_seq, last_seq FROM runs WHERE run_id = $1", run_id
        )
        if row is None:
            return None
        return await self._current(row)

    async def _current(self, row: asyncpg.Record) -> RunState:
        state = _state_decoder.decode(row["state"])
        if row["last_seq"] > row["snapshot_seq"]:
            tail = await self.pool.fetch(
                "SELECT seq, type, v, data::text AS data, at FROM run_events"
                " WHERE run_id = $1 AND seq > $2 ORDER BY seq",
                state.run_id,
                row["snapshot_seq"],
            )
            run_id = state.run_id
            for r in tail:
                apply(state, run_id, decode_data(run_id, r["seq"], r["type"], r["v"], r["data"]), r["at"])
        state.last_seq = row["last_seq"]
        return state

    async def origin(self, origin_key: str) -> tuple[str, str | None] | None:
        """The run a start key made, and the hash of the request it came with."""
        row = await self.pool.fetchrow(
            "SELECT run_id, origin_hash FROM runs WHERE origin_key = $1", origin_key
        )
        return None if row is None else (str(row["run_id"]), row["origin_hash"])

    async def create_run(
        self,
        state: RunState,
        events: Sequence[NewEvent],
        outbox: Sequence[OutboxMessage],
        origin_key: str | None,
        effects: Effects | None = None,
        origin_hash: str | None = None,
    ) -> list[OutboxMessage] | None:
        """Insert a new run with its first events. Returns None when the run (or its origin) exists."""
        ids = await self.pool.fetchval(
            "SELECT create_run($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8::text::jsonb, $9, $10,"
            " $11, $12, $13, $14, $15, $16::text::jsonb, $17)",
            state.run_id,
            state.workflow,
            state.hash,
            origin_key,
            origin_hash,
            state.created_at,
            _events_json(events),
            _encoder.encode(state).decode(),
            state.status,
            state.updated_at,
            *_outbox_columns(outbox),
            effects.encoded() if effects else None,
            state.tenant,
        )
        return None if ids is None else _with_ids(outbox, ids)

    async def append(
        self,
        state: RunState,
        expected_seq: int,
        events: Sequence[NewEvent],
        outbox: Sequence[OutboxMessage],
        *,
        snapshot: bool = True,
        effects: Effects | None = None,
    ) -> list[OutboxMessage]:
        """Append ``events`` after ``expected_seq`` with the outbox rows, in one statement, and save
        ``state`` as the new snapshot when ``snapshot``. Raises ``AppendConflict`` when another
        writer was first.

        Appends to different runs that arrive while others are being written go out together, in
        one ``append_runs`` statement (see :class:`_AppendBatcher`); an append that finds nothing
        in flight goes out at once, alone.
        """
        item = _Append(
            run_id=state.run_id,
            expected=expected_seq,
            events=_events_json(events),
            state=_encoder.encode(state).decode() if snapshot else None,
            status=state.status,
            updated_at=state.updated_at,
            outbox=list(outbox),
            effects=effects.encoded() if effects else None,
        )
        ids = await self._appends.submit(item)
        if ids is None:
            raise AppendConflict(state.run_id)
        return _with_ids(outbox, ids)

    async def _append_one(self, item: _Append) -> list[int] | None:
        """One run's append on its own (``append_run``); None when another writer was first."""
        try:
            ids: list[int] = await self.pool.fetchval(
                "SELECT append_run($1, $2, $3::text::jsonb, $4::text::jsonb, $5, $6, $7, $8, $9, $10,"
                " $11, $12::text::jsonb)",
                item.run_id,
                item.expected,
                item.events,
                item.state,
                item.status,
                item.updated_at,
                *_outbox_columns(item.outbox),
                item.effects,
            )
        except asyncpg.UniqueViolationError:
            return None
        except asyncpg.PostgresError as exc:
            # asyncpg has no class for a custom SQLSTATE: it raises UnknownPostgresError.
            if getattr(exc, "sqlstate", None) != APPEND_CONFLICT:
                raise
            return None
        return ids

    async def _append_many(self, items: Sequence[_Append]) -> list[list[int] | None]:
        """Several runs' appends in one ``append_runs`` statement; None for each that conflicted."""
        subjects, msg_ids, bodies, traceparents, durables = _outbox_columns(
            [message for item in items for message in item.outbox]
        )
        rows = await self.pool.fetch(
            "SELECT item, ids FROM append_runs($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            [item.run_id for item in items],
            [item.expected for item in items],
            [item.events for item in items],
            [item.state for item in items],
            [item.status for item in items],
            [item.updated_at for item in items],
            [len(item.outbox) for item in items],
            subjects,
            msg_ids,
            bodies,
            traceparents,
            durables,
            [item.effects for item in items],
        )
        found: list[list[int] | None] = [None] * len(items)
        for row in rows:
            found[row["item"] - 1] = row["ids"]
        return found

    async def run_events(self, run_id: str, after_seq: int = 0, limit: int = 10_000) -> list[StoredEvent]:
        """The run's history after ``after_seq``; raises ``HistoryError`` on a row it cannot read."""
        rows = await self.pool.fetch(
            "SELECT seq, type, v, data::text AS data, at FROM run_events"
            " WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            run_id,
            after_seq,
            limit,
        )
        return [
            StoredEvent(
                seq=r["seq"],
                type=r["type"],
                at=r["at"],
                data=decode_data(run_id, r["seq"], r["type"], r["v"], r["data"]),
            )
            for r in rows
        ]

    async def list_runs(
        self,
        workflow: str | None,
        status: str | None,
        limit: int,
        cursor: str | None,
        tenant: str | None = None,
    ) -> tuple[list[RunState], str | None]:
        """Newest first, keyset-paginated on (created_at, run_id); only ``tenant``'s runs when given."""
        clauses: list[str] = []
        args: list[Any] = []
        if tenant is not None:
            args.append(tenant)
            clauses.append(f"tenant = ${len(args)}")
        if workflow:
            args.append(workflow)
            clauses.append(f"workflow = ${len(args)}")
        if status:
            args.append(status)
            clauses.append(f"status = ${len(args)}")
        if cursor:
            created_at, run_id = decode_cursor(cursor)
            args.extend([created_at, run_id])
            clauses.append(f"(created_at, run_id) < (${len(args) - 1}, ${len(args)})")
        args.append(limit + 1)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.pool.fetch(
            f"SELECT state::text AS state, snapshot_seq, last_seq FROM runs {where}"  # noqa: S608 - fixed clauses
            f" ORDER BY created_at DESC, run_id DESC LIMIT ${len(args)}",
            *args,
        )
        states = [await self._current(r) for r in rows]
        next_cursor = None
        if len(states) > limit:
            states = states[:limit]
            last = states[-1]
            next_cursor = encode_cursor(last.created_at, last.run_id)
        return states, next_cursor

    # -- timers and waits ----------------------------------------------------------------------
    async def claim_due_timers(
        self, limit: int, lease_s: float, before: datetime | None = None
    ) -> list[DueTimer]:
        """Lease timers that are due (and not leased by a live replica) for ``lease_s``; with
        ``before``, only those due earlier than it.

        A fired timer is deleted by the append that records its effect; one whose replica died
        before that is leased again once the lease runs out, so it fires at least once, and
        the run's state makes a second firing a no-op.
        """
        rows = await self.pool.fetch(
            "UPDATE timers t SET leased_until = now() + make_interval(secs => $2)"
            " FROM (SELECT run_id, name FROM timers WHERE fire_at <= now()"
            "       AND ($3::timestamptz IS NULL OR fire_at < $3)"
            "       AND (leased_until IS NULL OR leased_until < now())"
            "       ORDER BY fire_at LIMIT $1 FOR UPDATE SKIP LOCKED) due"
            " WHERE t.run_id = due.run_id AND t.name = due.name"
            " RETURNING t.run_id, t.name, t.fire_at, t.data::text AS data",
            limit,
            lease_s,
            before,
        )
        return [
            DueTimer(
                run_id=r["run_id"],
                name=r["name"],
                fire_at=r["fire_at"],
                data=_timer_decoder.decode(r["data"]),
            )
            for r in rows
        ]

    async def next_timer_at(self) -> datetime | None:
        value: datetime | None = await self.pool.fetchval("SELECT min(fire_at) FROM timers")
        return value

    async def delete_timer(self, run_id: str, name: str) -> None:
        await self.pool.execute("DELETE FROM timers WHERE run_id = $1 AND name = $2", run_id, name)

    async def matching_waits(self, subject: str, data: Any, tenant: str | None = None) -> list[WaitMatch]:
        """The steps waiting for an event on ``subject`` whose ``match`` field equals their key, in
        the runs of ``tenant`` (None: of every tenant)."""
        rows = await self.pool.fetch(
            "SELECT run_id, step FROM waits w WHERE subject = $1"
            " AND key = jsonb_extract_path_text($2::jsonb, VARIADIC string_to_array(match, '.'))"
            " AND ($3::text IS NULL OR EXISTS"
            "      (SELECT 1 FROM runs r WHERE r.run_id = w.run_id AND r.tenant = $3))",
            subject,
            data,
            tenant,
        )
        return [WaitMatch(run_id=r["run_id"], step=r["step"]) for r in rows]

    # -- versions ------------------------------------------------------------------------------
    async def versions(self, id_: str, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every version of workflow ``id_``, newest first; none when ``tenant`` does not see it."""
        rows = await self.pool.fetch(
            "SELECT d.hash, d.version, d.origin, d.created_at, (w.hash = d.hash) AS current"
            " FROM workflow_definitions d LEFT JOIN workflows w ON w.id = d.id"
            " WHERE d.id = $1 AND ($2::text IS NULL OR w.owner IS NULL OR w.owner = $2)"
            " ORDER BY d.created_at DESC, d.hash",
            id_,
            tenant,
        )
        return [dict(r) for r in rows]

    # -- outbox --------------------------------------------------------------------------------
    async def delete_outbox(self, ids: Sequence[int]) -> None:
        if ids:
            await self.pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", list(ids))

    async def claim_stale_outbox(self, conn: Conn, older_than_s: float, limit: int) -> list[OutboxMessage]:
        """Within the caller's transaction, lock outbox rows left behind (e.g. by a crashed replica)."""
        rows = await conn.fetch(
            "SELECT id, subject, msg_id, body, traceparent, durable FROM outbox"
            " WHERE created_at < now() - make_interval(secs => $1)"
            " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            older_than_s,
            limit,
        )
        return [
            OutboxMessage(
                id=r["id"],
                subject=r["subject"],
                msg_id=r["msg_id"],
                body=bytes(r["body"]),
                traceparent=r["traceparent"],
                durable=r["durable"],
            )
            for r in rows
        ]


class _Append(msgspec.Struct, kw_only=True):
    """One run's append, encoded for the database."""

    run_id: str
    expected: int
    events: str
    state: str | None
    status: str
    updated_at: datetime
    outbox: list[OutboxMessage]
    effects: str | None


class _AppendBatcher:
    """Sends appends as they come while fewer than ``in_flight`` statements are out; the appends
    that arrive meanwhile wait and go out together in the next statement (up to ``MAX_BATCH``).

    Nothing waits when the engine is idle: a lone append is sent at once, as ``append_run``. Under
    load the appends of many runs share one round trip and one transaction (one WAL flush),
    which is where the engine's time per step went. Items are sorted by run id so that batches of
    different replicas lock runs in the same order. A batch that fails for another reason than a
    conflict is retried item by item, so one bad append cannot fail the others.
    """

    MAX_BATCH = 64

    def __init__(
        self,
        one: Callable[[_Append], Awaitable[list[int] | None]],
        many: Callable[[Sequence[_Append]], Awaitable[list[list[int] | None]]],
        in_flight: int,
    ) -> None:
        self._one = one
        self._many = many
        self._limit = max(1, in_flight)
        self._in_flight = 0
        self._queue: list[tuple[_Append, asyncio.Future[list[int] | None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: _Append) -> list[int] | None:
        future: asyncio.Future[list[int] | None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        while self._queue and self._in_flight < self._limit:
            batch, self._queue = self._queue[: self.MAX_BATCH], self._queue[self.MAX_BATCH :]
            self._in_flight += 1
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[_Append, asyncio.Future[list[int] | None]]]) -> None:
        try:
            if len(batch) == 1:
                await _settle(batch[0], self._one)
                return
            batch.sort(key=lambda pair: pair[0].run_id)
            try:
                results = await self._many([item for item, _ in batch])
            except Exception:  # noqa: BLE001 - isolate the failing append: retry one by one
                await asyncio.gather(*(_settle(pair, self._one) for pair in batch))
                return
            for (_, future), ids in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(ids)
        finally:
            self._in_flight -= 1
            self._kick()


async def _settle(
    pair: tuple[_Append, asyncio.Future[list[int] | None]],
    send: Callable[[_Append], Awaitable[list[int] | None]],
) -> None:
    item, future = pair
    try:
        ids = await send(item)
    except Exception as exc:  # noqa: BLE001 - handed to the caller that waits for this append
        if not future.done():
            future.set_exception(exc)
        return
    if not future.done():
        future.set_result(ids)


def _events_json(events: Sequence[NewEvent]) -> str:
    """The events as append_run takes them: ``[{"type", "v", "data", "at"}, ...]``."""
    return _encoder.encode(
        [{"type": e.data.TYPE, "v": e.data.VERSION, "data": e.data, "at": e.at} for e in events]
    ).decode()


def _outbox_columns(
    outbox: Sequence[OutboxMessage],
) -> tuple[list[str], list[str], list[bytes], list[str | None], list[bool]]:
    return (
        [m.subject for m in outbox],
        [m.msg_id for m in outbox],
        [m.body for m in outbox],
        [m.traceparent for m in outbox],
        [m.durable for m in outbox],
    )


def _with_ids(outbox: Sequence[OutboxMessage], ids: Sequence[int]) -> list[OutboxMessage]:
    for message, id_ in zip(outbox, ids, strict=True):
        message.id = id_
    return list(outbox)


def encode_cursor(created_at: datetime, run_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{run_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError on a cursor this store did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, run_id = raw.split("|", 1)
        return datetime.fromisoformat(created_at), run_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("invalid cursor") from exc
