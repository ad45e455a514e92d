"""The providers Omni has a tool-runner for, with their key variables: generated, do not edit.

Written by ``python -m omni_toolrunner.provider_table write`` (``make proto``) from the declarations
of the tool-runner's provider modules; ``make proto-check`` fails when it is stale. Read it through
:mod:`omni_contract.providers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

PROVIDER_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "deepseek": ("DEEPSEEK_API_KEY",),
    "elevenlabs": ("ELEVENLABS_API_KEY",),
    "firecrawl": ("FIRECRAWL_API_KEY",),
    "gemini": ("GEMINI_API_KEY",),
    "grok": ("GROK_API_KEY", "XAI_API_KEY"),
    "integrations": (),
    "local": (),
    "minimax": ("MINIMAX_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY",),
    "perplexity": ("PERPLEXITY_API_KEY",),
    "qwen": ("QWEN_MAX_API_KEY", "DASHSCOPE_API_KEY"),
}
ALWAYS_STARTED: Final[frozenset[str]] = frozenset({"local", "openrouter"})
