"""The engine's core: start runs and move them on when something happens to them.

Every change to a run follows one pattern (``_update``): take the run's state (cached, or the
projection), fold in what happened, let ``progress.Decider`` record what follows until the run
waits on something, then append the events with the outbox rows, timers and waits they cause in
one transaction, and relay the rows. What can happen to a run: a tool result, a timer firing
(retry back-off, step timeout, run deadline, wait timeout), an outside event a step waits for,
and a cancel request.

Tenants (``tenants.py``): a run's tenant is chosen once, when it starts, and kept in its state; a
request naming a tenant is checked against the state it reads anyway, so no step costs a query more.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec
from omni_contract.events import StepStatus, ToolResult
from omni_contract.history import ReusedStep, RunStarted, StepRef, TriggerRef
from omni_contract.rpc import FieldProblem
from omni_runtime.telemetry import current_traceparent
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram

from omni_engine.batch import Batch
from omni_engine.definition import WorkflowDefinition
from omni_engine.definitions import Definitions, payload_problems
from omni_engine.progress import Decider, result_problem
from omni_engine.relay import OutboxRelay
from omni_engine.state import NewEvent, RunState, apply
from omni_engine.store import AppendConflict, Store
from omni_engine.tenants import scoped, sees
from omni_engine.timer_kinds import DEADLINE_TIMER, AnyTimer, RunDeadline, wait_timer

log = logging.getLogger(__name__)
tracer = trace.get_tracer("omni.workflow-engine")

MAX_APPEND_RETRIES = 20
# The states of runs in progress kept in memory: at most this many bytes (their JSON size).
DEFAULT_CACHE_BYTES = 32 * 1024 * 1024
# Save the run's whole state every this many events (and when it ends); readers fold the rest.
SNAPSHOT_EVERY = 64

# What ``_update``'s callback says: record nothing (stale news), or go on and decide.
Change = Callable[[Decider], bool]


class EngineError(Exception):
    """A request the engine refuses, with an ``omni_contract.rpc`` error code."""

    def __init__(self, code: str, message: str, details: Sequence[FieldProblem] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = list(details)


def utcnow() -> datetime:
    return datetime.now(UTC)


def request_hash(workflow: str, payload: dict[str, Any], context: dict[str, Any]) -> str:
    """What an idempotent start compares: the same key must come with the same request."""
    canonical = msgspec.json.encode(
        {"workflow": workflow, "payload": payload, "context": context}, order="sorted"
    )
    return hashlib.sha256(canonical).hexdigest()


class ResultRefused(Exception):
    """A tool result that answers nothing the engine scheduled: never folded into a run."""


class Rerun(NamedTuple):
    """What a rerun starts from: the old run, the step it reruns from, and the outputs it keeps."""

    run_id: str
    from_step: str
    reused: dict[str, ReusedStep]


class _Pending(NamedTuple):
    change: Change
    cancel_timers: tuple[str, ...]
    future: asyncio.Future[RunState | None]


# The ``workflow`` label of the engine's metrics names at most this many workflows per process;
# the runs of any further one count under OTHER_WORKFLOWS. Every label set lives as long as the
# process (and is in every scrape), and any caller may register workflows by the thousand.
MAX_WORKFLOW_LABELS = 100
OTHER_WORKFLOWS = "other"


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry, max_workflow_labels: int = MAX_WORKFLOW_LABELS) -> None:
        self.max_workflow_labels = max_workflow_labels
        self._workflow_labels: set[str] = set()
        self.runs_started = Counter(
            "omni_engine_runs_started_total", "Runs started", ["workflow"], registry=registry
        )
        self.runs_finished = Counter(
            "omni_engine_runs_finished_total", "Runs finished", ["workflow", "status"], registry=registry
        )
        self.steps = Counter(
            "omni_engine_steps_total", "Step results folded in", ["workflow", "outcome"], registry=registry
        )
        self.timers = Counter(
            "omni_engine_timers_fired_total", "Durable timers fired", ["kind", "outcome"], registry=registry
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

    def workflow(self, name: str) -> str:
        """The ``workflow`` label for ``name``: itself for the first ``max_workflow_labels``
        workflows this process counts, ``other`` for the rest."""
        if name in self._workflow_labels:
            return name
        if len(self._workflow_labels) < self.max_workflow_labels:
            self._workflow_labels.add(name)
            return name
        return OTHER_WORKFLOWS


class Engine:
    def __init__(
        self,
        store: Store,
        definitions: Definitions,
        relay: OutboxRelay,
        metrics: EngineMetrics,
        cache_size: int = 10_000,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        on_timer_set: Callable[[datetime], None] | None = None,
    ) -> None:
        self.store = store
        self.definitions = definitions
        self.relay = relay
        self.metrics = metrics
        # The projection of runs this replica advanced last, so that folding a result does not
        # begin with a read. The append's expected seq still guards it: when another replica (or
        # a concurrent handler) moved the run on, the append conflicts and the state is reloaded.
        # Bounded by count and by bytes (the state's JSON size: payloads and outputs can be large,
        # and runs waiting on a provider stay here until they end).
        self._states: OrderedDict[str, RunState] = OrderedDict()
        self._state_bytes: dict[str, int] = {}
        self.cached_bytes = 0
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        # Tells the timer poller of a timer this replica just set, so it can wake in time.
        self.on_timer_set = on_timer_set
        self._mailbox: dict[str, list[_Pending]] = {}  # changes waiting for a run's transaction
        self._busy: set[str] = set()  # runs with a transaction in flight on this replica

    def _remember(self, state: RunState) -> None:
        self._forget(state.run_id)
        if state.finished:
            return
        size = len(msgspec.json.encode(state))
        if size > self.cache_bytes:
            return
        self._states[state.run_id] = state
        self._state_bytes[state.run_id] = size
        self.cached_bytes += size
        while len(self._states) > self.cache_size or self.cached_bytes > self.cache_bytes:
            oldest, _ = self._states.popitem(last=False)
            self.cached_bytes -= self._state_bytes.pop(oldest)

    def _forget(self, run_id: str) -> RunState | None:
        """Take the run's state out of the cache (None when it is not there)."""
        state = self._states.pop(run_id, None)
        if state is not None:
            self.cached_bytes -= self._state_bytes.pop(run_id)
        return state

    @property
    def cached_runs(self) -> int:
        return len(self._states)

    # -- starting ----------------------------------------------------------------------------
    async def start_run(
        self,
        workflow: str,
        payload: dict[str, Any],
        context: dict[str, Any],
        *,
        run_id: str | None = None,
        origin_key: str | None = None,
        idempotency_key: str | None = None,
        trigger: TriggerRef | None = None,
        spec: WorkflowDefinition | None = None,
        rerun: Rerun | None = None,
        tenant: str | None = None,
    ) -> RunState:
        """Start a run of ``tenant`` (None: the default tenant's, and any workflow may be started):
        idempotent on ``run_id``, on ``origin_key`` (a trigger event) and on ``idempotency_key`` (a
        caller's key, per tenant: the same key with another request is refused). Without ``spec``
        the workflow must be one ``tenant`` sees, else it is ``not_found`` as an unknown one."""
        spec = spec or await self.definitions.current(workflow, tenant)
        if spec is None:
            raise EngineError("not_found", f"unknown workflow '{workflow}'")
        origin_hash = None
        if idempotency_key is not None:
            origin_key = scoped("key", tenant, idempotency_key)
            origin_hash = request_hash(spec.name, payload, context)
            existing = await self._existing_origin(origin_key, origin_hash)
            if existing is not None:
                return existing
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
            budget = spec.guards.budget if spec.guards else None
            deadline = now + timedelta(milliseconds=budget.max_ms) if budget and budget.max_ms else None
            started = NewEvent(
                data=RunStarted(
                    workflow=spec.name,
                    hash=spec.content_hash,
                    version=spec.version,
                    payload=payload,
                    context=context,
                    steps=[StepRef(name=s.name, tool=s.tool) for s in spec.steps],
                    trigger=trigger,
                    deadline_at=deadline,
                    rerun_of=rerun.run_id if rerun else None,
                    rerun_from_step=rerun.from_step if rerun else None,
                    reused=rerun.reused if rerun else None,
                    tenant=tenant,
                ),
                at=now,
            )
            state = apply(None, run_id, started.data, now)
            batch = Batch(state, current_traceparent())
            batch.record(started)
            if deadline is not None:
                batch.effects.timer(DEADLINE_TIMER, deadline, RunDeadline())
            Decider(batch, spec, now).advance()
            state.snapshot_seq = state.last_seq
            batch.seal()
            written = await self.store.create_run(
                state, batch.events, batch.outbox, origin_key, batch.effects, origin_hash
            )
            if written is None:
                existing_state = await self.store.load_run(run_id)
                if existing_state is None and origin_key:
                    existing_state = await self._existing_origin(origin_key, origin_hash)
                # A run id of another tenant's run is answered as one that could not be created:
                # that run is not this caller's to see.
                if existing_state is None or not sees(tenant, existing_state.tenant):
                    raise EngineError("conflict", f"run '{run_id}' could not be created")
                return existing_state
            self.metrics.runs_started.labels(self.metrics.workflow(spec.name)).inc()
            self._after_commit(state, batch)
            await self.relay.publish(written)
            return state

    async def _existing_origin(self, origin_key: str, origin_hash: str | None) -> RunState | None:
        found = await self.store.origin(origin_key)
        if found is None:
            return None
        run_id, stored_hash = found
        if origin_hash is not None and stored_hash is not None and stored_hash != origin_hash:
            raise EngineError(
                "idempotency_mismatch",
                "this Idempotency-Key was first used with a different request (workflow, payload "
                f"or context); it started run '{run_id}'",
                [FieldProblem(field="Idempotency-Key", message="reused with a different request body")],
            )
        return await self.store.load_run(run_id)

    async def rerun(
        self, run_id: str, from_step: str, payload: dict[str, Any] | None, tenant: str | None = None
    ) -> RunState:
        """A new run of the old run's version that reuses the outputs of the steps before
        ``from_step`` (in the order written) which completed in the old run. The new run belongs
        to the old run's tenant; a run ``tenant`` does not see is ``not_found``."""
        old = await self.store.load_run(run_id)
        if old is None or not sees(tenant, old.tenant):
            raise EngineError("not_found", f"unknown run '{run_id}'")
        spec = await self.definitions.get(old.workflow, old.hash)
        if spec is None:
            raise EngineError("not_found", f"definition {old.workflow}@{old.hash} is gone")
        names = [s.name for s in spec.steps]
        if from_step not in names:
            raise EngineError(
                "invalid_payload",
                f"run '{run_id}' has no step '{from_step}'",
                [FieldProblem(field="fromStep", message=f"expected one of {', '.join(names)}")],
            )
        before = set(names[: names.index(from_step)])
        reused = {
            s.name: ReusedStep(output=s.output, provider=s.provider)
            for s in old.steps
            if s.name in before and s.status == StepStatus.COMPLETED
        }
        return await self.start_run(
            old.workflow,
            old.payload if payload is None else payload,
            old.context,
            spec=spec,
            rerun=Rerun(run_id=run_id, from_step=from_step, reused=reused),
            tenant=old.tenant,
        )

    # -- advancing ---------------------------------------------------------------------------
    async def _update(
        self, run_id: str, change: Change, *, cancel_timers: Sequence[str] = ()
    ) -> RunState | None:
        """Apply ``change`` to the run and commit what follows.

        Returns the state after the change, or None when the run is unknown or ``change``
        found nothing to do (news that is stale or already folded in).

        Changes to one run are committed together: while a transaction of the run is in flight
        on this replica, the changes that arrive for it wait in its mailbox, and the next
        transaction takes all of them (a group commit). A thousand results of a fan-out then
        cost a few dozen transactions instead of a thousand, none of which conflict here.
        """
        future: asyncio.Future[RunState | None] = asyncio.get_running_loop().create_future()
        self._mailbox.setdefault(run_id, []).append(_Pending(change, tuple(cancel_timers), future))
        if run_id not in self._busy:
            self._busy.add(run_id)
            try:
                while pending := self._mailbox.pop(run_id, None):
                    try:
                        outcomes = await self._commit(run_id, pending)
                    except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                        for item in pending:
                            item.future.set_exception(exc)
                        continue
                    for item, outcome in zip(pending, outcomes, strict=True):
                        item.future.set_result(outcome)
            finally:
                self._busy.discard(run_id)
        return await future

    async def _commit(self, run_id: str, pending: list[_Pending]) -> list[RunState | None]:
        """One transaction for ``pending``; retried from a fresh state on append conflicts."""
        use_cache = True
        for _ in range(MAX_APPEND_RETRIES):
            # Taken out of the cache while in hand: a concurrent handler of the same run reads it anew.
            cached = self._forget(run_id) if use_cache else None
            state = cached or await self.store.load_run(run_id)
            if state is None:
                return [None] * len(pending)
            spec = await self.definitions.get(state.workflow, state.hash)
            if spec is None:
                raise RuntimeError(f"definition {state.workflow}@{state.hash} is missing")
            expected = state.last_seq
            batch = Batch(state, current_traceparent())
            decider = Decider(batch, spec, utcnow())
            changed: list[bool] = []
            for item in pending:
                for name in item.cancel_timers:
                    batch.effects.cancel_timer(name)
                changed.append(not state.finished and item.change(decider))
            if not any(changed):
                if cached is not None:
                    # Another replica may have moved the run on since this copy was cached, and
                    # with nothing to append no expected seq would tell: judge from the database.
                    use_cache = False
                    continue
                self._remember(state)
                return [None] * len(pending)
            decider.advance()
            batch.seal()
            snapshot = state.finished or state.last_seq - state.snapshot_seq >= SNAPSHOT_EVERY
            if snapshot:
                state.snapshot_seq = state.last_seq
            try:
                written = await self.store.append(
                    state, expected, batch.events, batch.outbox, snapshot=snapshot, effects=batch.effects
                )
            except AppendConflict:
                self.metrics.conflicts.inc()
                continue
            self._after_commit(state, batch)
            await self.relay.publish(written)
            return [state if did else None for did in changed]
        raise RuntimeError(f"run {run_id}: gave up after {MAX_APPEND_RETRIES} append conflicts")

    def _after_commit(self, state: RunState, batch: Batch) -> None:
        if state.finished:
            self.metrics.runs_finished.labels(self.metrics.workflow(state.workflow), state.status).inc()
        self._remember(state)
        earliest = batch.effects.earliest
        if earliest is not None and self.on_timer_set is not None:
            self.on_timer_set(earliest)

    async def on_result(self, result: ToolResult) -> None:
        """Fold a tool result into its run. Duplicates and stale attempts are ignored; a result
        that answers nothing the engine scheduled (no such run, step or attempt, or another
        idempotency key) raises :class:`ResultRefused`."""
        started = time.perf_counter()
        problem: str | None = None
        judged = False

        def take(decider: Decider) -> bool:
            nonlocal problem, judged
            judged = True
            problem = result_problem(decider.state, result)
            return problem is None and decider.take_result(result)

        state = await self._update(result.run_id, take)
        if state is not None:
            outcome = "completed" if result.success else "failed"
            self.metrics.steps.labels(self.metrics.workflow(state.workflow), outcome).inc()
            self.metrics.transition_seconds.observe(time.perf_counter() - started)
            return
        if problem is not None:
            raise ResultRefused(problem)
        if not judged and not await self.store.run_exists(result.run_id):
            raise ResultRefused(f"no run '{result.run_id}'")

    async def on_timer(self, run_id: str, name: str, timer: AnyTimer) -> bool:
        """A durable timer fired. Returns False when it was stale (the run had moved on)."""
        state = await self._update(run_id, lambda decider: decider.timer_fired(timer), cancel_timers=[name])
        self.metrics.timers.labels(timer.kind, "fired" if state is not None else "stale").inc()
        if state is None:
            await self.store.delete_timer(run_id, name)
            return False
        return True

    async def on_wait_event(self, run_id: str, step: str, event: dict[str, Any]) -> bool:
        """An outside event a step waits for arrived (``{"id", "data"}``: the event's id and its
        JSON object): the step completes with its data as output."""
        event_id, data = event["id"], event["data"]
        state = await self._update(
            run_id,
            lambda decider: decider.event_arrived(step, event_id, data),
            cancel_timers=[wait_timer(step)],
        )
        return state is not None

    async def cancel(self, run_id: str, reason: str, tenant: str | None = None) -> RunState:
        """Stop the run: work in flight is abandoned (late results are ignored), compensation
        runs for completed steps, and the run ends as ``cancelled``. A run ``tenant`` does not see
        is ``not_found`` and left alone."""

        def request(decider: Decider) -> bool:
            # Judged on the state the change is applied to: no read more than a cancel makes anyway.
            return sees(tenant, decider.state.tenant) and decider.request_cancel(reason)

        state = await self._update(run_id, request)
        if state is None:
            state = await self.store.load_run(run_id)
            if state is None or not sees(tenant, state.tenant):
                raise EngineError("not_found", f"unknown run '{run_id}'")
        return state


__all__ = ["Engine", "EngineError", "EngineMetrics", "ResultRefused", "request_hash"]
