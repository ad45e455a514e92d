"""``omni run`` (what ``make run`` calls) on embedded servers: it serves the gateway, says that
providers are simulated, and stops everything on SIGTERM within 10 seconds."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from omni_devstack.servers import free_port
from omni_testkit import wait_for
from omni_testkit.processes import live_pids, process_tree

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def omni_run(home: Path, http_port: int, log: Path) -> subprocess.Popen[bytes]:
    unset = {
        "NATS_URL",
        "DATABASE_URL",
        "OPENROUTER_API_KEY",
        "GITHUB_TOKEN",
        "ZAPIER_HOOK_URL",
        "OMNI_ADMIN_KEY",
    }
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(
        {
            "OMNI_HOME": str(home),
            "OMNI_HTTP_PORT": str(http_port),
            "OMNI_NATS_PORT": str(free_port()),
            "OMNI_PG_PORT": str(free_port()),
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "omni_devstack.cli", "run"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """After a failed assertion: stop omni and everything it started (servers run in their own
    sessions, so killing omni alone would leave them behind)."""
    if proc.poll() is not None:
        return
    tree = process_tree(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        for pid in live_pids(tree):
            os.kill(pid, signal.SIGKILL)


async def test_omni_run_serves_the_gateway_and_stops_cleanly_on_sigterm(world_tmp: Path) -> None:
    http_port = free_port()
    log = world_tmp / "omni-run.log"
    proc = omni_run(world_tmp / "home", http_port, log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=5) as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, timeout=120, message="gateway ready")
            # Nothing but health and readiness without credentials; the admin key is in OMNI_HOME.
            refused = await client.get("/workflows")
            assert refused.status_code == 401
            key_file = world_tmp / "home" / "admin-key"
            client.headers["Authorization"] = f"Bearer {key_file.read_text().strip()}"
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            workflows = (await client.get("/workflows")).json()["workflows"]
            assert "bilingual-coach" in [w["name"] for w in workflows]

            async def declared() -> list[dict[str, object]]:
                tools = (await client.get("/tools?provider=integrations")).json()["tools"]
                return tools if len(tools) >= 5 else []

            # The shipped integrations are served, each unavailable until its token is set.
            tools = {
                tool["name"]: tool for tool in await wait_for(declared, timeout=30, message="integrations")
            }
            assert tools["github.create_issue"]["reasons"] == ["GITHUB_TOKEN is not set"]
            assert tools["zapier.trigger"]["status"] == "unavailable"
        tree = process_tree(proc.pid)
        assert len(tree) >= 6  # omni, NATS, PostgreSQL, simulator, engine, runner, gateway
        output = await wait_for(lambda: "Press Ctrl-C" in log.read_text() and log.read_text(), timeout=10)
        assert "SIMULATED" in output
        assert f"Omni gateway:  http://127.0.0.1:{http_port}" in output
        assert f"Admin key:     in {key_file}" in output
        assert "/security/whoami" in output

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
        assert live_pids(tree) == set()
    finally:
        stop_tree(proc)


def test_omni_run_refuses_a_port_in_use_with_a_clear_error(world_tmp: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        log = world_tmp / "omni-run.log"
        proc = omni_run(world_tmp / "home", port, log)
        assert proc.wait(timeout=60) == 1
    output = log.read_text()
    assert f"127.0.0.1:{port}" in output
    assert "OMNI_HTTP_PORT" in output
