"""Entry point (``omni-provider-simulator``, or ``python -m omni_simulator.main``).

Settings come from the command line, falling back to ``OMNI_SIM_*`` environment variables:
``OMNI_SIM_HOST``, ``OMNI_SIM_PORT``, ``OMNI_SIM_API_KEY`` (require exactly this bearer key),
``OMNI_SIM_LATENCY_MS``, ``OMNI_SIM_LOG_LEVEL``; ``OMNI_LOG_FORMAT`` (``json``, ``console`` or ``auto``) as
for every Omni service.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from omni_runtime.logging import setup_logging

from omni_simulator.server import running_simulator
from omni_simulator.state import SimulatorState

logger = logging.getLogger("omni_simulator")

DEFAULT_PORT = 8790


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    latency_ms: int = 0
    log_level: str = "INFO"
    log_format: str = "auto"

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> SimulatorSettings:
        env = os.environ if env is None else env
        parser = argparse.ArgumentParser(
            prog="omni-provider-simulator",
            description="Serve OpenRouter-shaped chat completions with deterministic answers.",
        )
        parser.add_argument("--host", default=env.get("OMNI_SIM_HOST", "127.0.0.1"))
        parser.add_argument(
            "--port",
            type=int,
            default=int(env.get("OMNI_SIM_PORT", DEFAULT_PORT)),
            help="0 picks a free port",
        )
        parser.add_argument(
            "--api-key",
            default=env.get("OMNI_SIM_API_KEY") or None,
            help="accept only this bearer key (default: any non-empty key)",
        )
        parser.add_argument("--latency-ms", type=int, default=int(env.get("OMNI_SIM_LATENCY_MS", 0)))
        parser.add_argument("--log-level", default=env.get("OMNI_SIM_LOG_LEVEL", "INFO"))
        parser.add_argument(
            "--log-format", choices=("auto", "json", "console"), default=env.get("OMNI_LOG_FORMAT", "auto")
        )
        args = parser.parse_args(argv)
        return cls(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            latency_ms=args.latency_ms,
            log_level=str(args.log_level).upper(),
            log_format=args.log_format,
        )


async def serve(settings: SimulatorSettings, stop: asyncio.Event) -> None:
    state = SimulatorState(expected_key=settings.api_key, latency_ms=settings.latency_ms)
    async with running_simulator(port=settings.port, host=settings.host, state=state) as sim:
        logger.info("provider simulator listening on %s (OpenRouter base URL %s)", sim.root_url, sim.base_url)
        await stop.wait()
        logger.info("provider simulator stopping")


async def _run(settings: SimulatorSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


def main(argv: Sequence[str] | None = None) -> None:
    settings = SimulatorSettings.from_args(argv)
    setup_logging("provider-simulator", settings.log_level, settings.log_format)
    asyncio.run(_run(settings))


if __name__ == "__main__":
    main()
