from __future__ import annotations

import pytest
from omni_toolrunner.providers import ProviderError, ProviderErrorKind, ToolCall
from omni_toolrunner.providers.local import LocalAdapter


async def test_echo_returns_its_input_as_output() -> None:
    outcome = await LocalAdapter().call(ToolCall(tool="util.echo", input={"a": [1, 2]}, idempotency_key="k"))
    assert outcome.output == {"a": [1, 2]}
    assert outcome.usage is None


async def test_a_tool_the_local_provider_does_not_serve_is_unknown() -> None:
    with pytest.raises(ProviderError) as caught:
        await LocalAdapter().call(ToolCall(tool="stt.transcribe", input={}, idempotency_key="k"))
    assert caught.value.kind is ProviderErrorKind.UNKNOWN_TOOL
    assert not caught.value.retryable
