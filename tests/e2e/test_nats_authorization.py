"""The embedded NATS of the stack runs with authorization: an application may publish trigger
events and nothing else. The two attacks of a NATS reachable by anyone fail: completing a step
with a forged tool result, and making a runner call a (paid) provider with a forged invoke."""

from __future__ import annotations

import json
from typing import Any

import httpx
import nats
import pytest
from omni_contract import subjects
from omni_devstack.supervisor import Stack
from omni_testkit import subscribed, wait_for

from .test_bilingual_coach import payload, sim

pytestmark = pytest.mark.e2e


async def test_an_application_can_trigger_but_cannot_forge_results_or_invoke_tools(stack: Stack) -> None:
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    admin = await nats.connect(stack.admin_nats_url)
    app = await nats.connect(stack.application_nats_url, error_cb=on_error)
    try:
        seen: list[str] = []

        async def watch(msg: Any) -> None:
            seen.append(msg.subject)

        for subject in (subjects.tool_result("openrouter"), subjects.tool_invoke("openrouter")):
            await admin.subscribe(subject, cb=watch)
        await subscribed(admin)
        calls_before = (await sim(stack, "/_sim/stats"))["calls"]

        forged = json.dumps({"output": {"translatedText": "forged"}}).encode()
        await app.publish(subjects.tool_result("openrouter"), forged)
        await app.publish(subjects.tool_invoke("openrouter"), forged)
        await app.flush()

        await wait_for(lambda: len(violations) >= 2, timeout=5, message="both publishes refused")
        assert all("permissions violation for publish" in v.lower() for v in violations), violations
        # The server dropped both: they reached no subscriber, and no provider was called.
        await subscribed(admin)
        assert seen == []
        assert (await sim(stack, "/_sim/stats"))["calls"] == calls_before
        # Nor may it listen to what the services say.
        await app.subscribe(subjects.RUN_EVENTS_ALL)
        await app.flush()
        await wait_for(
            lambda: any(f'"{subjects.RUN_EVENTS_ALL}"' in v for v in violations),
            timeout=5,
            message="the subscription refused",
        )

        # What an application is for still works: its trigger event starts a run.
        await app.publish("app.coach.session.start", json.dumps(payload(sessionId="from-app")).encode())
        await app.flush()

        async with httpx.AsyncClient(
            base_url=stack.gateway_url, headers=stack.auth_headers, timeout=30
        ) as client:

            async def started() -> dict[str, Any] | None:
                runs = (await client.get("/runs", params={"workflow": "bilingual-coach"})).json()["runs"]
                return next((r for r in runs if r["payload"].get("sessionId") == "from-app"), None)

            run = await wait_for(started, timeout=30, message="a run started by the application's event")
            assert run["tenant"] == "default"
    finally:
        await app.close()
        await admin.close()
