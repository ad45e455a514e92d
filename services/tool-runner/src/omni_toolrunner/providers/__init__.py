"""Provider adapters: how the tool runner reaches each AI provider over HTTP."""

from omni_toolrunner.providers.base import (
    ProviderAdapter,
    ProviderError,
    ProviderErrorKind,
    ToolCall,
    ToolOutcome,
    Usage,
)
from omni_toolrunner.providers.openrouter import OpenRouterAdapter

__all__ = [
    "OpenRouterAdapter",
    "ProviderAdapter",
    "ProviderError",
    "ProviderErrorKind",
    "ToolCall",
    "ToolOutcome",
    "Usage",
]
