"""Temporal activities of the benchmark: they return at once, so only orchestration is measured.

Activities run in the benchmark's own process (the worker shares it), so the step clock they tick
is the one the scenario reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import activity

from bench.common import StepClock

CLOCK = StepClock()


@dataclass
class StepInput:
    index: int
    clock_key: str = ""
    """Non-empty: tick :data:`CLOCK` under this key when the step runs."""


@activity.defn
async def step(task: StepInput) -> int:
    if task.clock_key:
        CLOCK.tick(task.clock_key)
    return task.index
