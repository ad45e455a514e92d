"""``/tools``: the registry read from real ``ToolRegistration`` entries in the real KV bucket, and
direct execution answered by the real tool-runner (the ``mock`` provider, served in this event
loop) or, for a call nobody answers, by no runner at all."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient
from gateway_fakes import GatewayFactory
from gateway_runners import serving_runner
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue
from omni_contract import streams, subjects
from omni_contract.envelope import HDR_MSG_ID, decode_envelope, payload_of
from omni_contract.events import TOOL_INVOKE_V1, ToolInvoke
from omni_contract.kv import TOOL_REGISTRY
from omni_contract.tools import (
    UNAVAILABLE,
    Capability,
    ToolRegistration,
    ToolSpec,
    registry_key,
)
from omni_runtime.nats import ensure_key_value
from omni_testkit import unique_name, wait_for
from omni_toolrunner.providers.mock import MOCK_RULES_ENV

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TEXT_INPUT = {
    "type": "object",
    "properties": {"text": {"type": "string", "minLength": 1}, "targetLanguage": {"type": "string"}},
    "required": ["text", "targetLanguage"],
}


def spec(name: str, provider: str, **fields: Any) -> ToolSpec:
    values: dict[str, Any] = {
        "description": f"{name} at {provider}",
        "category": name.partition(".")[0],
        "input_schema": TEXT_INPUT,
        "output_schema": {"type": "object"},
    }
    values.update(fields)
    return ToolSpec(name=name, provider=provider, **values)


async def register(
    kv: KeyValue,
    tool: ToolSpec,
    runner: str,
    *,
    reason: str | None = None,
    heartbeat_at: datetime = T0,
) -> None:
    entry = ToolRegistration(
        spec=tool,
        runner=runner,
        status=UNAVAILABLE if reason else "available",
        reason=reason,
        started_at=T0,
        heartbeat_at=heartbeat_at,
    )
    await kv.put(registry_key(tool.provider, tool.name, runner), msgspec.json.encode(entry))


@pytest.fixture
async def registry(nc: NATS) -> KeyValue:
    return await ensure_key_value(nc.jetstream(), TOOL_REGISTRY)


@pytest.fixture
async def catalogue(registry: KeyValue) -> KeyValue:
    """mt.translate at openrouter (two replicas, one without its key) and at deepseek (no key),
    stt.transcribe at openrouter."""
    translate = spec(
        "mt.translate",
        "openrouter",
        capabilities=[Capability(name="translation", input_types=["text"], output_types=["text"])],
    )
    await register(registry, translate, "runner-a", heartbeat_at=T0)
    await register(
        registry,
        translate,
        "runner-b",
        reason="OPENROUTER_API_KEY is not set",
        heartbeat_at=T0 + timedelta(seconds=3),
    )
    await register(
        registry, spec("mt.translate", "deepseek"), "runner-c", reason="DEEPSEEK_API_KEY is not set"
    )
    transcribe = spec(
        "stt.transcribe",
        "openrouter",
        timeout_ms=60_000,
        capabilities=[Capability(name="transcription", input_types=["audio/wav"], output_types=["text"])],
    )
    await register(registry, transcribe, "runner-a")
    return registry


async def tools_of(gateway: TestClient[Any, Any], query: str = "") -> list[dict[str, Any]]:
    response = await gateway.get(f"/tools{query}")
    assert response.status == 200, await response.text()
    tools: list[dict[str, Any]] = (await response.json())["tools"]
    return tools


def pairs(tools: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(tool["name"], tool["provider"]) for tool in tools]


# -- the registry -------------------------------------------------------------------------------
async def test_without_a_registry_bucket_there_are_no_tools(gateway: TestClient[Any, Any]) -> None:
    assert await tools_of(gateway) == []


async def test_list_merges_the_replicas_of_each_tool_and_provider(
    gateway: TestClient[Any, Any], catalogue: KeyValue
) -> None:
    tools = await tools_of(gateway)
    assert pairs(tools) == [
        ("mt.translate", "deepseek"),
        ("mt.translate", "openrouter"),
        ("stt.transcribe", "openrouter"),
    ]
    deepseek, openrouter, transcribe = tools
    assert openrouter["status"] == "available"  # one replica of two says so
    assert openrouter["reasons"] == []
    assert openrouter["replicas"] == 2
    assert openrouter["lastHeartbeat"] == "2026-01-01T00:00:03Z"
    assert openrouter["capabilities"] == [
        {"name": "translation", "description": "", "inputTypes": ["text"], "outputTypes": ["text"]}
    ]
    assert openrouter["timeoutMs"] == 30_000
    assert openrouter["requiresAuth"] is False
    assert "inputSchema" not in openrouter
    assert deepseek["status"] == "unavailable"
    assert deepseek["reasons"] == ["DEEPSEEK_API_KEY is not set"]
    assert transcribe["category"] == "stt"
    assert transcribe["timeoutMs"] == 60_000


async def test_a_withdrawn_replica_no_longer_counts(
    gateway: TestClient[Any, Any], catalogue: KeyValue
) -> None:
    await catalogue.delete(registry_key("openrouter", "mt.translate", "runner-a"))
    [openrouter] = await tools_of(gateway, "?name=mt.translate&provider=openrouter")
    assert openrouter["replicas"] == 1
    assert openrouter["status"] == "unavailable"
    assert openrouter["reasons"] == ["OPENROUTER_API_KEY is not set"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?name=mt.translate", [("mt.translate", "deepseek"), ("mt.translate", "openrouter")]),
        ("?provider=openrouter", [("mt.translate", "openrouter"), ("stt.transcribe", "openrouter")]),
        ("?category=stt", [("stt.transcribe", "openrouter")]),
        ("?capability=translation", [("mt.translate", "openrouter")]),
        ("?provider=deepseek&category=mt", [("mt.translate", "deepseek")]),
        ("?name=tts.speak", []),
        (
            "?provider=",
            [("mt.translate", "deepseek"), ("mt.translate", "openrouter"), ("stt.transcribe", "openrouter")],
        ),
    ],
)
async def test_list_filters(
    gateway: TestClient[Any, Any], catalogue: KeyValue, query: str, expected: list[tuple[str, str]]
) -> None:
    assert pairs(await tools_of(gateway, query)) == expected


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?status=available", "status"),
        ("?name=translate", "name"),
        ("?provider=open%20router", "provider"),
        ("?capability=*", "capability"),
        ("?category=" + "x" * 200, "category"),
    ],
)
async def test_list_refuses_unknown_parameters_and_bad_values(
    gateway: TestClient[Any, Any], query: str, field: str
) -> None:
    response = await gateway.get(f"/tools{query}")
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "bad_request"
    assert error["details"][0]["field"] == field
    assert field in error["message"]


async def test_a_tool_with_each_provider_that_serves_it(
    gateway: TestClient[Any, Any], catalogue: KeyValue
) -> None:
    response = await gateway.get("/tools/mt.translate")
    assert response.status == 200
    body = await response.json()
    assert body["name"] == "mt.translate"
    assert [(p["provider"], p["status"]) for p in body["providers"]] == [
        ("deepseek", "unavailable"),
        ("openrouter", "available"),
    ]


async def test_an_unregistered_tool_is_404_naming_it(
    gateway: TestClient[Any, Any], catalogue: KeyValue
) -> None:
    response = await gateway.get("/tools/tts.speak")
    assert response.status == 404
    assert "tts.speak" in (await response.json())["error"]["message"]


@pytest.mark.parametrize("path", ["/tools/0", "/tools/a.", "/tools/.b", "/tools/0/mock", "/tools/a.b.c/mock"])
async def test_a_name_that_is_not_category_dot_action_is_404_not_503(
    gateway: TestClient[Any, Any], catalogue: KeyValue, path: str
) -> None:
    response = await gateway.get(path)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_one_pair_comes_with_its_schemas_and_runners(
    gateway: TestClient[Any, Any], catalogue: KeyValue
) -> None:
    response = await gateway.get("/tools/mt.translate/openrouter")
    assert response.status == 200
    body = await response.json()
    assert body["inputSchema"] == TEXT_INPUT  # the author's schema passes through as written
    assert body["outputSchema"] == {"type": "object"}
    assert [(r["runner"], r["status"], r["reason"]) for r in body["runners"]] == [
        ("runner-a", "available", None),
        ("runner-b", "unavailable", "OPENROUTER_API_KEY is not set"),
    ]
    assert body["replicas"] == 2


async def test_an_unregistered_pair_is_404_naming_it(
    gateway: TestClient[Any, Any], catalogue: KeyValue
) -> None:
    response = await gateway.get("/tools/stt.transcribe/deepseek")
    assert response.status == 404
    message = (await response.json())["error"]["message"]
    assert "stt.transcribe" in message
    assert "deepseek" in message


async def test_an_unreadable_entry_is_skipped(gateway: TestClient[Any, Any], catalogue: KeyValue) -> None:
    await catalogue.put("broken.mt.translate.runner-z", b"{not json")
    assert len(await tools_of(gateway)) == 3


# -- direct execution: refused before anything is sent ------------------------------------------
async def test_a_known_provider_without_a_live_runner_is_503_saying_so(
    gateway: TestClient[Any, Any], registry: KeyValue
) -> None:
    response = await gateway.post("/tools/mt/translate/grok", json={"input": {"text": "hi"}})
    assert response.status == 503
    body = await response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "tool_unavailable"
    assert body["error"]["kind"] == "unavailable"
    assert "no tool-runner of grok is live to serve mt.translate" in body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "said"),
    [
        # The provider's runners are live and do not serve it.
        ("/tools/no/such/openrouter", "the runners of 'openrouter' serve no tool 'no.such'"),
        # No provider of that name exists, whatever the tool.
        ("/tools/mt/translate/nowhere", "Omni knows no such provider"),
    ],
)
async def test_a_tool_that_exists_nowhere_is_404_not_503(
    gateway: TestClient[Any, Any], catalogue: KeyValue, path: str, said: str
) -> None:
    response = await gateway.post(path, json={"input": {"text": "hi"}})
    assert response.status == 404
    error = (await response.json())["error"]
    assert error["code"] == "not_found"
    assert said in error["message"]


async def test_only_unavailable_replicas_is_503_with_their_reason(
    gateway: TestClient[Any, Any], catalogue: KeyValue
) -> None:
    response = await gateway.post("/tools/mt/translate/deepseek", json={"input": {"text": "hi"}})
    assert response.status == 503
    body = await response.json()
    assert body["error"]["code"] == "tool_unavailable"
    assert "DEEPSEEK_API_KEY is not set" in body["error"]["message"]


async def test_input_off_the_schema_is_422_naming_the_field(
    gateway: TestClient[Any, Any], catalogue: KeyValue, nc: NATS
) -> None:
    response = await gateway.post("/tools/mt/translate/openrouter", json={"input": {"text": ""}})
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"] == "invalid_payload"
    assert [detail["field"] for detail in error["details"]] == ["input.targetLanguage", "input.text"]
    assert "input.targetLanguage" in error["message"]
    info = await nc.jetstream().stream_info(streams.TOOL_WORK.name)
    assert info.state.messages == 0  # nothing was sent


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 422, "input"),
        ({"input": "hello"}, 400, "input"),
        ({"input": {"text": "hi", "targetLanguage": "es"}, "context": []}, 400, "context"),
    ],
)
async def test_a_body_without_an_input_object_is_refused(
    gateway: TestClient[Any, Any], catalogue: KeyValue, body: dict[str, Any], status: int, field: str
) -> None:
    response = await gateway.post("/tools/mt/translate/openrouter", json=body)
    assert response.status == status
    assert (await response.json())["error"]["details"][0]["field"] == field


# -- direct execution: no result ----------------------------------------------------------------
async def test_no_result_within_the_tool_timeout_and_margin_is_504(
    make_gateway: GatewayFactory, registry: KeyValue, nc: NATS
) -> None:
    await register(registry, spec("mt.translate", "silent", timeout_ms=100), "runner-s")
    gateway = await make_gateway(tool_wait_margin_s=0.3)
    work = await nc.jetstream().pull_subscribe(
        subjects.tool_invoke("silent"), durable=unique_name("test"), stream=streams.TOOL_WORK.name
    )
    response = await gateway.post(
        "/tools/mt/translate/silent", json={"input": {"text": "hi", "targetLanguage": "es"}}
    )
    assert response.status == 504
    body = await response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "tool_timeout"
    assert body["error"]["kind"] == "timeout"
    assert "0.4 s" in body["error"]["message"]

    [msg] = await work.fetch(1, timeout=5)
    envelope = decode_envelope(msg.data)
    assert envelope.type == TOOL_INVOKE_V1
    invoke = payload_of(envelope, ToolInvoke)
    assert invoke.run_id.startswith("direct-")
    assert (invoke.step, invoke.attempt, invoke.tool, invoke.provider) == (
        "direct",
        1,
        "mt.translate",
        "silent",
    )
    assert invoke.idempotency_key == f"direct:{invoke.run_id.removeprefix('direct-')}"
    assert invoke.timeout_ms == 100
    assert invoke.input == {"text": "hi", "targetLanguage": "es"}
    assert msg.headers is not None
    assert msg.headers[HDR_MSG_ID] == invoke.idempotency_key


# -- direct execution by the real tool-runner ---------------------------------------------------
MOCK_RULES = [
    {
        "tool": "mt.translate",
        "match": {"text": "boom"},
        "error": {"kind": "server", "message": "upstream exploded", "status": 500},
    },
    {
        "tool": "mt.translate",
        "match": {"text": "busy"},
        "error": {"kind": "rate_limited", "message": "slow down", "status": 429, "retry_after_s": 7},
    },
    {"tool": "mt.translate", "match": {"text": "once"}, "output": {"translatedText": "first"}, "times": 1},
    {"tool": "mt.translate", "match": {"text": "once"}, "output": {"translatedText": "second"}},
    {"tool": "mt.translate", "output": {"translatedText": "hola", "confidence": 0.9}},
]


@pytest.fixture
async def runner_gateway(
    nats_url: str, nc: NATS, make_gateway: GatewayFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TestClient[Any, Any]]:
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(MOCK_RULES))
    monkeypatch.setenv(MOCK_RULES_ENV, str(rules_file))
    gateway = await make_gateway()
    async with serving_runner(nats_url, "mock"):

        async def registered() -> bool:
            response = await gateway.get("/tools?name=mt.translate&provider=mock")
            tools = (await response.json())["tools"]
            return bool(tools) and tools[0]["status"] == "available"

        await wait_for(registered, timeout=20, message="the mock runner registered mt.translate")
        yield gateway


async def test_a_tool_executes_and_answers_its_output(runner_gateway: TestClient[Any, Any]) -> None:
    response = await runner_gateway.post(
        "/tools/mt/translate/mock",
        json={"input": {"text": "hello", "targetLanguage": "es"}, "context": {"userId": "u1"}},
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["success"] is True
    assert body["output"] == {"translatedText": "hola", "confidence": 0.9}
    assert body["error"] is None
    assert (body["tool"], body["provider"]) == ("mt.translate", "mock")
    assert isinstance(body["duration"], float | int)
    assert body["runner"]
    assert set(body) >= {"success", "output", "duration", "usage"}


async def test_a_provider_error_is_502_with_its_kind(runner_gateway: TestClient[Any, Any]) -> None:
    response = await runner_gateway.post(
        "/tools/mt/translate/mock", json={"input": {"text": "boom", "targetLanguage": "es"}}
    )
    assert response.status == 502
    body = await response.json()
    assert body["success"] is False
    assert body["output"] is None
    assert body["error"]["code"] == "tool_failed"
    assert body["error"]["kind"] == "server"
    assert "upstream exploded" in body["error"]["message"]
    assert body["error"]["providerStatus"] == 500


async def test_a_rate_limited_provider_says_when_to_retry(runner_gateway: TestClient[Any, Any]) -> None:
    response = await runner_gateway.post(
        "/tools/mt/translate/mock", json={"input": {"text": "busy", "targetLanguage": "es"}}
    )
    assert response.status == 502
    assert response.headers["Retry-After"] == "7"
    error = (await response.json())["error"]
    assert (error["kind"], error["retryAfterS"], error["retryable"]) == ("rate_limited", 7, True)


async def test_a_retried_request_with_an_idempotency_key_is_not_executed_twice(
    runner_gateway: TestClient[Any, Any],
) -> None:
    call = {"input": {"text": "once", "targetLanguage": "es"}}
    first = await runner_gateway.post(
        "/tools/mt/translate/mock", json=call, headers={"Idempotency-Key": "k-1"}
    )
    again = await runner_gateway.post(
        "/tools/mt/translate/mock", json=call, headers={"Idempotency-Key": "k-1"}
    )
    other = await runner_gateway.post(
        "/tools/mt/translate/mock", json=call, headers={"Idempotency-Key": "k-2"}
    )
    assert [r.status for r in (first, again, other)] == [200, 200, 200]
    assert (await first.json())["output"] == {"translatedText": "first"}
    assert (await again.json())["output"] == {"translatedText": "first"}  # the stored result, replayed
    assert (await other.json())["output"] == {"translatedText": "second"}  # a new key is a new call


async def test_concurrent_retries_share_one_call(runner_gateway: TestClient[Any, Any]) -> None:
    call = {"input": {"text": "hello", "targetLanguage": "fr"}}
    headers = {"Idempotency-Key": "k-concurrent"}
    responses = await asyncio.gather(
        *(runner_gateway.post("/tools/mt/translate/mock", json=call, headers=headers) for _ in range(3))
    )
    assert [r.status for r in responses] == [200, 200, 200]
    assert len({json.dumps(await r.json(), sort_keys=True) for r in responses}) == 1
