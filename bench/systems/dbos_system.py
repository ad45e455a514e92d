"""DBOS in the benchmarks: DBOS Transact (the ``dbos`` package) in this process, its system
database on the run's PostgreSQL (a database of its own), with async workflows of async steps that
return at once.

Fan-out is idiomatic in DBOS 3: a step call draws its step id when it is called, not when it is
awaited, so ``asyncio.gather`` over step calls inside an async workflow checkpoints each step
under a deterministic id and recovery replays them in the same order.

CPU counted: this process (DBOS runs inside the application) and every process of the
PostgreSQL server (the postmaster's tree: backends, WAL writer, checkpointer). Nothing else uses
that server while DBOS is measured, since systems run one after another.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from dbos import DBOS, DBOSConfig, WorkflowHandleAsync

from bench.common import CpuMeter, StepClock, pipelined, spaced, step_gaps
from bench.systems.base import BenchEnv, Throughput

__all__ = ["DbosSystem", "create_system"]

DATABASE = "bench_dbos"
CLOCK = StepClock()


@DBOS.step()
async def bench_step(index: int, clock_key: str) -> int:
    if clock_key:
        CLOCK.tick(clock_key)
    return index


@DBOS.workflow()
async def sequential(steps: int, clock_key: str) -> int:
    for index in range(steps):
        await bench_step(index, clock_key)
    return steps


@DBOS.workflow()
async def fan_out(width: int) -> int:
    results = await asyncio.gather(*(bench_step(index, "") for index in range(width)))
    return len(results)


class DbosSystem:
    name = "dbos"
    durability = (
        "system database on the run's PostgreSQL: fsync=on, synchronous_commit=on; each workflow start,"
        " step result and workflow result is a commit, fsynced before the workflow goes on"
    )

    def __init__(self) -> None:
        self._meter_trees: list[int] = []
        self._launched = False

    async def start(self, env: BenchEnv) -> None:
        dsn = await asyncio.to_thread(env.pg.create_database, DATABASE)
        config: DBOSConfig = {"name": "omni-bench", "system_database_url": dsn, "log_level": "WARNING"}
        DBOS(config=config)
        DBOS.launch()
        self._launched = True
        self._meter_trees = [env.pg_pid] if env.pg_pid is not None else []

    async def stop(self) -> None:
        if self._launched:
            self._launched = False
            await asyncio.to_thread(DBOS.destroy, workflow_completion_timeout_sec=10)

    # -- helpers

    @staticmethod
    async def _start(steps: int, clock_key: str = "") -> WorkflowHandleAsync[int]:
        return await DBOS.start_workflow_async(sequential, steps, clock_key)

    async def _execute(self, steps: int) -> float:
        began = time.perf_counter()
        handle = await self._start(steps)
        await handle.get_result()
        return time.perf_counter() - began

    # -- scenarios

    async def latency(self, runs: int) -> list[float]:
        return [await self._execute(5) for _ in range(runs)]

    async def sparse(self, runs: int, gap_s: float) -> list[float]:
        return await spaced(runs, gap_s, lambda _: self._execute(5))

    async def throughput(self, workflows: int) -> Throughput:
        meter = CpuMeter(trees=self._meter_trees)

        async def start(index: int) -> WorkflowHandleAsync[int]:
            return await self._start(5)

        async def wait(handle: WorkflowHandleAsync[int]) -> None:
            await handle.get_result()

        meter.start()
        wall = await pipelined(workflows, start, wait)
        cpu = meter.stop()
        return Throughput(
            workflows=workflows,
            steps=workflows * 5,
            wall_s=wall,
            cpu_s=cpu if self._meter_trees else None,
        )

    async def long_history(self, steps: int) -> list[float]:
        key = uuid.uuid4().hex
        began = time.perf_counter()
        handle = await self._start(steps, key)
        await handle.get_result()
        ticks = CLOCK.take(key)
        if len(ticks) != steps:
            raise RuntimeError(f"{len(ticks)} of {steps} steps ran")
        return step_gaps(began, ticks)

    async def fan_out(self, width: int) -> float | None:
        began = time.perf_counter()
        handle = await DBOS.start_workflow_async(fan_out, width)
        if await handle.get_result() != width:
            raise RuntimeError("fan-out returned the wrong number of results")
        return time.perf_counter() - began

    async def gateway(
        self, clients: int, duration_s: float, *, authenticated: bool = True
    ) -> tuple[list[float], int] | None:
        return None  # DBOS is a library: it has no HTTP execute-and-wait endpoint of its own


def create_system() -> DbosSystem:
    return DbosSystem()
