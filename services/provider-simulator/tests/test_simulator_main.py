"""The command-line entry point: settings, serving on a free port, a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import aiohttp
import pytest
from omni_simulator.main import SimulatorSettings

_LISTENING = re.compile(rb"listening on (http://[\d.]+:\d+)")


def test_settings_fall_back_to_environment_then_defaults() -> None:
    from_env = SimulatorSettings.from_args([], env={"OMNI_SIM_PORT": "9123", "OMNI_SIM_API_KEY": "k"})
    from_args = SimulatorSettings.from_args(
        ["--port", "0", "--latency-ms", "50"], env={"OMNI_SIM_PORT": "9123"}
    )
    defaults = SimulatorSettings.from_args([], env={})

    assert (from_env.port, from_env.api_key) == (9123, "k")
    assert (from_args.port, from_args.latency_ms) == (0, 50)
    assert (defaults.host, defaults.api_key, defaults.log_level) == ("127.0.0.1", None, "INFO")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_entry_point_serves_and_exits_cleanly_on_signal(stop_signal: signal.Signals) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from omni_simulator.main import main; main()",
        "--port",
        "0",
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        async with asyncio.timeout(20):
            root_url = None
            while root_url is None:
                line = await process.stderr.readline()
                assert line, "the simulator exited before it was listening"
                found = _LISTENING.search(line)
                root_url = found.group(1).decode() if found else None
        async with aiohttp.ClientSession() as session, session.get(f"{root_url}/healthz") as response:
            assert response.status == 200

        process.send_signal(stop_signal)
        async with asyncio.timeout(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
