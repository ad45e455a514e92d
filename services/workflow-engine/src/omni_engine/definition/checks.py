"""The checks of a definition's data, once read: structure, then meaning.

Structure: keys are strings, nesting and the number of steps within the limits, no unknown or
missing keys, the right types, valid names (pydantic's errors turned into messages that say what
was expected and what is allowed there). Meaning, once the structure is sound: duplicate steps,
templates naming unknown payload fields, unknown or later steps, undeclared outputs, conditions
that do not compile, fallbacks for nothing. Each stage reports every problem it finds; the next
runs only when it found none, so a broken structure is not buried under what follows from it.
"""

from __future__ import annotations

import types
import typing
from typing import Any, get_args, get_origin

from omni_contract.templates import PathPart
from pydantic import BaseModel, ValidationError

from omni_engine.conditions import ConditionError, compile_condition
from omni_engine.definition.errors import Problems, quote
from omni_engine.definition.limits import MAX_DEPTH, MAX_STEPS
from omni_engine.definition.model import (
    CONDITION_STEP_RE,
    FIELD_NAME_RE,
    FIELD_TYPES,
    TOOL_RE,
    Step,
    WorkflowDefinition,
)
from omni_engine.definition.schema import json_type
from omni_engine.templating import TemplateError, collect_references, parse_template

# Types a template path may go below (``${steps.x.output.grammar.errors}``).
_CONTAINER_TYPES = frozenset({"object", "array", "any"})


def check_document(data: Any, problems: Problems) -> WorkflowDefinition:
    """The definition ``data`` describes; raises ``problems.failure()`` when anything is wrong."""
    problems.data = data
    if data is None:
        problems.add((), "the definition is empty")
        raise problems.failure()
    if not isinstance(data, dict):
        problems.add((), f"expected a mapping at the top level, got {_describe(data)}")
        raise problems.failure()

    _check_keys(data, (), problems, 0)
    steps = data.get("steps")
    if isinstance(steps, list) and len(steps) > MAX_STEPS:
        # Alone: validating thousands of steps would only bury this under their own problems.
        problems.errors = [e for e in problems.errors if e.field is None or not e.field.startswith("steps[")]
        problems.add(("steps",), f"{len(steps)} steps, more than the {MAX_STEPS} a workflow may have")
    if problems.errors:
        raise problems.failure()
    normalised, shorthand = _normalise(data, problems)
    try:
        defn = WorkflowDefinition.model_validate(normalised)
    except ValidationError as exc:
        _structure_errors(exc, shorthand, problems)
        raise problems.failure() from None
    if problems.errors:
        raise problems.failure()

    _check_meaning(defn, problems)
    if problems.errors:
        raise problems.failure()
    return defn


# ---------------------------------------------------------------------------------------------
# Structure


def _check_keys(value: Any, path: tuple[PathPart, ...], problems: Problems, depth: int) -> None:
    if depth > MAX_DEPTH and isinstance(value, dict | list):
        problems.add(path, f"nested more than {MAX_DEPTH} levels deep")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add((*path, str(key)), f"keys must be strings, not {json_type(key)} ({quote(key)})")
            _check_keys(item, (*path, str(key)), problems, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_keys(item, (*path, index), problems, depth + 1)


def _normalise(data: dict[str, Any], problems: Problems) -> tuple[dict[str, Any], set[str]]:
    """Rewrite the trigger payload's ``name?: type`` shorthand to ``PayloadField`` form.

    Returns the rewritten document and the names written in shorthand (their type errors are
    reported at ``trigger.payload.<name>`` rather than ``...<name>.type``).
    """
    trigger = data.get("trigger")
    if not isinstance(trigger, dict) or not isinstance(trigger.get("payload"), dict):
        return data, set()
    fields: dict[str, Any] = {}
    shorthand: set[str] = set()
    for key, spec in trigger["payload"].items():
        key = str(key)
        optional = key.endswith("?")
        name = key[:-1] if optional else key
        where: tuple[PathPart, ...] = ("trigger", "payload", name)
        if not FIELD_NAME_RE.fullmatch(name):
            problems.add(
                where,
                f"invalid payload field name {quote(name)}: use letters, digits and '_', no leading digit",
            )
            continue
        if name in fields:
            problems.add(where, f"payload field {name!r} is declared twice")
            continue
        if isinstance(spec, dict):
            entry = dict(spec)
            if optional:
                if entry.get("required") is True:
                    problems.add(where, f"field {name!r} is marked optional with '?' but says required: true")
                entry["required"] = False
        else:
            entry = {"type": spec, "required": not optional}
            shorthand.add(name)
        fields[name] = entry
    return {**data, "trigger": {**trigger, "payload": fields}}, shorthand


def _field_by_alias(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if (info.alias or name) == key:
            return info.annotation
    return None


def _model_at(loc: tuple[PathPart, ...]) -> type[BaseModel] | None:
    """The model class whose keys sit at ``loc`` (for listing allowed keys)."""
    model: type[BaseModel] = WorkflowDefinition
    skip_key = False
    for part in loc:
        if isinstance(part, int):
            continue
        if skip_key:
            skip_key = False
            continue
        annotation = _field_by_alias(model, part)
        if get_origin(annotation) in (typing.Union, types.UnionType):
            annotation = next((a for a in get_args(annotation) if a is not type(None)), None)
        if get_origin(annotation) is dict:
            annotation, skip_key = get_args(annotation)[1], True
        elif get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def _describe(value: Any) -> str:
    kind = json_type(value)
    if kind in ("object", "array"):
        return "a mapping" if kind == "object" else "a list"
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


def _structure_errors(exc: ValidationError, shorthand: set[str], problems: Problems) -> None:
    for err in exc.errors(include_url=False):
        loc: tuple[PathPart, ...] = tuple(err["loc"])
        kind = err["type"]
        if len(loc) == 4 and loc[:2] == ("trigger", "payload") and loc[2] in shorthand and loc[3] == "type":
            loc = loc[:3]
        if kind == "extra_forbidden":
            model = _model_at(loc[:-1])
            allowed = [info.alias or name for name, info in model.model_fields.items()] if model else []
            message = f"unknown key {quote(loc[-1])}"
            if allowed:
                message += f" (allowed here: {', '.join(allowed)})"
        elif kind == "missing":
            message = f"missing required key {loc[-1]!r}"
        elif kind == "literal_error":
            given = "no type given" if err["input"] is None else f"unknown type {err['input']!r}"
            message = f"{given} (expected one of: {', '.join(FIELD_TYPES)})"
        elif kind == "value_error":
            message = str(err.get("ctx", {}).get("error", err["msg"]))
        elif kind in _EXPECTED:
            message = f"expected {_EXPECTED[kind]}, got {_describe(err['input'])}"
        elif kind == "too_short" and loc == ("steps",):
            message = "a workflow needs at least one step"
        else:
            message = err["msg"]
        problems.add(loc, message)


# ---------------------------------------------------------------------------------------------
# Meaning


def _names(items: list[str]) -> str:
    return ", ".join(items) or "none"


def _check_step_shape(step: Step, i: int, index: dict[str, int], problems: Problems) -> None:
    """The checks of one step's own fields that need more than one field (or the other steps)."""
    if step.wait is not None:
        for key, present in (("tool", step.tool), ("provider", step.providers), ("for_each", step.for_each)):
            if present:
                problems.add(("steps", i, key), f"a wait step has no {key}: it waits for an event")
        if step.wait.key and "${" in step.wait.key:
            try:
                parse_template(step.wait.key)
            except TemplateError as exc:
                problems.add(("steps", i, "wait", "key"), f"invalid template {exc.snippet!r}: {exc.message}")
    else:
        if step.tool is None:
            problems.add(
                ("steps", i, "tool"), "missing required key 'tool' (or 'wait', to wait for an event)"
            )
        if not step.providers:
            problems.add(("steps", i, "provider"), "missing required key 'provider'")
    for j, need in enumerate(step.needs):
        k = index.get(need)
        if k is None:
            problems.add(("steps", i, "needs", j), f"needs unknown step {need!r}")
        elif k >= i:
            problems.add(
                ("steps", i, "needs", j),
                f"needs step {need!r}, declared after it or itself: name only steps declared before",
            )
    if step.when is not None:
        try:
            compile_condition(step.when)
        except ConditionError as exc:
            problems.add(("steps", i, "when"), str(exc))
        for name in CONDITION_STEP_RE.findall(step.when):
            k = index.get(name)
            if k is None or k >= i:
                problems.add(
                    ("steps", i, "when"),
                    f"condition reads step {name!r}, which is not a step declared before",
                )
    if step.on_error not in ("fail", "continue"):
        k = index.get(step.on_error)
        if k is None:
            problems.add(
                ("steps", i, "on_error"),
                f"on_error must be fail, continue or the name of a step; there is no step {step.on_error!r}",
            )
        elif k == i:
            problems.add(("steps", i, "on_error"), "a step cannot handle its own failure")
    if step.for_each is not None:
        try:
            template = parse_template(step.for_each)
        except TemplateError:
            template = None  # reported with the other template errors
        if template is not None and not template.is_whole:
            problems.add(
                ("steps", i, "for_each"),
                "for_each must be one template naming a list, e.g. ${steps.x.output.items}",
            )
    if step.compensate is not None:
        if not TOOL_RE.fullmatch(step.compensate.tool):
            problems.add(("steps", i, "compensate", "tool"), f"invalid tool name {step.compensate.tool!r}")
        refs, errors = collect_references(step.compensate.input)
        for err in errors:
            problems.add(
                ("steps", i, "compensate", "input", *err.location), f"invalid template: {err.message}"
            )
        for ref in refs:
            if ref.root == "steps" and ref.step not in index:
                problems.add(
                    ("steps", i, "compensate", "input", *ref.location),
                    f"reference to unknown step {ref.step!r}",
                )


def _check_meaning(defn: WorkflowDefinition, problems: Problems) -> None:
    if defn.explicit_id is None and not defn.id:
        problems.add(
            ("name",),
            f"the workflow name {quote(defn.display_name)} has no letter or digit (a-z, 0-9) to make "
            "its address from: add an id (lower-case letters, digits, '-', '_' and '.')",
        )
    index: dict[str, int] = {}
    for i, step in enumerate(defn.steps):
        if step.name in index:
            problems.add(
                ("steps", i, "name"), f"duplicate step name {step.name!r} (also steps[{index[step.name]}])"
            )
        else:
            index[step.name] = i

    payload = defn.trigger.payload
    for i, step in enumerate(defn.steps):
        _check_step_shape(step, i, index, problems)
        for name in step.output:
            if not FIELD_NAME_RE.fullmatch(name):
                problems.add(("steps", i, "output", name), f"invalid output field name {name!r}")
        timeout = step.config.get("timeout")
        if "timeout" in step.config and not (
            isinstance(timeout, int) and not isinstance(timeout, bool) and timeout > 0
        ):
            problems.add(
                ("steps", i, "config", "timeout"),
                f"timeout must be a positive integer number of milliseconds, got {_describe(timeout)}",
            )
        sections: list[tuple[str, Any]] = [("config", step.config), ("input", step.input)]
        if step.for_each is not None:
            sections.append(("for_each", step.for_each))
        if step.wait is not None:
            sections.append(("wait", {"key": step.wait.key}))
        for section, value in sections:
            refs, template_errors = collect_references(value)
            for terr in template_errors:
                problems.add(
                    ("steps", i, section, *terr.location),
                    f"invalid template {terr.snippet!r}: {terr.message}",
                )
            for ref in refs:
                where: tuple[PathPart, ...] = ("steps", i, section, *ref.location)
                shown = f"${{{ref.expression}}}"
                if ref.root in ("item", "index") and (step.for_each is None or section == "for_each"):
                    problems.add(
                        where,
                        f"{shown}: item and index exist only in the input and config of a for_each step",
                    )
                elif ref.root == "trigger" and ref.path:
                    top = ref.path[0]
                    spec = payload.get(top) if isinstance(top, str) else None
                    if spec is None:
                        problems.add(
                            where,
                            f"reference to unknown trigger payload field {top!r} in {shown} "
                            f"(declared: {_names(list(payload))})",
                        )
                    elif len(ref.path) > 1 and spec.type not in _CONTAINER_TYPES:
                        problems.add(
                            where, f"{shown} goes below trigger payload field {top!r}, a {spec.type}"
                        )
                elif ref.root == "steps" and ref.step is not None:
                    j = index.get(ref.step)
                    if j is None:
                        problems.add(where, f"reference to unknown step {ref.step!r} in {shown}")
                    elif j == i:
                        problems.add(where, f"step refers to its own output in {shown} (a cycle)")
                    elif j > i:
                        problems.add(
                            where,
                            f"forward reference to step {ref.step!r} (steps[{j}]) in {shown}: a step can "
                            "only use the output of steps declared before it (so the graph has no cycle)",
                        )
                    elif ref.path and defn.steps[j].output and defn.steps[j].for_each is None:
                        declared = defn.steps[j].output
                        top = ref.path[0]
                        out_type = declared.get(top) if isinstance(top, str) else None
                        if out_type is None:
                            problems.add(
                                where,
                                f"step {ref.step!r} does not declare output field {top!r} used in {shown} "
                                f"(declared: {_names(list(declared))})",
                            )
                        elif len(ref.path) > 1 and out_type not in _CONTAINER_TYPES:
                            problems.add(
                                where,
                                f"{shown} goes below output field {top!r} of step {ref.step!r}, a {out_type}",
                            )

    if defn.guards is not None:
        categories = sorted({step.category for step in defn.steps})
        for key in defn.guards.fallbacks:
            if key not in categories and key not in index:
                problems.add(
                    ("guards", "fallbacks", key),
                    f"fallback for {key!r}, which is neither a tool category used here "
                    f"({_names(categories)}) nor a step name",
                )
