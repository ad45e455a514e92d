"""The providers Omni has a tool-runner for, and the environment variables that configure each.

Shared by the devstack (which starts a provider's runner when its key is set) and the gateway
(whose ``GET /servers`` lists every provider here, running or not, and names the missing
variable of one that is not configured). The tool-runner binds the same names to its adapters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from omni_contract.declared import DECLARED_PROVIDER

OPENROUTER: Final = "openrouter"
LOCAL: Final = "local"

PROVIDER_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    OPENROUTER: ("OPENROUTER_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "qwen": ("QWEN_MAX_API_KEY", "DASHSCOPE_API_KEY"),
    "grok": ("GROK_API_KEY", "XAI_API_KEY"),
    "minimax": ("MINIMAX_API_KEY",),
    "gemini": ("GEMINI_API_KEY",),
    "elevenlabs": ("ELEVENLABS_API_KEY",),
    "perplexity": ("PERPLEXITY_API_KEY",),
    "firecrawl": ("FIRECRAWL_API_KEY",),
    LOCAL: (),
    DECLARED_PROVIDER: (),
}
"""Each provider with the names of its API key, the documented one first, then aliases; an empty
tuple: it needs none (``local`` tools run in the runner; each declared integration names its own
credential). The ``mock`` provider of the tests is not listed: it appears only while it runs."""

ALWAYS_STARTED: Final = frozenset({OPENROUTER, LOCAL})
"""Providers ``make run`` starts whatever the environment holds (OpenRouter through a local
simulator when ``OPENROUTER_API_KEY`` is unset)."""


def key_variables(provider: str) -> tuple[str, ...]:
    """The names of ``provider``'s API key (empty for one that needs none, or an unknown one)."""
    return PROVIDER_KEYS.get(provider, ())


def configured(provider: str, environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` sets one of ``provider``'s key variables (always, for one needing none)."""
    names = key_variables(provider)
    return not names or any(environ.get(name, "").strip() for name in names)
