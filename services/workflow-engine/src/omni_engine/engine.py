"""The engine's core: start runs, advance them on tool results, publish through the outbox.

Every change to a run follows one pattern: load the projection, fold in what happened, ask
``state.decide`` what follows until the run waits on something, then append all resulting events
with the outbox rows they cause in one transaction, and relay the rows.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from omni_contract import events as ev
from omni_contract import subjects
from omni_contract.envelope import encode_envelope, new_envelope
from omni_contract.events import RunEventType as E
from omni_contract.events import StepStatus, ToolInvoke, ToolResult
from omni_contract.rpc import FieldProblem
from omni_runtime.telemetry import current_traceparent
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram

from omni_engine.definition import WorkflowDefinition
from omni_engine.definitions import Definitions, payload_problems
from omni_engine.relay import OutboxRelay
from omni_engine.state import (
    CompleteRun,
    FailRun,
    NewEvent,
    RunState,
    ScheduleStep,
    apply,
    decide,
    run_output,
)
from omni_engine.store import AppendConflict, OutboxMessage, Store
from omni_engine.templating import Scope, TemplateError, render

log = logging.getLogger(__name__)
tracer = trace.get_tracer("omni.workflow-engine")

SOURCE = "omni-workflow-engine"
MAX_APPEND_RETRIES = 20
# Save the run's whole state every this many events (and when it ends); readers fold the rest.
SNAPSHOT_EVERY = 64


class EngineError(Exception):
    """A request the engine refuses, with an ``omni_contract.rpc`` error code."""

    def __init__(self, code: str, message: str, details: Sequence[FieldProblem] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = list(details)


def utcnow() -> datetime:
    return datetime.now(UTC)


def idempotency_key(run_id: str, step: str, attempt: int) -> str:
    return f"{run_id}:{step}:{attempt}"


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs_started = Counter(
            "omni_engine_runs_started_total", "Runs started", ["workflow"], registry=registry
        )
        self.runs_finished = Counter(
            "omni_engine_runs_finished_total", "Runs finished", ["workflow", "status"], registry=registry
        )
        self.steps = Counter(
            "omni_engine_steps_total", "Step results folded in", ["workflow", "outcome"], registry=registry
        )
        self.conflicts = Counter(
            "omni_engine_append_conflicts_total", "Optimistic append conflicts (retried)", registry=registry
        )
        self.transition_seconds = Histogram(
            "omni_engine_transition_seconds",
            "Time to fold a result, decide and commit",
            registry=registry,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
        )


class Engine:
    def __init__(
        self,
        store: Store,
        definitions: Definitions,
        relay: OutboxRelay,
        metrics: EngineMetrics,
        cache_size: int = 10_000,
    ) -> None:
        self.store = store
        self.definitions = definitions
        self.relay = relay
        self.metrics = metrics
        # The projection of runs this replica advanced last, so that folding a result does not
        # begin with a read. The append's expected seq still guards it: when another replica (or
        # a concurrent handler) moved the run on, the append conflicts and the state is reloaded.
        self._states: OrderedDict[str, RunState] = OrderedDict()
        self.cache_size = cache_size

    def _remember(self, state: RunState) -> None:
        if state.finished:
            return
        self._states[state.run_id] = state
        self._states.move_to_end(state.run_id)
        while len(self._states) > self.cache_size:
            self._states.popitem(last=False)

    # -- starting ----------------------------------------------------------------------------
    async def start_run(
        self,
        workflow: str,
        payload: dict[str, Any],
        context: dict[str, Any],
        *,
        run_id: str | None = None,
        origin_key: str | None = None,
        trigger: dict[str, Any] | None = None,
    ) -> RunState:
        """Start a run (idempotent on ``run_id`` and on ``origin_key``)."""
        spec = await self.definitions.current(workflow)
        if spec is None:
            raise EngineError("not_found", f"unknown workflow '{workflow}'")
        problems = payload_problems(spec, payload)
        if problems:
            raise EngineError(
                "invalid_payload", f"payload does not match the trigger schema of '{workflow}'", problems
            )
        run_id = run_id or uuid.uuid4().hex
        with tracer.start_as_current_span(
            "run.start", attributes={"omni.run_id": run_id, "omni.workflow": workflow}
        ):
            now = utcnow()
            started = NewEvent(
                type=E.RUN_STARTED,
                at=now,
                data={
                    "workflow": spec.name,
                    "hash": spec.content_hash,
                    "version": spec.version,
                    "payload": payload,
                    "context": context,
                    "steps": [{"name": s.name, "tool": s.tool} for s in spec.steps],
                    **({"trigger": trigger} if trigger else {}),
                },
            )
            state = apply(None, run_id, started.type, started.data, now)
            batch = _Batch(state, current_traceparent())
            batch.record(started)
            self._advance(batch, spec)
            state.snapshot_seq = state.last_seq
            batch.seal()
            written = await self.store.create_run(state, batch.events, batch.outbox, origin_key)
            if written is None:
                existing_state = await self.store.load_run(run_id)
                if existing_state is None and origin_key:
                    existing_id = await self.store.run_id_for_origin(origin_key)
                    existing_state = await self.store.load_run(existing_id) if existing_id else None
                if existing_state is None:
                    raise EngineError("conflict", f"run '{run_id}' could not be created")
                return existing_state
            self.metrics.runs_started.labels(spec.name).inc()
            self._count_finish(state)
            self._remember(state)
            await self.relay.publish(written)
            return state

    # -- advancing ---------------------------------------------------------------------------
    async def on_result(self, result: ToolResult) -> None:
        """Fold a tool result into its run. Duplicates and stale attempts are ignored."""
        started = time.perf_counter()
        for _ in range(MAX_APPEND_RETRIES):
            # Taken out of the cache while in hand: a concurrent handler of the same run reads it anew.
            state = self._states.pop(result.run_id, None) or await self.store.load_run(result.run_id)
            if state is None:
                log.warning("result for unknown run %s (step %s)", result.run_id, result.step)
                return
            step = state.step(result.step)
            if (
                state.finished
                or step is None
                or step.attempt != result.attempt
                or step.status not in (StepStatus.SCHEDULED, StepStatus.RUNNING)
            ):
                return  # a redelivered or superseded result: already folded in
            spec = await self.definitions.get(state.workflow, state.hash)
            if spec is None:
                raise RuntimeError(f"definition {state.workflow}@{state.hash} is missing")
            expected = state.last_seq
            batch = _Batch(state, current_traceparent())
            now = utcnow()
            batch.record(
                NewEvent(
                    type=E.STEP_STARTED,
                    at=result.started_at or now,
                    data={"step": result.step, "attempt": result.attempt, "runner": result.runner},
                ),
            )
            batch.record(_outcome_event(result, now))
            self.metrics.steps.labels(state.workflow, "completed" if result.success else "failed").inc()
            self._advance(batch, spec)
            batch.seal()
            snapshot = state.finished or state.last_seq - state.snapshot_seq >= SNAPSHOT_EVERY
            if snapshot:
                state.snapshot_seq = state.last_seq
            try:
                written = await self.store.append(
                    state, expected, batch.events, batch.outbox, snapshot=snapshot
                )
            except AppendConflict:
                self.metrics.conflicts.inc()
                continue
            self._count_finish(state)
            self._remember(state)
            await self.relay.publish(written)
            self.metrics.transition_seconds.observe(time.perf_counter() - started)
            return
        raise RuntimeError(f"run {result.run_id}: gave up after {MAX_APPEND_RETRIES} append conflicts")

    def _advance(self, batch: _Batch, spec: WorkflowDefinition) -> None:
        """Decide and record until the run waits on something (or ends)."""
        state = batch.state
        while (decision := decide(state)) is not None:
            now = utcnow()
            if isinstance(decision, ScheduleStep):
                self._schedule(batch, spec, decision.step, now)
            elif isinstance(decision, CompleteRun):
                batch.record(
                    NewEvent(
                        type=E.RUN_COMPLETED,
                        at=now,
                        data={
                            "output": run_output(state),
                            "duration_ms": _ms(now - state.created_at),
                            **({"usage": _to_builtins(state.usage)} if state.usage else {}),
                        },
                    )
                )
            elif isinstance(decision, FailRun):
                batch.record(
                    NewEvent(
                        type=E.RUN_FAILED,
                        at=now,
                        data={"error": decision.error, "duration_ms": _ms(now - state.created_at)},
                    )
                )

    def _schedule(self, batch: _Batch, spec: WorkflowDefinition, name: str, now: datetime) -> None:
        state = batch.state
        step_spec = spec.step(name)
        step_state = state.step(name)
        assert step_state is not None
        scope = Scope(
            payload=state.payload,
            context=state.context,
            steps=state.completed_outputs(),
        )
        attempt = step_state.attempt + 1
        try:
            rendered_input = render(step_spec.input, scope)
            rendered_config = render(step_spec.config, scope)
        except TemplateError as exc:
            batch.record(
                NewEvent(
                    type=E.STEP_FAILED,
                    at=now,
                    data={
                        "step": name,
                        "attempt": attempt,
                        "error": {"kind": "template", "message": str(exc)},
                    },
                )
            )
            return
        provider = step_spec.providers[0]
        key = idempotency_key(state.run_id, name, attempt)
        timeout = rendered_config.get("timeout") if isinstance(rendered_config, dict) else None
        invoke = ToolInvoke(
            run_id=state.run_id,
            step=name,
            attempt=attempt,
            tool=step_spec.tool,
            provider=provider,
            input=rendered_input if isinstance(rendered_input, dict) else {"value": rendered_input},
            config=rendered_config if isinstance(rendered_config, dict) else {},
            idempotency_key=key,
            timeout_ms=int(timeout) if isinstance(timeout, int | float) else None,
            workflow=state.workflow,
        )
        batch.record(
            NewEvent(
                type=E.STEP_SCHEDULED,
                at=now,
                data={
                    "step": name,
                    "attempt": attempt,
                    "tool": step_spec.tool,
                    "provider": provider,
                    "idempotency_key": key,
                    "input": invoke.input,
                },
            )
        )
        envelope = new_envelope(
            ev.TOOL_INVOKE_V1, SOURCE, invoke, id_=key, correlation_id=state.run_id, subject=name
        )
        batch.outbox.append(
            OutboxMessage(
                subject=subjects.tool_invoke(provider),
                msg_id=key,
                body=encode_envelope(envelope),
                durable=True,
                traceparent=batch.traceparent,
            )
        )

    def _count_finish(self, state: RunState) -> None:
        if state.finished:
            self.metrics.runs_finished.labels(state.workflow, state.status).inc()


class _Batch:
    """The events and outbox rows of one decision, accumulated against the state they fold into."""

    def __init__(self, state: RunState, traceparent: str | None) -> None:
        self.state = state
        self.traceparent = traceparent
        self.events: list[NewEvent] = []
        self.outbox: list[OutboxMessage] = []

    def record(self, event: NewEvent) -> None:
        if event.type != E.RUN_STARTED:
            apply(self.state, self.state.run_id, event.type, event.data, event.at)
        self.state.last_seq += 1
        self.events.append(event)

    def seal(self) -> None:
        """Add the one progress notice of this decision: its last event, with the run's status.

        One notice per transaction rather than per event halves what observers and JetStream
        handle per step; a notice only says that the history grew up to ``seq``.
        """
        if not self.events:
            return
        last = self.events[-1]
        progress = ev.RunProgress(
            run_id=self.state.run_id,
            workflow=self.state.workflow,
            seq=self.state.last_seq,
            event=last.type,
            status=self.state.status,
            at=last.at,
            step=last.data.get("step"),
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


def _ms(delta: timedelta) -> float:
    return round(delta.total_seconds() * 1000, 3)


def _to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _outcome_event(result: ToolResult, at: datetime) -> NewEvent:
    """``step.completed`` or ``step.failed`` for a tool result."""
    data: dict[str, Any] = {
        "step": result.step,
        "attempt": result.attempt,
        "provider": result.provider,
        "duration_ms": result.duration_ms,
    }
    if not result.success:
        data["error"] = (
            _to_builtins(result.error) if result.error else {"kind": "unknown", "message": "failed"}
        )
        return NewEvent(type=E.STEP_FAILED, at=at, data=data)
    data["output"] = result.output or {}
    if result.usage:
        data["usage"] = _to_builtins(result.usage)
    if result.model:
        data["model"] = result.model
    return NewEvent(type=E.STEP_COMPLETED, at=at, data=data)


__all__ = ["Engine", "EngineError", "EngineMetrics", "idempotency_key"]
