"""``for_each``: a step run once per value of a list, at most ``concurrency`` items at a time.

The step fans out (``step.scheduled`` with the values); each item is then a task of its own
(``name#i``, with its own retries and fallbacks), dispatched as others end; the step completes
with its items' outputs in order once every item has completed, and fails with the first item
that fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omni_contract.events import RunStatus, StepStatus
from omni_contract.history import StepCompleted, StepError, StepFannedOut

from omni_engine.definition import Step
from omni_engine.state import StepState, item_address, ms
from omni_engine.templating import TemplateError, render_string

if TYPE_CHECKING:
    from omni_engine.progress import Decider


def start(decider: Decider, step: StepState, spec_step: Step) -> None:
    """Render the step's list and fan out over it (a template that fails, or names no list,
    fails the step)."""
    assert spec_step.for_each is not None
    try:
        values = render_string(spec_step.for_each, decider.scope())
    except TemplateError as exc:
        decider.fail_step(step.name, StepError(kind="template", message=str(exc)))
        return
    if not isinstance(values, list):
        kind = type(values).__name__ if values is not None else "null"
        decider.fail_step(
            step.name, StepError(kind="template", message=f"for_each must name a list, got {kind}")
        )
        return
    decider.record(StepFannedOut(step=step.name, items=values))
    keep_going(decider, step)


def keep_going(decider: Decider, step: StepState) -> None:
    """Keep up to ``concurrency`` items in flight; complete the step when all are done."""
    assert step.items is not None
    if step.status not in (StepStatus.RUNNING, StepStatus.SCHEDULED):
        return
    limit = decider.spec.step(step.name).concurrency
    in_flight = sum(1 for item in step.items if item.in_flight)
    for index, item in enumerate(step.items):
        if in_flight >= limit:
            break
        if item.status == StepStatus.PENDING:
            decider.dispatch(item_address(step.name, index), item, provider_index=0, provider_attempt=1)
            if step.status in StepStatus.DONE or decider.state.status != RunStatus.RUNNING:
                return
            in_flight += 1 if item.in_flight else 0
    if all(item.status == StepStatus.COMPLETED for item in step.items):
        decider.record(
            StepCompleted(
                step=step.name,
                output={"items": [item.output for item in step.items]},
                duration_ms=ms(decider.now - step.started_at) if step.started_at else None,
            )
        )
