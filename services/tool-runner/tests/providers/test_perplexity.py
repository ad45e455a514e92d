"""The Perplexity adapter against a fake of Perplexity's Agent API, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from http_fake import Fault, serving
from omni_toolrunner.providers import ProviderError, ProviderErrorKind, ToolCall
from omni_toolrunner.providers.perplexity import PerplexityAdapter
from perplexity_fake import ANSWER, API_KEY, SOURCES, PerplexityFake, agent_response

QUESTION = {"query": "How tall is the Eiffel Tower?"}


@pytest.fixture
async def fake() -> AsyncIterator[PerplexityFake]:
    fake = PerplexityFake(API_KEY)
    async with serving(fake):
        yield fake


@pytest.fixture
def adapter(fake: PerplexityFake, http_client: httpx.AsyncClient) -> PerplexityAdapter:
    return PerplexityAdapter(API_KEY, fake.base_url, http_client)


def ask(input: dict[str, Any] | None = None, **kwargs: Any) -> ToolCall:
    return ToolCall(
        tool="search.answer",
        input=QUESTION if input is None else input,
        idempotency_key="run-1:search:1",
        **kwargs,
    )


async def failure_of(adapter: PerplexityAdapter, request: ToolCall | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await adapter.call(request or ask())
    return caught.value


async def test_answers_with_its_sources_and_reports_tokens_and_cost(
    adapter: PerplexityAdapter, fake: PerplexityFake
) -> None:
    outcome = await adapter.call(ask())

    # The annotation repeats the first search result: each source is listed once, in order.
    assert outcome.output == {"answer": ANSWER, "citations": SOURCES}
    assert outcome.usage is not None
    assert (outcome.usage.input_tokens, outcome.usage.output_tokens, outcome.usage.total_tokens) == (
        12,
        9,
        21,
    )
    assert outcome.usage.cost == pytest.approx(0.005021)
    assert outcome.model == "perplexity/sonar"
    assert outcome.response_id is not None
    assert outcome.response_id.startswith("resp_")
    [sent] = fake.requests
    assert sent.path == "/v1/agent"
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.json["model"] == "perplexity/sonar"
    assert sent.json["input"] == QUESTION["query"]
    assert sent.json["tools"] == [{"type": "web_search"}]
    # Offering the tool is not enough for the Agent API to search; the adapter insists.
    assert sent.json["tool_choice"] == {"type": "web_search"}


async def test_recency_becomes_a_search_filter_and_config_sets_model_and_cap(
    adapter: PerplexityAdapter, fake: PerplexityFake
) -> None:
    await adapter.call(ask({**QUESTION, "recency": "week"}, config={"model": "sonar", "maxTokens": 300}))

    sent = fake.requests[0].json
    assert sent["tools"] == [{"type": "web_search", "filters": {"search_recency_filter": "week"}}]
    assert sent["model"] == "perplexity/sonar"
    assert sent["max_output_tokens"] == 300


async def test_an_answer_without_sources_has_no_citations(
    adapter: PerplexityAdapter, fake: PerplexityFake
) -> None:
    body = agent_response(sources=[])
    body["output"] = [item for item in body["output"] if item["type"] == "message"]
    fake.fail_next(Fault(status=200, body=body))

    outcome = await adapter.call(ask())

    assert outcome.output == {"answer": ANSWER, "citations": []}


@pytest.mark.parametrize(
    ("input", "field"),
    [({}, "query"), ({"query": ""}, "$.query"), ({"query": "q", "recency": "decade"}, "$.recency")],
)
async def test_invalid_input_is_a_bad_request_naming_the_field(
    adapter: PerplexityAdapter, fake: PerplexityFake, input: dict[str, Any], field: str
) -> None:
    error = await failure_of(adapter, ask(input))

    assert error.kind == ProviderErrorKind.BAD_REQUEST
    assert field in error.message
    assert fake.requests == []


async def test_rejected_key_is_auth_and_not_retryable(
    http_client: httpx.AsyncClient, fake: PerplexityFake
) -> None:
    adapter = PerplexityAdapter("pplx-wrong", fake.base_url, http_client)

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.AUTH, 401, False)


async def test_rate_limit_is_retryable_and_carries_retry_after(
    adapter: PerplexityAdapter, fake: PerplexityFake
) -> None:
    fake.fail_next(Fault(status=429, headers={"Retry-After": "12"}))

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable, error.retry_after_s) == (
        ProviderErrorKind.RATE_LIMITED,
        429,
        True,
        12.0,
    )
    assert "request_rate_limit_exceeded" in error.message


@pytest.mark.parametrize("status", [500, 502])
async def test_server_errors_are_retryable(
    adapter: PerplexityAdapter, fake: PerplexityFake, status: int
) -> None:
    fake.fail_next(Fault(status=status))

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.SERVER, status, True)


async def test_a_rejected_field_is_a_bad_request_with_perplexitys_message(
    adapter: PerplexityAdapter, fake: PerplexityFake
) -> None:
    fake.fail_next(
        Fault(status=400, body=fake.error_body(400, 'invalid request body: json: unknown field "n"'))
    )

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.BAD_REQUEST, 400, False)
    assert error.message == 'invalid request body: json: unknown field "n"'


@pytest.mark.parametrize(
    ("error", "kind", "status"),
    [
        (
            {"message": "upstream model failed", "type": "internal_error", "code": 502},
            ProviderErrorKind.SERVER,
            502,
        ),
        ({"message": "model overloaded"}, ProviderErrorKind.SERVER, None),
        ({"message": "over the limit", "code": "429"}, ProviderErrorKind.RATE_LIMITED, 429),
    ],
)
async def test_a_run_that_failed_after_a_200_is_classified_by_its_error(
    adapter: PerplexityAdapter,
    fake: PerplexityFake,
    error: dict[str, Any],
    kind: ProviderErrorKind,
    status: int | None,
) -> None:
    fake.fail_next(Fault(status=200, body=agent_response(status="failed", output=[], error=error)))

    failure = await failure_of(adapter)

    assert (failure.kind, failure.status, failure.retryable) == (kind, status, True)
    assert failure.message == error["message"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html>Bad gateway</html>", "not JSON"),
        (b"[]", "not a JSON object"),
        (agent_response(output=None), "no output"),
        (agent_response(answer="  "), "no answer text"),
        (
            agent_response(status="incomplete", incomplete_details={"reason": "max_output_tokens"}),
            "incomplete (max_output_tokens)",
        ),
        (agent_response(status="in_progress"), "not finished"),
    ],
)
async def test_a_200_that_breaks_the_contract_is_malformed(
    adapter: PerplexityAdapter, fake: PerplexityFake, body: Any, expected: str
) -> None:
    fake.fail_next(Fault(status=200, body=body))

    error = await failure_of(adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.MALFORMED_RESPONSE, True)
    assert expected in error.message


async def test_slow_answer_is_a_retryable_timeout(adapter: PerplexityAdapter, fake: PerplexityFake) -> None:
    fake.fail_next(Fault(delay_s=5))

    error = await failure_of(adapter, ask(timeout_s=0.3))

    assert (error.kind, error.retryable) == (ProviderErrorKind.TIMEOUT, True)


async def test_without_a_key_calls_fail_unavailable_without_a_request(
    http_client: httpx.AsyncClient, fake: PerplexityFake
) -> None:
    error = await failure_of(PerplexityAdapter("", fake.base_url, http_client))

    assert (error.kind, error.retryable) == (ProviderErrorKind.UNAVAILABLE, False)
    assert fake.requests == []


async def test_other_tools_are_unknown(adapter: PerplexityAdapter) -> None:
    error = await failure_of(adapter, ToolCall(tool="web.scrape", input={}, idempotency_key="k"))

    assert error.kind == ProviderErrorKind.UNKNOWN_TOOL
    assert adapter.tools == frozenset({"search.answer"})
    assert adapter.provider == "perplexity"
