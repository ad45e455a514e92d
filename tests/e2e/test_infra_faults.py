"""PostgreSQL or NATS killed (kill -9) under ``omni run``'s supervisor while runs are in flight.

The stack runs its own embedded servers on free ports, as ``omni run`` does, so that it owns and
supervises them. The killed server's port is held for a few seconds, so the supervisor's first
tries fail (it backs off and tries again) and tool results arrive while the server is away. Then
the supervisor starts it again, every run completes, each step's side effect happened exactly once
at the provider, nothing was dead-lettered, and the outage was logged as warnings, not tracebacks.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from omni_contract import streams
from omni_contract.events import RunStatus
from omni_devstack.procfs import process_state as _process_state
from omni_devstack.servers import NatsServer, PostgresServer, free_port
from omni_devstack.supervisor import Stack, StackConfig
from omni_testkit import wait_for

from .stacks import ROOT
from .test_bilingual_coach import STEPS, payload, sim

pytestmark = pytest.mark.e2e

RUNS = 6
# The translation of every run is slow, so each run is in flight when the server is killed and its
# result reaches the engine while the server is away.
SLOW_STEP_MS = 2500
HELD_S = 4.0  # how long NATS stays away (longer than the slow step: its results wait for it)


@pytest.fixture
def own_stack(world_tmp: Path) -> Iterator[Stack]:
    stack = Stack(
        StackConfig(
            home=world_tmp / "home",
            http_port=free_port(),
            nats_port=free_port(),
            pg_port=free_port(),
            workflows_dir=ROOT / "workflows",
            integrations_dir=None,
            simulate=True,
            log_dir=world_tmp / "logs",
            extra_env={"OMNI_TOOLRUNNER_ACK_WAIT_S": "3"},
        )
    )
    try:
        stack.start(ready_timeout=120)
        yield stack
    finally:
        stack.stop()
        for log in sorted((world_tmp / "logs").glob("*.log")):
            print(f"----- {log.name} (last 40 lines)")  # shown by pytest only when the test failed
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))


class PortHolder:
    """Takes a dead server's port and closes every connection made to it at once: clients meet a
    server that is not there, and the supervisor's restart on that port fails as 'in use' (and
    backs off) until :meth:`release`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.refused = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def grab(self, timeout: float) -> bool:
        """Bind the port as soon as the dead server has let it go; False when something else
        (the restarted server) holds it after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # its connections linger in TIME_WAIT
        while True:
            try:
                sock.bind(("127.0.0.1", self.port))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    sock.close()
                    raise
                if time.monotonic() > deadline:
                    sock.close()
                    return False
            time.sleep(0.001)  # the killed server is still closing its socket
        sock.listen(64)
        sock.settimeout(0.05)
        self._sock = sock
        self._thread = threading.Thread(target=self._close_everything, daemon=True)
        self._thread.start()
        return True

    def _close_everything(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            conn.close()
            self.refused += 1

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()


async def kill_and_hold_its_port(server: NatsServer | PostgresServer) -> tuple[int, PortHolder]:
    """kill -9 the server and take its port before the supervisor can start it again. The
    supervisor looks every 0.2 s: when it was quicker all the same, kill the new server too."""
    for _ in range(5):
        pid: int = await wait_for(lambda: server.pid, timeout=60, message="server running")
        holder = PortHolder(server.port)
        os.kill(pid, signal.SIGKILL)
        if holder.grab(timeout=3.0):
            return pid, holder
    raise AssertionError("the supervisor restarted the server before its port could be held, 5 times")


async def start_runs(client: httpx.AsyncClient) -> list[str]:
    async def one(i: int) -> str:
        response = await client.post(
            "/workflows/bilingual-coach/execute",
            params={"wait": "false"},
            json={"payload": payload(sessionId=f"fault-{i}")},
        )
        assert response.status_code == 202, response.text
        run_id: str = response.json()["runId"]
        return run_id

    return list(await asyncio.gather(*(one(i) for i in range(RUNS))))


async def all_completed(client: httpx.AsyncClient, run_ids: list[str]) -> list[dict[str, Any]]:
    async def every_run() -> list[dict[str, Any]] | None:
        runs = []
        for run_id in run_ids:
            response = await client.get(f"/runs/{run_id}")
            if response.status_code == 503:
                return None  # still recovering
            assert response.status_code == 200, response.text
            run: dict[str, Any] = response.json()
            if run["status"] not in RunStatus.TERMINAL:
                return None
            runs.append(run)
        return runs

    runs: list[dict[str, Any]] = await wait_for(every_run, timeout=120, interval=0.25, message="runs ended")
    return runs


async def translating(stack: Stack) -> bool:
    """Every run's (slow) translation has reached the provider."""
    return bool((await sim(stack, "/_sim/stats"))["by_schema"].get("mt_translate", 0) >= RUNS)


async def results_held_by_the_engine(stack: Stack) -> bool:
    """Every translation's result is kept, unacknowledged, while PostgreSQL is away: some in the
    engine's hands (the batch it retries), the rest still in the stream behind it."""
    nc = await nats.connect(stack.admin_nats_url)
    try:
        info = await nc.jetstream().consumer_info(
            streams.ENGINE_RESULTS.stream, streams.ENGINE_RESULTS.durable
        )
    finally:
        await nc.close()
    return bool(info.num_ack_pending + info.num_pending >= RUNS)


async def assert_each_side_effect_once(stack: Stack, client: httpx.AsyncClient, run_ids: list[str]) -> None:
    runs = await all_completed(client, run_ids)
    assert [r["status"] for r in runs] == [RunStatus.COMPLETED] * RUNS, [r.get("error") for r in runs]
    stats = await sim(stack, "/_sim/stats")
    for run_id in run_ids:
        performed = {k for k in stats["by_key"] if k.startswith(f"{run_id}:")}
        assert {k.split(":")[1] for k in performed} == set(STEPS), performed
        assert len(performed) == len(STEPS), performed  # one attempt per step
    # One side effect per step of every run: a repeated call (a redelivery) was answered from the
    # provider's idempotency cache, not performed again.
    assert stats["side_effects"] == RUNS * len(STEPS)
    letters = await client.get("/deadletters", params={"limit": 50})
    assert letters.status_code == 200, letters.text
    assert letters.json()["deadLetters"] == []


def engine_tracebacks(stack: Stack) -> list[str]:
    """The engine's log lines that carry a traceback (its log is JSON lines)."""
    assert stack.config.log_dir is not None
    log = (stack.config.log_dir / "workflow-engine-1.log").read_text(errors="replace")
    return [line[:3000] for line in log.splitlines() if "Traceback" in line]


async def test_postgres_killed_with_runs_in_flight_is_restarted_and_every_run_completes_once(
    own_stack: Stack,
) -> None:
    stack = own_stack
    assert stack.postgres is not None
    await sim(
        stack, "/_sim/faults", {"match": {"schema": "mt_translate"}, "delay_ms": SLOW_STEP_MS, "times": RUNS}
    )
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers=stack.auth_headers, timeout=30
    ) as client:
        run_ids = await start_runs(client)
        await wait_for(lambda: translating(stack), timeout=60, interval=0.05, message="every run translating")
        port = stack.postgres.port
        killed_at = time.monotonic()
        pid, holder = await kill_and_hold_its_port(stack.postgres)
        restarts = stack.restarts()["PostgreSQL"]
        try:
            # The supervisor reaps the dead postmaster (no zombie left to hold postmaster.pid).
            await wait_for(lambda: _process_state(pid) is None, timeout=10, message="postmaster reaped")

            # While PostgreSQL is away the gateway answers 503 with Retry-After, not 500.
            async def answer_in_outage() -> httpx.Response | None:
                response = await client.get(f"/runs/{run_ids[0]}")
                return None if response.status_code == 200 else response  # 200: read before the kill

            response = await wait_for(answer_in_outage, timeout=20, interval=0.1, message="not 200")
            assert response is not None
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) > 0
            assert response.json()["error"]["code"] == "unavailable"
            # The slow translations are answered while the database is away: their results are
            # kept (none acknowledged) until the engine can record them.
            await wait_for(lambda: results_held_by_the_engine(stack), timeout=30, interval=0.2)
        finally:
            holder.release()
        await wait_for(
            lambda: stack.restarts()["PostgreSQL"] > restarts, timeout=30, message="PostgreSQL restarted"
        )
        outage_s = time.monotonic() - killed_at
        await assert_each_side_effect_once(stack, client, run_ids)
    assert stack.postgres.port == port
    assert engine_tracebacks(stack) == []
    stats = await sim(stack, "/_sim/stats")
    print(f"PostgreSQL outage {outage_s:.1f}s, {RUNS} runs in flight, side effects {stats['side_effects']}")


async def test_nats_killed_with_runs_in_flight_is_restarted_and_every_run_completes_once(
    own_stack: Stack,
) -> None:
    stack = own_stack
    assert stack.nats is not None
    await sim(
        stack, "/_sim/faults", {"match": {"schema": "mt_translate"}, "delay_ms": SLOW_STEP_MS, "times": RUNS}
    )
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers=stack.auth_headers, timeout=30
    ) as client:
        run_ids = await start_runs(client)
        await wait_for(lambda: translating(stack), timeout=60, interval=0.05, message="every run translating")
        port = stack.nats.port
        killed_at = time.monotonic()
        pid, holder = await kill_and_hold_its_port(stack.nats)
        restarts = stack.restarts()["NATS"]
        try:
            await wait_for(lambda: _process_state(pid) is None, timeout=10, message="nats-server reaped")
            # Without NATS the gateway cannot reach the engine: 503 with Retry-After, not 500.
            response = await client.get(f"/runs/{run_ids[0]}")
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) > 0
            # The outage outlasts the slow translations: their results cannot be published yet.
            await wait_for(lambda: time.monotonic() - killed_at >= HELD_S, timeout=HELD_S + 1)
        finally:
            holder.release()
        await wait_for(lambda: stack.restarts()["NATS"] > restarts, timeout=30, message="NATS restarted")
        outage_s = time.monotonic() - killed_at
        await assert_each_side_effect_once(stack, client, run_ids)
    assert stack.nats.port == port
    assert engine_tracebacks(stack) == []
    stats = await sim(stack, "/_sim/stats")
    print(f"NATS outage {outage_s:.1f}s, {RUNS} runs in flight, side effects {stats['side_effects']}")
