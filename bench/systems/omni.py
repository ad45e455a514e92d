"""Omni in the benchmarks: the real services as processes (the ``Stack`` behind ``make run``), on
the run's embedded NATS and PostgreSQL, with workflows whose steps are ``util.echo`` on the
``local`` provider: each step is a real invoke through JetStream, a real tool-runner and a real
result folded into PostgreSQL, so what is measured is orchestration."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import psutil
from nats.aio.client import Client as NATS
from omni_contract import events as ev
from omni_contract import rpc, subjects
from omni_contract.envelope import decode_envelope, encode, payload_of
from omni_devstack.servers import free_port
from omni_devstack.supervisor import ServiceProcess, ServiceSpec, Stack, StackConfig, http_get

from bench.common import spaced
from bench.systems.base import BenchEnv, Throughput

SEQ5 = "bench-seq-5"


def sequential_workflow(name: str, steps: int) -> str:
    lines = [
        f"name: {name}",
        "description: benchmark workflow of sequential echo steps",
        "version: 1.0.0",
        "trigger:",
        f"  event: app.bench.{name.replace('-', '_')}",
        "  payload:",
        "    n: integer",
        "steps:",
    ]
    for i in range(steps):
        source = "${trigger.payload.n}" if i == 0 else f"${{steps.s{i - 1}.output.n}}"
        lines += [
            f"  - name: s{i}",
            "    tool: util.echo",
            "    provider: local",
            "    input:",
            f'      n: "{source}"',
            "    output:",
            "      n: integer",
        ]
    return "\n".join(lines) + "\n"


def fan_out_workflow(name: str, width: int) -> str:
    return (
        "\n".join(
            [
                f"name: {name}",
                "description: benchmark workflow of parallel echo steps",
                "version: 1.0.0",
                "trigger:",
                f"  event: app.bench.{name.replace('-', '_')}",
                "  payload:",
                "    n: array",
                "steps:",
                "  - name: fan",
                '    for_each: "${trigger.payload.n}"',
                f"    concurrency: {width}",
                "    tool: util.echo",
                "    provider: local",
                "    input:",
                '      n: "${item}"',
            ]
        )
        + "\n"
    )


class OmniSystem:
    name = "omni"
    durability = (
        "PostgreSQL fsync=on, synchronous_commit=on (every transition commits before its messages are"
        " published); JetStream file store, default sync (acknowledged when written, fsync every 2 min)"
    )

    def __init__(self, local_runners: int = 1, engines: int = 1) -> None:
        self.local_runners = local_runners
        self.engines = engines
        self.stack: Stack | None = None
        self.nc: NATS | None = None
        self.workdir: Path | None = None
        self.server_pids: list[int] = []

    async def start(self, env: BenchEnv) -> None:
        workflows = env.workdir / "omni-workflows"
        workflows.mkdir(parents=True, exist_ok=True)
        (workflows / f"{SEQ5}.yaml").write_text(sequential_workflow(SEQ5, 5))
        database_url = env.pg.create_database("bench_omni")
        self.stack = Stack(
            StackConfig(
                home=env.workdir / "omni-home",
                http_port=free_port(),
                nats_url=env.nats_url,
                database_url=database_url,
                workflows_dir=workflows,
                engine_replicas=self.engines,
                runner_replicas=0,
                local_runner_replicas=self.local_runners,
                integrations_dir=None,  # only what the scenarios use runs (and is measured)
                simulate=False,
                log_dir=env.workdir / "omni-logs",
                extra_env={"OMNI_LOG_LEVEL": "WARNING"},
            )
        )
        await asyncio.to_thread(self.stack.start, 90.0)
        self.server_pids = [pid for pid in (env.nats_pid, env.pg_pid) if pid is not None]
        self.nc = await nats.connect(env.nats_url)

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.close()
        if self.stack is not None:
            await asyncio.to_thread(self.stack.stop)

    # -- helpers -------------------------------------------------------------------------------
    async def _rpc(self, subject: str, request: Any) -> bytes:
        """Call an engine endpoint; the raw JSON result."""
        assert self.nc is not None
        answer = await self.nc.request(subject, encode(request), timeout=30)
        reply = msgspec.json.decode(answer.data, type=rpc.RpcReply)
        if reply.error is not None:
            raise RuntimeError(f"{subject}: {reply.error.message}")
        return bytes(reply.result)

    async def _start(self, workflow: str, n: int | list[int], run_id: str) -> None:
        await self._rpc(
            subjects.ENGINE_RUNS_START,
            rpc.StartRunRequest(workflow=workflow, payload={"n": n}, run_id=run_id),
        )

    async def _run_and_wait(self, workflow: str, n: int | list[int]) -> float:
        """Start one run and wait for its terminal notice; seconds from start request to notice."""
        assert self.nc is not None
        run_id = uuid.uuid4().hex
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def on_notice(msg: Any) -> None:
            progress = payload_of(decode_envelope(msg.data), ev.RunProgress)
            if progress.status in ev.RunStatus.TERMINAL and not done.done():
                done.set_result(progress.status)

        sub = await self.nc.subscribe(subjects.run_events_of(run_id), cb=on_notice)
        try:
            started = time.perf_counter()
            await self._start(workflow, n, run_id)
            status = await asyncio.wait_for(done, timeout=600)
            elapsed = time.perf_counter() - started
        finally:
            await sub.unsubscribe()
        if status != ev.RunStatus.COMPLETED:
            raise RuntimeError(f"run {run_id} ended {status}")
        return elapsed

    def _own_processes(self) -> list[psutil.Process]:
        """The engine and tool-runners, NATS, and PostgreSQL with its backends (as DBOS counts it)."""
        assert self.stack is not None
        procs = [
            psutil.Process(p.pid)
            for p in self.stack.processes.values()
            if p.pid is not None and p.running() and p.name != "gateway"
        ]
        for pid in self.server_pids:
            server = psutil.Process(pid)
            procs += [server, *server.children(recursive=True)]
        return procs

    # -- scenarios -----------------------------------------------------------------------------
    async def latency(self, runs: int) -> list[float]:
        for _ in range(min(20, runs)):
            await self._run_and_wait(SEQ5, 1)  # warm-up
        return [await self._run_and_wait(SEQ5, i) for i in range(runs)]

    async def sparse(self, runs: int, gap_s: float) -> list[float]:
        # Idle before each run: the engine's pull requests (2 s) expire and are re-issued meanwhile.
        return await spaced(runs, gap_s, lambda i: self._run_and_wait(SEQ5, i))

    async def throughput(self, workflows: int) -> Throughput:
        assert self.nc is not None
        finished = 0
        failed = 0
        all_done = asyncio.Event()

        async def on_end(msg: Any) -> None:
            nonlocal finished, failed
            progress = payload_of(decode_envelope(msg.data), ev.RunProgress)
            if progress.workflow != SEQ5:
                return
            finished += 1
            failed += progress.status != ev.RunStatus.COMPLETED
            if finished >= workflows:
                all_done.set()

        subs = [
            await self.nc.subscribe(subjects.run_events_of_type(ev.RunEventType.RUN_COMPLETED), cb=on_end),
            await self.nc.subscribe(subjects.run_events_of_type(ev.RunEventType.RUN_FAILED), cb=on_end),
        ]
        procs = self._own_processes()
        cpu_before = sum(_cpu(p) for p in procs)
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with semaphore:
                await self._start(SEQ5, i, uuid.uuid4().hex)

        await asyncio.gather(*(one(i) for i in range(workflows)))
        await asyncio.wait_for(all_done.wait(), timeout=1200)
        wall = time.perf_counter() - started
        cpu = sum(_cpu(p) for p in procs) - cpu_before
        for sub in subs:
            await sub.unsubscribe()
        if failed:
            raise RuntimeError(f"{failed} of {workflows} runs failed")
        return Throughput(workflows=workflows, steps=workflows * 5, wall_s=wall, cpu_s=cpu)

    async def long_history(self, steps: int) -> list[float]:
        assert self.nc is not None
        name = f"bench-long-{steps}"
        source = sequential_workflow(name, steps)
        await self._rpc(subjects.ENGINE_WORKFLOWS_REGISTER, rpc.RegisterWorkflowRequest(source=source))
        await self._run_and_wait(name, 0)
        # Per-step latency from the recorded history: the time between consecutive step completions.
        page = msgspec.json.decode(
            await self._rpc(subjects.ENGINE_RUNS_LIST, rpc.ListRunsRequest(workflow=name, limit=1)),
            type=rpc.RunPage,
        )
        completed = [s.completed_at for s in page.runs[0].steps if s.completed_at is not None]
        return [(b - a).total_seconds() for a, b in itertools.pairwise(completed)]

    async def fan_out(self, width: int) -> float | None:
        """One run whose ``for_each`` step calls the tool once per item, all items at once."""
        name = f"bench-fan-{width}"
        await self._rpc(
            subjects.ENGINE_WORKFLOWS_REGISTER,
            rpc.RegisterWorkflowRequest(source=fan_out_workflow(name, width)),
        )
        return await self._run_and_wait(name, list(range(width)))

    async def gateway(
        self, clients: int, duration_s: float, *, authenticated: bool = True
    ) -> tuple[list[float], int] | None:
        assert self.stack is not None
        if authenticated:
            return await self._load_gateway(
                self.stack.gateway_url, self.stack.auth_headers, clients, duration_s
            )
        # A second gateway, for this scenario only, that lets every request in unchecked.
        port = free_port()
        spec = ServiceSpec(
            "gateway-unauthenticated",
            "omni_gateway.main",
            env={"OMNI_GATEWAY_HTTP_PORT": str(port), "OMNI_GATEWAY_INSECURE_NO_AUTH": "1"},
        )
        process = ServiceProcess(spec, self.stack.base_env(), self.stack.config.log_dir)
        process.start()
        url = f"http://127.0.0.1:{port}"
        try:
            await asyncio.to_thread(_wait_ready, url, process)
            return await self._load_gateway(url, {}, clients, duration_s)
        finally:
            process.signal(signal.SIGTERM)
            if not await asyncio.to_thread(process.wait, 10.0):
                process.kill()
            process.close_log()

    async def _load_gateway(
        self, url: str, headers: dict[str, str], clients: int, duration_s: float
    ) -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + duration_s
        # aiohttp's client, not httpx: with 50 clients httpx's own CPU made the load generator the
        # busiest process on the machine, measuring the client rather than the gateway.
        connector = aiohttp.TCPConnector(limit=clients)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(
            url, connector=connector, timeout=timeout, headers=headers
        ) as session:

            async def worker(k: int) -> None:
                nonlocal errors
                i = 0
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    try:
                        async with session.post(
                            f"/workflows/{SEQ5}/execute", json={"payload": {"n": k * 1_000_000 + i}}
                        ) as response:
                            body = await response.json()
                            ok = response.status == 200 and body["status"] == "completed"
                    except (aiohttp.ClientError, TimeoutError):
                        ok = False
                    if ok:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1
                    i += 1

            await asyncio.gather(*(worker(k) for k in range(clients)))
        return latencies, errors


def _wait_ready(url: str, process: ServiceProcess, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.running():
            raise RuntimeError(f"{process.name} exited during start-up")
        if http_get(url + "/readyz")[0] == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} was not ready within {timeout_s:.0f} s")


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


SYSTEM = OmniSystem
