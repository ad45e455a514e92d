"""A run's history, typed: one struct per event type, each with a version, and the upcasters that
read the rows of older versions.

The history of a run (PostgreSQL table ``run_events``: run_id, seq, type, v, data, at) is the
workflow engine's system of record; ``omni.rpc.engine.runs.events`` and ``GET /runs/{id}/events``
serve it. ``data`` is the payload of one of the structs below, encoded as JSON with the fields
the struct names; ``type`` and ``v`` (the struct's ``TYPE`` and ``VERSION``) are columns of their
own, so the payload is exactly what the API shows and the version is known before it is read.

Changing an event (see the engine's README, "Run history"):

- a new optional field (with a default that means "not said") keeps the version: older rows
  simply lack it, and older readers ignore it;
- anything else (a field becomes required, is renamed or removed, or changes meaning) is a new
  version: ``VERSION`` + 1, and an upcaster from the previous version in ``UPCASTERS`` that turns
  the stored dict of a row of that version into the next version's. A row is upcast when read,
  never rewritten: the table keeps what each engine wrote.

Tasks are named by address in ``step``: ``name`` (a step), ``name#3`` (item 3 of a ``for_each``
step) or ``name~c`` (the compensation of a completed step); step names contain neither.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

import msgspec

from omni_contract.events import RunEventType as E
from omni_contract.events import ToolError, Usage

ITEM_SEP = "#"
COMPENSATION_SUFFIX = "~c"


def is_step_address(address: str) -> bool:
    """True for a step's own address, False for one of its items or its compensation."""
    return ITEM_SEP not in address and not address.endswith(COMPENSATION_SUFFIX)


class HistoryEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The payload of one history event. ``TYPE`` is its ``type``; ``VERSION`` the version of the
    payload's shape the engine writes now (rows of earlier versions are upcast when read)."""

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1


class StepEvent(HistoryEvent, kw_only=True):
    """An event about one task: ``step`` is its address."""

    step: str


# -- what the payloads hold ----------------------------------------------------------------------
class StepError(ToolError, kw_only=True):
    """Why a task failed: the tool's error (``ToolError``), or the engine's own (kind ``template``,
    ``condition``, ``timeout``, ``unknown``). ``item``: for a ``for_each`` step failed by one of its
    items, that item's index."""

    item: int | None = None


class CompensationFailure(StepError, kw_only=True):
    """A compensation that failed: the step it was to undo, and its error."""

    step: str


class BudgetUsed(msgspec.Struct, kw_only=True):
    tokens: int
    cost: float


class BudgetLimit(msgspec.Struct, kw_only=True, rename="camel"):
    """The run's budget, as its definition writes it (``guards.budget``)."""

    max_tokens: int | None
    max_cost: float | None


class RunError(StepError, kw_only=True):
    """Why a run did not complete: the error of the step that failed it (with ``step``), or the
    engine's reason (kind ``cancelled``, ``deadline`` with ``max_ms``, ``budget`` with ``step``,
    ``used`` and ``limit``), and the compensations that failed on the way out."""

    step: str | None = None
    max_ms: int | None = None
    used: BudgetUsed | None = None
    limit: BudgetLimit | None = None
    compensation_failures: list[CompensationFailure] = []


class StepRef(msgspec.Struct, kw_only=True):
    """A step of the definition the run started with; ``tool`` is None for a ``wait`` step."""

    name: str
    tool: str | None


class TriggerRef(msgspec.Struct, kw_only=True):
    """The application event that started the run."""

    subject: str
    event_id: str


class ReusedStep(msgspec.Struct, kw_only=True):
    """A step a rerun does not run again: the old run's output, and the provider that made it."""

    output: Any
    provider: str | None


# -- the events ----------------------------------------------------------------------------------
class RunStarted(HistoryEvent, kw_only=True):
    """The run's first event: the definition version it runs, its input and its steps."""

    TYPE: ClassVar[str] = E.RUN_STARTED

    workflow: str
    hash: str
    version: str
    payload: dict[str, Any]
    context: dict[str, Any]
    steps: list[StepRef]
    trigger: TriggerRef | None = None  # started by an application event
    deadline_at: datetime | None = None  # guards.budget.maxMs: a timer ends the run then
    rerun_of: str | None = None  # a rerun: the run it reruns, and the step it reruns from
    rerun_from_step: str | None = None
    reused: dict[str, ReusedStep] | None = None  # a rerun: the old run's outputs it keeps
    # The tenant the run belongs to; None (runs started before tenants, or by an internal caller):
    # the default tenant (omni_contract.security.DEFAULT_TENANT).
    tenant: str | None = None


class StepScheduled(StepEvent, kw_only=True):
    """One attempt of a task is sent to ``provider`` (the ``provider_index``-th of its chain, its
    ``provider_attempt``-th attempt there); ``attempt`` counts over the whole chain.

    v2: v1 rows of the first engine (before retries and fallback chains) lack ``provider_index``
    and ``provider_attempt``."""

    TYPE: ClassVar[str] = E.STEP_SCHEDULED
    VERSION: ClassVar[int] = 2

    attempt: int
    tool: str
    provider: str
    provider_index: int
    provider_attempt: int
    idempotency_key: str
    input: dict[str, Any]
    timeout_ms: int | None = None  # config.timeout: a timer fails the attempt after it


class StepFannedOut(StepEvent, kw_only=True):
    """A ``for_each`` step starts (type ``step.scheduled``, like a task's attempt): the values it
    runs over, one item each; each item is then scheduled as a task of its own (``name#i``)."""

    TYPE: ClassVar[str] = E.STEP_SCHEDULED
    VERSION: ClassVar[int] = StepScheduled.VERSION

    items: list[Any]


class StepStarted(StepEvent, kw_only=True):
    """A runner took the attempt (folded in with its result): ``runner`` names it, when it said."""

    TYPE: ClassVar[str] = E.STEP_STARTED

    attempt: int
    runner: str | None
    started_at: datetime | None = None  # when the runner started the call, when it said


class StepCompleted(StepEvent, kw_only=True):
    """A task completed with ``output``: from a tool (``attempt``, ``provider``, ``duration_ms``,
    ``usage`` and ``model`` when the provider reported them), from the text itself (``degraded``:
    no provider of the chain could serve it; ``reason``), from the outside event a ``wait`` step
    waited for (``event_id``), or, for a ``for_each`` step, its items' outputs."""

    TYPE: ClassVar[str] = E.STEP_COMPLETED

    output: dict[str, Any]
    attempt: int | None = None
    provider: str | None = None
    duration_ms: float | None = None
    usage: Usage | None = None
    model: str | None = None
    degraded: bool = False
    reason: str | None = None
    event_id: str | None = None


class StepFailed(StepEvent, kw_only=True):
    """A task failed for good (no retry or fallback is left). ``attempt``: the attempt that failed,
    when one was made. ``handling`` says how a step's failure was handled: ``fail`` (the run
    fails), ``continue``, or the name of the handler step that runs; an item's or a
    compensation's failure has none (its step's own ``step.failed`` or the run's end says).

    v2: v1 rows of the first engine (before ``on_error``) have no ``handling`` (every failed
    step failed its run) and carry the failed result's ``provider`` and ``duration_ms``."""

    TYPE: ClassVar[str] = E.STEP_FAILED
    VERSION: ClassVar[int] = 2

    error: StepError
    attempt: int | None = None
    handling: str | None = None


class StepSkipped(StepEvent, kw_only=True):
    """A step will not run: its ``when:`` was false, a step it needs failed, or it is a handler
    no failure called on."""

    TYPE: ClassVar[str] = E.STEP_SKIPPED

    reason: str


class StepRetrying(StepEvent, kw_only=True):
    """The attempt failed; the next one on the same provider waits for a timer until ``retry_at``."""

    TYPE: ClassVar[str] = E.STEP_RETRYING

    attempt: int
    error: StepError
    delay_ms: float
    retry_at: datetime
    reason: str


class StepFallback(StepEvent, kw_only=True):
    """The attempt failed and no retry is left on its provider: the next one goes to ``to``."""

    TYPE: ClassVar[str] = E.STEP_FALLBACK

    attempt: int
    error: StepError
    reason: str
    from_: str = msgspec.field(name="from")
    to: str


class StepTimedOut(StepEvent, kw_only=True):
    """No result came for the attempt within its ``config.timeout`` (a retry or fallback follows)."""

    TYPE: ClassVar[str] = E.STEP_TIMED_OUT

    attempt: int
    error: StepError


class StepWaiting(StepEvent, kw_only=True):
    """A ``wait`` step waits until ``until`` for an event on ``event`` whose field ``match``
    equals ``key``."""

    TYPE: ClassVar[str] = E.STEP_WAITING

    event: str
    key: str
    match: str
    until: datetime


class RunCompensating(HistoryEvent, kw_only=True):
    """The run is ending as ``status`` (with ``error``) and first undoes its completed steps that
    have a compensation, in the order of ``queue`` (latest completed first)."""

    TYPE: ClassVar[str] = E.COMPENSATION_STARTED

    status: str
    error: RunError
    queue: list[str]


class RunCancelRequested(HistoryEvent, kw_only=True):
    TYPE: ClassVar[str] = E.RUN_CANCEL_REQUESTED

    reason: str


class RunEnded(HistoryEvent, kw_only=True):
    """The run's last event: how long it took and what it consumed."""

    duration_ms: float
    usage: Usage | None = None


class RunCompleted(RunEnded, kw_only=True):
    """``output``: every completed step's output, by step name."""

    TYPE: ClassVar[str] = E.RUN_COMPLETED

    output: dict[str, Any]


class RunEndedWithError(RunEnded, kw_only=True):
    """A run that did not complete, and why."""

    error: RunError


class RunFailed(RunEndedWithError, kw_only=True):
    TYPE: ClassVar[str] = E.RUN_FAILED


class RunCancelled(RunEndedWithError, kw_only=True):
    TYPE: ClassVar[str] = E.RUN_CANCELLED


class RunTimedOut(RunEndedWithError, kw_only=True):
    """``guards.budget.maxMs`` passed."""

    TYPE: ClassVar[str] = E.RUN_TIMED_OUT


class RunBudgetExceeded(RunEndedWithError, kw_only=True):
    """The run's remaining tokens or cost could not cover its next step."""

    TYPE: ClassVar[str] = E.RUN_BUDGET_EXCEEDED


# Every payload struct. One type has two shapes (``step.scheduled``: a task's attempt, or a
# ``for_each`` step fanning out); all the others have one.
EVENT_STRUCTS: tuple[type[HistoryEvent], ...] = (
    RunStarted,
    StepScheduled,
    StepFannedOut,
    StepStarted,
    StepCompleted,
    StepFailed,
    StepSkipped,
    StepRetrying,
    StepFallback,
    StepTimedOut,
    StepWaiting,
    RunCompensating,
    RunCancelRequested,
    RunCompleted,
    RunFailed,
    RunCancelled,
    RunTimedOut,
    RunBudgetExceeded,
)


def _structs_of_type() -> dict[str, tuple[type[HistoryEvent], ...]]:
    found: dict[str, tuple[type[HistoryEvent], ...]] = {}
    for cls in EVENT_STRUCTS:
        found[cls.TYPE] = (*found.get(cls.TYPE, ()), cls)
    return found


STRUCTS_OF_TYPE: dict[str, tuple[type[HistoryEvent], ...]] = _structs_of_type()
# The version each type is written at now.
VERSIONS: dict[str, int] = {type_: structs[0].VERSION for type_, structs in STRUCTS_OF_TYPE.items()}


# -- upcasting -----------------------------------------------------------------------------------
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def upcast_step_scheduled_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
    """The first engine (before fallback chains and retries, commit ed86449) sent every step to
    the first provider it named, once, and recorded neither position: both are the first."""
    if "items" not in data:  # a for_each step fanning out names no provider
        data.setdefault("provider_index", 0)
        data.setdefault("provider_attempt", 1)
    return data


def upcast_step_failed_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
    """The first engine (before ``on_error``, commit ed86449) failed the run with any failed step
    and did not say so: its step failures were handled by ``fail``. It also copied the failed
    result's ``provider`` and ``duration_ms``, which v2 does not carry (the attempt's
    ``step.scheduled`` names the provider)."""
    if is_step_address(str(data.get("step", ""))):
        data.setdefault("handling", "fail")
    data.pop("provider", None)
    data.pop("duration_ms", None)
    return data


# (type, version) -> the function that turns a row of that version into the next version's.
UPCASTERS: dict[tuple[str, int], Upcaster] = {
    (E.STEP_SCHEDULED, 1): upcast_step_scheduled_v1_v2,
    (E.STEP_FAILED, 1): upcast_step_failed_v1_v2,
}


def upcaster_problems(
    versions: dict[str, int] = VERSIONS, upcasters: dict[tuple[str, int], Upcaster] = UPCASTERS
) -> list[str]:
    """What is missing from (or stray in) ``upcasters`` for every type to be read from v1 up."""
    problems = [
        f"{type_} v{version} has no upcaster to v{version + 1}"
        for type_, current in versions.items()
        for version in range(1, current)
        if (type_, version) not in upcasters
    ]
    problems += [
        f"upcaster of {type_} v{version}: {type_} is at v{versions[type_]}"
        if type_ in versions
        else f"upcaster of {type_} v{version}: no such event type"
        for type_, version in upcasters
        if type_ not in versions or not 1 <= version < versions[type_]
    ]
    return problems


# -- reading rows --------------------------------------------------------------------------------
class HistoryError(ValueError):
    """A history row this code cannot read: names the run, the seq, the type and the version."""

    def __init__(self, run_id: str, seq: int, type_: str, version: int, problem: str) -> None:
        super().__init__(f"run {run_id!r}, event {seq} ({type_} v{version}): {problem}")
        self.run_id = run_id
        self.seq = seq
        self.type = type_
        self.version = version


_DECODERS: dict[type[HistoryEvent], msgspec.json.Decoder[Any]] = {
    cls: msgspec.json.Decoder(cls) for cls in EVENT_STRUCTS
}
_encoder = msgspec.json.Encoder()


def _decode_current(type_: str, raw: str | bytes) -> HistoryEvent:
    structs = STRUCTS_OF_TYPE[type_]
    try:
        event: HistoryEvent = _DECODERS[structs[0]].decode(raw)
    except msgspec.ValidationError as first:
        if len(structs) == 1:
            raise
        try:  # the type's other shape (a for_each step fanning out: rare, so tried second)
            event = _DECODERS[structs[1]].decode(raw)
        except msgspec.ValidationError:
            raise first from None
    return event


def _convert_current(type_: str, data: dict[str, Any]) -> HistoryEvent:
    structs = STRUCTS_OF_TYPE[type_]
    cls = StepFannedOut if type_ == E.STEP_SCHEDULED and "items" in data else structs[0]
    event: HistoryEvent = msgspec.convert(data, cls)
    return event


def upcast(type_: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
    """The stored ``data`` of a row of ``version`` as the current version of ``type_`` has it."""
    for step in range(version, VERSIONS[type_]):
        data = UPCASTERS[(type_, step)](data)
    return data


def decode_data(run_id: str, seq: int, type_: str, version: int, raw: str | bytes) -> HistoryEvent:
    """The payload of row ``seq`` of run ``run_id`` (``raw``: its ``data`` as JSON text).

    A row of the current version is decoded straight into its struct, once; an older one is read
    as a dict, upcast, then converted. Raises ``HistoryError`` for an unknown type, a version
    newer than this code knows, or data that does not fit the type."""
    current = VERSIONS.get(type_)
    if current is None:
        raise HistoryError(run_id, seq, type_, version, "unknown event type")
    if not 1 <= version <= current:
        raise HistoryError(
            run_id, seq, type_, version, f"unknown version: this code reads {type_} v1 to v{current}"
        )
    try:
        if version == current:
            return _decode_current(type_, raw)
        data = msgspec.json.decode(raw)
        if not isinstance(data, dict):
            raise HistoryError(run_id, seq, type_, version, "data is not a JSON object")
        return _convert_current(type_, upcast(type_, version, data))
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise HistoryError(run_id, seq, type_, version, str(exc)) from exc


def encode_data(event: HistoryEvent) -> bytes:
    """``event`` as the JSON of its row's ``data`` (and of the API's)."""
    return _encoder.encode(event)


_problems = upcaster_problems()
if _problems:  # a version was raised without its upcaster: refuse to load rather than misread
    raise RuntimeError("omni_contract.history: " + "; ".join(_problems))
