"""The providers Omni has a tool-runner for, and the environment variables that configure each.

Shared by the devstack (which starts a provider's runner when its key is set) and the gateway
(whose ``GET /servers`` lists every provider here, running or not, and names the missing
variable of one that is not configured). The table itself is generated from the declarations of
the tool-runner's provider modules into :mod:`omni_contract.provider_table` (``make proto``), so
it says what the tool-runner binds without either reader importing the tool-runner.
"""

from __future__ import annotations

from collections.abc import Mapping

from omni_contract.provider_table import ALWAYS_STARTED, PROVIDER_KEYS

__all__ = ["ALWAYS_STARTED", "PROVIDER_KEYS", "configured", "key_variables"]

# PROVIDER_KEYS: each provider with the names of its API key, the documented one first, then
# aliases; an empty tuple: it needs none (``local`` tools run in the runner; each declared
# integration names its own credential). The ``mock`` provider of the tests is not listed: it
# appears only while it runs. ALWAYS_STARTED: the providers ``make run`` starts whatever the
# environment holds (OpenRouter through a local simulator when ``OPENROUTER_API_KEY`` is unset).


def key_variables(provider: str) -> tuple[str, ...]:
    """The names of ``provider``'s API key (empty for one that needs none, or an unknown one)."""
    return PROVIDER_KEYS.get(provider, ())


def configured(provider: str, environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` sets one of ``provider``'s key variables (always, for one needing none)."""
    names = key_variables(provider)
    return not names or any(environ.get(name, "").strip() for name in names)
