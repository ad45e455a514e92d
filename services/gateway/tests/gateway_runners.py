"""A real tool-runner served in the test's event loop, for gateway tests of /tools and direct calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from omni_runtime.service import serve
from omni_testkit import unique_name
from omni_toolrunner.app import make_body, service_name
from omni_toolrunner.settings import ToolRunnerSettings


@asynccontextmanager
async def serving_runner(nats_url: str, provider: str, **settings: Any) -> AsyncIterator[None]:
    """The tool-runner of ``provider`` until the block ends; ``settings`` override the defaults."""
    config = ToolRunnerSettings(
        nats_url=nats_url,
        provider=provider,
        instance=unique_name(provider),
        ack_wait_s=5.0,
        shutdown_grace_s=5.0,
        log_format="console",
        **settings,
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(
        serve(service_name(provider), config, make_body(config), install_signals=False, stopping=stopping)
    )
    try:
        yield
    finally:
        stopping.set()
        try:
            await asyncio.wait_for(task, timeout=30)
        except TimeoutError:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
