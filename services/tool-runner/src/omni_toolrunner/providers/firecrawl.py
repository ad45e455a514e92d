"""Firecrawl adapter: ``web.scrape``, one page as clean Markdown.

Wire format (checked against Firecrawl's API reference, v2, the current version): ``POST
{base_url}/v2/scrape`` with ``Authorization: Bearer <key>`` and ``{url, formats, timeout}``; the answer
is ``{success: true, data: {markdown, metadata: {title, sourceURL, url, statusCode, creditsUsed}}}``,
where ``statusCode`` is what the scraped site answered (a 404 page is still a successful scrape).
Errors are ``{success: false, error, details?}`` with 400, 401, 402 (credits used up), 408 (Firecrawl's
own ``timeout`` passed), 429 and 5xx.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
import msgspec
from omni_contract.tools import Capability

from omni_toolrunner.providers.base import ProviderError, ProviderErrorKind, ToolCall, ToolOutcome
from omni_toolrunner.providers.declaration import (
    ProviderBinding,
    ProviderDeclaration,
    ProviderEnv,
    ToolDoc,
    fixed_model,
    input_schema_of,
    object_schema,
)
from omni_toolrunner.providers.http_client import HttpAdapter, failures_logged
from omni_toolrunner.providers.http_errors import (
    convert,
    decode_json_object,
    error_message,
    out_of_credits,
    post_json,
    status_error,
)

if TYPE_CHECKING:
    from omni_toolrunner.settings import ToolRunnerSettings

logger = logging.getLogger(__name__)

PROVIDER = "firecrawl"
ENV = ProviderEnv("FIRECRAWL_API_KEY", base_url="FIRECRAWL_BASE_URL")
WEB_SCRAPE = "web.scrape"
DEFAULT_BASE_URL = "https://api.firecrawl.dev"
# Firecrawl is told to give up this long before the step's deadline, so a slow page ends in its 408
# (which is not billed) rather than in a request this side abandons.
_DEADLINE_MARGIN_MS = 1000

TextFormat = Literal["markdown", "html", "rawHtml", "links", "summary"]


class ScrapeInput(msgspec.Struct, frozen=True):
    url: Annotated[str, msgspec.Meta(min_length=1)]
    # Markdown is always asked for (the output needs it); other text formats are added to the output.
    formats: list[TextFormat] | None = None


class ScrapeConfig(msgspec.Struct, rename="camel", frozen=True):
    """The step ``config`` keys this adapter honours; other keys (timeouts, fallbacks) are the engine's."""

    only_main_content: bool | None = None


class FirecrawlAdapter(HttpAdapter):
    """Serves ``web.scrape``: input ``{url, formats?}``, output ``{markdown, title, url, statusCode}``.

    Pass ``client`` to share a connection pool (closing it stays yours). An empty ``api_key`` makes every
    call fail with ``unavailable`` instead of failing construction.
    """

    def __init__(
        self,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        client: httpx.AsyncClient | None = None,
        *,
        only_main_content: bool = True,
    ) -> None:
        self._api_key = api_key or None
        self._url = base_url.rstrip("/") + "/v2/scrape"
        super().__init__(client)
        self._only_main_content = only_main_content

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def tools(self) -> frozenset[str]:
        return frozenset({WEB_SCRAPE})

    async def call(self, request: ToolCall) -> ToolOutcome:
        if request.tool != WEB_SCRAPE:
            raise ProviderError(ProviderErrorKind.UNKNOWN_TOOL, f"firecrawl does not serve {request.tool!r}")
        if self._api_key is None:
            raise ProviderError(
                ProviderErrorKind.UNAVAILABLE, f"no Firecrawl API key is configured ({ENV.api_key})"
            )
        data = convert(request.input, ScrapeInput, "input")
        config = convert(request.config, ScrapeConfig, "config")
        target = urlsplit(data.url)
        if target.scheme not in ("http", "https") or not target.netloc:
            raise ProviderError(
                ProviderErrorKind.BAD_REQUEST,
                f"invalid input: {data.url!r} is not an http(s) URL - at `$.url`",
            )
        formats: list[str] = list(dict.fromkeys(["markdown", *(data.formats or [])]))
        only_main = self._only_main_content if config.only_main_content is None else config.only_main_content
        body = {
            "url": data.url,
            "formats": formats,
            "onlyMainContent": only_main,
            "timeout": max(1000, int(request.timeout_s * 1000) - _DEADLINE_MARGIN_MS),
        }
        with failures_logged(logger, "firecrawl", request):
            response = await post_json(
                self._client,
                self._url,
                body,
                provider="Firecrawl",
                headers={"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"},
                timeout_s=request.timeout_s,
            )
            if response.status_code == 402:
                message = error_message(response.content, _message_of) or "Firecrawl credits are used up"
                raise out_of_credits(message, status=402)
            if response.status_code != 200:
                raise status_error(response, _message_of)
            output, scrape_id = _read_scrape(
                decode_json_object(response.content, "Firecrawl"), data.url, formats
            )
        # Firecrawl bills in credits (metadata.creditsUsed), which have no fixed USD price: no usage.
        return ToolOutcome(output=output, response_id=scrape_id)


def _read_scrape(
    body: dict[str, Any], requested_url: str, formats: list[str]
) -> tuple[dict[str, Any], str | None]:
    if body.get("success") is not True:
        raise ProviderError(
            ProviderErrorKind.MALFORMED_RESPONSE,
            f"the scrape did not succeed: {_message_of(body) or 'no reason given'}",
        )
    data = body.get("data")
    if not isinstance(data, dict):
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the response has no data")
    markdown = data.get("markdown")
    metadata = data.get("metadata")
    if not isinstance(markdown, str) or not isinstance(metadata, dict):
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the response has no markdown or metadata")
    status = metadata.get("statusCode")
    if not isinstance(status, int) or isinstance(status, bool):
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the response metadata has no statusCode")
    title = metadata.get("title")
    # metadata.url is where redirects led; sourceURL is what was asked for.
    url = next(
        (u for u in (metadata.get("url"), metadata.get("sourceURL")) if isinstance(u, str) and u), None
    )
    output: dict[str, Any] = {
        "markdown": markdown,
        "title": title if isinstance(title, str) else None,
        "url": url or requested_url,
        "statusCode": status,
    }
    for name in formats:
        if name != "markdown" and name in data:
            output[name] = data[name]
    scrape_id = metadata.get("scrapeId")
    return output, scrape_id if isinstance(scrape_id, str) else None


def _message_of(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if not isinstance(error, str) or not error:
        return None
    details = body.get("details")
    return f"{error} ({details})" if isinstance(details, str) and details else error


# --- declaration -------------------------------------------------------------------------------------

WEB_SCRAPE_DOC = ToolDoc(
    WEB_SCRAPE,
    "Fetch a web page as Markdown",
    input_schema_of(ScrapeInput),
    object_schema(
        {"markdown": {"type": "string"}, "url": {"type": "string"}},
        # A page without a <title> has none.
        {"title": {"type": ["string", "null"]}, "statusCode": {"type": "integer"}},
    ),
    (Capability(name="scraping", input_types=["text/uri-list"], output_types=["text/markdown"]),),
    timeout_ms=60_000,
)


def _bind(
    settings: ToolRunnerSettings, environ: Mapping[str, str], client: httpx.AsyncClient
) -> ProviderBinding:
    key, base_url, _model = ENV.read(environ)
    adapter = FirecrawlAdapter(key, base_url or DEFAULT_BASE_URL, client)
    return ProviderBinding(adapter, "execute_tool", fixed_model(None), ENV.missing(key))


DECLARATION = ProviderDeclaration(name=PROVIDER, env=ENV, tools=(WEB_SCRAPE_DOC,), bind=_bind)
