"""The trigger payload's schema: what a definition's trigger declares, as a JSON Schema
(``to_json_schema``) and as the check of a payload before a run starts (``validate_payload``).

The two agree: required fields must be present and not null, optional ones may be absent or null,
every present value has its declared type (booleans are not numbers; 3.0 is an integer), and
fields the trigger does not declare are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omni_engine.definition.model import PayloadField, WorkflowDefinition


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem in a trigger payload; ``field`` reads ``payload.<name>``."""

    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _json_schema_of(spec: PayloadField) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    if spec.type != "any":
        schema["type"] = spec.type if spec.required else [spec.type, "null"]
    if spec.description:
        schema["description"] = spec.description
    return schema


def to_json_schema(defn: WorkflowDefinition) -> dict[str, Any]:
    """The trigger payload as a JSON Schema (draft 2020-12). Optional fields also accept null."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{defn.display_name} trigger payload",
        "description": f"Payload of {defn.trigger.event}, which starts workflow {defn.id} {defn.version}.",
        "type": "object",
        "properties": {name: _json_schema_of(spec) for name, spec in defn.trigger.payload.items()},
        "required": defn.trigger.required_fields,
        "additionalProperties": False,
    }


def json_type(value: Any) -> str:
    """The JSON Schema name of a value's type (``integer``, ``object``...), as messages say it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _matches(type_: str, value: Any) -> bool:
    actual = json_type(value)
    if type_ == "any" or type_ == actual:
        return True
    if type_ == "number":
        return actual == "integer"
    # As in JSON Schema, 3.0 is an integer.
    return type_ == "integer" and isinstance(value, float) and value.is_integer()


def validate_payload(defn: WorkflowDefinition, payload: Any) -> list[FieldError]:
    """Check a trigger payload against the trigger's declared fields; ``[]`` when it is valid.

    Required fields must be present and not null; optional ones may be absent or null; every
    present value must have its declared type (booleans are not numbers; 3.0 is an integer);
    fields the trigger does not declare are rejected.
    """
    if not isinstance(payload, Mapping):
        return [FieldError("payload", f"expected an object, got {json_type(payload)}")]
    declared = defn.trigger.payload
    errors: list[FieldError] = []
    for name, spec in declared.items():
        where = f"payload.{name}"
        if name not in payload:
            if spec.required:
                errors.append(FieldError(where, f"required field is missing (expected {spec.type})"))
            continue
        value = payload[name]
        if value is None:
            if spec.required:
                errors.append(FieldError(where, f"required field is null (expected {spec.type})"))
        elif not _matches(spec.type, value):
            errors.append(FieldError(where, f"expected {spec.type}, got {json_type(value)}"))
    for key in payload:
        if key not in declared:
            known = ", ".join(declared) or "none"
            errors.append(FieldError(f"payload.{key}", f"unknown field (declared fields: {known})"))
    return errors
