"""``${...}`` templates in workflow step inputs and config.

A template names one value from the run's scope:

- ``${trigger.payload.<field>[.<path>]}``: the payload of the trigger event (``${trigger.payload}``
  is the whole payload object);
- ``${steps.<step>.output[.<path>]}``: the output of an earlier step (``${steps.<step>.output}`` is
  the whole output object);
- ``${context.<key>[.<path>]}``: the run context given when the run was started;
- ``${item[.<path>]}`` and ``${index}``: in a ``for_each`` step, the item in hand and its position.

``${a ?? b}`` takes the first alternative that is present and not null: a skipped step, an
absent optional payload field or a missing key falls through to the next one
(``${steps.speech_to_text.output.text ?? trigger.payload.textInput}``). When no alternative
has a value, the last one's outcome stands (its error, or null).

A path walks objects by key and lists by index, written ``.0`` or ``[0]``:
``${steps.speech_to_text.output.segments[0].text}`` equals ``...output.segments.0.text``.
``$${`` writes a literal ``${``. There are no expressions or filters: a template is a lookup,
and nothing is ever evaluated (conditions are CEL, in ``when:``; see ``conditions.py``). The
syntax is ``omni_contract.templates``, shared with declared tools; the roots and rules here are
the workflow's.

Rendering rules (``render``):

- A string that is exactly one template, with nothing around it, becomes the referenced value with
  its type intact (object, list, number, boolean or ``None``); containers are copied so the result
  never aliases the scope.
- Templates embedded in a longer string are replaced by text: strings as they are, ``None`` as the
  empty string, booleans as ``true``/``false``, numbers, objects and lists as compact JSON.
- A top-level trigger payload field that is absent (or null) renders as ``None``, and so does any
  path below it: the payload has been checked against the trigger schema before the run starts,
  so an absent field can only be an optional one. Anything else that cannot be found (a step
  without output, a missing key inside an output or the context, an index past the end of a
  list, a path through a null) raises ``TemplateError``: at run time that is a provider breaking
  its output contract, not a detail to paper over.
- Only string values are rendered; mapping keys are kept as written.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal, TypeAlias

from omni_contract.templates import PathPart, Placeholder, TemplateSyntaxError, format_path, scan
from omni_contract.templates import parse_path as parse_path_syntax

Path: TypeAlias = tuple[PathPart, ...]
Root: TypeAlias = Literal["trigger", "steps", "context", "item", "index"]

ROOTS: tuple[Root, ...] = ("trigger", "steps", "context", "item", "index")


class TemplateError(ValueError):
    """A template that cannot be parsed, names something outside the scope, or cannot be resolved.

    ``path`` is the expression between ``${`` and ``}``; ``snippet`` is the template as written
    (``${path}``, or the unterminated fragment); ``location`` says where in the rendered value the
    template sits (``()`` when not known).
    """

    def __init__(self, path: str, message: str, location: Path = (), snippet: str | None = None) -> None:
        self.path = path
        self.message = message
        self.location = location
        self.snippet = snippet if snippet is not None else f"${{{path}}}"
        where = f" at {format_path(location)}" if location else ""
        super().__init__(f"{self.snippet!r}{where}: {message}")

    def at(self, location: Path) -> TemplateError:
        return TemplateError(self.path, self.message, location, self.snippet)


@dataclass(frozen=True, slots=True)
class Reference:
    """One ``${...}`` occurrence.

    ``path`` is the part after ``trigger.payload``, ``steps.<step>.output`` or ``context``
    (``()`` for the whole object); ``step`` is set only for the ``steps`` root. ``location`` is
    where the template was found inside the value passed to ``references`` (``("text",)`` for
    ``{"text": "${...}"}``), and ``whole`` tells whether the template is the entire string (and so
    renders to a typed value).
    """

    root: Root
    step: str | None
    path: Path
    expression: str
    location: Path = ()
    whole: bool = False
    # ``a ?? b ?? c``: what is tried when this one has no value, in order.
    alternatives: tuple[Reference, ...] = ()

    def chain(self) -> tuple[Reference, ...]:
        """This reference followed by its alternatives."""
        return (self, *self.alternatives)


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed string: literal text and references, in order."""

    parts: tuple[str | Reference, ...]

    @property
    def is_whole(self) -> bool:
        return len(self.parts) == 1 and isinstance(self.parts[0], Reference)

    @property
    def references(self) -> tuple[Reference, ...]:
        """Every reference, alternatives included (what the template may read)."""
        return tuple(r for p in self.parts if isinstance(p, Reference) for r in p.chain())


@dataclass(frozen=True, slots=True)
class Scope:
    """What templates of one step can see.

    ``steps`` maps the name of each step that has completed to its output.
    """

    payload: Mapping[str, Any] = field(default_factory=dict)
    steps: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)
    item: Any = None  # for_each: the item in hand
    index: int | None = None


def parse_path(expression: str) -> Path:
    """Split ``a.b[0].c`` / ``a.b.0.c`` into ``("a", "b", 0, "c")``; raise on anything else."""
    try:
        return parse_path_syntax(expression, "trigger.payload.<field>")
    except TemplateSyntaxError as exc:
        raise TemplateError(exc.expression, exc.message) from None


def parse_reference(expression: str) -> Reference:
    """Parse the inside of ``${...}`` into a ``Reference``; raise ``TemplateError`` if malformed."""
    if "??" in expression:
        first, *rest = (_parse_one(part) for part in expression.split("??"))
        return replace(first, expression=expression.strip(), alternatives=tuple(rest))
    return _parse_one(expression)


def _parse_one(expression: str) -> Reference:
    expr = expression.strip()
    parts = parse_path(expr)
    root = parts[0]
    if root == "trigger":
        if len(parts) < 2 or parts[1] != "payload":
            raise TemplateError(expr, "only trigger.payload is available from the trigger")
        return Reference("trigger", None, parts[2:], expr)
    if root == "steps":
        if len(parts) < 3 or not isinstance(parts[1], str) or parts[2] != "output":
            raise TemplateError(expr, "a step reference must read steps.<step>.output[.<field>...]")
        return Reference("steps", parts[1], parts[3:], expr)
    if root == "context":
        return Reference("context", None, parts[1:], expr)
    if root == "item":
        return Reference("item", None, parts[1:], expr)
    if root == "index":
        if len(parts) > 1:
            raise TemplateError(expr, "index is a number: nothing lies below it")
        return Reference("index", None, (), expr)
    raise TemplateError(
        expr,
        f"unknown root {root!r}: expected trigger.payload, steps.<step>.output, context, item or index",
    )


@lru_cache(maxsize=4096)
def parse_template(text: str) -> Template:
    """Parse a string into literal text and references (cached: definitions reuse their strings)."""
    try:
        parts = [parse_reference(p.expression) if isinstance(p, Placeholder) else p for p in scan(text)]
    except TemplateSyntaxError as exc:
        raise TemplateError(exc.expression, exc.message, snippet=exc.snippet) from None
    if len(parts) == 1 and isinstance(parts[0], Reference):
        parts[0] = replace(parts[0], whole=True)
    return Template(tuple(parts))


def _strings(value: Any, location: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(value, str):
        yield location, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, (*location, str(key)))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, (*location, index))


def collect_references(value: Any) -> tuple[list[Reference], list[TemplateError]]:
    """Every reference in ``value`` (walked recursively), and every malformed template, with
    ``location`` set on both. Validation uses this to report all problems at once."""
    refs: list[Reference] = []
    errors: list[TemplateError] = []
    for location, text in _strings(value, ()):
        if "${" not in text:
            continue
        try:
            template = parse_template(text)
        except TemplateError as exc:
            errors.append(exc.at(location))
            continue
        refs.extend(replace(ref, location=location) for ref in template.references)
    return refs, errors


def references(value: Any) -> list[Reference]:
    """Every reference in ``value``; raise ``TemplateError`` on the first malformed template."""
    refs, errors = collect_references(value)
    if errors:
        raise errors[0]
    return refs


def step_dependencies(value: Any) -> set[str]:
    """Names of the steps whose output ``value`` needs."""
    return {ref.step for ref in references(value) if ref.step is not None}


_JSON_KINDS = {str: "string", bool: "boolean", int: "number", float: "number"}


def _lookup(container: Any, part: PathPart, ref: Reference, walked: Path) -> Any:
    where = format_path(walked)
    if isinstance(container, Mapping):
        key = str(part)
        if key not in container:
            raise TemplateError(ref.expression, f"no field {key!r} in {where}")
        return container[key]
    if isinstance(container, list | tuple):
        if not isinstance(part, int):
            raise TemplateError(ref.expression, f"{where} is a list; index it with a number, not {part!r}")
        if part >= len(container):
            raise TemplateError(
                ref.expression, f"index {part} is out of range: {where} has {len(container)} items"
            )
        return container[part]
    if container is None:
        raise TemplateError(ref.expression, f"{where} is null")
    kind = _JSON_KINDS.get(type(container), type(container).__name__)
    raise TemplateError(ref.expression, f"{where} is a {kind}, not an object or list")


def resolve(ref: Reference, scope: Scope) -> Any:
    """The value ``ref`` names in ``scope`` (not copied), trying its alternatives in turn."""
    if not ref.alternatives:
        return _resolve_one(ref, scope)
    last = len(ref.alternatives)
    for position, candidate in enumerate(ref.chain()):
        try:
            value = _resolve_one(candidate, scope)
        except TemplateError:
            if position == last:
                raise
            continue
        if value is not None or position == last:
            return value
    return None  # unreachable: the last alternative always returns or raises


def _resolve_one(ref: Reference, scope: Scope) -> Any:
    current: Any
    walked: Path
    path = ref.path
    if ref.root == "trigger":
        walked = ("trigger", "payload")
        current = scope.payload
        if path:
            # Absent top-level payload fields are optional ones (the payload was validated).
            current = scope.payload.get(str(path[0]))
            if current is None:
                return None
            walked = (*walked, path[0])
            path = path[1:]
    elif ref.root == "steps" and ref.step is not None:
        if ref.step not in scope.steps:
            raise TemplateError(ref.expression, f"step {ref.step!r} has no output (it has not completed)")
        current = scope.steps[ref.step]
        walked = ("steps", ref.step, "output")
    elif ref.root == "index":
        if scope.index is None:
            raise TemplateError(ref.expression, "index is only set in a for_each step")
        return scope.index
    elif ref.root == "item":
        if scope.index is None:
            raise TemplateError(ref.expression, "item is only set in a for_each step")
        current = scope.item
        walked = ("item",)
    else:
        current = scope.context
        walked = ("context",)
    for part in path:
        current = _lookup(current, part, ref, walked)
        walked = (*walked, part)
    return current


def to_text(value: Any) -> str:
    """How a value reads when embedded in a longer string."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float | Mapping | list | tuple):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


def render_string(text: str, scope: Scope) -> Any:
    if "${" not in text:
        return text
    template = parse_template(text)
    if template.is_whole:
        whole = template.parts[0]
        assert isinstance(whole, Reference)
        return copy.deepcopy(resolve(whole, scope))
    return "".join(
        part if isinstance(part, str) else to_text(resolve(part, scope)) for part in template.parts
    )


def render(value: Any, scope: Scope) -> Any:
    """Render every string in ``value`` (recursively through mappings and lists).

    Raises ``TemplateError`` (with ``location`` set) when a template is malformed or names
    something that is not in ``scope``; see the module docstring for the rules.
    """
    return _render(value, scope, ())


def _render(value: Any, scope: Scope, location: Path) -> Any:
    if isinstance(value, str):
        try:
            return render_string(value, scope)
        except TemplateError as exc:
            raise exc.at(location) from None
    if isinstance(value, Mapping):
        return {key: _render(item, scope, (*location, str(key))) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_render(item, scope, (*location, index)) for index, item in enumerate(value)]
    return value
