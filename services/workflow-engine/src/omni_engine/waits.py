"""``wait`` steps: a step that completes when an outside event comes, with the event's data.

The step records what it waits for (the event's subject, the key rendered from its template and
the field of the event that must equal it) and sets a wait row and a timer with it; the first
matching event completes the step, and the timer, if it fires first, fails it with kind
``timeout``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from omni_contract.events import StepStatus
from omni_contract.history import StepCompleted, StepError, StepWaiting

from omni_engine.definition import Step
from omni_engine.state import StepState, TaskState
from omni_engine.templating import TemplateError, render_string
from omni_engine.timer_kinds import WaitTimeout, wait_timer

if TYPE_CHECKING:
    from omni_engine.progress import Decider


def start(decider: Decider, step: StepState, spec_step: Step) -> None:
    wait = spec_step.wait
    assert wait is not None
    try:
        key = render_string(wait.key, decider.scope())
    except TemplateError as exc:
        decider.fail_step(step.name, StepError(kind="template", message=str(exc)))
        return
    until = decider.now + timedelta(milliseconds=wait.timeout)
    key_text = key if isinstance(key, str) else msgspec.json.encode(key).decode()
    decider.record(StepWaiting(step=step.name, event=wait.event, key=key_text, match=wait.match, until=until))
    decider.batch.effects.wait(step.name, wait.event, key_text, wait.match)
    decider.batch.effects.timer(wait_timer(step.name), until, WaitTimeout(step=step.name))


def event_arrived(decider: Decider, step: str, event_id: str | None, data: dict[str, Any]) -> bool:
    """The outside event ``step`` waits for: the step completes with its data."""
    task = decider.state.step(step)
    if task is None or task.status != StepStatus.WAITING:
        return False
    decider.batch.effects.cancel_wait(step)
    decider.record(StepCompleted(step=step, output=data, event_id=event_id))
    return True


def timed_out(decider: Decider, address: str, task: TaskState) -> bool:
    """The step's wait timer fired: the step fails, unless the event came first."""
    if task.status != StepStatus.WAITING:
        return False
    decider.batch.effects.cancel_wait(address)
    decider.fail_step(address, StepError(kind="timeout", message="the event did not come in time"))
    return True
