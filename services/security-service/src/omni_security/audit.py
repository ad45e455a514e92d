"""The audit log: append-only, hash-chained, one chain however many replicas append to it.

Invariants:

- Records are numbered ``seq`` = 1, 2, 3, ... in append order, without gaps: an append reads and
  moves the one-row ``audit_head`` (``last_seq``, ``last_hash``) under ``SELECT ... FOR UPDATE`` in
  the same transaction that inserts its records, so concurrent appenders (any replica) queue on
  that row, and a rolled-back append gives its numbers back. Append in READ COMMITTED (the
  default): under REPEATABLE READ a concurrent append is a serialization failure.
- Each record's ``hash`` covers its content and the previous record's hash (``prev_hash``), so
  changing, deleting or reordering a record breaks the chain from there on; the head's
  ``last_hash`` is the hash of the record ``last_seq``, so records cut off the end show too.
- Triggers refuse UPDATE, DELETE and TRUNCATE of the log (and deleting the head): tampering takes
  disabling them first, and ``verify`` finds it.

The hash of a record (what an outside auditor recomputes)
-----------------------------------------------------------

Build this JSON object from the stored record (every key always present; absent values are
``null``)::

    {
      "seq":            <integer, 1 for the first record>,
      "at":             "<UTC time, RFC 3339 with exactly 6 fractional digits and 'Z':
                          2025-01-31T09:08:07.000123Z>",
      "prev_hash":      "<the previous record's hash; 64 '0's for seq 1 (GENESIS_HASH)>",
      "principal":      <string or null>,
      "principal_kind": <string or null>,
      "tenant":         <string or null>,
      "action":         "<string, e.g. auth.authenticate, key.create, run.start>",
      "resource":       <string or null, e.g. "key:k_123", "run:r_456">,
      "outcome":        "success" | "failure" | "denied",
      "ip_address":     <string or null>,
      "user_agent":     <string or null>,
      "service":        <string or null>,
      "details":        <the details object>
    }

serialize it as RFC 8785 (JCS) canonical JSON, UTF-8, and take SHA-256:
``hash = sha256(rfc8785.dumps(object)).hexdigest()`` (64 lowercase hex digits). The previous hash
is inside the hashed object (not concatenated outside it); ``hash`` itself is not.

``details`` is kept as ``jsonb``; it holds only JSON values (objects with string keys, arrays,
strings, booleans, null, finite numbers, integers within +-(2**53 - 1)). JCS writes every number
as the IEEE-754 double it denotes, and jsonb keeps numbers as exact decimals, so reading the jsonb
back (``details::text``) and parsing each number as that double (integers within the bound may
stay integers) gives the same canonical JSON whatever form jsonb prints it in (``1e+300`` comes
back as 301 digits). Anything else (NaN, infinities, larger integers, other types, the NUL
character, which jsonb refuses) is a ``ValueError`` at append.

``verify`` walks the chain in seq order and names the first broken record: ``seq_gap`` (a seq is
missing: a deleted record shows at the next one, whose seq is reported), ``chain_break`` (the
record's ``prev_hash`` is not the previous record's ``hash``: a record moved, or a link edited),
``hash_mismatch`` (the record's content does not hash to its ``hash``: an edited field or hash),
``head_mismatch`` (the chain's last record is not the head's: records cut off the end, appended
past the head, or the head edited). A record whose seq was changed is missing at its place, so it
shows as a ``seq_gap`` at the next seq. Whoever can rewrite the table and knows this recipe can
rewrite the chain from any record on: the chain shows tampering only when compared with a head
(``last_seq``, ``last_hash``) kept somewhere else.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import asyncpg
import msgspec
import rfc8785
from omni_contract.security import AuditEvent
from omni_runtime.db import Conn

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of the first record."""

MAX_SAFE_INTEGER = 2**53 - 1
"""The largest integer a JSON number (an IEEE-754 double) holds exactly; RFC 8785 refuses more."""

MAX_DETAILS_BYTES = 16 * 1024
"""The largest canonical ``details`` accepted: the log keeps small facts, not payloads."""

_MAX_DEPTH = 32

Outcome = Literal["success", "failure", "denied"]
OUTCOMES: frozenset[str] = frozenset(get_args(Outcome))

Problem = Literal["seq_gap", "chain_break", "hash_mismatch", "head_mismatch"]


class AuditEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a caller appends: who, what, from where, the outcome, and when it happened (the
    append's time, from the database's clock, when absent)."""

    action: str  # e.g. auth.authenticate, key.create, run.start, access.denied
    outcome: Outcome
    principal: str | None = None
    principal_kind: str | None = None
    tenant: str | None = None
    resource: str | None = None  # e.g. key:<id>, run:<id>, workflow:<name>
    ip_address: str | None = None
    user_agent: str | None = None
    service: str | None = None
    at: datetime | None = None  # timezone-aware; stored in UTC with microseconds
    details: dict[str, Any] = {}


class AuditRecord(msgspec.Struct, kw_only=True):
    """A stored record. Every field is always present (no ``omit_defaults``), as
    ``omni_contract.security.AuditRecordInfo`` expects."""

    seq: int
    at: datetime
    prev_hash: str
    hash: str
    action: str
    outcome: Outcome
    principal: str | None
    principal_kind: str | None
    tenant: str | None
    resource: str | None
    ip_address: str | None
    user_agent: str | None
    service: str | None
    details: dict[str, Any]


class AuditPage(msgspec.Struct, kw_only=True):
    """Records newest first; ``next_cursor`` (a seq, as a string) is the ``after_seq`` of the next
    page, ``None`` on the last page."""

    records: list[AuditRecord]
    next_cursor: str | None


class VerifyResult(msgspec.Struct, kw_only=True):
    """``checked``: records read in seq order, up to and including the first broken one (all of
    them when ``ok``). ``first_broken``: the seq where the chain breaks."""

    ok: bool
    checked: int
    first_broken: int | None = None
    problem: Problem | None = None
    message: str = ""


# -- the hash -----------------------------------------------------------------------------------
def rfc3339(at: datetime) -> str:
    """``at`` in UTC as hashed: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"audit times must be timezone-aware, got {at!r}")
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical_json(record: AuditRecord) -> bytes:
    """The RFC 8785 bytes whose SHA-256 is the record's hash (see the module docstring)."""
    return rfc8785.dumps(
        {
            "seq": record.seq,
            "at": rfc3339(record.at),
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
    )


def record_hash(record: AuditRecord) -> str:
    """The hash ``record`` should have: hex SHA-256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(record)).hexdigest()


# -- what may be recorded -----------------------------------------------------------------------
def _check_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{where} contains the NUL character, which PostgreSQL text and jsonb refuse")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where} is not valid Unicode (a lone surrogate)") from None


def _check_json(value: object, where: str, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"{where} nests deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(
                f"{where} is the integer {value}, beyond +-(2**53 - 1) that a JSON number holds"
                " exactly (send it as a string)"
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}, which JSON cannot hold (only finite numbers)")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has the key {key!r}: JSON object keys are strings")
            _check_text(key, f"{where} key {key!r}")
            _check_json(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)
    else:
        raise ValueError(f"{where} is a {type(value).__name__}, not a JSON value")


def canonical_details(details: object) -> str:
    """``details`` as RFC 8785 JSON text, or ``ValueError`` naming what JSON cannot hold."""
    if not isinstance(details, dict):
        raise ValueError(f"details must be a JSON object, got {type(details).__name__}")
    _check_json(details, "details")
    encoded = rfc8785.dumps(details)
    if len(encoded) > MAX_DETAILS_BYTES:
        raise ValueError(f"details take {len(encoded)} bytes as JSON, more than {MAX_DETAILS_BYTES}")
    return encoded.decode("utf-8")


def _number(text: str) -> int | float:
    # JSON numbers are doubles to RFC 8785: integers it can hold exactly stay integers, anything
    # larger (jsonb prints 1e+300 as 301 digits) is the double it denotes.
    value = int(text)
    return value if abs(value) <= MAX_SAFE_INTEGER else float(text)


def parse_details(text: str) -> dict[str, Any]:
    """Details read back from jsonb (or canonical) text, with numbers as RFC 8785 reads them."""
    value: dict[str, Any] = json.loads(text, parse_int=_number, parse_float=float)
    return value


_TEXT_FIELDS = (
    "action",
    "principal",
    "principal_kind",
    "tenant",
    "resource",
    "ip_address",
    "user_agent",
    "service",
)


def _checked(entry: AuditEntry, i: int) -> str:
    """Refuse what the log cannot keep; the entry's canonical details."""
    where = f"audit entry {i}"
    if not isinstance(entry.action, str) or not entry.action:
        raise ValueError(f"{where}: action must be a non-empty string")
    if entry.outcome not in OUTCOMES:
        raise ValueError(f"{where}: outcome must be one of {sorted(OUTCOMES)}, got {entry.outcome!r}")
    for name in _TEXT_FIELDS:
        value = getattr(entry, name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{where}: {name} must be a string or None, got {type(value).__name__}")
        _check_text(value, f"{where}: {name}")
    if entry.at is not None:
        rfc3339(entry.at)
    try:
        return canonical_details(entry.details)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def entry_of(event: AuditEvent) -> AuditEntry:
    """The entry for an audit event from NATS. Never raises: an event ``append`` would refuse is
    recorded as far as it can be (NUL and lone surrogates replaced, a time without offset taken as
    UTC, unrecordable details or an unknown outcome described in ``details``), so one bad event
    cannot hold back the batch it came in."""
    details: dict[str, Any] = event.details
    try:
        canonical_details(details)
    except ValueError as exc:
        details = {"unrecordable_details": _clean(str(exc))}
    outcome = event.outcome
    if outcome not in OUTCOMES:
        details = {**details, "unknown_outcome": _clean(outcome)}
        outcome = "failure"
    at = event.at
    if at is not None and (at.tzinfo is None or at.utcoffset() is None):
        at = at.replace(tzinfo=UTC)
    return AuditEntry(
        action=_clean(event.action) or "unknown",
        outcome=outcome,  # type: ignore[arg-type]  # checked against OUTCOMES above
        principal=_clean(event.principal),
        principal_kind=_clean(event.principal_kind),
        tenant=_clean(event.tenant),
        resource=_clean(event.resource),
        ip_address=_clean(event.ip_address),
        user_agent=_clean(event.user_agent),
        service=_clean(event.service),
        at=at,
        details=details,
    )


# -- append -------------------------------------------------------------------------------------
_INSERT = (
    "INSERT INTO audit_log (seq, at, prev_hash, hash, principal, principal_kind, tenant, action,"
    " resource, outcome, ip_address, user_agent, service, details)"
    " SELECT s, a, p, h, pr, pk, t, ac, r, o, ip, ua, sv, d::jsonb FROM unnest("
    "$1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
    " $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[])"
    " AS u(s, a, p, h, pr, pk, t, ac, r, o, ip, ua, sv, d)"
)


async def append(conn: Conn, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
    """Append ``entries`` in order, in one transaction (a savepoint inside the caller's), and
    return them as stored. All or nothing: an entry the log cannot keep is a ``ValueError`` and
    nothing is appended."""
    if not entries:
        return []
    details = [_checked(entry, i) for i, entry in enumerate(entries)]
    async with conn.transaction():
        head = await conn.fetchrow(
            "SELECT last_seq, last_hash, clock_timestamp() AS now FROM audit_head FOR UPDATE"
        )
        if head is None:
            raise RuntimeError("audit_head has no row: the audit log's head was deleted, see verify()")
        seq: int = head["last_seq"]
        prev_hash: str = head["last_hash"]
        now: datetime = head["now"]
        records: list[AuditRecord] = []
        for entry, text in zip(entries, details, strict=True):
            seq += 1
            record = AuditRecord(
                seq=seq,
                at=(entry.at or now).astimezone(UTC),
                prev_hash=prev_hash,
                hash="",
                action=entry.action,
                outcome=entry.outcome,
                principal=entry.principal,
                principal_kind=entry.principal_kind,
                tenant=entry.tenant,
                resource=entry.resource,
                ip_address=entry.ip_address,
                user_agent=entry.user_agent,
                service=entry.service,
                # What verify will read back, so the hash is made the way it is checked.
                details=parse_details(text),
            )
            record.hash = prev_hash = record_hash(record)
            records.append(record)
        await conn.execute(
            _INSERT,
            [r.seq for r in records],
            [r.at for r in records],
            [r.prev_hash for r in records],
            [r.hash for r in records],
            [r.principal for r in records],
            [r.principal_kind for r in records],
            [r.tenant for r in records],
            [r.action for r in records],
            [r.resource for r in records],
            [r.outcome for r in records],
            [r.ip_address for r in records],
            [r.user_agent for r in records],
            [r.service for r in records],
            details,
        )
        await conn.execute("UPDATE audit_head SET last_seq = $1, last_hash = $2", seq, prev_hash)
    return records


# -- list ---------------------------------------------------------------------------------------
_COLUMNS = (
    "seq, at, prev_hash, hash, action, outcome, principal, principal_kind, tenant, resource,"
    " ip_address, user_agent, service, details::text AS details"
)


def _record(row: asyncpg.Record) -> AuditRecord:
    return AuditRecord(**{**row, "details": parse_details(row["details"])})


def _after_prefix(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (in code point order, which
    is the "C" collation's order of UTF-8), or None when there is none."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _aware(at: datetime, name: str) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {at!r}")
    return at


async def list_records(
    conn: Conn,
    *,
    principal: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    tenant: str | None = None,
    after_seq: int | None = None,
    limit: int = 100,
) -> AuditPage:
    """Records newest first (highest seq first), those matching every filter given.

    ``action``: exact, or a prefix ending in ``*`` (``key.*``: every action starting ``key.``).
    ``since`` inclusive, ``until`` exclusive, both on ``at`` and timezone-aware. ``after_seq``:
    the previous page's ``next_cursor``; the page holds records with a smaller seq."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    where: list[str] = []
    args: list[object] = []

    def bind(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    if principal is not None:
        where.append(f"principal = {bind(principal)}")
    if tenant is not None:
        where.append(f"tenant = {bind(tenant)}")
    if outcome is not None:
        where.append(f"outcome = {bind(outcome)}")
    if action is not None:
        if action.endswith("*"):
            prefix = action[:-1]
            if prefix:
                # A range on the "C"-collated column, so that the (action, seq) index serves it.
                where.append(f"action >= {bind(prefix)}")
                upper = _after_prefix(prefix)
                if upper is not None:
                    where.append(f"action < {bind(upper)}")
        else:
            where.append(f"action = {bind(action)}")
    if since is not None:
        where.append(f"at >= {bind(_aware(since, 'since'))}")
    if until is not None:
        where.append(f"at < {bind(_aware(until, 'until'))}")
    if after_seq is not None:
        where.append(f"seq < {bind(after_seq)}")
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    rows = await conn.fetch(
        # Only the fixed fragments above are interpolated; every value is a bound parameter.
        f"SELECT {_COLUMNS} FROM audit_log{condition} ORDER BY seq DESC LIMIT {bind(limit + 1)}",  # noqa: S608
        *args,
    )
    records = [_record(row) for row in rows[:limit]]
    more = len(rows) > limit
    return AuditPage(records=records, next_cursor=str(records[-1].seq) if more else None)


# -- verify -------------------------------------------------------------------------------------
def _seqs(first: int, last: int) -> str:
    return f"seq {first} is" if first == last else f"seqs {first}..{last} are"


def _short(digest: str) -> str:
    return f"{digest[:12]}..."


def _problem_of(record: AuditRecord, expected_seq: int, expected_prev: str) -> tuple[Problem, str] | None:
    """What is wrong with ``record`` coming after the checked chain, the most telling first."""
    if record.seq != expected_seq:
        return "seq_gap", f"{_seqs(expected_seq, record.seq - 1)} missing before seq {record.seq}"
    try:
        actual = record_hash(record)
    except ValueError as exc:  # e.g. details edited to hold a number no double holds
        actual = f"(none: {exc})"
    content = (
        "" if actual == record.hash else f"content hashes to {_short(actual)}, not {_short(record.hash)}"
    )
    if record.prev_hash != expected_prev:
        previous = "the genesis hash" if record.seq == 1 else f"the hash of seq {record.seq - 1}"
        message = f"prev_hash {_short(record.prev_hash)} is not {previous} ({_short(expected_prev)})"
        return "chain_break", f"{message}; its {content}" if content else message
    if content:
        return "hash_mismatch", f"seq {record.seq}: its {content}"
    return None


async def verify(conn: Conn, *, batch: int = 1000) -> VerifyResult:
    """Recompute the chain from seq 1 to the head, ``batch`` records at a time (constant memory,
    no long transaction), and name the first broken record. Appends may go on meanwhile: the
    head is read after the records, so records appended since are checked too."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    checked = 0
    last_seq, last_hash = 0, GENESIS_HASH

    def broken(seq: int, problem: Problem, message: str) -> VerifyResult:
        return VerifyResult(ok=False, checked=checked, first_broken=seq, problem=problem, message=message)

    while True:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",  # noqa: S608
            last_seq,
            batch,
        )
        if rows:
            for row in rows:
                record = _record(row)
                checked += 1
                found = _problem_of(record, last_seq + 1, last_hash)
                if found is not None:
                    return broken(record.seq, *found)
                last_seq, last_hash = record.seq, record.hash
            continue
        # The records are read before the head, and an append moves both in one transaction:
        # a head past the last record read means records appended since, or records gone.
        head = await conn.fetchrow("SELECT last_seq, last_hash FROM audit_head")
        if head is None:
            return broken(last_seq + 1, "head_mismatch", "audit_head has no row: the head was deleted")
        head_seq: int = head["last_seq"]
        if head_seq > last_seq:
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM audit_log WHERE seq > $1)", last_seq):
                continue
            return broken(
                last_seq + 1,
                "head_mismatch",
                f"{_seqs(last_seq + 1, head_seq)} missing: the head is at seq {head_seq},"
                f" the last record at seq {last_seq}",
            )
        if head_seq < last_seq:
            return broken(
                head_seq + 1,
                "head_mismatch",
                f"the head is at seq {head_seq}, yet records go on to seq {last_seq}:"
                " appended past the head, or the head was moved back",
            )
        if head["last_hash"] != last_hash:
            return broken(
                last_seq,
                "head_mismatch",
                f"the head's hash {_short(head['last_hash'])} is not that of seq {last_seq}"
                f" ({_short(last_hash)})",
            )
        return VerifyResult(ok=True, checked=checked, message=f"{checked} records, the chain holds")
