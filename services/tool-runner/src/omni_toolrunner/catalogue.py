"""What each tool is, takes and gives, whichever provider serves it: the registry's descriptions.

A tool's input and output contract is the same at every provider (the adapters share their
input types and output schemas), so one description per tool name serves all of them; each provider
declares the descriptions of the tools it serves (``ProviderDeclaration.tools``), and ``spec_for``
makes the ``ToolSpec`` of one (tool, provider) pair. Input schemas are generated from the msgspec
input types the adapters decode with, so the registry cannot drift from what they accept.
"""

from __future__ import annotations

from collections.abc import Mapping

from omni_contract.tools import ToolSpec

from omni_toolrunner.adapters import PROVIDERS
from omni_toolrunner.providers.declaration import ToolDoc

CATALOGUE: Mapping[str, ToolDoc] = {doc.name: doc for provider in PROVIDERS for doc in provider.tools}


def spec_for(tool: str, provider: str, *, requires_auth: bool) -> ToolSpec:
    """The registry's description of ``tool`` as ``provider`` serves it."""
    doc = CATALOGUE.get(tool) or ToolDoc(
        tool, f"{tool} (no description)", {"type": "object"}, {"type": "object"}
    )
    return ToolSpec(
        name=tool,
        provider=provider,
        description=doc.description,
        category=tool.partition(".")[0],
        timeout_ms=doc.timeout_ms,
        retryable=True,
        requires_auth=requires_auth,
        scopes=list(doc.scopes),
        capabilities=list(doc.capabilities),
        input_schema=dict(doc.input_schema),
        output_schema=dict(doc.output_schema),
    )
