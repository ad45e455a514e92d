"""What follows from a run's state: the decisions, recorded as events into a ``Batch``.

Every change to a run is one ``Batch`` (``batch.py``): the events (folded into the state as they
are recorded), the outbox rows they cause (tool invocations, a progress notice) and the durable
timers and event waits they set or clear. The engine writes a batch in one transaction.

``Decider`` makes the decisions; it reads the definition, the state and the clock and never
does I/O, so each rule is tested without servers. It takes what happens to a run (a tool result,
a timer, an outside event, a cancel request) and runs the main loop:

- a step runs once every step it needs is done (``needs:`` and the steps its templates read);
  a step whose ``when:`` is false is skipped; a step that needs a failed step is skipped;
- a step that fails for good is handled by its ``on_error``: ``fail`` fails the run,
  ``continue`` goes on, a step name runs that handler step.

The rules of each kind of work are in modules of their own, which the ``Decider`` calls and which
reach one another through it:

- ``tool_calls.py``: sending a task's attempt (provider chain, templates, budget, ``text-only``);
- ``retries.py``: a failed or timed-out attempt is retried, falls back, or fails the task;
- ``fan_out.py``: ``for_each`` steps and their items;
- ``waits.py``: ``wait`` steps and their events;
- ``compensation.py``: ending a run that does not complete, compensating its steps first.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
from omni_contract.events import RunStatus, StepStatus, ToolResult
from omni_contract.history import (
    HistoryEvent,
    RunCancelRequested,
    RunCompleted,
    RunError,
    StepCompleted,
    StepError,
    StepSkipped,
    StepStarted,
)

from omni_engine import compensation, fan_out, retries, tool_calls, waits
from omni_engine.batch import Batch
from omni_engine.conditions import ConditionError, evaluate
from omni_engine.definition import Step, WorkflowDefinition
from omni_engine.state import NewEvent, RunState, StepState, TaskState, ms, run_output, step_of
from omni_engine.templating import Scope
from omni_engine.timer_kinds import AnyTimer, AttemptTimeout, RetryDue, RunDeadline, timeout_timer
from omni_engine.tool_calls import DISPATCHED, idempotency_key

DONE = StepStatus.DONE


def result_problem(state: RunState, result: ToolResult) -> str | None:
    """Why ``result`` answers nothing the run ever scheduled, or None when it may be folded (a
    redelivered or superseded result is fine: folding it is a no-op)."""
    task = state.task(result.step)
    if task is None:
        return f"run '{state.run_id}' has no step '{result.step}'"
    if result.attempt < 1 or result.attempt > task.attempt:
        return (
            f"step '{result.step}' of run '{state.run_id}' never scheduled attempt {result.attempt}"
            f" (its attempts so far: {task.attempt})"
        )
    expected = idempotency_key(state.run_id, result.step, result.attempt)
    if result.idempotency_key != expected:
        return (
            f"idempotency key {result.idempotency_key!r} is not the one scheduled for step"
            f" '{result.step}' attempt {result.attempt} ({expected!r})"
        )
    return None


class Decider:
    """Records into ``batch`` what follows from its state, until the run waits on something."""

    def __init__(
        self,
        batch: Batch,
        spec: WorkflowDefinition,
        now: datetime,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.batch = batch
        self.state = batch.state
        self.spec = spec
        self.now = now
        self.rng = rng

    def record(self, event: HistoryEvent) -> None:
        self.batch.record(NewEvent(data=event, at=self.now))

    def scope(self, item: Any = None, index: int | None = None) -> Scope:
        """What templates read: the payload, the context, completed steps' outputs (and the item)."""
        state = self.state
        return Scope(
            payload=state.payload,
            context=state.context,
            steps=state.completed_outputs(),
            item=item,
            index=index,
        )

    # -- what happens to a run ------------------------------------------------------------------
    # Each returns False, recording nothing, when the news is stale or already folded in.

    def take_result(self, result: ToolResult) -> bool:
        """A tool result for one attempt: ``step.started``, then the outcome."""
        address = result.step
        state = self.state
        task = state.task(address)
        if task is None or task.attempt != result.attempt or task.status not in DISPATCHED:
            return False  # a redelivered or superseded result
        if not self._task_live(address, task):
            return False
        if task.timeout_ms is not None:  # its attempt has a timeout timer: clear it
            self.batch.effects.cancel_timer(timeout_timer(address, result.attempt))
        self.record(
            StepStarted(
                step=address, attempt=result.attempt, runner=result.runner, started_at=result.started_at
            )
        )
        if not result.success:
            error = (
                StepError(**msgspec.structs.asdict(result.error))
                if result.error
                else StepError(kind="unknown", message="the tool failed without saying why")
            )
            self.attempt_failed(address, error)
            return True
        self.record(
            StepCompleted(
                step=address,
                attempt=result.attempt,
                provider=result.provider,
                duration_ms=result.duration_ms,
                output=result.output or {},
                usage=result.usage,
                model=result.model or None,
            )
        )
        return True

    def timer_fired(self, timer: AnyTimer) -> bool:
        """A durable timer fired: a retry is due, an attempt or a wait timed out, or the deadline passed."""
        state = self.state
        if isinstance(timer, RunDeadline):
            if state.status != RunStatus.RUNNING:
                return False
            budget = self.spec.guards.budget if self.spec.guards else None
            max_ms = budget.max_ms if budget else None
            self.end(
                RunStatus.TIMED_OUT,
                RunError(
                    kind="deadline", message=f"the run did not finish within {max_ms} ms", max_ms=max_ms
                ),
            )
            return True
        address = timer.step
        task = state.task(address)
        if task is None or not self._task_live(address, task):
            return False
        if isinstance(timer, RetryDue):
            if task.status != StepStatus.RETRYING or task.attempt != timer.attempt:
                return False
            retries.retry_due(self, address, task)
            return True
        if isinstance(timer, AttemptTimeout):
            if task.attempt != timer.attempt or task.status not in DISPATCHED:
                return False
            retries.timed_out(self, address, task, timer)
            return True
        return waits.timed_out(self, address, task)

    def event_arrived(self, step: str, event_id: str | None, data: dict[str, Any]) -> bool:
        """The outside event a ``wait`` step waits for: the step completes with its data."""
        return waits.event_arrived(self, step, event_id, data)

    def request_cancel(self, reason: str) -> bool:
        """Cancel the run (``advance`` then ends it, compensating first)."""
        if self.state.status != RunStatus.RUNNING or self.state.cancel_reason is not None:
            return False
        self.record(RunCancelRequested(reason=reason or "cancelled"))
        return True

    def _task_live(self, address: str, task: TaskState) -> bool:
        """False for an item of a ``for_each`` step that has already ended."""
        parent = self.state.step(step_of(address))
        return parent is None or parent is task or parent.items is None or parent.in_flight

    # -- the main loop -------------------------------------------------------------------------
    def advance(self) -> None:
        state = self.state
        while not state.finished:
            before = len(self.batch.events)
            if state.status == RunStatus.COMPENSATING:
                compensation.compensate(self)
            elif state.cancel_reason is not None:
                self.end(RunStatus.CANCELLED, RunError(kind="cancelled", message=state.cancel_reason))
            else:
                self._steps()
            if len(self.batch.events) == before:
                return

    def _steps(self) -> None:
        """One pass over the steps not done: start what can start, end the run when all are."""
        state, spec = self.state, self.spec
        while state.cursor < len(state.steps) and state.steps[state.cursor].status in DONE:
            failed = state.steps[state.cursor]
            if failed.status == StepStatus.FAILED and failed.handling == "fail":
                break
            state.cursor += 1
        waiting = False
        for position in range(state.cursor, len(state.steps)):
            step = state.steps[position]
            if step.status in DONE:
                if step.status == StepStatus.FAILED and step.handling == "fail":
                    self.end(RunStatus.FAILED, _run_error(step))
                    return
                continue
            if step.in_flight:
                waiting = True
                if step.items is not None:
                    fan_out.keep_going(self, step)
                continue
            if step.name in spec.handlers and not step.activated:
                # It runs only if a step it guards fails. Once they have all ended without
                # failing, it is skipped at once: steps that read it must not wait for the end.
                guarded = (state.step(s.name) for s in spec.steps if s.on_error == step.name)
                if all(g is not None and g.status in DONE for g in guarded):
                    self.record(StepSkipped(step=step.name, reason="no failure for it to handle"))
                continue
            blocked, failed_need = False, None
            for need in spec.needs_of(step.name):
                other = state.step(need)
                if other is None or other.status not in DONE:
                    blocked = True
                    break
                # A handler may need the step it handles: that failure is why it runs.
                if other.status == StepStatus.FAILED and other.handling not in ("continue", step.name):
                    failed_need = need
            if blocked:
                waiting = True
                continue
            if failed_need is not None:
                self.record(StepSkipped(step=step.name, reason=f"it needs {failed_need}, which failed"))
                continue
            self._start(step, spec.step(step.name))
            if self.state.finished or self.state.status != RunStatus.RUNNING:
                return
            if step.status == StepStatus.FAILED and step.handling == "fail":
                # It failed as it started (its condition, a template): the next pass ends the run,
                # rather than this one completing it because nothing is left in flight.
                return
            waiting = waiting or step.status not in DONE
        if waiting:
            return
        for step in state.steps:
            if step.status == StepStatus.PENDING:  # handler steps nothing called on
                self.record(StepSkipped(step=step.name, reason="no failure for it to handle"))
        self._complete()

    def _start(self, step: StepState, spec_step: Step) -> None:
        if spec_step.when is not None:
            try:
                go = evaluate(spec_step.when, self._activation())
            except ConditionError as exc:
                self.fail_step(step.name, StepError(kind="condition", message=str(exc)))
                return
            if not go:
                self.record(StepSkipped(step=step.name, reason=f"when: {spec_step.when} is false"))
                return
        if spec_step.wait is not None:
            waits.start(self, step, spec_step)
        elif spec_step.for_each is not None:
            fan_out.start(self, step, spec_step)
        else:
            self.dispatch(step.name, step, provider_index=0, provider_attempt=1)

    def _activation(self) -> dict[str, Any]:
        state = self.state
        steps: dict[str, Any] = {}
        for s in state.steps:
            if s.status in DONE:
                entry: dict[str, Any] = {"status": s.status}
                if s.status == StepStatus.COMPLETED:
                    entry["output"] = s.output
                steps[s.name] = entry
        flags = state.context.get("flags")
        return {
            "trigger": {"payload": state.payload},
            "steps": steps,
            "context": state.context,
            "flags": flags if isinstance(flags, dict) else {},
        }

    def _complete(self) -> None:
        state = self.state
        self.record(
            RunCompleted(
                duration_ms=ms(self.now - state.created_at), output=run_output(state), usage=state.usage
            )
        )

    # -- what the kinds of work ask of one another ------------------------------------------------
    def dispatch(self, address: str, task: TaskState, *, provider_index: int, provider_attempt: int) -> None:
        """Send the task's next attempt (``tool_calls.py``)."""
        tool_calls.send(self, address, task, provider_index=provider_index, provider_attempt=provider_attempt)

    def attempt_failed(self, address: str, error: StepError) -> None:
        """Retry the attempt, fall back, or fail the task (``retries.py``)."""
        retries.attempt_failed(self, address, error)

    def final_failure(self, address: str, error: StepError, *, attempt: int) -> None:
        """The task has failed for good (``retries.py``)."""
        retries.final_failure(self, address, error, attempt=attempt)

    def fail_step(self, name: str, error: StepError, *, attempt: int | None = None) -> None:
        """Step ``name`` has failed, handled by its ``on_error`` (``retries.py``)."""
        retries.fail_step(self, name, error, attempt=attempt)

    def end(self, status: str, error: RunError, *, compensate: bool = True) -> None:
        """End the run without completing it, compensating first (``compensation.py``)."""
        compensation.end(self, status, error, compensate=compensate)


def _run_error(step: StepState) -> RunError:
    """The error of a run that ``step``'s failure fails: the step's error, naming the step."""
    error = step.error or StepError(kind="unknown", message="step failed")
    return RunError(step=step.name, **msgspec.structs.asdict(error))
