"""A run's state is a fold of its events.

``apply`` is the only place that knows how each event type changes state. It is pure and needs
no definition: everything a decision chose (which provider, how a failure was handled, which
items a ``for_each`` step runs over) is written into the event, so replaying a history always
gives the same state. What follows from a state is decided in ``progress.py``.

Units of dispatch are *tasks*, addressed in events by ``step``:

- ``name``: a step (for a ``for_each`` step, the step as a whole);
- ``name#3``: item 3 of a ``for_each`` step;
- ``name~c``: the compensation of a completed step.

Step names cannot contain ``#`` or ``~``, so an address is never ambiguous.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import msgspec
from omni_contract.events import RunEventType as E
from omni_contract.events import RunStatus, StepStatus, Usage

ITEM_SEP = "#"
COMPENSATION_SUFFIX = "~c"
IN_FLIGHT = frozenset({StepStatus.SCHEDULED, StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING})

_END_STATUS = {
    E.RUN_COMPLETED: RunStatus.COMPLETED,
    E.RUN_FAILED: RunStatus.FAILED,
    E.RUN_CANCELLED: RunStatus.CANCELLED,
    E.RUN_TIMED_OUT: RunStatus.TIMED_OUT,
    E.RUN_BUDGET_EXCEEDED: RunStatus.BUDGET_EXCEEDED,
}
END_EVENT = {status: event for event, status in _END_STATUS.items()}


class TaskState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One unit of dispatch: its attempts, the provider it is on, and its outcome."""

    status: str = StepStatus.PENDING
    attempt: int = 0  # attempts made over all providers (the idempotency key's last part)
    provider: str | None = None
    provider_index: int = 0  # position in the step's provider chain
    provider_attempt: int = 0  # attempts made on the current provider
    idempotency_key: str | None = None
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    retry_at: datetime | None = None  # RETRYING: when the back-off timer fires
    timeout_ms: int | None = None  # the attempt in flight has a timeout timer of this length
    duration_ms: float | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    usage: Usage | None = None
    reason: str | None = None  # why it was skipped, retried, switched provider or cancelled

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT


class StepState(TaskState, kw_only=True, omit_defaults=True):
    name: str
    tool: str | None = None
    # How a failure was handled: fail (the run fails), continue, or the handler step's name.
    handling: str | None = None
    activated: bool = False  # a handler step whose guarded step failed
    items: list[TaskState] | None = None  # for_each: one task per item
    item_values: list[Any] | None = None
    compensation: TaskState | None = None
    wait: dict[str, Any] | None = None  # waiting: {"event", "key", "until"}
    reused_from: str | None = None  # a rerun took this step's output from that run


class RunState(msgspec.Struct, kw_only=True, omit_defaults=True, dict=True):
    run_id: str
    workflow: str
    hash: str
    version: str
    status: str
    created_at: datetime
    updated_at: datetime
    last_seq: int = 0
    payload: dict[str, Any] = {}
    context: dict[str, Any] = {}
    steps: list[StepState] = []
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    usage: Usage | None = None
    completed_at: datetime | None = None
    deadline_at: datetime | None = None
    # Set while compensating: the status the run ends with once compensation is done.
    ending: dict[str, Any] | None = None
    compensation_queue: list[str] = []  # steps to compensate, in order (latest completed first)
    cancel_reason: str | None = None
    # Whether the run ever set a timer or a wait (so its end has rows to clear).
    timed: bool = False
    rerun_of: str | None = None
    rerun_from_step: str | None = None
    # Index of the first step not done: decisions start there, so one step's cost does not grow
    # with the number of steps before it.
    cursor: int = 0
    snapshot_seq: int = 0  # the seq this state was last saved whole at

    def step(self, name: str) -> StepState | None:
        # The name -> position index lives beside the encoded fields (``dict=True``): built once
        # per loaded state, never stored.
        index: dict[str, int] | None = getattr(self, "_index", None)
        if index is None:
            index = {s.name: i for i, s in enumerate(self.steps)}
            self._index = index
        position = index.get(name)
        return None if position is None else self.steps[position]

    def task(self, address: str) -> TaskState | None:
        """The task an event's ``step`` names: a step, one of its items, or its compensation."""
        if address.endswith(COMPENSATION_SUFFIX):
            step = self.step(address[: -len(COMPENSATION_SUFFIX)])
            return None if step is None else step.compensation
        name, sep, position = address.partition(ITEM_SEP)
        step = self.step(name)
        if not sep or step is None:
            return step
        if step.items is None or not position.isdigit() or int(position) >= len(step.items):
            return None
        return step.items[int(position)]

    def completed_outputs(self) -> StepOutputs:
        return StepOutputs(self)

    @property
    def finished(self) -> bool:
        return self.status in RunStatus.TERMINAL


def item_address(step: str, index: int) -> str:
    return f"{step}{ITEM_SEP}{index}"


def compensation_address(step: str) -> str:
    return f"{step}{COMPENSATION_SUFFIX}"


def step_of(address: str) -> str:
    """The step an address belongs to."""
    return address.removesuffix(COMPENSATION_SUFFIX).partition(ITEM_SEP)[0]


class StepOutputs(Mapping[str, Any]):
    """The outputs of a run's completed steps, by name, as templates see them (no copy)."""

    def __init__(self, state: RunState) -> None:
        self._state = state

    def __getitem__(self, name: str) -> Any:
        step = self._state.step(name)
        if step is None or step.status != StepStatus.COMPLETED:
            raise KeyError(name)
        return step.output

    def __iter__(self) -> Iterator[str]:
        return (s.name for s in self._state.steps if s.status == StepStatus.COMPLETED)

    def __len__(self) -> int:
        return sum(1 for s in self._state.steps if s.status == StepStatus.COMPLETED)


class NewEvent(msgspec.Struct, kw_only=True):
    """An event about to be appended (its seq is assigned by the store)."""

    type: str
    data: dict[str, Any]
    at: datetime


def initial_state(run_id: str, data: dict[str, Any], at: datetime) -> RunState:
    state = RunState(
        run_id=run_id,
        workflow=data["workflow"],
        hash=data["hash"],
        version=data.get("version", ""),
        status=RunStatus.RUNNING,
        created_at=at,
        updated_at=at,
        payload=data.get("payload", {}),
        context=data.get("context", {}),
        steps=[StepState(name=s["name"], tool=s.get("tool")) for s in data.get("steps", [])],
        deadline_at=as_datetime(data.get("deadline_at")),
        timed="deadline_at" in data,
        rerun_of=data.get("rerun_of"),
        rerun_from_step=data.get("rerun_from_step"),
    )
    for name, reused in (data.get("reused") or {}).items():
        step = state.step(name)
        if step is not None:
            step.status = StepStatus.COMPLETED
            step.output = reused.get("output")
            step.provider = reused.get("provider")
            step.reused_from = state.rerun_of
            step.completed_at = at
    return state


def _add_usage(total: Usage | None, more: Usage | None) -> Usage | None:
    if more is None:
        return total
    if total is None:
        return Usage(**msgspec.structs.asdict(more))
    return Usage(
        input_tokens=total.input_tokens + more.input_tokens,
        output_tokens=total.output_tokens + more.output_tokens,
        total_tokens=total.total_tokens + more.total_tokens,
        cost=round(total.cost + more.cost, 10),
    )


def apply(
    state: RunState | None, run_id: str, event_type: str, data: dict[str, Any], at: datetime
) -> RunState:
    """Fold one event into the state (mutating and returning it)."""
    if event_type == E.RUN_STARTED:
        return initial_state(run_id, data, at)
    if state is None:
        raise ValueError(f"run {run_id}: {event_type} before run.started")
    state.updated_at = at
    address = data.get("step")
    task = state.task(address) if address else None
    if task is not None:
        _apply_to_task(state, task, address or "", event_type, data, at)
    elif event_type == E.COMPENSATION_STARTED:
        state.status = RunStatus.COMPENSATING
        state.ending = {"status": data["status"], "error": data.get("error")}
        state.compensation_queue = list(data.get("queue", []))
        _stop_unfinished(state, f"the run is ending ({data['status']})")
        for name in state.compensation_queue:
            step = state.step(name)
            if step is not None:
                step.compensation = TaskState()
    elif event_type == E.RUN_CANCEL_REQUESTED:
        state.cancel_reason = data.get("reason") or "cancelled"
    elif event_type in _END_STATUS:
        state.status = _END_STATUS[event_type]
        state.completed_at = at
        if event_type == E.RUN_COMPLETED:
            state.output = data.get("output")
        else:
            state.error = data.get("error")
        _stop_unfinished(state, f"the run ended ({state.status})")
    return state


def _apply_to_task(
    state: RunState, task: TaskState, address: str, event_type: str, data: dict[str, Any], at: datetime
) -> None:
    if event_type == E.STEP_SCHEDULED:
        task.status = StepStatus.SCHEDULED if "items" not in data else StepStatus.RUNNING
        task.scheduled_at = at
        task.retry_at = None
        if "items" in data and isinstance(task, StepState):  # a for_each step fans out
            task.item_values = list(data["items"])
            task.items = [TaskState() for _ in task.item_values]
            task.started_at = at
            return
        task.attempt = data["attempt"]
        task.timeout_ms = data.get("timeout_ms")
        state.timed = state.timed or task.timeout_ms is not None
        task.provider = data.get("provider")
        task.provider_index = data.get("provider_index", 0)
        task.provider_attempt = data.get("provider_attempt", 1)
        task.idempotency_key = data.get("idempotency_key")
    elif event_type == E.STEP_STARTED:
        task.status = StepStatus.RUNNING
        task.started_at = as_datetime(data.get("started_at")) or at
    elif event_type == E.STEP_COMPLETED:
        task.status = StepStatus.COMPLETED
        task.output = data.get("output") if data.get("output") is not None else {}
        task.completed_at = at
        task.duration_ms = data.get("duration_ms")
        task.error = None
        if "provider" in data:
            task.provider = data["provider"]
        if data.get("degraded"):
            task.reason = data.get("reason") or "degraded"
        task.usage = msgspec.convert(data["usage"], Usage) if data.get("usage") else None
        state.usage = _add_usage(state.usage, task.usage)
        if isinstance(task, StepState) and task.wait is not None:
            task.wait = None
    elif event_type == E.STEP_FAILED:
        task.status = StepStatus.FAILED
        task.error = data.get("error")
        task.completed_at = at
        task.duration_ms = data.get("duration_ms")
        if isinstance(task, StepState):
            task.handling = data.get("handling", "fail")
            task.wait = None
            handler = state.step(task.handling) if task.handling not in ("fail", "continue") else None
            if handler is not None:
                handler.activated = True
    elif event_type == E.STEP_SKIPPED:
        task.status = StepStatus.SKIPPED
        task.reason = data.get("reason")
        task.completed_at = at
    elif event_type == E.STEP_RETRYING:
        state.timed = True
        task.status = StepStatus.RETRYING
        task.error = data.get("error")
        task.retry_at = as_datetime(data.get("retry_at"))
        task.reason = data.get("reason")
    elif event_type in (E.STEP_FALLBACK, E.STEP_TIMED_OUT):
        task.error = data.get("error")
        task.reason = data.get("reason")
    elif event_type == E.STEP_WAITING and isinstance(task, StepState):
        state.timed = True
        task.status = StepStatus.WAITING
        task.scheduled_at = at
        task.wait = {"event": data["event"], "key": data["key"], "until": data["until"]}


def _stop_unfinished(state: RunState, reason: str) -> None:
    """At the end of a run (or when it starts compensating): work in flight is cancelled and
    steps that never started are skipped. Late results for them are then ignored."""
    for step in state.steps:
        if step.in_flight:
            step.status = StepStatus.CANCELLED
            step.reason = reason
            for item in step.items or ():
                if item.in_flight:
                    item.status = StepStatus.CANCELLED
        elif step.status == StepStatus.PENDING:
            step.status = StepStatus.SKIPPED
            step.reason = reason


def as_datetime(value: Any) -> datetime | None:
    """An event's timestamp field, which is text once the event has been stored."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def run_output(state: RunState) -> dict[str, Any]:
    """A run's output: every completed step's output, by step name."""
    return {s.name: s.output for s in state.steps if s.status == StepStatus.COMPLETED}
