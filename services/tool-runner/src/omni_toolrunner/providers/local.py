"""The ``local`` provider: tools that need no network and answer at once.

``util.echo`` returns its input as its output. It is what the benchmarks run (so that they measure
orchestration, not a provider) and a plain building block for workflows that only move data.
"""

from __future__ import annotations

from omni_toolrunner.providers.base import ProviderError, ProviderErrorKind, ToolCall, ToolOutcome

LOCAL = "local"
ECHO = "util.echo"


class LocalAdapter:
    @property
    def provider(self) -> str:
        return LOCAL

    @property
    def tools(self) -> frozenset[str]:
        return frozenset({ECHO})

    async def call(self, request: ToolCall) -> ToolOutcome:
        if request.tool == ECHO:
            return ToolOutcome(output=dict(request.input))
        raise ProviderError(
            ProviderErrorKind.UNKNOWN_TOOL, f"the local provider does not serve {request.tool!r}"
        )

    async def aclose(self) -> None:
        return None
