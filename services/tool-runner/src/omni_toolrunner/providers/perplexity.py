"""Perplexity adapter: ``search.answer``, a web-grounded answer with its sources, via the Agent API.

Perplexity retired Sonar chat completions (``POST /chat/completions``) on 2026-09-27; its replacement is
the Agent API, ``POST {base_url}/v1/agent`` (``/v1/responses`` is an alias), OpenAI-Responses-shaped.
Checked against Perplexity's API reference and migration guide:

* request: ``{model: "perplexity/sonar", input, instructions, tools: [{type: "web_search", filters:
  {search_recency_filter}}], tool_choice: {type: "web_search"}}`` with ``Authorization: Bearer``. The
  API rejects unknown fields with a 400, so only those are sent. Offering the tool does not make the
  model search; ``tool_choice`` does, which keeps every answer grounded as Sonar's were.
* response: ``{id, model, status, output: [...], usage}``; the answer is the ``output_text`` parts of
  ``message`` items, the sources are the ``search_results`` item's ``results[].url`` (annotations
  may add ``url_citation``s, often none), and ``usage`` has ``input_tokens``, ``output_tokens``,
  ``total_tokens`` and ``cost.total_cost`` in USD.
* errors: ``{"error": {"message", "type", "code"}}`` with the HTTP status; a run that failed or was
  cancelled after it started comes back as a 200 with ``status: "failed"`` and ``error`` set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

import httpx
import msgspec
from omni_contract.tools import Capability

from omni_toolrunner.providers.base import ProviderError, ProviderErrorKind, ToolCall, ToolOutcome, Usage
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
    classify_status,
    convert,
    decode_json_object,
    openai_error_message,
    post_json,
    shorten,
    status_error,
)

if TYPE_CHECKING:
    from omni_toolrunner.settings import ToolRunnerSettings

logger = logging.getLogger(__name__)

PROVIDER = "perplexity"
ENV = ProviderEnv("PERPLEXITY_API_KEY", base_url="PERPLEXITY_BASE_URL", model="PERPLEXITY_MODEL")
SEARCH_ANSWER = "search.answer"
DEFAULT_BASE_URL = "https://api.perplexity.ai"
DEFAULT_MODEL = "perplexity/sonar"
# Workflow files written for Sonar name its old models; these are the Agent API's equivalents.
MODEL_ALIASES: Mapping[str, str] = {"sonar": "perplexity/sonar", "sonar-pro": "perplexity/sonar"}
INSTRUCTIONS = (
    "Answer the question accurately and concisely from current web search results. "
    "Say so when the sources do not settle it."
)


class SearchInput(msgspec.Struct, frozen=True):
    query: Annotated[str, msgspec.Meta(min_length=1)]
    recency: Literal["hour", "day", "week", "month", "year"] | None = None


class SearchConfig(msgspec.Struct, rename="camel", frozen=True):
    """The step ``config`` keys this adapter honours; other keys (timeouts, fallbacks) are the engine's."""

    model: str | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=16)] | None = None


class PerplexityAdapter(HttpAdapter):
    """Serves ``search.answer``: input ``{query, recency?}``, output ``{answer, citations: [url, ...]}``.

    Pass ``client`` to share a connection pool (closing it stays yours). An empty ``api_key`` makes every
    call fail with ``unavailable`` instead of failing construction.
    """

    def __init__(
        self,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        client: httpx.AsyncClient | None = None,
        *,
        model: str = DEFAULT_MODEL,
    ) -> None:
        self._api_key = api_key or None
        self._url = base_url.rstrip("/") + "/v1/agent"
        super().__init__(client)
        self._model = model

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def tools(self) -> frozenset[str]:
        return frozenset({SEARCH_ANSWER})

    async def call(self, request: ToolCall) -> ToolOutcome:
        if request.tool != SEARCH_ANSWER:
            raise ProviderError(ProviderErrorKind.UNKNOWN_TOOL, f"perplexity does not serve {request.tool!r}")
        if self._api_key is None:
            raise ProviderError(
                ProviderErrorKind.UNAVAILABLE, f"no Perplexity API key is configured ({ENV.api_key})"
            )
        data = convert(request.input, SearchInput, "input")
        config = convert(request.config, SearchConfig, "config")
        model = MODEL_ALIASES.get(config.model or self._model, config.model or self._model)
        search_tool: dict[str, Any] = {"type": "web_search"}
        if data.recency is not None:
            search_tool["filters"] = {"search_recency_filter": data.recency}
        body: dict[str, Any] = {
            "model": model,
            "input": data.query,
            "instructions": INSTRUCTIONS,
            "tools": [search_tool],
            "tool_choice": {"type": "web_search"},
            "stream": False,
        }
        if config.max_tokens is not None:
            body["max_output_tokens"] = config.max_tokens
        with failures_logged(logger, "perplexity", request, model):
            response = await post_json(
                self._client,
                self._url,
                body,
                provider="Perplexity",
                headers={"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"},
                timeout_s=request.timeout_s,
            )
            if response.status_code != 200:
                raise status_error(response, openai_error_message)
            outcome = _read_response(decode_json_object(response.content, "Perplexity"), model)
        return outcome


def _read_response(body: dict[str, Any], requested_model: str) -> ToolOutcome:
    status = body.get("status")
    if status in ("failed", "cancelled"):
        raise _run_error(body.get("error"), status)
    if status == "incomplete":
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        raise ProviderError(
            ProviderErrorKind.MALFORMED_RESPONSE, f"the answer is incomplete ({reason or 'no reason'})"
        )
    if status not in (None, "completed"):
        raise ProviderError(
            ProviderErrorKind.MALFORMED_RESPONSE, f"the response is not finished (status {status!r})"
        )
    output = body.get("output")
    if not isinstance(output, list):
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the response has no output")
    texts: list[str] = []
    citations: list[str] = []
    for item in output:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(str(part.get("text") or ""))
                    citations.extend(
                        str(a["url"])
                        for a in part.get("annotations") or []
                        if isinstance(a, dict) and a.get("type") == "url_citation" and a.get("url")
                    )
        elif item.get("type") == "search_results":
            citations.extend(
                str(r["url"]) for r in item.get("results") or [] if isinstance(r, dict) and r.get("url")
            )
    answer = "".join(texts).strip()
    if not answer:
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the response carried no answer text")
    model = body.get("model")
    response_id = body.get("id")
    return ToolOutcome(
        # Sources in the order Perplexity found them, each once.
        output={"answer": answer, "citations": list(dict.fromkeys(citations))},
        usage=_usage(body.get("usage")),
        model=model if isinstance(model, str) and model else requested_model,
        response_id=response_id if isinstance(response_id, str) else None,
    )


def _run_error(error: object, status: str) -> ProviderError:
    message = f"the run {status}"
    code: object = None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        code = error.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return classify_status(code, message, retry_after_s=None)
    # A run that failed on Perplexity's side with no HTTP-like code: upstream trouble, worth a retry.
    return ProviderError(ProviderErrorKind.SERVER, shorten(message))


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(raw: object) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    input_tokens, output_tokens = _int(raw.get("input_tokens")), _int(raw.get("output_tokens"))
    cost = raw.get("cost")
    total_cost = cost.get("total_cost") if isinstance(cost, dict) else None
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=_int(raw.get("total_tokens")) or input_tokens + output_tokens,
        cost=float(total_cost)
        if isinstance(total_cost, int | float) and not isinstance(total_cost, bool)
        else None,
    )


# --- declaration -------------------------------------------------------------------------------------

SEARCH_ANSWER_DOC = ToolDoc(
    SEARCH_ANSWER,
    "Answer a question from a live web search, with citations",
    input_schema_of(SearchInput),
    object_schema(
        {"answer": {"type": "string"}, "citations": {"type": "array", "items": {"type": "string"}}}
    ),
    (Capability(name="web-search", input_types=["text"], output_types=["text"]),),
    timeout_ms=60_000,
)


def _bind(
    settings: ToolRunnerSettings, environ: Mapping[str, str], client: httpx.AsyncClient
) -> ProviderBinding:
    key, base_url, model = ENV.read(environ)
    adapter = PerplexityAdapter(key, base_url or DEFAULT_BASE_URL, client, model=model or DEFAULT_MODEL)
    return ProviderBinding(adapter, "chat", fixed_model(model or DEFAULT_MODEL), ENV.missing(key))


DECLARATION = ProviderDeclaration(name=PROVIDER, env=ENV, tools=(SEARCH_ANSWER_DOC,), bind=_bind)
