"""The audit log against real PostgreSQL: one gapless chain under concurrent appends, listing with
filters and pages, the hash recomputed from the documented recipe alone, and every kind of
tampering found at the record where it happened."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
import rfc8785
from omni_contract.security import AuditEvent
from omni_runtime import db
from omni_security import audit
from omni_security.audit import AuditEntry, AuditRecord

pytestmark = pytest.mark.integration

SCHEMA = "security"
T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the per-test database with the security-service's schema migrated."""
    pool = await db.create_pool(database_url, SCHEMA, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await db.apply_migrations(conn, SCHEMA, db.migration_files("omni_security"))
    try:
        yield pool
    finally:
        await pool.close()


def entry(n: int, **fields: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "action": "key.create",
        "outcome": "success",
        "principal": "alice",
        "principal_kind": "user",
        "tenant": "acme",
        "resource": f"key:k{n}",
        "ip_address": "192.0.2.7",
        "user_agent": "pytest/1",
        "service": "security-service",
        "at": T0 + timedelta(minutes=n),
        "details": {"n": n, "name": f"key {n}", "scopes": ["run:read"]},
    }
    values.update(fields)
    return AuditEntry(**values)


async def tamper(conn: asyncpg.Connection | Any, sql: str, *args: Any) -> None:
    """Change the log the way someone with the table owner's rights could: triggers off first."""
    await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
    await conn.execute("ALTER TABLE audit_head DISABLE TRIGGER USER")
    await conn.execute(sql, *args)


# -- the recipe -----------------------------------------------------------------------------------
def recipe_hash(record: AuditRecord) -> str:
    """The module docstring's recipe, written out again here without the module's help."""
    at = record.at.astimezone(UTC)
    document = {
        "seq": record.seq,
        "at": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond:06d}Z",
        "prev_hash": record.prev_hash,
        "principal": record.principal,
        "principal_kind": record.principal_kind,
        "tenant": record.tenant,
        "action": record.action,
        "resource": record.resource,
        "outcome": record.outcome,
        "ip_address": record.ip_address,
        "user_agent": record.user_agent,
        "service": record.service,
        "details": record.details,
    }
    return hashlib.sha256(rfc8785.dumps(document)).hexdigest()


async def test_each_hash_is_recomputed_from_the_documented_recipe_alone(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        appended = await audit.append(conn, [entry(1), entry(2, principal=None, ip_address=None, details={})])
        # An entry without a time gets the append's (the database's clock), in UTC.
        appended += await audit.append(conn, [AuditEntry(action="auth.authenticate", outcome="failure")])
        listed = (await audit.list_records(conn)).records[::-1]
        head = await conn.fetchrow("SELECT last_seq, last_hash FROM audit_head")
    assert [r.seq for r in listed] == [1, 2, 3]
    assert listed == appended
    assert listed[0].prev_hash == "0" * 64 == audit.GENESIS_HASH
    assert listed[1].prev_hash == listed[0].hash
    assert listed[2].prev_hash == listed[1].hash
    for record in listed:
        assert record.hash == recipe_hash(record)
    assert listed[0].at == T0 + timedelta(minutes=1)
    assert listed[2].at.tzinfo is not None
    assert listed[2].at.utcoffset() == timedelta(0)
    assert head is not None
    assert (head["last_seq"], head["last_hash"]) == (3, listed[2].hash)


async def test_a_time_in_another_zone_is_stored_and_hashed_as_utc(pool: asyncpg.Pool) -> None:
    paris = timezone(timedelta(hours=1))
    async with pool.acquire() as conn:
        [record] = await audit.append(conn, [entry(1, at=datetime(2025, 3, 1, 13, 0, 0, 5, tzinfo=paris))])
        [listed] = (await audit.list_records(conn)).records
    assert audit.rfc3339(record.at) == "2025-03-01T12:00:00.000005Z"
    assert listed.at == record.at
    assert listed.hash == recipe_hash(listed)


# -- appending ----------------------------------------------------------------------------------
async def test_a_rolled_back_append_leaves_no_gap(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, [entry(1)])
        tx = conn.transaction()
        await tx.start()
        assert [r.seq for r in await audit.append(conn, [entry(2), entry(3)])] == [2, 3]
        await tx.rollback()
        assert [r.seq for r in await audit.append(conn, [entry(4)])] == [2]
        result = await audit.verify(conn)
    assert result.ok, result.message
    assert result.checked == 2


async def test_a_batch_with_one_unrecordable_entry_appends_nothing(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(ValueError, match=r"audit entry 1: details\.bad is nan"):
            await audit.append(conn, [entry(1), entry(2, details={"bad": float("nan")})])
        assert (await audit.list_records(conn)).records == []
        assert [r.seq for r in await audit.append(conn, [entry(3), entry(4)])] == [1, 2]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"details": {"x": float("nan")}}, r"details\.x is nan"),
        ({"details": {"x": [1, float("inf")]}}, r"details\.x\[1\] is inf"),
        ({"details": {"x": -float("inf")}}, r"details\.x is -inf"),
        ({"details": {"x": 2**53}}, r"details\.x is the integer 9007199254740992, beyond"),
        ({"details": {"x": b"raw"}}, r"details\.x is a bytes, not a JSON value"),
        ({"details": {"x": T0}}, r"details\.x is a datetime, not a JSON value"),
        ({"details": {1: "x"}}, r"has the key 1: JSON object keys are strings"),
        ({"details": {"x": "a\x00b"}}, r"details\.x contains the NUL character"),
        ({"details": {"x": "\ud800"}}, r"details\.x is not valid Unicode"),
        ({"details": {"x": "y" * audit.MAX_DETAILS_BYTES}}, r"more than 16384"),
        ({"details": ["not", "an", "object"]}, r"details must be a JSON object"),
        ({"principal": "al\x00ice"}, r"principal contains the NUL character"),
        ({"outcome": "maybe"}, r"outcome must be one of"),
        ({"action": ""}, r"action must be a non-empty string"),
        ({"at": datetime(2025, 1, 1)}, r"timezone-aware"),  # the naive time refused
    ],
)
async def test_what_the_log_cannot_keep_is_a_clear_value_error(
    pool: asyncpg.Pool, fields: dict[str, Any], message: str
) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(ValueError, match=message):
            await audit.append(conn, [entry(1, **fields)])
        assert (await audit.list_records(conn)).records == []


async def test_details_read_back_from_jsonb_hash_as_they_were_appended(pool: asyncpg.Pool) -> None:
    awkward = {
        "floats": [0.1, 1e300, 1.5e-7, 5e-324, 1e21, -0.0, 1.0, 2.5, 1.7976931348623157e308],
        "ints": [0, -1, 2**53 - 1, -(2**53 - 1)],
        "text": ["é", "日本", "😀", "\u2028", '"quoted"\\', "\t\n"],
        "nested": {"b": {"z": None, "a": True}, "a": [[], {}]},
        "": "empty key",
        "z": False,
    }
    async with pool.acquire() as conn:
        [appended] = await audit.append(conn, [entry(1, details=awkward)])
        [listed] = (await audit.list_records(conn)).records
        result = await audit.verify(conn)
    assert result.ok, result.message
    assert listed.details == appended.details
    assert listed.details["floats"] == awkward["floats"]  # as numbers: -0.0 == 0, 1.0 == 1
    assert recipe_hash(listed) == listed.hash


async def test_appends_from_four_connections_at_once_form_one_chain(
    pool: asyncpg.Pool, database_url: str
) -> None:
    conns = [await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA}) for _ in range(4)]

    async def writer(conn: asyncpg.Connection, w: int) -> list[int]:
        seqs: list[int] = []
        for n in range(50):
            [record] = await audit.append(conn, [entry(n, principal=f"writer-{w}")])
            seqs.append(record.seq)
        return seqs

    try:
        per_writer = await asyncio.gather(*(writer(conn, w) for w, conn in enumerate(conns)))
    finally:
        for conn in conns:
            await conn.close()
    for seqs in per_writer:
        assert seqs == sorted(seqs)  # each writer's appends in its own order
    assert sorted(s for seqs in per_writer for s in seqs) == list(range(1, 201))
    async with pool.acquire() as conn:
        result = await audit.verify(conn, batch=64)
    assert result.ok, result.message
    assert result.checked == 200


async def test_concurrent_batches_interleave_whole(pool: asyncpg.Pool, database_url: str) -> None:
    conns = [await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA}) for _ in range(4)]
    try:
        batches = await asyncio.gather(
            *(
                audit.append(conn, [entry(n, principal=f"w{w}") for n in range(25)])
                for w, conn in enumerate(conns)
            )
        )
    finally:
        for conn in conns:
            await conn.close()
    for batch in batches:
        seqs = [r.seq for r in batch]
        assert seqs == list(range(seqs[0], seqs[0] + 25))  # a batch is consecutive
    async with pool.acquire() as conn:
        result = await audit.verify(conn)
    assert result.ok, result.message
    assert result.checked == 100


# -- listing ------------------------------------------------------------------------------------
SEED = [
    entry(1, action="auth.authenticate", outcome="failure", principal=None, tenant=None),
    entry(2, action="auth.authenticate", outcome="success"),
    entry(3, action="key.create"),
    entry(4, action="key.revoke", principal="bob"),
    entry(5, action="keyring.open", principal="bob"),
    entry(6, action="run.start", tenant="other", principal="carol"),
    entry(7, action="access.denied", outcome="denied", principal="bob"),
    entry(8, action="key.create", tenant="other", principal="carol"),
]


@pytest.mark.parametrize(
    ("filters", "seqs"),
    [
        ({}, [8, 7, 6, 5, 4, 3, 2, 1]),
        ({"principal": "bob"}, [7, 5, 4]),
        ({"action": "key.create"}, [8, 3]),
        ({"action": "key.*"}, [8, 4, 3]),
        ({"action": "key*"}, [8, 5, 4, 3]),
        ({"action": "key"}, []),
        ({"action": "*"}, [8, 7, 6, 5, 4, 3, 2, 1]),
        ({"outcome": "denied"}, [7]),
        ({"outcome": "failure"}, [1]),
        ({"tenant": "other"}, [8, 6]),
        ({"since": T0 + timedelta(minutes=6)}, [8, 7, 6]),
        ({"until": T0 + timedelta(minutes=3)}, [2, 1]),
        ({"since": T0 + timedelta(minutes=2), "until": T0 + timedelta(minutes=4)}, [3, 2]),
        ({"tenant": "acme", "action": "key.*", "principal": "bob"}, [4]),
        ({"after_seq": 4}, [3, 2, 1]),
        ({"after_seq": 7, "principal": "bob"}, [5, 4]),
    ],
)
async def test_list_filters_newest_first(
    pool: asyncpg.Pool, filters: dict[str, Any], seqs: list[int]
) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, SEED[:4])
        await audit.append(conn, SEED[4:])
        page = await audit.list_records(conn, **filters)
    assert [r.seq for r in page.records] == seqs
    assert page.next_cursor is None


async def test_pages_follow_the_cursor_to_the_oldest_record(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, SEED)
        seen: list[int] = []
        cursors: list[str | None] = []
        after: int | None = None
        while True:
            page = await audit.list_records(conn, after_seq=after, limit=3)
            seen += [r.seq for r in page.records]
            cursors.append(page.next_cursor)
            if page.next_cursor is None:
                break
            after = int(page.next_cursor)
        bob = await audit.list_records(conn, principal="bob", limit=2)
        rest = await audit.list_records(conn, principal="bob", limit=2, after_seq=int(bob.next_cursor or 0))
    assert seen == [8, 7, 6, 5, 4, 3, 2, 1]
    assert cursors == ["6", "3", None]
    assert [r.seq for r in bob.records] == [7, 5]
    assert [r.seq for r in rest.records] == [4]
    assert rest.next_cursor is None


async def test_a_naive_time_filter_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(ValueError, match="since must be timezone-aware"):
            await audit.list_records(conn, since=datetime(2025, 1, 1))


# -- verify ---------------------------------------------------------------------------------------
async def test_an_empty_log_verifies(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        result = await audit.verify(conn)
    assert (result.ok, result.checked, result.first_broken, result.problem) == (True, 0, None, None)


async def test_the_log_refuses_updates_deletes_and_truncation(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, [entry(1)])
        for sql in (
            "UPDATE audit_log SET principal = 'mallory'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
            "DELETE FROM audit_head",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(sql)
        result = await audit.verify(conn)
    assert result.ok, result.message


def flip(column: str) -> str:
    """SQL that changes the first character of a hex column to another hex digit."""
    return f"overlay({column} placing (CASE WHEN left({column}, 1) = '0' THEN '1' ELSE '0' END) from 1 for 1)"


N = 5  # the record tampered with, among 8, verified 3 at a time (so N is mid-batch)


@pytest.mark.parametrize(
    ("assignment", "problem"),
    [
        ("at = at + interval '1 microsecond'", "hash_mismatch"),
        ("principal = overlay(principal placing 'A' from 1 for 1)", "hash_mismatch"),
        ("principal_kind = 'usex'", "hash_mismatch"),
        ("tenant = 'acmf'", "hash_mismatch"),
        ("action = 'key.creatf'", "hash_mismatch"),
        ("resource = resource || 'x'", "hash_mismatch"),
        ("outcome = 'failure'", "hash_mismatch"),
        ("ip_address = '192.0.2.8'", "hash_mismatch"),
        ("user_agent = 'pytest/2'", "hash_mismatch"),
        ("service = 'gateway'", "hash_mismatch"),
        ("principal = NULL", "hash_mismatch"),
        ("details = jsonb_set(details, '{n}', '6')", "hash_mismatch"),
        ("details = jsonb_set(details, '{name}', '\"key 6\"')", "hash_mismatch"),
        ("details = details || '{\"extra\": true}'", "hash_mismatch"),
        ("details = '{\"n\": 1e400}'", "hash_mismatch"),  # a number no double holds
        (f"hash = {flip('hash')}", "hash_mismatch"),
        (f"prev_hash = {flip('prev_hash')}", "chain_break"),
    ],
)
async def test_an_edited_field_is_found_at_its_record(
    pool: asyncpg.Pool, assignment: str, problem: str
) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, [entry(n) for n in range(1, 9)])
        await tamper(conn, f"UPDATE audit_log SET {assignment} WHERE seq = $1", N)
        result = await audit.verify(conn, batch=3)
    assert not result.ok
    assert (result.first_broken, result.problem) == (N, problem), result.message
    assert result.checked == N


@pytest.mark.parametrize("seq", [1, 8])
async def test_an_edited_hash_at_either_end_is_found_there(pool: asyncpg.Pool, seq: int) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, [entry(n) for n in range(1, 9)])
        await tamper(conn, f"UPDATE audit_log SET hash = {flip('hash')} WHERE seq = $1", seq)
        result = await audit.verify(conn)
    assert (result.ok, result.first_broken, result.problem) == (False, seq, "hash_mismatch"), result.message


async def test_an_edited_first_link_breaks_the_chain_at_the_first_record(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, [entry(n) for n in range(1, 4)])
        await tamper(conn, f"UPDATE audit_log SET prev_hash = {flip('prev_hash')} WHERE seq = 1")
        result = await audit.verify(conn)
    assert (result.ok, result.first_broken, result.problem) == (False, 1, "chain_break")
    assert "genesis" in result.message


@pytest.mark.parametrize("deleted", [1, 4, 6])
async def test_a_deleted_record_shows_as_a_gap_at_the_next(pool: asyncpg.Pool, deleted: int) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, [entry(n) for n in range(1, 9)])
        await tamper(conn, "DELETE FROM audit_log WHERE seq = $1", deleted)
        result = await audit.verify(conn, batch=3)
    assert (result.ok, result.first_broken, result.problem) == (False, deleted + 1, "seq_gap")
    assert f"seq {deleted} is missing" in result.message


async def test_deleted_records_renumbered_show_as_a_chain_break(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, [entry(n) for n in range(1, 9)])
        await tamper(conn, "DELETE FROM audit_log WHERE seq = 4")
        await tamper(conn, "UPDATE audit_log SET seq = seq - 1 WHERE seq > 4")
        await tamper(conn, "UPDATE audit_head SET last_seq = 7")
        result = await audit.verify(conn)
    assert (result.ok, result.first_broken, result.problem) == (False, 4, "chain_break"), result.message


async def test_a_record_given_another_seq_is_missing_at_its_place(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, [entry(n) for n in range(1, 9)])
        await tamper(conn, "UPDATE audit_log SET seq = 100 WHERE seq = 5")
        result = await audit.verify(conn)
    assert (result.ok, result.first_broken, result.problem) == (False, 6, "seq_gap")
    assert "seq 5 is missing" in result.message


_PAYLOAD = (
    "at",
    "principal",
    "principal_kind",
    "tenant",
    "action",
    "resource",
    "outcome",
    "ip_address",
    "user_agent",
    "service",
    "details",
)


async def swap(conn: Any, a: int, b: int, columns: tuple[str, ...]) -> None:
    assignments = ", ".join(f"{c} = o.{c}" for c in columns)
    await tamper(
        conn,
        f"UPDATE audit_log AS t SET {assignments} FROM audit_log AS o"
        " WHERE (t.seq, o.seq) IN (($1, $2), ($2, $1))",
        a,
        b,
    )


@pytest.mark.parametrize(("a", "b"), [(3, 6), (4, 5)])
async def test_two_swapped_records_are_found_at_the_first(pool: asyncpg.Pool, a: int, b: int) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, [entry(n) for n in range(1, 9)])
        await swap(conn, a, b, (*_PAYLOAD, "prev_hash", "hash"))  # whole records trade places
        result = await audit.verify(conn, batch=2)
    assert (result.ok, result.first_broken, result.problem) == (False, a, "chain_break"), result.message


async def test_two_swapped_contents_are_found_at_the_first(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, [entry(n) for n in range(1, 9)])
        await swap(conn, 3, 6, _PAYLOAD)  # what happened, moved; the chain's links left in place
        result = await audit.verify(conn)
    assert (result.ok, result.first_broken, result.problem) == (False, 3, "hash_mismatch"), result.message


async def test_records_cut_off_the_end_are_found_by_the_head(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, [entry(n) for n in range(1, 9)])
        await tamper(conn, "DELETE FROM audit_log WHERE seq >= 7")
        result = await audit.verify(conn, batch=3)
    assert (result.ok, result.first_broken, result.problem) == (False, 7, "head_mismatch")
    assert "seqs 7..8 are missing" in result.message
    assert result.checked == 6


async def test_an_edited_head_is_found(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await audit.append(conn, [entry(n) for n in range(1, 4)])
        await tamper(conn, f"UPDATE audit_head SET last_hash = {flip('last_hash')}")
        edited = await audit.verify(conn)
        await tamper(conn, "UPDATE audit_head SET last_seq = 2")
        moved_back = await audit.verify(conn)
        await tamper(conn, "DELETE FROM audit_head")
        deleted = await audit.verify(conn)
        with pytest.raises(RuntimeError, match="audit_head has no row"):
            await audit.append(conn, [entry(4)])
    assert (edited.ok, edited.first_broken, edited.problem) == (False, 3, "head_mismatch")
    assert (moved_back.ok, moved_back.first_broken, moved_back.problem) == (False, 3, "head_mismatch")
    assert (deleted.ok, deleted.first_broken, deleted.problem) == (False, 4, "head_mismatch")


class AppendsBeforeTheHeadIsRead:
    """A connection on which another replica appends just before verify reads the head."""

    def __init__(self, conn: Any, other: Any, entries: list[AuditEntry]) -> None:
        self.conn = conn
        self.other = other
        self.entries = entries
        self.appended = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        if "audit_head" in query and not self.appended:
            self.appended = True
            await audit.append(self.other, self.entries)
        return await self.conn.fetchrow(query, *args)


async def test_verify_checks_records_appended_while_it_runs(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, pool.acquire() as other:
        await audit.append(conn, [entry(n) for n in range(1, 6)])
        racing = AppendsBeforeTheHeadIsRead(conn, other, [entry(6), entry(7)])
        result = await audit.verify(racing, batch=2)  # type: ignore[arg-type]
    assert racing.appended
    assert result.ok, result.message
    assert result.checked == 7


# -- events from NATS -----------------------------------------------------------------------------
async def test_any_audit_event_becomes_an_entry_the_log_keeps(pool: asyncpg.Pool) -> None:
    events = [
        AuditEvent(
            action="run.start",
            outcome="success",
            principal="alice",
            principal_kind="user",
            tenant="acme",
            resource="run:r1",
            ip_address="2001:db8::1",
            user_agent="curl/8",
            service="gateway",
            at=T0,
            details={"workflow": "w"},
        ),
        AuditEvent(action="run.cancel", outcome="maybe", details={"x": float("nan")}),
        AuditEvent(action="", outcome="denied", principal="a\x00b", at=datetime(2025, 1, 1)),
    ]
    async with pool.acquire() as conn:
        records = await audit.append(conn, [audit.entry_of(e) for e in events])
        result = await audit.verify(conn)
    assert result.ok, result.message
    first, odd, worse = records
    assert (first.action, first.resource, first.service, first.at, first.details) == (
        "run.start",
        "run:r1",
        "gateway",
        T0,
        {"workflow": "w"},
    )
    assert odd.outcome == "failure"
    assert odd.details["unknown_outcome"] == "maybe"
    assert "nan" in odd.details["unrecordable_details"]
    assert (worse.action, worse.principal, worse.at) == (
        "unknown",
        "a\ufffdb",
        datetime(2025, 1, 1, tzinfo=UTC),
    )
