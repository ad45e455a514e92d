"""snake_case contract structs to the camelCase shape of HTTP bodies.

Only the names of struct fields are converted. Values that are free-form dicts (a run's payload,
context or output, an event's data) belong to the workflow's author and pass through untouched.
"""

from __future__ import annotations

from typing import Any

import msgspec


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def to_camel(value: Any) -> Any:
    """A struct (and the structs inside it) as plain data with camelCase keys; every field present."""
    if isinstance(value, msgspec.Struct):
        return {camel(name): to_camel(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, list | tuple):
        return [to_camel(item) for item in value]
    return value
