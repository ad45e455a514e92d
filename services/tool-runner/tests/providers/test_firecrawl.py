"""The Firecrawl adapter against a fake of Firecrawl's scrape API, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from firecrawl_fake import API_KEY, FirecrawlFake
from http_fake import Fault, serving
from omni_toolrunner.providers import ProviderError, ProviderErrorKind, ToolCall
from omni_toolrunner.providers.firecrawl import FirecrawlAdapter

PAGE = "https://example.com/"


@pytest.fixture
async def fake() -> AsyncIterator[FirecrawlFake]:
    fake = FirecrawlFake(API_KEY)
    async with serving(fake):
        yield fake


@pytest.fixture
def adapter(fake: FirecrawlFake, http_client: httpx.AsyncClient) -> FirecrawlAdapter:
    return FirecrawlAdapter(API_KEY, fake.base_url, http_client)


def scrape(input: dict[str, Any] | None = None, **kwargs: Any) -> ToolCall:
    return ToolCall(
        tool="web.scrape",
        input={"url": PAGE} if input is None else input,
        idempotency_key="run-1:scrape:1",
        **kwargs,
    )


async def failure_of(adapter: FirecrawlAdapter, request: ToolCall | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await adapter.call(request or scrape())
    return caught.value


async def test_scrapes_a_page_to_markdown(adapter: FirecrawlAdapter, fake: FirecrawlFake) -> None:
    outcome = await adapter.call(scrape(timeout_s=20))

    assert outcome.output == {
        "markdown": "# Example Domain\n\nThis domain is for use in documentation examples.",
        "title": "Example Domain",
        "url": PAGE,
        "statusCode": 200,
    }
    assert outcome.usage is None
    assert outcome.response_id is not None
    [sent] = fake.requests
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    # Firecrawl is told to stop a second before the step's deadline.
    assert sent.json == {"url": PAGE, "formats": ["markdown"], "onlyMainContent": True, "timeout": 19_000}


async def test_reports_where_redirects_led_and_what_the_site_answered(
    adapter: FirecrawlAdapter, fake: FirecrawlFake
) -> None:
    fake.page(
        "http://example.com/old",
        title="Not Found",
        markdown="# Gone",
        status=404,
        final_url="https://example.com/new",
    )

    outcome = await adapter.call(scrape({"url": "http://example.com/old"}))

    # A 404 page is a page Firecrawl scraped successfully; the site's status is part of the output.
    assert outcome.output == {
        "markdown": "# Gone",
        "title": "Not Found",
        "url": "https://example.com/new",
        "statusCode": 404,
    }


async def test_extra_formats_are_asked_for_and_returned(
    adapter: FirecrawlAdapter, fake: FirecrawlFake
) -> None:
    outcome = await adapter.call(
        scrape({"url": PAGE, "formats": ["html", "markdown", "links"]}, config={"onlyMainContent": False})
    )

    assert fake.requests[0].json["formats"] == ["markdown", "html", "links"]
    assert fake.requests[0].json["onlyMainContent"] is False
    assert outcome.output["html"] == "<h1>Example Domain</h1>"
    assert outcome.output["links"] == ["https://www.iana.org/domains/example"]


@pytest.mark.parametrize(
    ("input", "field"),
    [
        ({}, "url"),
        ({"url": "example.com"}, "$.url"),
        ({"url": "file:///etc/passwd"}, "$.url"),
        ({"url": PAGE, "formats": ["screenshot"]}, "$.formats[0]"),
    ],
)
async def test_invalid_input_is_a_bad_request_naming_the_field(
    adapter: FirecrawlAdapter, fake: FirecrawlFake, input: dict[str, Any], field: str
) -> None:
    error = await failure_of(adapter, scrape(input))

    assert error.kind == ProviderErrorKind.BAD_REQUEST
    assert field in error.message
    assert fake.requests == []


async def test_rejected_key_is_auth_and_not_retryable(
    http_client: httpx.AsyncClient, fake: FirecrawlFake
) -> None:
    error = await failure_of(FirecrawlAdapter("fc-wrong", fake.base_url, http_client))

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.AUTH, 401, False)
    assert error.message == "Unauthorized: Invalid token"


async def test_used_up_credits_are_unavailable_and_not_retryable(
    adapter: FirecrawlAdapter, fake: FirecrawlFake
) -> None:
    fake.fail_next(Fault(status=402))

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.UNAVAILABLE, 402, False)
    assert error.message == "Payment required to access this resource."


async def test_rate_limit_is_retryable_and_carries_retry_after(
    adapter: FirecrawlAdapter, fake: FirecrawlFake
) -> None:
    fake.fail_next(Fault(status=429, headers={"Retry-After": "30"}))

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable, error.retry_after_s) == (
        ProviderErrorKind.RATE_LIMITED,
        429,
        True,
        30.0,
    )


@pytest.mark.parametrize(
    ("status", "kind"),
    [(408, ProviderErrorKind.TIMEOUT), (500, ProviderErrorKind.SERVER), (502, ProviderErrorKind.SERVER)],
)
async def test_firecrawl_timeouts_and_server_errors_are_retryable(
    adapter: FirecrawlAdapter, fake: FirecrawlFake, status: int, kind: ProviderErrorKind
) -> None:
    fake.fail_next(Fault(status=status))

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (kind, status, True)


async def test_a_bad_request_carries_firecrawls_details(
    adapter: FirecrawlAdapter, fake: FirecrawlFake
) -> None:
    fake.fail_next(
        Fault(status=400, body={"success": False, "error": "Bad Request", "details": "url: Invalid url"})
    )

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.BAD_REQUEST, 400, False)
    assert error.message == "Bad Request (url: Invalid url)"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"upstream connect error", "not JSON"),
        ({"success": False, "error": "Scrape failed"}, "did not succeed: Scrape failed"),
        ({"success": True}, "no data"),
        ({"success": True, "data": {"metadata": {"statusCode": 200}}}, "no markdown"),
        ({"success": True, "data": {"markdown": "# Hi", "metadata": {"title": "Hi"}}}, "no statusCode"),
    ],
)
async def test_a_200_that_breaks_the_contract_is_malformed(
    adapter: FirecrawlAdapter, fake: FirecrawlFake, body: Any, expected: str
) -> None:
    fake.fail_next(Fault(status=200, body=body))

    error = await failure_of(adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.MALFORMED_RESPONSE, True)
    assert expected in error.message


async def test_slow_answer_is_a_retryable_timeout(adapter: FirecrawlAdapter, fake: FirecrawlFake) -> None:
    fake.fail_next(Fault(delay_s=5))

    error = await failure_of(adapter, scrape(timeout_s=0.3))

    assert (error.kind, error.retryable) == (ProviderErrorKind.TIMEOUT, True)


async def test_without_a_key_calls_fail_unavailable_without_a_request(
    http_client: httpx.AsyncClient, fake: FirecrawlFake
) -> None:
    error = await failure_of(FirecrawlAdapter(None, fake.base_url, http_client))

    assert (error.kind, error.retryable) == (ProviderErrorKind.UNAVAILABLE, False)
    assert fake.requests == []


async def test_other_tools_are_unknown(adapter: FirecrawlAdapter) -> None:
    error = await failure_of(adapter, ToolCall(tool="search.answer", input={}, idempotency_key="k"))

    assert error.kind == ProviderErrorKind.UNKNOWN_TOOL
    assert adapter.tools == frozenset({"web.scrape"})
    assert adapter.provider == "firecrawl"
