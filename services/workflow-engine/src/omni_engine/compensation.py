"""How a run that does not complete ends: first the compensation of its completed steps, then
``run.failed``, ``run.cancelled``, ``run.timed_out`` or ``run.budget_exceeded``.

The steps to undo are those that completed in this run (not reused by a rerun) and declare a
``compensate`` call; they are undone one at a time, the latest completed first, each a task of
its own (``name~c``) with its step's retries and fallbacks. A compensation that fails does not
stop the others; the run's error lists it under ``compensation_failures``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from omni_contract.events import StepStatus
from omni_contract.history import CompensationFailure, RunCompensating, RunError

from omni_engine.state import END_EVENT, compensation_address, ms

if TYPE_CHECKING:
    from omni_engine.progress import Decider


def end(decider: Decider, status: str, error: RunError, *, compensate: bool = True) -> None:
    """End the run as ``status`` (not completed) with ``error``: first, unless this is the end of
    compensating, compensate the completed steps that have a compensation."""
    state = decider.state
    if compensate:
        done = [
            s
            for s in state.steps
            if s.status == StepStatus.COMPLETED
            and s.reused_from is None
            and decider.spec.step(s.name).compensate
        ]
        if done:
            done.sort(key=lambda s: (s.completed_at or state.created_at, state.steps.index(s)), reverse=True)
            decider.record(RunCompensating(status=status, error=error, queue=[s.name for s in done]))
            decider.batch.effects.clear_all = True
            return
    decider.record(
        END_EVENT[status](duration_ms=ms(decider.now - state.created_at), error=error, usage=state.usage)
    )


def compensate(decider: Decider) -> None:
    """Run the queued compensations one at a time; end the run when all have finished."""
    state = decider.state
    failures: list[CompensationFailure] = []
    for name in state.compensation_queue:
        step = state.step(name)
        task = step.compensation if step is not None else None
        if task is None:
            continue
        if task.status == StepStatus.PENDING:
            decider.dispatch(compensation_address(name), task, provider_index=0, provider_attempt=1)
            return
        if task.in_flight:
            return
        if task.status == StepStatus.FAILED and task.error is not None:
            failures.append(CompensationFailure(step=name, **msgspec.structs.asdict(task.error)))
    assert state.ending is not None  # set by run.compensating
    error = state.ending.error
    if failures:
        error = msgspec.structs.replace(error, compensation_failures=failures)
    end(decider, state.ending.status, error, compensate=False)
