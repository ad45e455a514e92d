"""The mock runner's rules changed at run time through the ``omni_mock_rules`` bucket (real nats-server)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.js import JetStreamContext
from omni_contract import events as ev
from omni_contract import streams, subjects
from omni_contract.envelope import HDR_MSG_ID, encode_envelope, new_envelope
from omni_contract.events import ToolInvoke, ToolResult
from omni_contract.tools import ToolRegistration
from omni_simulator import RunningSimulator
from omni_testkit import wait_for
from omni_toolrunner.mock_rules import MOCK_RULES_KEY, mock_rules_bucket
from omni_toolrunner.providers.mock import MOCK_RULES_ENV
from omni_toolrunner.registry import registry_bucket
from toolrunner_harness import StreamReader, read_result, runner_settings, running_runner

pytestmark = pytest.mark.integration


async def call(js: JetStreamContext, results: StreamReader, tool: str, input: dict[str, Any]) -> ToolResult:
    run_id = uuid.uuid4().hex
    invoke = ToolInvoke(
        run_id=run_id,
        step="s",
        attempt=1,
        tool=tool,
        provider="mock",
        input=input,
        idempotency_key=f"{run_id}:s:1",
    )
    envelope = new_envelope(ev.TOOL_INVOKE_V1, "test", invoke, correlation_id=run_id)
    await js.publish(
        subjects.tool_invoke("mock"), encode_envelope(envelope), headers={HDR_MSG_ID: invoke.idempotency_key}
    )
    return read_result(await results.next())


async def test_rules_put_in_the_bucket_replace_the_running_mocks_rules_and_a_delete_restores_the_files(
    nats_url: str,
    simulator: RunningSimulator,
    js: JetStreamContext,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(
        json.dumps([{"tool": "mt.translate", "output": {"translatedText": "from the file"}}])
    )
    monkeypatch.setenv(MOCK_RULES_ENV, str(rules_file))
    results = await StreamReader.open(js, streams.TOOL_RESULTS.name, subjects.tool_result("mock"))
    kv = await mock_rules_bucket(js)
    text = {"text": "hello", "targetLanguage": "es"}
    async with running_runner(runner_settings(nats_url, simulator, provider="mock")):
        assert (await call(js, results, "mt.translate", text)).output == {"translatedText": "from the file"}

        rules = {
            "rules": [
                {"tool": "mt.translate", "match": {"text": "hello"}, "output": {"translatedText": "hola"}},
                {"tool": "crm.lookup", "output": {"customer": "ACME"}},
                {
                    "tool": "mt.translate",
                    "error": {"kind": "rate_limited", "message": "slow down", "retry_after_s": 2},
                },
            ]
        }
        await kv.put(MOCK_RULES_KEY, msgspec.json.encode(rules))

        async def hola() -> bool:
            return (await call(js, results, "mt.translate", text)).output == {"translatedText": "hola"}

        await wait_for(hola, timeout=10, message="the new rules were applied")
        failed = await call(js, results, "mt.translate", {"text": "bye", "targetLanguage": "es"})
        assert failed.error is not None
        assert (failed.error.kind, failed.error.retry_after_s) == ("rate_limited", 2)
        # A tool only the new rules name is served, and registered.
        assert (await call(js, results, "crm.lookup", {})).output == {"customer": "ACME"}
        registry = await registry_bucket(js)

        async def crm_registered() -> bool:
            keys = await registry.keys()
            return any(key.startswith("mock.crm.lookup.") for key in keys)

        await wait_for(crm_registered, timeout=10, message="crm.lookup registered")
        entry = next(k for k in await registry.keys() if k.startswith("mock.crm.lookup."))
        spec = msgspec.json.decode((await registry.get(entry)).value or b"", type=ToolRegistration).spec
        assert spec.provider == "mock"

        # Rules that do not validate are refused; the ones in force stay.
        await kv.put(MOCK_RULES_KEY, b'[{"tool": "mt.translate", "delay_ms": -5}]')
        assert (await call(js, results, "mt.translate", text)).output == {"translatedText": "hola"}

        await kv.delete(MOCK_RULES_KEY)

        async def back_to_the_file() -> bool:
            answer = await call(js, results, "mt.translate", text)
            return answer.output == {"translatedText": "from the file"}

        await wait_for(back_to_the_file, timeout=10, message="the file's rules are back")
