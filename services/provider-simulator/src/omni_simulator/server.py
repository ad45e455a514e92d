"""Serving the simulator on a real socket, for tests and for the entry point."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from omni_simulator.app import build_app
from omni_simulator.state import SimulatorState


@dataclass(frozen=True, slots=True)
class RunningSimulator:
    """A simulator listening on a real socket; ``base_url`` is what an OpenRouter client is given."""

    host: str
    port: int
    state: SimulatorState

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/api/v1"


@asynccontextmanager
async def running_simulator(
    port: int = 0, host: str = "127.0.0.1", state: SimulatorState | None = None
) -> AsyncIterator[RunningSimulator]:
    """Serve the simulator on ``host:port`` (0 = a free port) for the duration of the block."""
    state = state if state is not None else SimulatorState()
    # In-flight requests are at most sleeping out injected latency; nothing is lost by cutting them
    # short, and tests that leave a slow request behind should not wait for it.
    runner = web.AppRunner(build_app(state), access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = next(int(address[1]) for address in runner.addresses if isinstance(address, tuple))
        yield RunningSimulator(host=host, port=bound_port, state=state)
    finally:
        await runner.cleanup()
