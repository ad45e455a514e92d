"""Temporal workflows of the benchmark: N sequential activities, and N activities in parallel."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from bench.systems.temporal_activities import StepInput, step

STEP_TIMEOUT = timedelta(seconds=120)


@dataclass
class RunInput:
    steps: int
    clock_key: str = ""


@workflow.defn
class Sequential:
    @workflow.run
    async def run(self, request: RunInput) -> int:
        for index in range(request.steps):
            await workflow.execute_activity(
                step, StepInput(index, request.clock_key), start_to_close_timeout=STEP_TIMEOUT
            )
        return request.steps


@workflow.defn
class FanOut:
    @workflow.run
    async def run(self, request: RunInput) -> int:
        results = await asyncio.gather(
            *(
                workflow.execute_activity(step, StepInput(index), start_to_close_timeout=STEP_TIMEOUT)
                for index in range(request.steps)
            )
        )
        return len(results)
