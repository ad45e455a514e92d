"""What is wrong with a definition: one ``WorkflowError`` per problem, naming the file, the step,
the field and, for YAML text, the line; ``WorkflowValidationError`` carries them all.

``Problems`` collects the errors of one definition as the loader and the checks find them, so
loading never stops at the first problem when it can go on. It resolves what a problem's path
alone does not say: the name of the step it sits in and the line of the YAML it points at.
"""

from __future__ import annotations

from typing import Any

import yaml
from omni_contract.templates import PathPart, format_path

from omni_engine.definition.limits import MAX_ERRORS, MAX_FIELD_LENGTH, MAX_MESSAGE_LENGTH


class WorkflowError(Exception):
    """One problem in one definition.

    ``field`` is the dotted path from the top of the document (``steps[2].input.text``,
    ``trigger.payload.userId``); ``step`` is the name of the step it sits in, when known.
    """

    def __init__(
        self, file: str, step: str | None, field: str | None, message: str, line: int | None = None
    ) -> None:
        self.file = clip(file, MAX_FIELD_LENGTH)
        self.step = None if step is None else clip(step, MAX_FIELD_LENGTH)
        self.field = None if field is None else clip(field, MAX_FIELD_LENGTH)
        self.message = clip(message, MAX_MESSAGE_LENGTH)
        self.line = line
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        parts = [where]
        field = self.field
        if self.step is not None:
            parts.append(f"step {self.step!r}")
            # Inside a step, the path reads relative to it: field 'input.text'.
            if field is not None and field.startswith("steps["):
                _, _, rest = field.partition("].")
                field = rest or None
        if field:
            parts.append(f"field {field!r}")
        parts.append(self.message)
        return ": ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; the keys match ``omni_contract.rpc.FieldProblem`` plus ``line``."""
        return {
            "file": self.file,
            "step": self.step,
            "field": self.field,
            "message": self.message,
            "line": self.line,
        }


def clip(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters (marked with an ellipsis) when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def quote(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: what messages echo of a caller's value."""
    return clip(repr(value), limit)


class WorkflowValidationError(Exception):
    """Every problem found in one definition (at least one)."""

    def __init__(self, file: str, errors: list[WorkflowError]) -> None:
        self.file = file
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "errors": [e.to_dict() for e in self.errors]}


class Problems:
    """Collects the errors of one definition, resolving step names and YAML lines for paths."""

    def __init__(self, source: str, node: yaml.Node | None) -> None:
        self.source = source
        self.node = node
        self.data: Any = None
        self.errors: list[WorkflowError] = []

    def add(self, path: tuple[PathPart, ...], message: str, line: int | None = None) -> None:
        step: str | None = None
        if len(path) >= 2 and path[0] == "steps" and isinstance(path[1], int):
            step = self.step_name(path[1])
        self.errors.append(
            WorkflowError(
                self.source,
                step,
                format_path(path) or None,
                message,
                line if line is not None else self.line_of(path),
            )
        )

    def failure(self) -> WorkflowValidationError:
        """The error to raise: the first ``MAX_ERRORS`` problems, and a count of the rest."""
        errors = self.errors
        if len(errors) > MAX_ERRORS:
            more = len(errors) - MAX_ERRORS
            errors = [
                *errors[:MAX_ERRORS],
                WorkflowError(self.source, None, None, f"and {more} more problems, not listed"),
            ]
        return WorkflowValidationError(self.source, errors)

    def step_name(self, index: int) -> str | None:
        """The name written in ``steps[index]``, from the parsed data or else the YAML nodes."""
        steps = self.data.get("steps") if isinstance(self.data, dict) else None
        if isinstance(steps, list):
            item = steps[index] if index < len(steps) else None
            name = item.get("name") if isinstance(item, dict) else None
            return name if isinstance(name, str) else None
        node = self.node
        for part in ("steps", index, "name"):
            node = _child(node, part)
        return node.value if isinstance(node, yaml.ScalarNode) else None

    def line_of(self, path: tuple[PathPart, ...]) -> int | None:
        """The line of the key (or list item) that ``path`` ends at, or of the nearest parent."""
        node = self.node
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value in (str(part), f"{part}?"):
                        line, node = key.start_mark.line + 1, value
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def _child(node: yaml.Node | None, part: PathPart) -> yaml.Node | None:
    found: yaml.Node | None = None
    if isinstance(node, yaml.MappingNode):
        found = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        found = node.value[part]
    return found
