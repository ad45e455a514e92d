"""A real tool-runner, workflow engine and security-service served in the test's event loop, for
gateway tests of /tools, direct calls, the workflow routes and the whole API under schemathesis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import nats
import nats.errors
from omni_contract import subjects
from omni_contract.security import new_api_key
from omni_engine.main import EngineSettings
from omni_engine.main import body as engine_body
from omni_runtime.service import serve
from omni_security.main import body as security_body
from omni_security.settings import SecuritySettings
from omni_testkit import unique_name, wait_for
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


WORKFLOWS = Path(__file__).resolve().parents[3] / "workflows"


@asynccontextmanager
async def serving_engine(nats_url: str, database_url: str) -> AsyncIterator[None]:
    """The workflow engine, with the repository's workflows/, answering until the block ends."""
    settings = EngineSettings(
        nats_url=nats_url, database_url=database_url, workflows_dir=WORKFLOWS, log_format="console"
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(
        serve(
            "workflow-engine",
            settings,
            lambda ctx: engine_body(ctx, settings),
            install_signals=False,
            stopping=stopping,
        )
    )
    nc = await nats.connect(nats_url)

    async def answering() -> bool:
        try:
            await nc.request(subjects.ENGINE_WORKFLOWS_LIST, b"{}", timeout=0.5)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return False
        return True

    try:
        await wait_for(answering, timeout=60, message="the engine answering")
        yield
    finally:
        await nc.close()
        stopping.set()
        await asyncio.wait_for(task, timeout=30)


@asynccontextmanager
async def serving_security(nats_url: str, database_url: str) -> AsyncIterator[str]:
    """The security-service until the block ends; yields the admin key it was started with."""
    admin_key = new_api_key()
    settings = SecuritySettings(
        nats_url=nats_url, database_url=database_url, admin_key=admin_key, log_format="console"
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(
        serve(
            subjects.SECURITY_SERVICE_NAME, settings, security_body, install_signals=False, stopping=stopping
        )
    )
    nc = await nats.connect(nats_url)

    async def answering() -> bool:
        try:
            await nc.request(subjects.SECURITY_PING, b"{}", timeout=0.5)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return False
        return True

    try:
        await wait_for(answering, timeout=60, message="the security-service answering")
        yield admin_key
    finally:
        await nc.close()
        stopping.set()
        await asyncio.wait_for(task, timeout=30)
