"""Writes the contract's provider table from the provider declarations, so no one keeps a copy by hand.

The gateway (``GET /servers``, the tools routes) and the devstack (which starts a provider's runner
when its key is set) need to know every provider and its key variables, but may not import the
tool-runner: they depend on ``omni_contract`` alone. So the table is generated into
``omni_contract/provider_table.py`` from :data:`omni_toolrunner.adapters.PROVIDERS` and committed:
``python -m omni_toolrunner.provider_table write FILE`` writes it (``make proto``), ``check FILE``
exits non-zero when it differs from what the declarations say (``make proto-check``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from omni_toolrunner.adapters import PROVIDERS
from omni_toolrunner.providers.declaration import ProviderDeclaration

_HEADER = '''"""The providers Omni has a tool-runner for, with their key variables: generated, do not edit.

Written by ``python -m omni_toolrunner.provider_table write`` (``make proto``) from the declarations
of the tool-runner's provider modules; ``make proto-check`` fails when it is stale. Read it through
:mod:`omni_contract.providers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
'''


def render(providers: Sequence[ProviderDeclaration] = PROVIDERS) -> str:
    """The module source: ``PROVIDER_KEYS`` (the listed providers, by name) and ``ALWAYS_STARTED``."""
    listed = [provider for provider in providers if provider.listed]
    lines = [_HEADER, "PROVIDER_KEYS: Final[Mapping[str, tuple[str, ...]]] = {"]
    lines += [f"    {_quoted(p.name)}: {_tuple(p.env.key_variables)}," for p in listed]
    lines.append("}")
    always = ", ".join(_quoted(p.name) for p in sorted(listed, key=lambda p: p.name) if p.always_started)
    lines.append(f"ALWAYS_STARTED: Final[frozenset[str]] = frozenset({{{always}}})")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return json.dumps(text)  # a Python string literal too, in the double quotes ruff format keeps


def _tuple(names: tuple[str, ...]) -> str:
    quoted = [_quoted(name) for name in names]
    return f"({quoted[0]},)" if len(quoted) == 1 else f"({', '.join(quoted)})"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    if len(args) != 2 or args[0] not in {"write", "check"}:
        sys.stderr.write("usage: python -m omni_toolrunner.provider_table write|check FILE\n")
        return 2
    path, expected = Path(args[1]), render()
    if args[0] == "write":
        path.write_text(expected, encoding="utf-8")
        return 0
    actual = path.read_text(encoding="utf-8") if path.is_file() else None
    if actual == expected:
        return 0
    what = "is missing" if actual is None else "differs from the provider declarations"
    sys.stderr.write(f"provider table drift: {path} {what}\nrun `make proto` and commit the result\n")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
