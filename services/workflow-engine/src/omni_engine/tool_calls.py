"""A task's tool call: its provider chain and templates, the budget it needs, ``step.scheduled``,
the invocation written to the outbox and the timer of its ``config.timeout``.

``text-only`` ends a provider chain: the call is not sent, the step completes with its own
``text`` input, marked as degraded. A call the run's remaining budget cannot cover is not sent
either: the run ends as ``budget_exceeded``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from omni_contract import events as ev
from omni_contract import subjects
from omni_contract.envelope import encode_envelope, new_envelope
from omni_contract.events import RunStatus, StepStatus, ToolInvoke
from omni_contract.history import BudgetLimit, BudgetUsed, RunError, StepCompleted, StepError, StepScheduled

from omni_engine.batch import SOURCE
from omni_engine.definition import TEXT_ONLY, Step
from omni_engine.state import TaskState, compensation_address, item_index, step_of
from omni_engine.store import OutboxMessage
from omni_engine.templating import TemplateError, render
from omni_engine.timer_kinds import AttemptTimeout, timeout_timer

if TYPE_CHECKING:
    from omni_engine.progress import Decider

DISPATCHED = (StepStatus.SCHEDULED, StepStatus.RUNNING)  # a tool call is out: a result may come


def idempotency_key(run_id: str, address: str, attempt: int) -> str:
    return f"{run_id}:{address}:{attempt}"


def chain_of(decider: Decider, address: str) -> tuple[Step, list[str], str, dict[str, Any], dict[str, Any]]:
    """For a task: its step's definition, provider chain, tool, input and config templates."""
    spec_step = decider.spec.step(step_of(address))
    if address == compensation_address(spec_step.name):
        comp = spec_step.compensate
        assert comp is not None
        return spec_step, list(comp.providers), comp.tool, comp.input, comp.config
    assert spec_step.tool is not None
    return (
        spec_step,
        decider.spec.provider_chain(spec_step),
        spec_step.tool,
        spec_step.input,
        spec_step.config,
    )


def send(
    decider: Decider, address: str, task: TaskState, *, provider_index: int, provider_attempt: int
) -> None:
    """Send ``task``'s next attempt to the ``provider_index``-th provider of its chain (its
    ``provider_attempt``-th attempt there)."""
    state = decider.state
    spec_step, chain, tool, input_template, config_template = chain_of(decider, address)
    is_compensation = address == compensation_address(spec_step.name)
    if not is_compensation:
        problem = _budget_problem(decider, spec_step, task)
        if problem is not None:
            decider.end(RunStatus.BUDGET_EXCEEDED, problem)
            return
    index: int | None = None
    item: Any = None
    if address != spec_step.name and not is_compensation:
        index = item_index(address)
        parent = state.step(spec_step.name)
        assert parent is not None
        assert parent.item_values is not None
        item = parent.item_values[index]
    provider = chain[provider_index]
    attempt = task.attempt + 1
    try:
        scope = decider.scope(item, index)
        rendered_input = render(input_template, scope)
        rendered_config = render(config_template, scope)
    except TemplateError as exc:
        decider.final_failure(address, StepError(kind="template", message=str(exc)), attempt=attempt)
        return
    if not isinstance(rendered_input, dict):
        rendered_input = {"value": rendered_input}
    key = idempotency_key(state.run_id, address, attempt)
    timeout = rendered_config.get("timeout") if isinstance(rendered_config, dict) else None
    timeout_ms = int(timeout) if isinstance(timeout, int | float) and not isinstance(timeout, bool) else None
    decider.record(
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
        decider.record(
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
        unique_key=True,  # (run, step, attempt), published with Nats-Msg-Id = key: see ToolInvoke
    )
    envelope = new_envelope(
        ev.TOOL_INVOKE_V1, SOURCE, invoke, id_=key, correlation_id=state.run_id, subject=address
    )
    batch = decider.batch
    batch.outbox.append(
        OutboxMessage(
            subject=subjects.tool_invoke(provider),
            msg_id=key,
            body=encode_envelope(envelope),
            durable=True,
            traceparent=batch.traceparent,
        )
    )
    if timeout_ms is not None:
        batch.effects.timer(
            timeout_timer(address, attempt),
            decider.now + timedelta(milliseconds=timeout_ms),
            AttemptTimeout(step=address, attempt=attempt, timeout_ms=timeout_ms),
        )


def _budget_problem(decider: Decider, spec_step: Step, task: TaskState) -> RunError | None:
    """Why the run cannot afford this call of ``task``: its remaining tokens or cost do not
    cover the step's estimate (``config.maxTokens`` / ``config.maxCost``, else anything at
    all) with the estimates of the other calls in flight set aside (one per ``for_each``
    item in flight). ``task`` itself holds nothing: a retry or fallback replaces its call."""
    spec, state = decider.spec, decider.state
    budget = spec.guards.budget if spec.guards else None
    if budget is None or (budget.max_tokens is None and budget.max_cost is None):
        return None
    usage = state.usage
    used_tokens = usage.total_tokens if usage else 0
    used_cost = usage.cost if usage else 0.0
    held_tokens, held_cost = 0, 0.0
    for other in state.steps:
        if not other.in_flight or other is task:
            continue
        calls = 1 if other.items is None else sum(1 for i in other.items if i.in_flight and i is not task)
        other_spec = spec.step(other.name)
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
            short.append(f"cost: {used_cost:g} used of {budget.max_cost:g}, the step may need {need_cost:g}")
    if not short:
        return None
    return RunError(
        kind="budget",
        step=spec_step.name,
        message=f"the budget cannot cover step {spec_step.name} ({'; '.join(short)})",
        used=BudgetUsed(tokens=used_tokens, cost=used_cost),
        limit=BudgetLimit(max_tokens=budget.max_tokens, max_cost=budget.max_cost),
    )


def _estimate(step: Step, key: str) -> Any:
    value = step.config.get(key)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0
