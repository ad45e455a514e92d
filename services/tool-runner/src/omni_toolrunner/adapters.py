"""Which adapter serves which provider, built from the runner's settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

from omni_toolrunner.providers import OpenRouterAdapter, ProviderAdapter
from omni_toolrunner.providers.local import LOCAL, LocalAdapter
from omni_toolrunner.providers.openrouter import DEFAULT_MODEL, DEFAULT_TOOL_MODELS, MODEL_ALIASES
from omni_toolrunner.settings import ToolRunnerSettings

OPENROUTER = "openrouter"
KNOWN_PROVIDERS = (OPENROUTER, LOCAL)

ModelOf = Callable[[str, Mapping[str, Any]], str | None]
"""The model a call of ``tool`` with step ``config`` asks for, for the span's ``gen_ai.request.model``."""


@dataclass(frozen=True)
class ProviderBinding:
    adapter: ProviderAdapter
    operation: str  # gen_ai.operation.name of the provider's calls
    request_model: ModelOf
    missing_credentials: str | None  # why the provider cannot work, or None

    async def aclose(self) -> None:
        await self.adapter.aclose()


def http_client(settings: ToolRunnerSettings) -> httpx.AsyncClient:
    """One client per replica, its pool sized for every invoke that may be in flight.

    It sends through aiohttp's connection pool: httpcore's pool checks every pooled connection
    (a poll() each) for every request it assigns, which capped a replica at about 200 calls/s
    with 32 in flight on this kind of machine; the same client on aiohttp made about 1,400.
    """
    limits = httpx.Limits(
        max_connections=settings.max_concurrency,
        max_keepalive_connections=settings.max_concurrency,
        keepalive_expiry=30.0,
    )
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits),
        limits=limits,
        timeout=httpx.Timeout(settings.call_timeout_s),
    )


def bind_provider(settings: ToolRunnerSettings, client: httpx.AsyncClient) -> ProviderBinding:
    """The adapter for ``settings.provider``; the caller owns (and closes) ``client``."""
    if settings.provider == OPENROUTER:
        key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
        default_model = settings.openrouter_model or DEFAULT_MODEL

        def openrouter_model(tool: str, config: Mapping[str, Any]) -> str | None:
            named = config.get("model")
            model = (
                named if isinstance(named, str) and named else DEFAULT_TOOL_MODELS.get(tool, default_model)
            )
            return MODEL_ALIASES.get(model, model)

        return ProviderBinding(
            adapter=OpenRouterAdapter(key, settings.openrouter_base_url, default_model, client),
            operation="chat",
            request_model=openrouter_model,
            missing_credentials=None if key else "OPENROUTER_API_KEY is not set",
        )
    if settings.provider == LOCAL:
        return ProviderBinding(
            adapter=LocalAdapter(),
            operation="execute_tool",
            request_model=lambda _tool, _config: None,
            missing_credentials=None,
        )
    raise ValueError(f"no adapter for provider {settings.provider!r} (known: {', '.join(KNOWN_PROVIDERS)})")
