"""Provider adapters: how the tool runner reaches each AI provider, one module per provider.

Each provider module declares itself (:mod:`omni_toolrunner.providers.declaration`);
:mod:`omni_toolrunner.adapters` holds the tuple of those declarations.
"""

from omni_toolrunner.providers.base import (
    ProviderAdapter,
    ProviderError,
    ProviderErrorKind,
    ToolCall,
    ToolOutcome,
    Usage,
)

__all__ = [
    "ProviderAdapter",
    "ProviderError",
    "ProviderErrorKind",
    "ToolCall",
    "ToolOutcome",
    "Usage",
]
