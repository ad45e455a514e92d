"""What a failed attempt leads to: a retry on the same provider, the next provider of the chain,
or the task's failure for good.

- An error kind the step's retry policy retries is retried on the same provider while attempts
  are left there, after a back-off (exponential, with jitter; longer when the provider asked for
  it with Retry-After) kept by a durable timer.
- Then the call falls back to the next provider of the chain, unless the error is one no provider
  can mend (the request itself is wrong).
- An attempt with a ``config.timeout`` whose result has not come when its timer fires has failed
  with kind ``timeout``.
- A task that still fails has failed: an item fails its ``for_each`` step, a compensation is
  noted for the run's end, and a step is handled by its ``on_error``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import msgspec
from omni_contract.history import StepError, StepFailed, StepFallback, StepRetrying, StepTimedOut

from omni_engine.definition import NEVER_RETRY
from omni_engine.state import TaskState, compensation_address, item_address, item_index, step_of
from omni_engine.timer_kinds import AttemptTimeout, RetryDue, retry_timer, timeout_timer
from omni_engine.tool_calls import chain_of

if TYPE_CHECKING:
    from omni_engine.progress import Decider

# Errors after which switching provider cannot help either: the request itself is wrong.
NO_FALLBACK = NEVER_RETRY


def attempt_failed(decider: Decider, address: str, error: StepError) -> None:
    """A tool call failed: retry it, fall back to the next provider, or fail the task."""
    task = decider.state.task(address)
    assert task is not None
    spec_step, chain, *_ = chain_of(decider, address)
    policy = decider.spec.retry_policy(spec_step)
    kind = error.kind
    provider = task.provider or chain[task.provider_index]
    if policy.retries(kind) and task.provider_attempt < policy.max_attempts:
        delay = policy.interval_ms(task.provider_attempt)
        if policy.jitter:
            delay *= 1 + policy.jitter * (2 * decider.rng() - 1)
        retry_after = error.retry_after_s
        if retry_after is not None and retry_after * 1000 > delay:
            delay = float(retry_after) * 1000
        retry_at = decider.now + timedelta(milliseconds=delay)
        decider.record(
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
        decider.batch.effects.timer(
            retry_timer(address, task.attempt), retry_at, RetryDue(step=address, attempt=task.attempt)
        )
        return
    if kind not in NO_FALLBACK and task.provider_index + 1 < len(chain):
        target = chain[task.provider_index + 1]
        decider.record(
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
        decider.dispatch(address, task, provider_index=task.provider_index + 1, provider_attempt=1)
        return
    final_failure(decider, address, error, attempt=task.attempt)


def retry_due(decider: Decider, address: str, task: TaskState) -> None:
    """A back-off timer fired: the next attempt on the same provider."""
    decider.dispatch(
        address, task, provider_index=task.provider_index, provider_attempt=task.provider_attempt + 1
    )


def timed_out(decider: Decider, address: str, task: TaskState, timer: AttemptTimeout) -> None:
    """The attempt's timeout timer fired before its result came: ``step.timed_out``, a failure."""
    error = StepError(kind="timeout", message=f"no result within {timer.timeout_ms} ms (config.timeout)")
    decider.record(StepTimedOut(step=address, attempt=task.attempt, error=error))
    attempt_failed(decider, address, error)


def final_failure(decider: Decider, address: str, error: StepError, *, attempt: int) -> None:
    """No retry or fallback is left for the task at ``address``: it has failed."""
    name = step_of(address)
    if address == name:
        fail_step(decider, name, error, attempt=attempt)
        return
    decider.record(StepFailed(step=address, attempt=attempt, error=error))
    if address == compensation_address(name):
        return  # the compensation pass moves on to the next one
    index = item_index(address)
    fail_step(
        decider, name, msgspec.structs.replace(error, item=index, message=f"item {index}: {error.message}")
    )


def fail_step(decider: Decider, name: str, error: StepError, *, attempt: int | None = None) -> None:
    """Step ``name`` has failed: recorded with its ``on_error`` handling, which the main loop
    carries out (the run fails, goes on, or runs the handler step)."""
    handling = decider.spec.step(name).on_error
    decider.record(StepFailed(step=name, error=error, handling=handling, attempt=attempt))
    for index, item in enumerate(decider.state.step(name).items or ()):  # type: ignore[union-attr]
        if item.in_flight:
            # Its items in flight are abandoned: no timeout for them, and no retry either.
            address = item_address(name, index)
            decider.batch.effects.cancel_timer(timeout_timer(address, item.attempt))
            decider.batch.effects.cancel_timer(retry_timer(address, item.attempt))
