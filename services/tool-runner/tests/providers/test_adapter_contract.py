"""What every adapter owes the runner, checked for each declared provider against its fake over HTTP.

Each provider is bound the way a replica binds it (``bind_provider`` with its settings and
environment, the variables pointing at the fake of ``provider_fakes``), then: every tool it declares
answers with the tool's declared output shape; without credentials it is bound anyway and says
which variable is missing, and its calls fail ``unavailable`` without reaching the provider; the
idempotency key goes where the provider takes it; and a 429 (with its Retry-After), a 5xx, any other
4xx (with the provider's own message) and a slow answer become the errors the engine's retry
decisions rest on. Where a provider legitimately differs (no credentials, tools in process, tools
named at run time, answers configured by rules), its declaration says so and the check follows it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
from omni_toolrunner.adapters import PROVIDERS, bind_provider
from omni_toolrunner.providers import ProviderAdapter, ProviderError, ProviderErrorKind, ToolCall
from omni_toolrunner.providers.declaration import Idempotency, ProviderBinding, ProviderDeclaration
from omni_toolrunner.providers.mock import MockAdapter
from omni_toolrunner.settings import ToolRunnerSettings
from provider_fakes import EXAMPLE_INPUTS, FAKES, ProviderFake

PROVIDER_MESSAGE = "the provider's own words about what was wrong"
REMOTE = [provider for provider in PROVIDERS if not provider.in_process]


def ids(providers: list[ProviderDeclaration]) -> list[str]:
    return [provider.name for provider in providers]


@pytest.fixture
def declaration(request: pytest.FixtureRequest) -> ProviderDeclaration:
    provider: ProviderDeclaration = request.param
    return provider


@pytest.fixture
async def fake(declaration: ProviderDeclaration) -> AsyncIterator[ProviderFake]:
    async with FAKES[declaration.name]() as served:
        yield served


def bind(
    declaration: ProviderDeclaration,
    environ: Mapping[str, str],
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> ProviderBinding:
    """Bind as a replica does: settings and adapter read the same environment (OpenRouter's key and
    URL are settings fields)."""
    for name in declaration.env.variables:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return bind_provider(ToolRunnerSettings(provider=declaration.name), client, environ=dict(environ))


@pytest.fixture
async def bound(
    declaration: ProviderDeclaration,
    fake: ProviderFake,
    http_client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[ProviderBinding]:
    """The provider bound with its credentials, pointed at its fake."""
    binding = bind(declaration, fake.environ, http_client, monkeypatch)
    fake.ready(binding.adapter)
    yield binding
    await binding.aclose()


def served_tools(declaration: ProviderDeclaration, fake: ProviderFake) -> dict[str, Mapping[str, Any]]:
    """Each tool the provider serves with its declared output schema."""
    assert declaration.tools_at_run_time or not fake.run_time_tools
    return {doc.name: doc.output_schema for doc in declaration.tools} | dict(fake.run_time_tools)


def call(tool: str, *, key: str | None = None, timeout_s: float = 30.0) -> ToolCall:
    return ToolCall(
        tool=tool, input=EXAMPLE_INPUTS[tool], idempotency_key=key or f"run-c:{tool}:1", timeout_s=timeout_s
    )


async def failure_of(adapter: ProviderAdapter, request: ToolCall) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await adapter.call(request)
    return caught.value


def first_tool(adapter: ProviderAdapter) -> str:
    return sorted(adapter.tools)[0]


def test_every_declared_provider_has_a_fake_and_every_tool_an_example() -> None:
    assert sorted(FAKES) == sorted(provider.name for provider in PROVIDERS)
    assert {doc.name for provider in PROVIDERS for doc in provider.tools} <= set(EXAMPLE_INPUTS)


@pytest.mark.parametrize("declaration", PROVIDERS, ids=ids(PROVIDERS), indirect=True)
async def test_each_declared_tool_answers_with_its_declared_output_shape(
    declaration: ProviderDeclaration, fake: ProviderFake, bound: ProviderBinding
) -> None:
    tools = served_tools(declaration, fake)

    assert bound.missing_credentials is None
    assert bound.adapter.provider == declaration.name
    assert bound.adapter.tools == set(tools)
    for tool, output_schema in sorted(tools.items()):
        outcome = await bound.adapter.call(call(tool))
        assert isinstance(outcome.output, dict)
        if declaration.shaped_outputs:
            assert shape_problems(outcome.output, output_schema) == [], tool


@pytest.mark.parametrize("declaration", PROVIDERS, ids=ids(PROVIDERS), indirect=True)
async def test_without_credentials_it_is_bound_names_what_is_missing_and_calls_nobody(
    declaration: ProviderDeclaration,
    fake: ProviderFake,
    http_client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environ = {k: v for k, v in fake.environ.items() if k not in fake.credential_variables}
    binding = bind(declaration, environ, http_client, monkeypatch)
    fake.ready(binding.adapter)
    tools = sorted(binding.adapter.tools)

    if not declaration.needs_credentials:
        assert binding.missing_credentials is None
        assert isinstance((await binding.adapter.call(call(tools[-1]))).output, dict)
        return
    if declaration.per_tool_credentials:
        assert binding.missing_credentials is None  # the runner needs none; each tool names its own
    else:
        assert binding.missing_credentials == f"{declaration.env.api_key} is not set"
    for tool in tools:
        error = await failure_of(binding.adapter, call(tool))
        assert (error.kind, error.retryable) == (ProviderErrorKind.UNAVAILABLE, False)
        named = (
            fake.credential_variables if declaration.per_tool_credentials else declaration.env.key_variables
        )
        assert any(name in error.message for name in named), error
    assert await fake.requests_seen() == 0


# An in-process provider that takes no key has nowhere to send one.
KEYED = [p for p in PROVIDERS if not (p.in_process and p.idempotency is Idempotency.NONE)]


@pytest.mark.parametrize("declaration", KEYED, ids=ids(KEYED), indirect=True)
async def test_the_idempotency_key_goes_where_the_provider_takes_it(
    declaration: ProviderDeclaration, fake: ProviderFake, bound: ProviderBinding
) -> None:
    adapter, key = bound.adapter, "run-k:step:attempt-1"

    if declaration.idempotency is Idempotency.REPLAYED:
        # Answered once; the same key is answered the same way without asking the rules again.
        assert isinstance(adapter, MockAdapter)
        tool = first_tool(adapter)
        adapter.add_rule({"tool": tool, "output": {"answer": 1}, "times": 1})
        first, again = await adapter.call(call(tool, key=key)), await adapter.call(call(tool, key=key))
        assert first == again
        assert first.output == {"answer": 1}
        assert adapter.stats().replays == 1
        return
    if declaration.idempotency is Idempotency.PER_TOOL:
        tool, input_ = fake.tool_sending_the_key(adapter)
        await adapter.call(ToolCall(tool=tool, input=input_, idempotency_key=key))
    else:
        await adapter.call(call(first_tool(adapter), key=key))
    sent = (await fake.last_headers()).get("idempotency-key")
    assert sent == (None if declaration.idempotency is Idempotency.NONE else key)


@pytest.mark.parametrize("declaration", REMOTE, ids=ids(REMOTE), indirect=True)
async def test_a_429_is_rate_limited_with_the_retry_after_it_sent(
    fake: ProviderFake, bound: ProviderBinding
) -> None:
    tool = first_tool(bound.adapter)
    await fake.fail_next(tool, 429, "slow down", retry_after_s=7)

    error = await failure_of(bound.adapter, call(tool))

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.RATE_LIMITED, 429, True)
    assert error.retry_after_s == 7.0


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("declaration", REMOTE, ids=ids(REMOTE), indirect=True)
async def test_a_5xx_is_a_retryable_server_error(
    fake: ProviderFake, bound: ProviderBinding, status: int
) -> None:
    tool = first_tool(bound.adapter)
    await fake.fail_next(tool, status, "upstream fell over")

    error = await failure_of(bound.adapter, call(tool))

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.SERVER, status, True)


@pytest.mark.parametrize("status", [400, 404, 422])
@pytest.mark.parametrize("declaration", REMOTE, ids=ids(REMOTE), indirect=True)
async def test_another_4xx_is_a_final_bad_request_with_the_providers_message(
    fake: ProviderFake, bound: ProviderBinding, status: int
) -> None:
    tool = first_tool(bound.adapter)
    await fake.fail_next(tool, status, PROVIDER_MESSAGE)

    error = await failure_of(bound.adapter, call(tool))

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.BAD_REQUEST, status, False)
    assert PROVIDER_MESSAGE in error.message


@pytest.mark.parametrize("declaration", REMOTE, ids=ids(REMOTE), indirect=True)
async def test_an_answer_later_than_the_call_allows_is_a_retryable_timeout(
    fake: ProviderFake, bound: ProviderBinding
) -> None:
    tool = first_tool(bound.adapter)
    await fake.slow_next(2.0)

    started = time.monotonic()
    error = await failure_of(bound.adapter, call(tool, timeout_s=0.3))

    assert (error.kind, error.retryable) == (ProviderErrorKind.TIMEOUT, True)
    assert time.monotonic() - started < 1.5


# --- the output shape ----------------------------------------------------------------------------------

# The JSON Schema keywords the tools' output schemas use; a schema with any other fails the check, so
# it is extended rather than silently passed.
_CHECKED = frozenset({"type", "properties", "required", "additionalProperties", "items", "enum"})
_NOTES = frozenset({"description", "contentEncoding", "title"})
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def shape_problems(value: Any, schema: Mapping[str, Any], at: str = "$") -> list[str]:
    """Where ``value`` departs from ``schema`` (the subset of JSON Schema in :data:`_CHECKED`)."""
    unknown = set(schema) - _CHECKED - _NOTES
    if unknown:
        return [f"{at}: the check does not know the keywords {sorted(unknown)}"]
    declared = schema.get("type")
    allowed = [declared] if isinstance(declared, str) else list(declared or _TYPES)
    if not any(_TYPES[name](value) for name in allowed):
        return [f"{at}: {value!r:.60} is not {' or '.join(allowed)}"]
    problems = (
        [f"{at}: {value!r:.60} is not one of {schema['enum']}"]
        if value not in schema.get("enum", [value])
        else []
    )
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        problems += [f"{at}.{name}: missing" for name in schema.get("required", []) if name not in value]
        for name, item in value.items():
            if name in properties:
                problems += shape_problems(item, properties[name], f"{at}.{name}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{at}.{name}: not in the schema")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += shape_problems(item, schema["items"], f"{at}[{i}]")
    return problems


def test_the_shape_check_finds_what_departs_from_a_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "array", "items": {"enum": [1, 2]}}},
        "required": ["a"],
        "additionalProperties": False,
    }
    assert shape_problems({"a": "x", "b": [1, 2]}, schema) == []
    assert shape_problems({"b": [3], "c": 1}, schema) == [
        "$.a: missing",
        "$.b[0]: 3 is not one of [1, 2]",
        "$.c: not in the schema",
    ]
    assert shape_problems({"a": None}, schema) == ["$.a: None is not string"]
    assert shape_problems(1, {"type": "number", "minimum": 0}) == [
        "$: the check does not know the keywords ['minimum']"
    ]
