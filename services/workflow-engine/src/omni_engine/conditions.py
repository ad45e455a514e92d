"""``when:`` conditions: CEL (Common Expression Language) expressions over a run's data.

CEL is side-effect free, always terminates and cannot reach anything it is not given, so a
workflow author's condition can never run code in the engine (nothing here uses Python ``eval``).
A condition sees:

- ``trigger.payload``: the run's payload;
- ``steps.<name>.output`` and ``steps.<name>.status`` for every step that has finished
  (``completed``, ``failed`` or ``skipped``; a skipped or failed step has no ``output``);
- ``context``: the context the run was started with;
- ``flags``: feature flags, the run context's ``flags`` object (empty when absent).

``has(trigger.payload.audioData)`` tests for an optional field. Conditions are compiled once per
definition (at load, where a syntax error is reported with the file, step and field) and must
evaluate to a boolean.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import cel

VARIABLES = frozenset({"trigger", "steps", "context", "flags"})


class ConditionError(ValueError):
    """A condition that does not compile, names an unknown variable, fails or is not a boolean."""


@lru_cache(maxsize=1024)
def compile_condition(expression: str) -> Any:
    """The compiled program; raises ``ConditionError`` with CEL's message on a syntax error."""
    try:
        program = cel.compile(expression)
    except ValueError as exc:
        message = str(exc).split(": ", 1)[-1] if "Failed to parse" in str(exc) else str(exc)
        raise ConditionError(f"invalid CEL expression {expression!r}: {message}") from None
    unknown = sorted(set(program.variables()) - VARIABLES)
    if unknown:
        raise ConditionError(
            f"unknown name {', '.join(map(repr, unknown))} in {expression!r}: "
            f"a condition can use {', '.join(sorted(VARIABLES))}"
        )
    return program


def evaluate(expression: str, activation: Mapping[str, Any]) -> bool:
    """Evaluate ``expression`` over ``activation``; raise ``ConditionError`` unless it yields a bool."""
    program = compile_condition(expression)
    try:
        value = program.execute(dict(activation))
    except KeyError as exc:
        raise ConditionError(
            f"{expression!r} reads {exc.args[0]!r}, which is not there (test it with has(...) first)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - CEL evaluation errors (no such overload, division by zero...)
        raise ConditionError(f"{expression!r} failed: {exc}") from None
    if not isinstance(value, bool):
        raise ConditionError(f"{expression!r} must be true or false, got {value!r}")
    return value
