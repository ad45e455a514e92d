"""``/tools/declarations``: declare a tool over HTTP, see the real integrations runner serve it, call it.

The runner is the real ``tool-runner-integrations`` served in this event loop on a real NATS server;
the declared tool calls a real HTTP server on 127.0.0.1 (an aiohttp app standing in for a team's
service), so the whole path is exercised: gateway -> KV bucket -> runner's watch -> registry ->
direct execution -> HTTP call with the credential -> mapped output.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from gateway_fakes import GatewayFactory
from gateway_runners import serving_runner
from omni_testkit import serving_app, wait_for

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"


def ticket_declaration(base_url: str, **overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "description": "Open a ticket in the helpdesk",
        "timeoutMs": 5000,
        "inputSchema": {
            "type": "object",
            "required": ["queue", "subject"],
            "properties": {"queue": {"type": "string"}, "subject": {"type": "string", "minLength": 1}},
        },
        "request": {
            "method": "POST",
            "url": base_url + "/queues/${input.queue}/tickets",
            "body": {"subject": "${input.subject}", "priority": "${input.priority}"},
        },
        "auth": {"env": "HELPDESK_TOKEN", "scheme": "header", "name": "X-Api-Key"},
        "output": {
            "ticket": "${response.id}",
            "link": "${response.links.self}",
            "code": "${status}",
        },
    }
    value.update(overrides)
    return value


@asynccontextmanager
async def helpdesk() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A small HTTP service: ``POST /queues/{queue}/tickets`` with ``X-Api-Key``."""
    received: list[dict[str, Any]] = []

    async def create(request: web.Request) -> web.Response:
        if request.headers.get("X-Api-Key") != TOKEN:
            return web.json_response({"message": "bad key"}, status=401)
        body = await request.json()
        received.append({"queue": request.match_info["queue"], **body})
        ticket = f"T-{len(received)}"
        return web.json_response({"id": ticket, "links": {"self": f"/tickets/{ticket}"}}, status=201)

    app = web.Application()
    app.router.add_post("/queues/{queue}/tickets", create)
    async with serving_app(app) as base_url:
        yield base_url, received


def integrations_runner(nats_url: str, **overrides: Any) -> AbstractAsyncContextManager[None]:
    secrets = ["HELPDESK_TOKEN", "MISSING_TOKEN"]
    return serving_runner(nats_url, "integrations", declared_secrets=secrets, **overrides)


async def tool_status(gateway: TestClient[Any, Any], name: str) -> dict[str, Any] | None:
    response = await gateway.get(f"/tools?name={name}&provider=integrations")
    tools = (await response.json())["tools"]
    return tools[0] if tools else None


async def test_a_tool_declared_over_http_is_served_called_and_withdrawn(
    nats_url: str, make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELPDESK_TOKEN", TOKEN)
    gateway = await make_gateway()
    async with helpdesk() as (base_url, received), integrations_runner(nats_url):
        created = await gateway.put(
            "/tools/declarations/helpdesk.open_ticket", json=ticket_declaration(base_url)
        )
        assert created.status == 201, await created.text()
        stored = await created.json()
        assert stored["origin"] == "api"
        assert stored["declaration"]["name"] == "helpdesk.open_ticket"
        assert stored["warnings"] == []

        async def served() -> bool:
            tool = await tool_status(gateway, "helpdesk.open_ticket")
            return tool is not None and tool["status"] == "available"

        await wait_for(served, timeout=20, message="the runner registered the declared tool")
        detail = await (await gateway.get("/tools/helpdesk.open_ticket/integrations")).json()
        assert detail["requiresAuth"] is True
        assert detail["inputSchema"]["required"] == ["queue", "subject"]

        response = await gateway.post(
            "/tools/helpdesk/open_ticket/integrations",
            json={"input": {"queue": "billing/eu", "subject": "Refund"}},
        )
        assert response.status == 200, await response.text()
        body = await response.json()
        assert body["success"] is True
        assert body["output"] == {"ticket": "T-1", "link": "/tickets/T-1", "code": 201}
        # The path value was percent-encoded into one segment; the absent priority was left out.
        assert received == [{"queue": "billing/eu", "subject": "Refund"}]

        # The schema is enforced before anything is sent.
        invalid = await gateway.post(
            "/tools/helpdesk/open_ticket/integrations", json={"input": {"queue": "x"}}
        )
        assert invalid.status == 422
        assert (await invalid.json())["error"]["details"][0]["field"] == "input.subject"

        # A replacement is picked up; the service refusing the credential is a failed call, kind auth.
        replaced = await gateway.put(
            "/tools/declarations/helpdesk.open_ticket",
            json=ticket_declaration(
                base_url, auth={"env": "HELPDESK_TOKEN", "scheme": "header", "name": "X-Other"}
            ),
        )
        assert replaced.status == 200

        async def refused() -> bool:
            attempt = await gateway.post(
                "/tools/helpdesk/open_ticket/integrations", json={"input": {"queue": "q", "subject": "s"}}
            )
            return attempt.status == 502 and (await attempt.json())["error"]["kind"] == "auth"

        await wait_for(refused, timeout=20, message="the replaced declaration was served")

        listed = await (await gateway.get("/tools/declarations")).json()
        assert [d["declaration"]["name"] for d in listed["declarations"]] == ["helpdesk.open_ticket"]

        deleted = await gateway.delete("/tools/declarations/helpdesk.open_ticket")
        assert deleted.status == 204

        async def withdrawn() -> bool:
            return await tool_status(gateway, "helpdesk.open_ticket") is None

        await wait_for(withdrawn, timeout=20, message="the deleted declaration left the registry")
        assert (await gateway.get("/tools/declarations/helpdesk.open_ticket")).status == 404


def deprecated_syntax(value: Any) -> Any:
    """``value`` with its templates written the deprecated way: ``{{ input.queue }}``."""
    if isinstance(value, str):
        return re.sub(r"\$\{([^}]*)\}", r"{{ \1 }}", value)
    if isinstance(value, dict):
        return {key: deprecated_syntax(item) for key, item in value.items()}
    return value


async def test_a_declaration_in_the_deprecated_syntax_is_served_the_same_and_warned_of(
    nats_url: str,
    make_gateway: GatewayFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("HELPDESK_TOKEN", TOKEN)
    gateway = await make_gateway()
    async with helpdesk() as (base_url, received), integrations_runner(nats_url):
        declared = deprecated_syntax(ticket_declaration(base_url))
        assert declared["request"]["url"].endswith("/queues/{{ input.queue }}/tickets")
        with caplog.at_level(logging.WARNING, logger="omni_gateway.declarations"):
            created = await gateway.put("/tools/declarations/helpdesk.legacy_ticket", json=declared)
        assert created.status == 201, await created.text()
        warnings = {warning["field"]: warning for warning in (await created.json())["warnings"]}
        assert sorted(warnings) == [
            "$.output.code",
            "$.output.link",
            "$.output.ticket",
            "$.request.body.priority",
            "$.request.body.subject",
            "$.request.url",
        ]
        url = warnings["$.request.url"]
        assert url["replacement"] == base_url + "/queues/${input.queue}/tickets"
        assert "deprecated" in url["message"]
        assert "0.3.0" in url["message"]
        assert warnings["$.output.ticket"]["replacement"] == "${response.id}"
        logged = [r.getMessage() for r in caplog.records if r.name == "omni_gateway.declarations"]
        assert len(logged) == 1
        assert "helpdesk.legacy_ticket" in logged[0]
        assert "$.request.url" in logged[0]
        # Stored as written: it keeps working until the old syntax goes.
        stored = await (await gateway.get("/tools/declarations/helpdesk.legacy_ticket")).json()
        assert stored["declaration"]["request"]["url"] == declared["request"]["url"]

        async def served() -> bool:
            tool = await tool_status(gateway, "helpdesk.legacy_ticket")
            return tool is not None and tool["status"] == "available"

        await wait_for(served, timeout=20, message="the runner registered the declared tool")
        response = await gateway.post(
            "/tools/helpdesk/legacy_ticket/integrations",
            json={"input": {"queue": "billing/eu", "subject": "Refund"}},
        )
        assert response.status == 200, await response.text()
        assert (await response.json())["output"] == {"ticket": "T-1", "link": "/tickets/T-1", "code": 201}
        assert received == [{"queue": "billing/eu", "subject": "Refund"}]

        rewritten = ticket_declaration(base_url)
        replaced = await gateway.put("/tools/declarations/helpdesk.legacy_ticket", json=rewritten)
        assert replaced.status == 200
        assert (await replaced.json())["warnings"] == []


async def test_a_declared_tool_without_its_secret_is_registered_unavailable_with_the_reason(
    nats_url: str, make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MISSING_TOKEN", raising=False)
    gateway = await make_gateway()
    async with integrations_runner(nats_url):
        for name, env in (
            ("helpdesk.no_secret", "MISSING_TOKEN"),
            ("helpdesk.not_allowed", "OPENROUTER_API_KEY"),
        ):
            declared = ticket_declaration("http://127.0.0.1:9", auth={"env": env, "scheme": "bearer"})
            assert (await gateway.put(f"/tools/declarations/{name}", json=declared)).status == 201

        async def both_listed() -> bool:
            return all(
                [
                    await tool_status(gateway, "helpdesk.no_secret"),
                    await tool_status(gateway, "helpdesk.not_allowed"),
                ]
            )

        await wait_for(both_listed, timeout=20, message="both declared tools were registered")
        missing = await tool_status(gateway, "helpdesk.no_secret")
        assert missing is not None
        assert (missing["status"], missing["reasons"]) == ("unavailable", ["MISSING_TOKEN is not set"])
        refused = await tool_status(gateway, "helpdesk.not_allowed")
        assert refused is not None
        assert refused["status"] == "unavailable"
        assert "OMNI_TOOLRUNNER_DECLARED_SECRETS" in refused["reasons"][0]
        call = await gateway.post(
            "/tools/helpdesk/no_secret/integrations", json={"input": {"queue": "q", "subject": "s"}}
        )
        assert call.status == 503
        assert "MISSING_TOKEN is not set" in (await call.json())["error"]["message"]


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"request": {"method": "POST", "url": "https://${input.host}/x"}}, 422, "$.request.url"),
        ({"request": {"method": "POST", "url": "https://{{ input.host }}/x"}}, 422, "$.request.url"),
        ({"output": {"ticket": "${response.id} ({{ status }})"}}, 422, "$.output.ticket"),
        ({"auth": {"env": "lower-case"}}, 422, "$.auth.env"),
        ({"inputSchema": {"type": "objekt"}}, 422, "$.inputSchema.type"),
        ({"timeoutMs": "soon"}, 422, "$.timeoutMs"),
        ({"name": "other.tool"}, 422, "$.name"),
        ({"request": None}, 422, "$.request"),
    ],
)
async def test_a_bad_declaration_is_refused_naming_the_field_and_nothing_is_stored(
    gateway: TestClient[Any, Any], change: dict[str, Any], status: int, field: str
) -> None:
    response = await gateway.put(
        "/tools/declarations/helpdesk.open_ticket", json=ticket_declaration("https://helpdesk.test", **change)
    )
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["error"]["code"] == "invalid_declaration"
    assert field in [detail["field"] for detail in body["error"]["details"]], body
    assert (await gateway.get("/tools/declarations/helpdesk.open_ticket")).status == 404


async def test_post_creates_once_and_refuses_a_taken_name(gateway: TestClient[Any, Any]) -> None:
    declared = {"name": "helpdesk.open_ticket", **ticket_declaration("https://helpdesk.test")}
    first = await gateway.post("/tools/declarations", json=declared)
    assert first.status == 201, await first.text()
    assert (await first.json())["warnings"] == []
    legacy = {**deprecated_syntax(declared), "name": "helpdesk.legacy_ticket"}
    warned = await gateway.post("/tools/declarations", json=legacy)
    assert warned.status == 201, await warned.text()
    assert "$.request.url" in [warning["field"] for warning in (await warned.json())["warnings"]]
    again = await gateway.post("/tools/declarations", json=declared)
    assert again.status == 409
    assert "PUT /tools/declarations/helpdesk.open_ticket" in (await again.json())["error"]["message"]
    malformed = await gateway.post(
        "/tools/declarations", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert malformed.status == 400
    assert (await gateway.delete("/tools/declarations/helpdesk.nothing")).status == 404


async def test_a_declared_rate_limit_is_shared_by_the_integrations_tools_and_refuses_past_the_deadline(
    nats_url: str, make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELPDESK_TOKEN", TOKEN)
    gateway = await make_gateway()
    window_s = 6.0
    async with helpdesk() as (base_url, received), integrations_runner(nats_url, rate_window_s=window_s):
        # Two tools of one integration: the smaller limit (1 per window) holds for both.
        for name, limit in (("helpdesk.open_ticket", 1), ("helpdesk.open_urgent", 5)):
            declared = ticket_declaration(base_url, timeoutMs=1000, rateLimit={"requestsPerMinute": limit})
            assert (await gateway.put(f"/tools/declarations/{name}", json=declared)).status == 201

        async def served() -> bool:
            tools = [await tool_status(gateway, n) for n in ("helpdesk.open_ticket", "helpdesk.open_urgent")]
            return all(tool is not None and tool["status"] == "available" for tool in tools)

        await wait_for(served, timeout=20, message="both declared tools registered")
        # Just after a window opens, so the next one is further away than the 1 s deadline.
        await asyncio.sleep(window_s - time.time() % window_s + 0.05)
        ticket = {"input": {"queue": "q", "subject": "s"}}
        first = await gateway.post("/tools/helpdesk/open_ticket/integrations", json=ticket)
        second = await gateway.post("/tools/helpdesk/open_urgent/integrations", json=ticket)
        assert first.status == 200, await first.text()
        assert second.status == 502, await second.text()
        error = (await second.json())["error"]
        assert error["kind"] == "rate_limited"
        assert "integrations.helpdesk" in error["message"]
    assert len(received) == 1


SHIPPED_ASANA = (Path(__file__).resolve().parents[3] / "integrations" / "asana.create_task.yaml").read_bytes()


async def test_a_declaration_may_be_sent_as_yaml_as_the_shipped_files_are(
    gateway: TestClient[Any, Any],
) -> None:
    yaml_type = {"Content-Type": "application/yaml"}
    created = await gateway.put(
        "/tools/declarations/asana.create_task", data=SHIPPED_ASANA, headers=yaml_type
    )
    assert created.status == 201, await created.text()
    stored = await created.json()
    assert stored["declaration"]["auth"]["env"] == "ASANA_TOKEN"
    assert stored["declaration"]["rateLimit"]["requestsPerMinute"] == 150
    broken = await gateway.post("/tools/declarations", data=b"name: [unclosed", headers=yaml_type)
    assert broken.status == 400
    assert (await broken.json())["error"]["details"][0]["field"] == "body"
    listed = await gateway.post("/tools/declarations", data=b"- a\n- b\n", headers=yaml_type)
    assert listed.status == 400
    assert "mapping" in (await listed.json())["error"]["message"]
