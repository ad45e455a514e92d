"""Which adapter each provider gets, and how a missing key is reported."""

from __future__ import annotations

import httpx
import pytest
from omni_toolrunner.adapters import KNOWN_PROVIDERS, NO_CREDENTIALS, PER_TOOL_CREDENTIALS, bind_provider
from omni_toolrunner.settings import ToolRunnerSettings

KEY_VARIABLE = {
    "openrouter": "OPENROUTER_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "qwen": "QWEN_MAX_API_KEY",
    "grok": "GROK_API_KEY",
    "minimax": "MINIMAX_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "elevenlabs": "ELEVENLABS_API_KEY",
    "perplexity": "PERPLEXITY_API_KEY",
    "firecrawl": "FIRECRAWL_API_KEY",
}


def test_every_provider_is_known() -> None:
    assert set(KNOWN_PROVIDERS) == set(KEY_VARIABLE) | NO_CREDENTIALS | PER_TOOL_CREDENTIALS


@pytest.mark.parametrize("provider", sorted(KEY_VARIABLE))
async def test_a_provider_without_its_key_is_bound_and_says_which_variable_is_missing(provider: str) -> None:
    settings = ToolRunnerSettings(provider=provider, openrouter_api_key=None)
    async with httpx.AsyncClient() as client:
        binding = bind_provider(settings, client, environ={})
        assert binding.adapter.provider == provider
        assert binding.adapter.tools
        assert binding.missing_credentials == f"{KEY_VARIABLE[provider]} is not set"
        await binding.aclose()


@pytest.mark.parametrize("provider", sorted(set(KEY_VARIABLE) - {"openrouter"}))
async def test_a_provider_with_its_key_is_ready(provider: str) -> None:
    settings = ToolRunnerSettings(provider=provider)
    async with httpx.AsyncClient() as client:
        binding = bind_provider(settings, client, environ={KEY_VARIABLE[provider]: "k-123"})
        assert binding.missing_credentials is None
        await binding.aclose()


@pytest.mark.parametrize("provider", sorted(NO_CREDENTIALS))
async def test_local_providers_need_no_key(provider: str) -> None:
    async with httpx.AsyncClient() as client:
        binding = bind_provider(ToolRunnerSettings(provider=provider), client, environ={})
        assert binding.missing_credentials is None
        assert binding.adapter.tools


async def test_an_unknown_provider_is_refused_naming_the_known_ones() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(ValueError, match=r"known: .*gemini"):
            bind_provider(ToolRunnerSettings(provider="nope"), client, environ={})


@pytest.mark.parametrize(("provider", "alias"), [("qwen", "DASHSCOPE_API_KEY"), ("grok", "XAI_API_KEY")])
async def test_the_providers_own_name_for_the_key_is_accepted_too(provider: str, alias: str) -> None:
    settings = ToolRunnerSettings(provider=provider, openrouter_api_key=None)
    async with httpx.AsyncClient() as client:
        binding = bind_provider(settings, client, environ={alias: "sk-test"})
        assert binding.missing_credentials is None
        await binding.aclose()
