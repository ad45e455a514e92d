"""Input the gateway cannot pass on is a 4xx naming what is wrong, never a 5xx (issue 9, item 15):
JSON nested too deep, integers too long, NUL and lone surrogates in payloads, contexts and query
parameters, non-printable characters in a YAML body, names that cannot be NATS keys or subjects,
and requests aiohttp's HTTP parser refuses (answered in the API's JSON error shape too)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from gateway_fakes import FakeEngine
from nats.aio.client import Client as NATS
from omni_contract import streams

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
JSON = {"Content-Type": "application/json"}


async def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    error: dict[str, Any] = (await response.json())["error"]
    return error


def nested(depth: int) -> str:
    return '{"payload": {"x": ' + "[" * depth + "]" * depth + "}}"


@pytest.mark.parametrize(
    ("body", "field", "said"),
    [
        # Deeper than Python's JSON reader goes (it raised RecursionError: a 500).
        (nested(5000), "body", "nested deeper than 64 levels"),
        # Deeper than the gateway's own limit, named where it starts.
        (nested(70), "payload.x" + "[0]" * 62, "nested deeper than 64 levels"),
        # More digits than Python reads (a ValueError: a 500), and more than 64 bits.
        ('{"payload": {"n": ' + "9" * 5000 + "}}", "payload.n", "outside the 64-bit range"),
        ('{"payload": {"n": 18446744073709551616}}', "payload.n", "outside the 64-bit range"),
        # NUL, which PostgreSQL cannot store (the engine failed on it), and lone surrogates.
        ('{"payload": {"name": "a\\u0000b"}}', "payload.name", "NUL"),
        ('{"payload": {"name": "ok"}, "context": {"who": "\\ud800"}}', "context.who", "lone surrogate"),
        ('{"payload": {"items": [{"a\\u0000": 1}]}}', "payload.items[0]", "NUL"),
        ('{"payload": {"x": NaN}}', "payload.x", "finite"),
    ],
)
async def test_a_json_body_omni_cannot_carry_is_400_naming_the_field(
    gateway: Client, engine: FakeEngine, body: str, field: str, said: str
) -> None:
    response = await gateway.post("/workflows/greet/execute", data=body, headers=JSON)
    error = await error_of(response, 400)
    assert error["details"][0]["field"] == field
    assert said in error["message"]
    assert engine.calls == []  # refused before the engine heard of it


async def test_an_event_payload_with_nul_is_refused_and_not_stored(gateway: Client, nc: NATS) -> None:
    response = await gateway.post("/events/app.greet.requested", data='{"name": "\\u0000"}', headers=JSON)
    error = await error_of(response, 400)
    assert error["details"][0]["field"] == "name"
    info = await nc.jetstream().stream_info(streams.APP_EVENTS.name)
    assert info.state.messages == 0


async def test_a_direct_tool_call_with_nul_in_its_input_is_400(gateway: Client) -> None:
    response = await gateway.post(
        "/tools/mt/translate/grok", data='{"input": {"text": "\\u0000"}}', headers=JSON
    )
    error = await error_of(response, 400)
    assert error["details"][0]["field"] == "input.text"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/runs?workflow=a%00b", "workflow"),
        ("/runs?cursor=%01", "cursor"),
        ("/deadletters?kind=a%00", "kind"),
        ("/tools?provider=%1b", "provider"),
    ],
)
async def test_a_query_parameter_with_a_control_character_is_400_naming_it(
    gateway: Client, engine: FakeEngine, path: str, field: str
) -> None:
    error = await error_of(await gateway.get(path), 400)
    assert error["details"][0]["field"] == field
    assert engine.calls == []


@pytest.mark.parametrize("subject", ["app.a%01b", "app.a%00", "app.%7f", "app.a%C2%85b"])
async def test_an_event_subject_with_a_control_character_is_400(gateway: Client, subject: str) -> None:
    error = await error_of(await gateway.post(f"/events/{subject}", json={}), 400)
    assert error["details"][0]["field"] == "subject"


@pytest.mark.parametrize("name", ["a%20b", "Upper.Case", "a.b%0A", "a.b.c", "%E2%9C%93.x", "a%00.b"])
async def test_a_declared_tool_name_that_cannot_be_a_key_is_404_to_read_or_delete(
    gateway: Client, name: str
) -> None:
    for method in ("GET", "DELETE"):
        error = await error_of(await gateway.request(method, f"/tools/declarations/{name}"), 404)
        assert error["code"] == "not_found"


async def test_declaring_a_name_with_a_trailing_line_break_is_refused_naming_it(gateway: Client) -> None:
    declaration = {"request": {"method": "GET", "url": "https://example.com/x"}}
    response = await gateway.put("/tools/declarations/status.check%0A", json=declaration)
    error = await error_of(response, 400)
    assert error["details"][0]["field"] == "name"
    response = await gateway.post("/tools/declarations", json={**declaration, "name": "status.check\n"})
    error = await error_of(response, 422)
    assert error["details"][0]["field"] == "$.name"


async def test_a_yaml_body_with_a_non_printable_character_is_400_saying_where(gateway: Client) -> None:
    body = "request:\n  method: GET\n  url: https://example.com/\x01x\n"
    response = await gateway.put(
        "/tools/declarations/status.check", data=body, headers={"Content-Type": "application/yaml"}
    )
    error = await error_of(response, 400)
    assert error["details"][0]["field"] == "body"
    assert "line 3, column 28" in error["message"]


async def test_a_yaml_body_with_an_escaped_nul_is_400_naming_the_field(gateway: Client) -> None:
    body = 'request:\n  method: GET\n  url: "https://example.com/\\0"\n'
    response = await gateway.put(
        "/tools/declarations/status.check", data=body, headers={"Content-Type": "application/yaml"}
    )
    error = await error_of(response, 400)
    assert error["details"][0]["field"] == "$.request.url"


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        b"GET /he\x00althz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"BREW /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ],
)
async def test_a_request_aiohttp_cannot_parse_is_answered_in_the_json_error_shape(
    gateway: Client, raw: bytes
) -> None:
    assert gateway.server.host is not None
    assert gateway.server.port is not None
    reader, writer = await asyncio.open_connection(gateway.server.host, gateway.server.port)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", answer
    assert b"Content-Type: application/json" in head
    assert body.startswith(b'{"error":{"code":"bad_request","message":"malformed HTTP request')


@pytest.mark.parametrize(
    ("content_type", "body", "field"),
    [
        # The engine reads definitions with PyYAML, which splits an escaped surrogate pair into two
        # lone surrogates it could not even put in its error reply (a 502 before): refused as written.
        ("application/json", '{"name": "greet", "steps": [{"name": "\\udb94", "tool": "x.y"}]}', "body"),
        ("application/json", '{"name": "greet", "trigger": {"payload": {"\\ud83d\\ude00": "x"}}}', "body"),
        ("application/json", '{"name": "a\\u0000", "steps": []}', "name"),
        ("application/yaml", 'name: "a\\0"\nsteps: []\n', "name"),
        # libyaml refuses the escape, PyYAML (the engine's) reads it: refused as written, by line.
        ("text/plain", 'name: greet\nsteps:\n  - {name: "\\ud800", tool: x.y}\n', "body"),
    ],
)
async def test_a_workflow_document_with_values_omni_cannot_carry_is_400_naming_the_field(
    gateway: Client, engine: FakeEngine, content_type: str, body: str, field: str
) -> None:
    response = await gateway.post("/workflows", data=body, headers={"Content-Type": content_type})
    error = await error_of(response, 400)
    assert error["details"][0]["field"] == field
    assert engine.calls == []


async def test_a_yaml_document_whose_aliases_hold_billions_of_values_is_400(gateway: Client) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    response = await gateway.put(
        "/tools/declarations/status.check",
        data="\n".join(lines) + "\n",
        headers={"Content-Type": "application/yaml"},
    )
    error = await error_of(response, 400)
    assert "more than 1000000 values" in error["message"]


async def test_a_body_that_is_not_in_its_content_encoding_is_400_not_500(gateway: Client) -> None:
    response = await gateway.post(
        "/events/app.greet.requested",
        data=b"not gzip at all",
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    error = await error_of(response, 400)
    assert error["details"][0]["field"] == "body"
    assert "the body cannot be read" in error["message"]
