"""A declared integration used by a workflow, across the whole stack as processes.

The stack (as ``make run`` starts it) serves the shipped declarations of ``integrations/`` through
``tool-runner-integrations``; ``ZAPIER_HOOK_URL`` points at a catch hook served by this test on
127.0.0.1. A workflow registered over HTTP calls ``zapier.trigger`` at provider ``integrations``,
and the hook receives the step's input: an integration added without code, used like any tool.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from omni_testkit import serving_app, wait_for

from .stacks import make_stack

pytestmark = pytest.mark.e2e

WORKFLOW = """
name: e2e-notify-zap
version: "1"
trigger:
  event: app.e2e.notify_zap
  payload:
    userId: string
    score: number
steps:
  - name: notify
    tool: zapier.trigger
    provider: integrations
    input:
      event: lesson.finished
      user: "${trigger.payload.userId}"
      score: "${trigger.payload.score}"
    output:
      status: string
      requestId: string
"""


@asynccontextmanager
async def catch_hook() -> AsyncIterator[tuple[str, list[Any]]]:
    """A Zapier-style catch hook: any JSON body, answered ``{status: success, id, request_id}``."""
    received: list[Any] = []

    async def catch(request: web.Request) -> web.Response:
        received.append(await request.json())
        ids = {"attempt": str(uuid.uuid4()), "id": str(uuid.uuid4()), "request_id": str(uuid.uuid4())}
        return web.json_response({**ids, "status": "success"})

    app = web.Application()
    app.router.add_post("/hooks/catch/{account}/{hook}/", catch)
    async with serving_app(app) as base_url:
        yield f"{base_url}/hooks/catch/123/abc/", received


async def test_a_workflow_step_calls_a_declared_integration(tmp_path: Path, database_url: str) -> None:
    async with catch_hook() as (hook_url, received):
        stack = make_stack(tmp_path, database_url, extra_env={"ZAPIER_HOOK_URL": hook_url})
        try:
            await asyncio.to_thread(stack.start, 90)
            async with httpx.AsyncClient(
                base_url=stack.gateway_url, headers=stack.auth_headers, timeout=60
            ) as client:

                async def available() -> bool:
                    response = await client.get(
                        "/tools", params={"name": "zapier.trigger", "provider": "integrations"}
                    )
                    tools = response.json()["tools"]
                    return bool(tools) and tools[0]["status"] == "available"

                await wait_for(
                    available, timeout=30, message="zapier.trigger served by the integrations runner"
                )
                registered = await client.post(
                    "/workflows", content=WORKFLOW, headers={"Content-Type": "application/yaml"}
                )
                assert registered.status_code == 201, registered.text
                response = await client.post(
                    "/workflows/e2e-notify-zap/execute", json={"payload": {"userId": "u-9", "score": 0.75}}
                )
                assert response.status_code == 200, response.text
                run = response.json()
                assert run["status"] == "completed", run
                [step] = run["steps"]
                assert step["output"]["status"] == "success"
                assert step["output"]["requestId"]
        finally:
            await asyncio.to_thread(stack.stop)
    assert received == [{"event": "lesson.finished", "user": "u-9", "score": 0.75}]
