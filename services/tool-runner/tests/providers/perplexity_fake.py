"""Perplexity's Agent API (``POST /v1/agent``) as its adapter uses it, for tests over real HTTP.

Strict like the real one: an unknown top-level field is a 400 naming it. The answer carries a
``search_results`` output item and a ``message`` with ``output_text``; errors are
``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from http_fake import FakeProvider

API_KEY = "pplx-test"
ANSWER = "The Eiffel Tower is 330 metres tall [1]."
SOURCES = ["https://www.toureiffel.paris/en", "https://en.wikipedia.org/wiki/Eiffel_Tower"]
_FIELDS = {
    "input",
    "instructions",
    "language_preference",
    "max_output_tokens",
    "max_steps",
    "model",
    "models",
    "preset",
    "reasoning",
    "response_format",
    "stream",
    "tools",
    "tool_choice",
    "max_tool_calls",
    "previous_response_id",
    "background",
    "metadata",
    "store",
    "truncation",
    "temperature",
    "top_p",
}
_TYPES = {
    400: "invalid_request",
    401: "forbidden",
    403: "forbidden",
    429: "request_rate_limit_exceeded",
    500: "internal_error",
    502: "bad_gateway",
}


def agent_response(answer: str = ANSWER, sources: list[str] = SOURCES, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": 1764500000,
        "model": "perplexity/sonar",
        "status": "completed",
        "output": [
            {
                "type": "search_results",
                "queries": ["eiffel tower height"],
                "results": [
                    {
                        "id": i + 1,
                        "url": url,
                        "title": f"Source {i + 1}",
                        "snippet": "...",
                        "date": "2026-11-01",
                    }
                    for i, url in enumerate(sources)
                ],
            },
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex}",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": answer,
                        "annotations": [
                            {"type": "url_citation", "url": sources[0], "start_index": 0, "end_index": 10}
                        ]
                        if sources
                        else [],
                    }
                ],
            },
        ],
        "usage": {
            "input_tokens": 12,
            "output_tokens": 9,
            "total_tokens": 21,
            "tool_calls_details": {"search_web": {"invocation": 1}},
            "cost": {
                "currency": "USD",
                "input_cost": 0.000012,
                "output_cost": 0.000009,
                "tool_calls_cost": 0.005,
                "total_cost": 0.005021,
            },
        },
    }
    body.update(overrides)
    return body


class PerplexityFake(FakeProvider):
    route = "/v1/agent"

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def error_body(self, status: int, message: str | None = None) -> Any:
        return {
            "error": {
                "message": message or f"{_TYPES.get(status, 'error')} (HTTP {status})",
                "type": _TYPES.get(status, "error"),
                "code": status,
            }
        }

    async def answer(self, request: web.Request, body: Any) -> web.StreamResponse:
        if not isinstance(body, dict):
            return self.error(400, "invalid request body")
        for name in body:
            if name not in _FIELDS:
                error = self.error_body(400, f'invalid request body: json: unknown field "{name}"')
                error["error"]["param"] = name
                return web.json_response(error, status=400)
        if not body.get("input") or not (body.get("model") or body.get("preset") or body.get("models")):
            return self.error(400, "input and one of model, models or preset are required")
        return web.json_response(agent_response())
