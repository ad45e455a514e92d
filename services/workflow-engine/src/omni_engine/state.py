"""A run's state is a fold of its events.

``apply`` is the only place that knows how each event changes state. It is pure and needs no
definition: everything a decision chose (which provider, how a failure was handled, which items a
``for_each`` step runs over) is written into the event, so replaying a history always gives the
same state. The events are the typed payloads of ``omni_contract.history``; ``apply`` dispatches
on their class. What follows from a state is decided in ``progress.py``.

Units of dispatch are *tasks*, addressed in events by ``step``:

- ``name``: a step (for a ``for_each`` step, the step as a whole);
- ``name#3``: item 3 of a ``for_each`` step;
- ``name~c``: the compensation of a completed step.

Step names cannot contain ``#`` or ``~``, so an address is never ambiguous.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import msgspec
from omni_contract.events import RunStatus, StepStatus, Usage
from omni_contract.history import (
    COMPENSATION_SUFFIX,
    ITEM_SEP,
    HistoryEvent,
    RunBudgetExceeded,
    RunCancelled,
    RunCancelRequested,
    RunCompensating,
    RunCompleted,
    RunEnded,
    RunEndedWithError,
    RunError,
    RunFailed,
    RunStarted,
    RunTimedOut,
    StepCompleted,
    StepError,
    StepEvent,
    StepFailed,
    StepFallback,
    StepFannedOut,
    StepRetrying,
    StepScheduled,
    StepSkipped,
    StepStarted,
    StepTimedOut,
    StepWaiting,
)

IN_FLIGHT = frozenset({StepStatus.SCHEDULED, StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING})

_END_STATUS: dict[type[RunEnded], str] = {
    RunCompleted: RunStatus.COMPLETED,
    RunFailed: RunStatus.FAILED,
    RunCancelled: RunStatus.CANCELLED,
    RunTimedOut: RunStatus.TIMED_OUT,
    RunBudgetExceeded: RunStatus.BUDGET_EXCEEDED,
}
_NO_USAGE = Usage()
# The event that ends a run with each status other than completed.
END_EVENT: dict[str, type[RunEndedWithError]] = {
    RunStatus.FAILED: RunFailed,
    RunStatus.CANCELLED: RunCancelled,
    RunStatus.TIMED_OUT: RunTimedOut,
    RunStatus.BUDGET_EXCEEDED: RunBudgetExceeded,
}


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
    error: StepError | None = None
    usage: Usage | None = None
    reason: str | None = None  # why it was skipped, retried, switched provider or cancelled

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT


class WaitState(msgspec.Struct, kw_only=True):
    """What a ``wait`` step waits for: an event on ``event`` with ``key``, until ``until``."""

    event: str
    key: str
    until: datetime


class StepState(TaskState, kw_only=True, omit_defaults=True):
    name: str
    tool: str | None = None
    # How a failure was handled: fail (the run fails), continue, or the handler step's name.
    handling: str | None = None
    activated: bool = False  # a handler step whose guarded step failed
    items: list[TaskState] | None = None  # for_each: one task per item
    item_values: list[Any] | None = None
    compensation: TaskState | None = None
    wait: WaitState | None = None
    reused_from: str | None = None  # a rerun took this step's output from that run


class Ending(msgspec.Struct, kw_only=True):
    """How a run that is compensating ends once its compensations are done."""

    status: str
    error: RunError


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
    error: RunError | None = None
    usage: Usage | None = None
    completed_at: datetime | None = None
    deadline_at: datetime | None = None
    ending: Ending | None = None  # set while compensating
    compensation_queue: list[str] = []  # steps to compensate, in order (latest completed first)
    cancel_reason: str | None = None
    # Whether the run ever set a timer or a wait (so its end has rows to clear).
    timed: bool = False
    rerun_of: str | None = None
    rerun_from_step: str | None = None
    tenant: str | None = None  # None: the default tenant (see tenants.py)
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


def item_index(address: str) -> int:
    """The item an item's address (``name#3``) names."""
    return int(address.rpartition(ITEM_SEP)[2])


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

    data: HistoryEvent
    at: datetime

    @property
    def type(self) -> str:
        return self.data.TYPE


def initial_state(run_id: str, event: RunStarted, at: datetime) -> RunState:
    state = RunState(
        run_id=run_id,
        workflow=event.workflow,
        hash=event.hash,
        version=event.version,
        status=RunStatus.RUNNING,
        created_at=at,
        updated_at=at,
        payload=event.payload,
        context=event.context,
        steps=[StepState(name=s.name, tool=s.tool) for s in event.steps],
        deadline_at=event.deadline_at,
        timed=event.deadline_at is not None,
        rerun_of=event.rerun_of,
        rerun_from_step=event.rerun_from_step,
        tenant=event.tenant,
    )
    for name, reused in (event.reused or {}).items():
        step = state.step(name)
        if step is not None:
            step.status = StepStatus.COMPLETED
            step.output = reused.output
            step.provider = reused.provider
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


def apply(state: RunState | None, run_id: str, event: HistoryEvent, at: datetime) -> RunState:
    """Fold one event into the state (mutating and returning it)."""
    if isinstance(event, RunStarted):
        return initial_state(run_id, event, at)
    if state is None:
        raise ValueError(f"run {run_id}: {event.TYPE} before run.started")
    state.updated_at = at
    if isinstance(event, StepEvent):
        task = state.task(event.step)
        if task is not None:
            _apply_to_task(state, task, event, at)
    elif isinstance(event, RunCompensating):
        state.status = RunStatus.COMPENSATING
        state.ending = Ending(status=event.status, error=event.error)
        state.compensation_queue = list(event.queue)
        _stop_unfinished(state, f"the run is ending ({event.status})")
        for name in state.compensation_queue:
            step = state.step(name)
            if step is not None:
                step.compensation = TaskState()
    elif isinstance(event, RunCancelRequested):
        state.cancel_reason = event.reason
    elif isinstance(event, RunEnded):
        state.status = _END_STATUS[type(event)]
        state.completed_at = at
        if isinstance(event, RunCompleted):
            state.output = event.output
        elif isinstance(event, RunEndedWithError):
            state.error = event.error
        _stop_unfinished(state, f"the run ended ({state.status})")
    return state


def _apply_to_task(state: RunState, task: TaskState, event: StepEvent, at: datetime) -> None:
    # The most frequent first: every attempt is scheduled, started and completed.
    if isinstance(event, StepScheduled):
        task.status = StepStatus.SCHEDULED
        task.scheduled_at = at
        task.retry_at = None
        task.attempt = event.attempt
        task.timeout_ms = event.timeout_ms
        state.timed = state.timed or event.timeout_ms is not None
        task.provider = event.provider
        task.provider_index = event.provider_index
        task.provider_attempt = event.provider_attempt
        task.idempotency_key = event.idempotency_key
    elif isinstance(event, StepStarted):
        task.status = StepStatus.RUNNING
        task.started_at = event.started_at or at
    elif isinstance(event, StepCompleted):
        task.status = StepStatus.COMPLETED
        task.output = event.output
        task.completed_at = at
        task.duration_ms = event.duration_ms
        task.error = None
        if event.provider is not None:
            task.provider = event.provider
        if event.degraded:
            task.reason = event.reason
        # An empty usage (a provider that reported none, encoded as {}) counts as none.
        task.usage = event.usage if event.usage != _NO_USAGE else None
        state.usage = _add_usage(state.usage, task.usage)
        if isinstance(task, StepState):
            task.wait = None
    elif isinstance(event, StepFailed):
        task.status = StepStatus.FAILED
        task.error = event.error
        task.completed_at = at
        if isinstance(task, StepState):
            task.handling = event.handling
            task.wait = None
            if event.handling not in (None, "fail", "continue"):
                handler = state.step(event.handling)
                if handler is not None:
                    handler.activated = True
    elif isinstance(event, StepFannedOut):
        task.status = StepStatus.RUNNING
        task.scheduled_at = at
        task.retry_at = None
        if isinstance(task, StepState):
            task.item_values = list(event.items)
            task.items = [TaskState() for _ in task.item_values]
            task.started_at = at
    elif isinstance(event, StepSkipped):
        task.status = StepStatus.SKIPPED
        task.reason = event.reason
        task.completed_at = at
    elif isinstance(event, StepRetrying):
        state.timed = True
        task.status = StepStatus.RETRYING
        task.error = event.error
        task.retry_at = event.retry_at
        task.reason = event.reason
    elif isinstance(event, StepFallback):
        task.error = event.error
        task.reason = event.reason
    elif isinstance(event, StepTimedOut):
        task.error = event.error
        task.reason = None
    elif isinstance(event, StepWaiting) and isinstance(task, StepState):
        state.timed = True
        task.status = StepStatus.WAITING
        task.scheduled_at = at
        task.wait = WaitState(event=event.event, key=event.key, until=event.until)


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


def ms(delta: timedelta) -> float:
    """A duration as the history records it: milliseconds, to the microsecond."""
    return round(delta.total_seconds() * 1000, 3)


def run_output(state: RunState) -> dict[str, Any]:
    """A run's output: every completed step's output, by step name."""
    return {s.name: s.output for s in state.steps if s.status == StepStatus.COMPLETED}
