"""A run's state is a fold of its events; what to do next is decided from that state.

``apply`` is the only place that knows how each event type changes state; ``decide`` is the only
place that knows what follows from a state. Both are pure, so they are tested without servers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import msgspec
from omni_contract.events import RunEventType as E
from omni_contract.events import RunStatus, StepStatus, Usage


class StepState(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    tool: str
    status: str = StepStatus.PENDING
    provider: str | None = None
    attempt: int = 0
    idempotency_key: str | None = None
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: float | None = None
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    usage: Usage | None = None


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
    # Index of the first step that has not completed: decisions start there, so one step's cost
    # does not grow with the number of steps before it.
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

    def completed_outputs(self) -> StepOutputs:
        return StepOutputs(self)

    @property
    def finished(self) -> bool:
        return self.status in RunStatus.TERMINAL


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
    return RunState(
        run_id=run_id,
        workflow=data["workflow"],
        hash=data["hash"],
        version=data.get("version", ""),
        status=RunStatus.RUNNING,
        created_at=at,
        updated_at=at,
        payload=data.get("payload", {}),
        context=data.get("context", {}),
        steps=[StepState(name=s["name"], tool=s["tool"]) for s in data.get("steps", [])],
    )


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
    step = state.step(data["step"]) if "step" in data else None
    if event_type == E.STEP_SCHEDULED and step:
        step.status = StepStatus.SCHEDULED
        step.attempt = data["attempt"]
        step.provider = data.get("provider")
        step.idempotency_key = data.get("idempotency_key")
        step.scheduled_at = at
    elif event_type == E.STEP_STARTED and step:
        step.status = StepStatus.RUNNING
        step.started_at = _dt(data.get("started_at")) or at
    elif event_type == E.STEP_COMPLETED and step:
        step.status = StepStatus.COMPLETED
        step.output = data.get("output") or {}
        step.completed_at = at
        step.duration_ms = data.get("duration_ms")
        step.usage = msgspec.convert(data["usage"], Usage) if data.get("usage") else None
        state.usage = _add_usage(state.usage, step.usage)
    elif event_type == E.STEP_FAILED and step:
        step.status = StepStatus.FAILED
        step.error = data.get("error")
        step.completed_at = at
        step.duration_ms = data.get("duration_ms")
    elif event_type == E.RUN_COMPLETED:
        state.status = RunStatus.COMPLETED
        state.output = data.get("output")
        state.completed_at = at
    elif event_type == E.RUN_FAILED:
        state.status = RunStatus.FAILED
        state.error = data.get("error")
        state.completed_at = at
    return state


def _dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


# ---------------------------------------------------------------------------------------------
# Decisions


class ScheduleStep(msgspec.Struct, kw_only=True):
    step: str


class CompleteRun(msgspec.Struct, kw_only=True):
    pass


class FailRun(msgspec.Struct, kw_only=True):
    step: str | None
    error: dict[str, Any]


Decision = ScheduleStep | CompleteRun | FailRun


def decide(state: RunState) -> Decision | None:
    """What the run needs next. Steps run in declaration order; a failed step fails the run.

    Returns None while a step is in flight (or when the run has finished).
    """
    if state.finished:
        return None
    while state.cursor < len(state.steps) and state.steps[state.cursor].status == StepStatus.COMPLETED:
        state.cursor += 1
    for position in range(state.cursor, len(state.steps)):
        step = state.steps[position]
        if step.status == StepStatus.COMPLETED:
            continue
        if step.status == StepStatus.FAILED:
            error = dict(step.error or {})
            error.setdefault("message", "step failed")
            return FailRun(step=step.name, error={"step": step.name, **error})
        if step.status == StepStatus.PENDING:
            return ScheduleStep(step=step.name)
        return None  # scheduled or running: wait for its result
    return CompleteRun()


def run_output(state: RunState) -> dict[str, Any]:
    """A run's output: every completed step's output, by step name."""
    return {s.name: s.output for s in state.steps if s.status == StepStatus.COMPLETED}
