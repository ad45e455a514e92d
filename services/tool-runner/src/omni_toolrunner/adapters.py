"""Which adapter serves which provider, built from the runner's settings."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport
from omni_contract.declared import DECLARED_PROVIDER

from omni_toolrunner.providers import OpenRouterAdapter, ProviderAdapter
from omni_toolrunner.providers.declared import DeclaredHttpAdapter
from omni_toolrunner.providers.elevenlabs import DEFAULT_BASE_URL as ELEVENLABS_URL
from omni_toolrunner.providers.elevenlabs import DEFAULT_MODEL as ELEVENLABS_MODEL
from omni_toolrunner.providers.elevenlabs import DEFAULT_VOICE_ID as ELEVENLABS_VOICE
from omni_toolrunner.providers.elevenlabs import PROVIDER as ELEVENLABS
from omni_toolrunner.providers.elevenlabs import ElevenLabsAdapter
from omni_toolrunner.providers.firecrawl import DEFAULT_BASE_URL as FIRECRAWL_URL
from omni_toolrunner.providers.firecrawl import PROVIDER as FIRECRAWL
from omni_toolrunner.providers.firecrawl import FirecrawlAdapter
from omni_toolrunner.providers.gemini import DEFAULT_BASE_URL as GEMINI_URL
from omni_toolrunner.providers.gemini import DEFAULT_MODEL as GEMINI_MODEL
from omni_toolrunner.providers.gemini import PROVIDER as GEMINI
from omni_toolrunner.providers.gemini import GeminiAdapter
from omni_toolrunner.providers.local import LOCAL, LocalAdapter
from omni_toolrunner.providers.mock import MockAdapter
from omni_toolrunner.providers.openai_compatible import PROFILES, adapter_for
from omni_toolrunner.providers.openrouter import DEFAULT_MODEL
from omni_toolrunner.providers.perplexity import DEFAULT_BASE_URL as PERPLEXITY_URL
from omni_toolrunner.providers.perplexity import DEFAULT_MODEL as PERPLEXITY_MODEL
from omni_toolrunner.providers.perplexity import PROVIDER as PERPLEXITY
from omni_toolrunner.providers.perplexity import PerplexityAdapter
from omni_toolrunner.settings import ToolRunnerSettings

OPENROUTER = "openrouter"
MOCK = "mock"
KNOWN_PROVIDERS = (*PROFILES, GEMINI, ELEVENLABS, PERPLEXITY, FIRECRAWL, LOCAL, MOCK, DECLARED_PROVIDER)
NO_CREDENTIALS = frozenset({LOCAL, MOCK})  # providers that need no API key
# Declared tools each name their own credential (or none); the runner itself needs none.
PER_TOOL_CREDENTIALS = frozenset({DECLARED_PROVIDER})

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


@dataclass(frozen=True)
class ProviderEnv:
    """The environment variables of one provider (the names the provider's own docs use)."""

    api_key: str | None  # None: the provider needs no credentials
    base_url: str | None = None
    model: str | None = None
    key_aliases: tuple[str, ...] = ()  # other names of the key, tried after ``api_key``

    def read(self, environ: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
        def get(name: str | None) -> str | None:
            value = environ.get(name, "").strip() if name else ""
            return value or None

        key = next((found for name in (self.api_key, *self.key_aliases) if (found := get(name))), None)
        return key, get(self.base_url), get(self.model)


# Providers with their own adapter (the OpenAI-compatible ones take theirs from their profiles).
OWN_ENV: Mapping[str, ProviderEnv] = {
    GEMINI: ProviderEnv("GEMINI_API_KEY", "GEMINI_BASE_URL", "GEMINI_MODEL"),
    ELEVENLABS: ProviderEnv("ELEVENLABS_API_KEY", "ELEVENLABS_BASE_URL", "ELEVENLABS_MODEL"),
    PERPLEXITY: ProviderEnv("PERPLEXITY_API_KEY", "PERPLEXITY_BASE_URL", "PERPLEXITY_MODEL"),
    FIRECRAWL: ProviderEnv("FIRECRAWL_API_KEY", "FIRECRAWL_BASE_URL"),
}


def bind_provider(
    settings: ToolRunnerSettings, client: httpx.AsyncClient, environ: Mapping[str, str] | None = None
) -> ProviderBinding:
    """The adapter for ``settings.provider``; the caller owns (and closes) ``client``.

    Credentials, base URLs and default models come from each provider's own environment
    variables (``OPENROUTER_API_KEY``, ``GEMINI_API_KEY``, ...); a provider without its key is
    bound anyway, reporting itself unavailable with the reason.
    """
    env = os.environ if environ is None else environ
    provider = settings.provider
    if provider == OPENROUTER:
        key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
        default_model = settings.openrouter_model or DEFAULT_MODEL
        adapter = OpenRouterAdapter(key, settings.openrouter_base_url, default_model, client)
        return ProviderBinding(adapter, "chat", adapter.model_for, _missing("OPENROUTER_API_KEY", key))
    if provider in PROFILES:
        profile = PROFILES[provider]
        key, base_url, model = ProviderEnv(
            profile.api_key_env, profile.base_url_env, profile.model_env, profile.api_key_aliases
        ).read(env)
        compatible = adapter_for(provider, key, base_url, client, default_model=model)
        return ProviderBinding(compatible, "chat", compatible.model_for, _missing(profile.api_key_env, key))
    if provider in OWN_ENV:
        spec = OWN_ENV[provider]
        key, base_url, model = spec.read(env)
        missing = _missing(spec.api_key, key)
        if provider == GEMINI:
            gemini = GeminiAdapter(key, base_url or GEMINI_URL, model or GEMINI_MODEL, client)
            return ProviderBinding(gemini, "generate_content", gemini.model_for, missing)
        if provider == ELEVENLABS:
            voice = env.get("ELEVENLABS_VOICE_ID", "").strip() or ELEVENLABS_VOICE
            speech = ElevenLabsAdapter(
                key,
                base_url or ELEVENLABS_URL,
                client,
                model=model or ELEVENLABS_MODEL,
                default_voice_id=voice,
            )
            return ProviderBinding(speech, "text_to_speech", _fixed(model or ELEVENLABS_MODEL), missing)
        if provider == PERPLEXITY:
            search = PerplexityAdapter(
                key, base_url or PERPLEXITY_URL, client, model=model or PERPLEXITY_MODEL
            )
            return ProviderBinding(search, "chat", _fixed(model or PERPLEXITY_MODEL), missing)
        scrape = FirecrawlAdapter(key, base_url or FIRECRAWL_URL, client)
        return ProviderBinding(scrape, "execute_tool", _fixed(None), missing)
    if provider == LOCAL:
        return ProviderBinding(LocalAdapter(), "execute_tool", _fixed(None), None)
    if provider == MOCK:
        return ProviderBinding(MockAdapter.from_env(env), "execute_tool", _fixed(None), None)
    if provider == DECLARED_PROVIDER:
        declared = DeclaredHttpAdapter(client, environ=env, allowed_secrets=settings.declared_secrets)
        return ProviderBinding(declared, "execute_tool", _fixed(None), None)
    raise ValueError(f"no adapter for provider {provider!r} (known: {', '.join(KNOWN_PROVIDERS)})")


def _missing(variable: str | None, key: str | None) -> str | None:
    return f"{variable} is not set" if variable and not key else None


def _fixed(model: str | None) -> ModelOf:
    return lambda _tool, _config: model
