"""Which adapter serves which provider: the registry of provider declarations, and a replica's binding.

:data:`PROVIDERS` holds every provider: the declaration (:mod:`omni_toolrunner.providers.declaration`)
each module of :mod:`omni_toolrunner.providers` makes as ``DECLARATION`` (``DECLARATIONS`` for the
OpenAI-compatible family), so adding a provider is adding its module. What ``--provider`` accepts,
which providers need no credentials, the registry's tool descriptions and the contract's provider
table (:mod:`omni_toolrunner.provider_table`) are all read from it.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Mapping

import httpx
from httpx_aiohttp import AiohttpTransport

from omni_toolrunner import providers
from omni_toolrunner.providers.declaration import ProviderBinding, ProviderDeclaration
from omni_toolrunner.settings import ToolRunnerSettings

__all__ = [
    "KNOWN_PROVIDERS",
    "NO_CREDENTIALS",
    "PER_TOOL_CREDENTIALS",
    "PROVIDERS",
    "ProviderBinding",  # built by the declarations; the runner holds one
    "bind_provider",
    "declaration_of",
    "http_client",
]


def _declared() -> tuple[ProviderDeclaration, ...]:
    """The declarations of the provider modules, by provider name; two of one name are refused."""
    found: dict[str, ProviderDeclaration] = {}
    for info in sorted(pkgutil.iter_modules(providers.__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{providers.__name__}.{info.name}")
        single = getattr(module, "DECLARATION", None)
        for declaration in (*getattr(module, "DECLARATIONS", ()), *([single] if single else [])):
            if not isinstance(declaration, ProviderDeclaration):
                raise TypeError(f"{module.__name__} declares {declaration!r}, not a ProviderDeclaration")
            if declaration.name in found:
                raise RuntimeError(f"{module.__name__} declares provider {declaration.name!r} again")
            found[declaration.name] = declaration
    return tuple(found[name] for name in sorted(found))


PROVIDERS: tuple[ProviderDeclaration, ...] = _declared()
_BY_NAME: Mapping[str, ProviderDeclaration] = {provider.name: provider for provider in PROVIDERS}

KNOWN_PROVIDERS = tuple(_BY_NAME)
# Providers whose calls need no credential at all (their tools run in the runner).
NO_CREDENTIALS = frozenset(provider.name for provider in PROVIDERS if not provider.needs_credentials)
# Declared tools each name their own credential (or none); the runner itself needs none.
PER_TOOL_CREDENTIALS = frozenset(provider.name for provider in PROVIDERS if provider.per_tool_credentials)


def declaration_of(provider: str) -> ProviderDeclaration:
    """The declaration of ``provider``; a ValueError naming the known ones when there is none."""
    try:
        return _BY_NAME[provider]
    except KeyError:
        raise ValueError(
            f"no adapter for provider {provider!r} (known: {', '.join(KNOWN_PROVIDERS)})"
        ) from None


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


def bind_provider(
    settings: ToolRunnerSettings, client: httpx.AsyncClient, environ: Mapping[str, str] | None = None
) -> ProviderBinding:
    """The adapter for ``settings.provider``; the caller owns (and closes) ``client``.

    Credentials, base URLs and default models come from each provider's own environment
    variables (``OPENROUTER_API_KEY``, ``GEMINI_API_KEY``, ...); a provider without its key is
    bound anyway, reporting itself unavailable with the reason.
    """
    declaration = declaration_of(settings.provider)
    return declaration.bind(settings, os.environ if environ is None else environ, client)
