"""The ``${...}`` template syntax: the one way Omni's users write a value taken from somewhere else,
in workflow steps (the engine's ``templating``) and in declared tools (``declared``).

Only the syntax lives here, so both read it alike: how a string splits into literal text and
placeholders, and how a placeholder's path reads. What a path may start with, and what it finds,
is each user's own.

- ``${path}`` is a placeholder; ``$${`` writes a literal ``${``.
- A path is a name followed by ``.name``, ``.0`` or ``[0]`` parts: ``response.items[0].id`` and
  ``response.items.0.id`` are the same path. A name is letters, digits, ``_`` and ``-``, starting
  with a letter or ``_``. Spaces around the path are ignored: ``${ input.owner }``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeAlias

PathPart: TypeAlias = str | int

_NAME = r"[A-Za-z_][A-Za-z0-9_\-]*"
_FIRST_RE = re.compile(_NAME)
# After the first name: ``.name``, ``.0`` or ``[0]``.
_NEXT_RE = re.compile(rf"\.({_NAME})|\.(\d+)|\[(\d+)\]")


class TemplateSyntaxError(ValueError):
    """A template that does not read as one: ``expression`` is what stood between ``${`` and ``}``
    (or after an unclosed ``${``), ``snippet`` the template as written."""

    def __init__(self, expression: str, message: str, snippet: str | None = None) -> None:
        self.expression = expression
        self.message = message
        self.snippet = snippet if snippet is not None else f"${{{expression}}}"
        super().__init__(f"{self.snippet!r}: {message}")


@dataclass(frozen=True, slots=True)
class Placeholder:
    """One ``${...}``; ``expression`` is its inside as written (spaces included)."""

    expression: str


def scan(text: str) -> Iterator[str | Placeholder]:
    """``text`` as literal text and placeholders, in order. A ``${`` that is never closed raises
    ``TemplateSyntaxError`` when the scan reaches it, after what comes before it has been yielded.
    The paths inside are not read here (see ``parse_path``)."""
    buf: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            buf.append("${")
            i += 3
        elif text.startswith("${", i):
            end = text.find("}", i + 2)
            if end == -1:
                raise TemplateSyntaxError(text[i + 2 :], "missing the closing '}'", snippet=text[i:])
            if buf:
                yield "".join(buf)
                buf = []
            yield Placeholder(text[i + 2 : end])
            i = end + 1
        else:
            buf.append(text[i])
            i += 1
    if buf:
        yield "".join(buf)


def parse_path(expression: str, example: str) -> tuple[PathPart, ...]:
    """Split ``a.b[0].c`` / ``a.b.0.c`` into ``("a", "b", 0, "c")``; raise ``TemplateSyntaxError``
    on anything else. ``example`` is the path the message offers when there is none at all."""
    text = expression.strip()
    first = _FIRST_RE.match(text)
    if first is None:
        raise TemplateSyntaxError(expression, f"expected a path such as {example}")
    parts: list[PathPart] = [first.group(0)]
    pos = first.end()
    while pos < len(text):
        m = _NEXT_RE.match(text, pos)
        if m is None:
            raise TemplateSyntaxError(expression, f"invalid path syntax at {text[pos:]!r}")
        name, dotted_index, bracket_index = m.groups()
        if name is not None:
            parts.append(name)
        else:
            parts.append(int(dotted_index if dotted_index is not None else bracket_index))
        pos = m.end()
    return tuple(parts)


def format_path(parts: Sequence[PathPart]) -> str:
    """``("segments", 0, "text")`` -> ``segments[0].text``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
