"""What follows from a run's state: the decisions, recorded as events into a ``Batch``.

Every change to a run is one ``Batch``: the events (folded into the state as they are recorded),
the outbox rows they cause (tool invocations, a progress notice) and the durable timers and
event waits they set or clear. The engine writes a batch in one transaction.

``Decider`` holds the rules; it reads the definition, the state and the clock and never does
I/O, so each rule is tested without servers:

- a step runs once every step it needs is done (``needs:`` and the steps its templates read);
  a step whose ``when:`` is false is skipped; a step that needs a failed step is skipped;
- a tool call that fails is retried on the same provider while the retry policy allows (a
  back-off timer, honouring Retry-After), then falls back to the next provider in the chain;
  ``text-only`` ends a chain by returning the step's text;
- a step that still fails is handled by its ``on_error``: ``fail`` fails the run, ``continue``
  goes on, a step name runs that handler step;
- a step is not dispatched when the run's remaining token or cost budget cannot cover it;
- a run that fails, is cancelled, times out or runs out of budget first runs the compensation
  of its completed steps (latest first), then ends.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import msgspec
from omni_contract import events as ev
from omni_contract import subjects
from omni_contract.envelope import encode_envelope, new_envelope
from omni_contract.events import RunStatus, StepStatus, ToolInvoke, ToolResult
from omni_contract.history import (
    BudgetLimit,
    BudgetUsed,
    CompensationFailure,
    HistoryEvent,
    RunCancelRequested,
    RunCompensating,
    RunCompleted,
    RunError,
    RunStarted,
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

from omni_engine.conditions import ConditionError, evaluate
from omni_engine.definition import NEVER_RETRY, TEXT_ONLY, Step, WorkflowDefinition
from omni_engine.state import (
    END_EVENT,
    NewEvent,
    RunState,
    StepState,
    TaskState,
    apply,
    compensation_address,
    item_address,
    run_output,
    step_of,
)
from omni_engine.store import Effects, OutboxMessage
from omni_engine.templating import Scope, TemplateError, render, render_string
from omni_engine.timer_kinds import (
    AnyTimer,
    AttemptTimeout,
    RetryDue,
    RunDeadline,
    WaitTimeout,
    retry_timer,
    timeout_timer,
    wait_timer,
)

SOURCE = "omni-workflow-engine"
# Errors after which switching provider cannot help either: the request itself is wrong.
NO_FALLBACK = NEVER_RETRY
DONE = StepStatus.DONE
DISPATCHED = (StepStatus.SCHEDULED, StepStatus.RUNNING)  # a tool call is out: a result may come


def idempotency_key(run_id: str, address: str, attempt: int) -> str:
    return f"{run_id}:{address}:{attempt}"


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


def ms(delta: timedelta) -> float:
    return round(delta.total_seconds() * 1000, 3)


class Batch:
    """The events, outbox rows and timer changes of one transaction, against the state they fold into."""

    def __init__(self, state: RunState, traceparent: str | None) -> None:
        self.state = state
        self.traceparent = traceparent
        self.events: list[NewEvent] = []
        self.outbox: list[OutboxMessage] = []
        self.effects = Effects()

    def record(self, event: NewEvent) -> None:
        if not isinstance(event.data, RunStarted):
            apply(self.state, self.state.run_id, event.data, event.at)
        self.state.last_seq += 1
        self.events.append(event)

    def seal(self) -> None:
        """Add the one progress notice of this batch: its last event, with the run's status.

        One notice per transaction rather than per event halves what observers and JetStream
        handle per step; a notice only says that the history grew up to ``seq``.
        """
        if not self.events:
            return
        if self.state.finished and self.state.timed:
            self.effects.clear_all = True  # its timers and waits, if any are left, go with it
        last = self.events[-1]
        progress = ev.RunProgress(
            run_id=self.state.run_id,
            workflow=self.state.workflow,
            seq=self.state.last_seq,
            event=last.type,
            status=self.state.status,
            at=last.at,
            step=last.data.step if isinstance(last.data, StepEvent) else None,
        )
        msg_id = f"{self.state.run_id}:{self.state.last_seq}"
        envelope = new_envelope(
            ev.RUN_PROGRESS_V1, SOURCE, progress, id_=msg_id, correlation_id=self.state.run_id
        )
        self.outbox.append(
            OutboxMessage(
                subject=subjects.run_event(self.state.run_id, last.type),
                msg_id=msg_id,
                body=encode_envelope(envelope),
                durable=False,
                traceparent=self.traceparent,
            )
        )


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
            self.retry_due(address)
            return True
        if isinstance(timer, AttemptTimeout):
            if task.attempt != timer.attempt or task.status not in DISPATCHED:
                return False
            error = StepError(
                kind="timeout", message=f"no result within {timer.timeout_ms} ms (config.timeout)"
            )
            self.record(StepTimedOut(step=address, attempt=task.attempt, error=error))
            self.attempt_failed(address, error)
            return True
        if task.status != StepStatus.WAITING:
            return False
        self.batch.effects.cancel_wait(address)
        self.fail_step(address, StepError(kind="timeout", message="the event did not come in time"))
        return True

    def event_arrived(self, step: str, event_id: str | None, data: dict[str, Any]) -> bool:
        """The outside event a ``wait`` step waits for: the step completes with its data."""
        task = self.state.step(step)
        if task is None or task.status != StepStatus.WAITING:
            return False
        self.batch.effects.cancel_wait(step)
        self.record(StepCompleted(step=step, output=data, event_id=event_id))
        return True

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
                self._compensate()
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
                    self._items(step)
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

    # -- starting a step -----------------------------------------------------------------------
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
            self._wait(step, spec_step)
        elif spec_step.for_each is not None:
            self._fan_out(step, spec_step)
        else:
            self._dispatch(step.name, step, provider_index=0, provider_attempt=1)

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

    def _scope(self, item: Any = None, index: int | None = None) -> Scope:
        state = self.state
        return Scope(
            payload=state.payload,
            context=state.context,
            steps=state.completed_outputs(),
            item=item,
            index=index,
        )

    def _wait(self, step: StepState, spec_step: Step) -> None:
        wait = spec_step.wait
        assert wait is not None
        try:
            key = render_string(wait.key, self._scope())
        except TemplateError as exc:
            self.fail_step(step.name, StepError(kind="template", message=str(exc)))
            return
        until = self.now + timedelta(milliseconds=wait.timeout)
        key_text = key if isinstance(key, str) else msgspec.json.encode(key).decode()
        self.record(
            StepWaiting(step=step.name, event=wait.event, key=key_text, match=wait.match, until=until)
        )
        self.batch.effects.wait(step.name, wait.event, key_text, wait.match)
        self.batch.effects.timer(wait_timer(step.name), until, WaitTimeout(step=step.name))

    def _fan_out(self, step: StepState, spec_step: Step) -> None:
        assert spec_step.for_each is not None
        try:
            values = render_string(spec_step.for_each, self._scope())
        except TemplateError as exc:
            self.fail_step(step.name, StepError(kind="template", message=str(exc)))
            return
        if not isinstance(values, list):
            kind = type(values).__name__ if values is not None else "null"
            self.fail_step(
                step.name, StepError(kind="template", message=f"for_each must name a list, got {kind}")
            )
            return
        self.record(StepFannedOut(step=step.name, items=values))
        self._items(step)

    def _items(self, step: StepState) -> None:
        """Keep up to ``concurrency`` items in flight; complete the step when all are done."""
        assert step.items is not None
        if step.status not in (StepStatus.RUNNING, StepStatus.SCHEDULED):
            return
        limit = self.spec.step(step.name).concurrency
        in_flight = sum(1 for item in step.items if item.in_flight)
        for index, item in enumerate(step.items):
            if in_flight >= limit:
                break
            if item.status == StepStatus.PENDING:
                self._dispatch(item_address(step.name, index), item, provider_index=0, provider_attempt=1)
                if step.status in DONE or self.state.status != RunStatus.RUNNING:
                    return
                in_flight += 1 if item.in_flight else 0
        if all(item.status == StepStatus.COMPLETED for item in step.items):
            self.record(
                StepCompleted(
                    step=step.name,
                    output={"items": [item.output for item in step.items]},
                    duration_ms=ms(self.now - step.started_at) if step.started_at else None,
                )
            )

    # -- dispatching a tool call ---------------------------------------------------------------
    def _chain(self, address: str) -> tuple[Step, list[str], str, dict[str, Any], dict[str, Any]]:
        """For a task: its step's definition, provider chain, tool, input and config templates."""
        spec_step = self.spec.step(step_of(address))
        if address == compensation_address(spec_step.name):
            comp = spec_step.compensate
            assert comp is not None
            return spec_step, list(comp.providers), comp.tool, comp.input, comp.config
        assert spec_step.tool is not None
        return (
            spec_step,
            self.spec.provider_chain(spec_step),
            spec_step.tool,
            spec_step.input,
            spec_step.config,
        )

    def _dispatch(self, address: str, task: TaskState, *, provider_index: int, provider_attempt: int) -> None:
        state = self.state
        spec_step, chain, tool, input_template, config_template = self._chain(address)
        is_compensation = address == compensation_address(spec_step.name)
        if not is_compensation:
            problem = self._budget_problem(spec_step, task)
            if problem is not None:
                self.end(RunStatus.BUDGET_EXCEEDED, problem)
                return
        item_index: int | None = None
        item: Any = None
        if address != spec_step.name and not is_compensation:
            item_index = int(address.rpartition("#")[2])
            parent = state.step(spec_step.name)
            assert parent is not None
            assert parent.item_values is not None
            item = parent.item_values[item_index]
        provider = chain[provider_index]
        attempt = task.attempt + 1
        try:
            scope = self._scope(item, item_index)
            rendered_input = render(input_template, scope)
            rendered_config = render(config_template, scope)
        except TemplateError as exc:
            self._final_failure(address, StepError(kind="template", message=str(exc)), attempt=attempt)
            return
        if not isinstance(rendered_input, dict):
            rendered_input = {"value": rendered_input}
        key = idempotency_key(state.run_id, address, attempt)
        timeout = rendered_config.get("timeout") if isinstance(rendered_config, dict) else None
        timeout_ms = (
            int(timeout) if isinstance(timeout, int | float) and not isinstance(timeout, bool) else None
        )
        self.record(
            StepScheduled(
                step=address,
                attempt=attempt,
                tool=tool,
                provider=provider,
                provider_index=provider_index,
                provider_attempt=provider_attempt,
                idempotency_key=key,
                input=rendered_input,
                # A timer is set for it (see below).
                timeout_ms=timeout_ms if provider != TEXT_ONLY else None,
            )
        )
        if provider == TEXT_ONLY:
            text = rendered_input.get("text")
            self.record(
                StepCompleted(
                    step=address,
                    attempt=attempt,
                    provider=TEXT_ONLY,
                    output={
                        "text": text if isinstance(text, str) else "",
                        "format": "text",
                        "degraded": True,
                    },
                    degraded=True,
                    reason="degraded to text: no provider in the chain could serve the call",
                    duration_ms=0.0,
                )
            )
            return
        invoke = ToolInvoke(
            run_id=state.run_id,
            step=address,
            attempt=attempt,
            tool=tool,
            provider=provider,
            input=rendered_input,
            config=rendered_config if isinstance(rendered_config, dict) else {},
            idempotency_key=key,
            timeout_ms=timeout_ms,
            workflow=state.workflow,
        )
        envelope = new_envelope(
            ev.TOOL_INVOKE_V1, SOURCE, invoke, id_=key, correlation_id=state.run_id, subject=address
        )
        self.batch.outbox.append(
            OutboxMessage(
                subject=subjects.tool_invoke(provider),
                msg_id=key,
                body=encode_envelope(envelope),
                durable=True,
                traceparent=self.batch.traceparent,
            )
        )
        if timeout_ms is not None:
            self.batch.effects.timer(
                timeout_timer(address, attempt),
                self.now + timedelta(milliseconds=timeout_ms),
                AttemptTimeout(step=address, attempt=attempt, timeout_ms=timeout_ms),
            )

    def _budget_problem(self, spec_step: Step, task: TaskState) -> RunError | None:
        """Why the run cannot afford this call of ``task``: its remaining tokens or cost do not
        cover the step's estimate (``config.maxTokens`` / ``config.maxCost``, else anything at
        all) with the estimates of the other calls in flight set aside (one per ``for_each``
        item in flight). ``task`` itself holds nothing: a retry or fallback replaces its call."""
        budget = self.spec.guards.budget if self.spec.guards else None
        if budget is None or (budget.max_tokens is None and budget.max_cost is None):
            return None
        usage = self.state.usage
        used_tokens = usage.total_tokens if usage else 0
        used_cost = usage.cost if usage else 0.0
        held_tokens, held_cost = 0, 0.0
        for other in self.state.steps:
            if not other.in_flight or other is task:
                continue
            calls = 1 if other.items is None else sum(1 for i in other.items if i.in_flight and i is not task)
            other_spec = self.spec.step(other.name)
            held_tokens += calls * _estimate(other_spec, "maxTokens")
            held_cost += calls * _estimate(other_spec, "maxCost")
        need_tokens = _estimate(spec_step, "maxTokens")
        need_cost = _estimate(spec_step, "maxCost")
        short: list[str] = []
        if budget.max_tokens is not None:
            left = budget.max_tokens - used_tokens - held_tokens
            if left <= 0 or need_tokens > left:
                short.append(
                    f"tokens: {used_tokens} used of {budget.max_tokens}, the step may need {need_tokens}"
                )
        if budget.max_cost is not None:
            left_cost = budget.max_cost - used_cost - held_cost
            if left_cost <= 0 or need_cost > left_cost:
                short.append(
                    f"cost: {used_cost:g} used of {budget.max_cost:g}, the step may need {need_cost:g}"
                )
        if not short:
            return None
        return RunError(
            kind="budget",
            step=spec_step.name,
            message=f"the budget cannot cover step {spec_step.name} ({'; '.join(short)})",
            used=BudgetUsed(tokens=used_tokens, cost=used_cost),
            limit=BudgetLimit(max_tokens=budget.max_tokens, max_cost=budget.max_cost),
        )

    # -- outcomes ------------------------------------------------------------------------------
    def attempt_failed(self, address: str, error: StepError) -> None:
        """A tool call failed: retry it, fall back to the next provider, or fail the task."""
        task = self.state.task(address)
        assert task is not None
        spec_step, chain, *_ = self._chain(address)
        policy = self.spec.retry_policy(spec_step)
        kind = error.kind
        provider = task.provider or chain[task.provider_index]
        if policy.retries(kind) and task.provider_attempt < policy.max_attempts:
            delay = policy.interval_ms(task.provider_attempt)
            if policy.jitter:
                delay *= 1 + policy.jitter * (2 * self.rng() - 1)
            retry_after = error.retry_after_s
            if retry_after is not None and retry_after * 1000 > delay:
                delay = float(retry_after) * 1000
            retry_at = self.now + timedelta(milliseconds=delay)
            self.record(
                StepRetrying(
                    step=address,
                    attempt=task.attempt,
                    error=error,
                    delay_ms=round(delay, 1),
                    retry_at=retry_at,
                    reason=f"{kind} from {provider}: retry {task.provider_attempt} of "
                    f"{policy.max_attempts - 1} on {provider} in {delay / 1000:.3g}s",
                )
            )
            self.batch.effects.timer(
                retry_timer(address, task.attempt), retry_at, RetryDue(step=address, attempt=task.attempt)
            )
            return
        if kind not in NO_FALLBACK and task.provider_index + 1 < len(chain):
            target = chain[task.provider_index + 1]
            self.record(
                StepFallback(
                    step=address,
                    attempt=task.attempt,
                    error=error,
                    reason=f"{kind} from {provider} after {task.provider_attempt} attempt(s): "
                    f"falling back to {target}",
                    from_=provider,
                    to=target,
                )
            )
            self._dispatch(address, task, provider_index=task.provider_index + 1, provider_attempt=1)
            return
        self._final_failure(address, error, attempt=task.attempt)

    def retry_due(self, address: str) -> None:
        """A back-off timer fired: the next attempt on the same provider."""
        task = self.state.task(address)
        assert task is not None
        self._dispatch(
            address, task, provider_index=task.provider_index, provider_attempt=task.provider_attempt + 1
        )

    def _final_failure(self, address: str, error: StepError, *, attempt: int) -> None:
        name = step_of(address)
        if address == name:
            self.fail_step(name, error, attempt=attempt)
            return
        self.record(StepFailed(step=address, attempt=attempt, error=error))
        if address == compensation_address(name):
            return  # the compensation pass moves on to the next one
        index = int(address.rpartition("#")[2])
        self.fail_step(
            name, msgspec.structs.replace(error, item=index, message=f"item {index}: {error.message}")
        )

    def fail_step(self, name: str, error: StepError, *, attempt: int | None = None) -> None:
        handling = self.spec.step(name).on_error
        self.record(StepFailed(step=name, error=error, handling=handling, attempt=attempt))
        for index, item in enumerate(self.state.step(name).items or ()):  # type: ignore[union-attr]
            if item.in_flight:
                # Its items in flight are abandoned: no timeout for them, and no retry either.
                address = item_address(name, index)
                self.batch.effects.cancel_timer(timeout_timer(address, item.attempt))
                self.batch.effects.cancel_timer(retry_timer(address, item.attempt))

    # -- ending --------------------------------------------------------------------------------
    def _complete(self) -> None:
        state = self.state
        self.record(
            RunCompleted(
                duration_ms=ms(self.now - state.created_at), output=run_output(state), usage=state.usage
            )
        )

    def end(self, status: str, error: RunError, *, compensate: bool = True) -> None:
        """End the run as ``status`` (not completed) with ``error``: first, unless this is the end of
        compensating, compensate the completed steps that have a compensation."""
        state = self.state
        if compensate:
            done = [
                s
                for s in state.steps
                if s.status == StepStatus.COMPLETED
                and s.reused_from is None
                and self.spec.step(s.name).compensate
            ]
            if done:
                done.sort(
                    key=lambda s: (s.completed_at or state.created_at, state.steps.index(s)), reverse=True
                )
                self.record(RunCompensating(status=status, error=error, queue=[s.name for s in done]))
                self.batch.effects.clear_all = True
                return
        self.record(
            END_EVENT[status](duration_ms=ms(self.now - state.created_at), error=error, usage=state.usage)
        )

    def _compensate(self) -> None:
        """Run the queued compensations one at a time; end the run when all have finished."""
        state = self.state
        failures: list[CompensationFailure] = []
        for name in state.compensation_queue:
            step = state.step(name)
            task = step.compensation if step is not None else None
            if task is None:
                continue
            if task.status == StepStatus.PENDING:
                self._dispatch(compensation_address(name), task, provider_index=0, provider_attempt=1)
                return
            if task.in_flight:
                return
            if task.status == StepStatus.FAILED and task.error is not None:
                failures.append(CompensationFailure(step=name, **msgspec.structs.asdict(task.error)))
        assert state.ending is not None  # set by run.compensating
        error = state.ending.error
        if failures:
            error = msgspec.structs.replace(error, compensation_failures=failures)
        self.end(state.ending.status, error, compensate=False)


def _run_error(step: StepState) -> RunError:
    """The error of a run that ``step``'s failure fails: the step's error, naming the step."""
    error = step.error or StepError(kind="unknown", message="step failed")
    return RunError(step=step.name, **msgspec.structs.asdict(error))


def _estimate(step: Step, key: str) -> Any:
    value = step.config.get(key)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0
