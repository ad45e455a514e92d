"""The provider simulator speaking each OpenAI-compatible provider's dialect, for tests over HTTP.

The simulator answers in OpenRouter's shape. A thin middleware turns its answers into what each
provider sends instead: no ``usage.cost`` (xAI reports ``cost_in_usd_ticks``, DeepSeek its cache
split), and, where a provider only promises JSON (``json_object``) or nothing at all (MiniMax), a
model that follows the schema given in the prompt, with MiniMax's inline thinking and a Markdown
fence around it. Faults, counters and recorded requests are the simulator's own.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from omni_simulator import RunningSimulator, SimulatorState, build_app
from omni_simulator.answers import answer_for_schema, read_prompt
from omni_testkit import serving_app

_SCHEMA_IN_PROMPT = re.compile(r"named (?P<name>\w+):\n(?P<schema>\{.*\})\s*$", re.DOTALL)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _speak_dialect(profile: str) -> Any:
    @web.middleware
    async def dialect(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if not request.path.endswith("/chat/completions") or not isinstance(response, web.Response):
            return response
        if response.status != 200 or not isinstance(response.body, bytes):
            return response
        try:
            completion = json.loads(response.body)
        except ValueError:
            return response  # a "malformed" fault: pass it on as the provider would
        sent = json.loads(await request.read())
        _follow_schema_in_prompt(profile, sent, completion)
        _report_usage(profile, completion["usage"])
        return web.json_response(completion)

    return dialect


def _follow_schema_in_prompt(profile: str, sent: dict[str, Any], completion: dict[str, Any]) -> None:
    """What a model told the schema in its system prompt answers when nothing enforces it."""
    if (sent.get("response_format") or {}).get("type") == "json_schema":
        return
    choice = completion["choices"][0]
    content = choice["message"]["content"]
    generic = content.startswith('{"text"') or content.startswith("Simulated reply to:")
    system = next(m["content"] for m in sent["messages"] if m["role"] == "system")
    match = _SCHEMA_IN_PROMPT.search(system)
    if choice["finish_reason"] != "stop" or not generic or match is None:
        return
    value = answer_for_schema(match["name"], json.loads(match["schema"]), read_prompt(sent["messages"]))
    content = json.dumps(value, ensure_ascii=False)
    if profile == "minimax":
        content = f"<think>The learner wants {match['name']} as JSON.</think>\n```json\n{content}\n```"
    choice["message"]["content"] = content


def _report_usage(profile: str, usage: dict[str, Any]) -> None:
    cost = usage.pop("cost", None)
    usage.pop("cost_details", None)
    usage.pop("is_byok", None)
    if profile == "grok" and cost is not None:
        usage["cost_in_usd_ticks"] = round(cost * 10_000_000_000)
    if profile == "deepseek":
        usage["prompt_cache_hit_tokens"] = 0
        usage["prompt_cache_miss_tokens"] = usage["prompt_tokens"]


@asynccontextmanager
async def dialect_simulator(profile: str) -> AsyncIterator[RunningSimulator]:
    state = SimulatorState()
    app = build_app(state)
    app.middlewares.append(_speak_dialect(profile))
    async with serving_app(app, shutdown_timeout=0.5) as base_url:
        port = urlsplit(base_url).port
        assert port is not None
        yield RunningSimulator(host="127.0.0.1", port=port, state=state)
