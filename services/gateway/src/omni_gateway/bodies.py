"""Reading requests and writing JSON responses, with errors that name the field at fault."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import msgspec
import yaml
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from omni_gateway.convert import to_camel
from omni_gateway.errors import ApiError, ErrorDetail


def respond(value: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """``value`` (structs and plain data) as JSON in the public shape: camelCase field names."""
    return json_response(to_camel(value), status=status, headers=headers)


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """``data`` as it is: for bodies that are not structs, such as workflow definitions."""
    return web.Response(
        status=status, body=msgspec.json.encode(data), content_type="application/json", headers=headers
    )


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"request body is larger than {limit} bytes (setting max_body_bytes)",
        [ErrorDetail(field="body", message=f"at most {limit} bytes are accepted")],
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refused early when its declared length is already over ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(limit) from None
    except (RequestPayloadError, HttpProcessingError) as exc:  # e.g. a Content-Encoding it is not in
        why = " ".join(str(exc.__cause__ or exc).split())[:200]
        raise ApiError.bad_request("body", f"the body cannot be read: {_escaped(why)}") from None


async def read_text(request: web.Request, limit: int, *, root: str = "") -> str:
    """The body as UTF-8 text of printable characters (YAML's set: no NUL or other control
    characters but tab and line breaks), else 400 naming the line and column."""
    text = await _read_utf8(request, limit)
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise ApiError.bad_request(
            "body",
            f"body has the non-printable character {_escaped(bad.group())} at line {line}, column {column}",
        )
    _check_document(request.content_type, text, root)
    return text


_JSON_TYPES = frozenset({"application/json"})
_YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain"})


def _check_document(content_type: str, text: str, root: str) -> None:
    """A text body that is a JSON or YAML document (a workflow definition, a declaration) must hold
    only values Omni can carry, like a JSON body (:func:`check_value`, fields named from its root).
    A document that does not parse is left to the reader that owns it, which says where it breaks.

    Escaped UTF-16 surrogates are refused as written, even in pairs: the engine reads every
    definition with PyYAML, which turns each half of a pair into a lone surrogate that nothing
    can encode (its reply to the gateway was lost: a 502)."""
    if content_type not in _JSON_TYPES and content_type not in _YAML_TYPES:
        return
    escape = _SURROGATE_ESCAPE.search(text)
    if escape is not None:
        line = text.count("\n", 0, escape.start()) + 1
        message = (
            f"body escapes a UTF-16 surrogate ({escape.group().lstrip(chr(92) * 2)}) at line {line}: "
            "write the character itself"
        )
        raise ApiError.bad_request(root or "body", message)
    try:
        value = (
            json.loads(text, parse_int=_parse_int)
            if content_type in _JSON_TYPES
            else msgspec.yaml.decode(text)
        )
    except RecursionError:
        raise ApiError.bad_request("body", f"body is nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, msgspec.DecodeError, yaml.YAMLError):  # JSONDecodeError is a ValueError
        # libyaml refuses some escapes PyYAML's pure loader (the engine's) reads: NUL among them.
        bad = _NUL_ESCAPE.search(text) if content_type in _YAML_TYPES else None
        if bad is not None:
            line = text.count("\n", 0, bad.start()) + 1
            raise ApiError.bad_request(root or "body", f"body escapes NUL at line {line}") from None
        return
    check_value(value, root)


async def _read_utf8(request: web.Request, limit: int) -> str:
    raw = await read_body(request, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError.bad_request("body", f"body is not valid UTF-8 (byte {exc.start})") from None


async def read_json_object(request: web.Request, limit: int, *, root: str = "") -> dict[str, Any]:
    """The body as a JSON object; an empty body counts as ``{}``. Every value in it is checked
    with :func:`check_value`, whose errors name the field under ``root``."""
    text = await _read_utf8(request, limit)
    if not text.strip():
        return {}
    try:
        value = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        message = f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} (char {exc.pos})"
        raise ApiError.bad_request("body", message) from None
    except RecursionError:
        raise ApiError.bad_request("body", f"body is nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(value, dict):
        raise ApiError.bad_request("body", f"body must be a JSON object, not {json_type(value)}")
    check_value(value, root)
    return value


# -- what a JSON (or YAML) value may hold ----------------------------------------------------------
MAX_DEPTH = 64
"""Nesting of objects and arrays accepted in a body (deeper is refused before anything else)."""
MAX_VALUES = 1_000_000
"""Values (of any kind, nested ones included) a body may hold."""
MIN_INT, MAX_INT = -(2**63), 2**64 - 1
"""Integers are refused outside the 64-bit range: NATS messages are encoded with msgspec, which
has none wider, and Python refuses to read numbers of more than 4,300 digits at all."""
_MAX_INT_DIGITS = 20

# NUL (which PostgreSQL cannot store in text or jsonb) and lone surrogates (which no UTF-8
# encoder accepts) in any string or name of a JSON value.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# What YAML does not accept in a stream, the same in any text body.
_NOT_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Escapes (not themselves escaped) of a UTF-16 surrogate, and of NUL, in JSON or YAML text.
_SURROGATE_ESCAPE = re.compile(
    r"(?<!\\)(?:\\\\)*\\(?:u[dD][89a-fA-F][0-9a-fA-F]{2}|U0000[dD][89a-fA-F][0-9a-fA-F]{2})"
)
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\(?:0|x00|u0000|U00000000)")
# What a name in a URL (a path segment, a query parameter) may not hold.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class _BigInt(str):
    """An integer literal too long to read; refused, with its field, by :func:`check_value`."""


def _parse_int(literal: str) -> int | _BigInt:
    return _BigInt(literal) if len(literal.lstrip("-")) > _MAX_INT_DIGITS else int(literal)


def check_value(value: Any, root: str = "") -> None:
    """400 naming the first field (``payload.items[2].name``) whose value cannot travel through
    Omni: nesting deeper than :data:`MAX_DEPTH`, an integer outside the 64-bit range, a number
    that is not finite, a string or name with NUL or a lone surrogate."""
    stack: list[tuple[Any, str, int]] = [(value, root, 0)]
    seen = 0
    while stack:
        item, path, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:  # YAML aliases can make a small document hold billions of values
            raise ApiError.bad_request(root or "body", f"body holds more than {MAX_VALUES} values")
        where = path or "body"
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise ApiError.bad_request(where, f"{where} is nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, list):
                stack.extend((member, f"{path}[{index}]", depth + 1) for index, member in enumerate(item))
                continue
            for key, member in item.items():
                name = str(key)
                if _UNSTORABLE.search(name):
                    raise ApiError.bad_request(
                        where, f"{where} has a name with {_what(name)}: {_escaped(name)}"
                    )
                stack.append((member, f"{path}.{name}" if path else name, depth + 1))
        elif isinstance(item, _BigInt) or (
            isinstance(item, int) and not isinstance(item, bool) and not MIN_INT <= item <= MAX_INT
        ):
            raise ApiError.bad_request(where, f"{where} is an integer outside the 64-bit range")
        elif isinstance(item, float) and not math.isfinite(item):
            raise ApiError.bad_request(where, f"{where} must be a finite number")
        elif isinstance(item, str) and _UNSTORABLE.search(item):
            raise ApiError.bad_request(where, f"{where} has {_what(item)}, which Omni cannot store")


def _what(text: str) -> str:
    return "a NUL character" if "\x00" in text else "a lone surrogate (invalid Unicode)"


def _escaped(text: str) -> str:
    """``text`` with control characters and surrogates written as escapes, safe in any answer."""
    return "".join(
        f"\\u{ord(char):04x}" if CONTROL.match(char) or _NOT_PRINTABLE.match(char) else char for char in text
    )


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def object_field(body: dict[str, Any], name: str) -> dict[str, Any]:
    """``body[name]`` when it is a JSON object; missing or null is ``{}``."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError.bad_request(name, f"{name} must be a JSON object, not {json_type(value)}")
    return value


def query_bool(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ApiError.bad_request(name, f"{name} must be true or false, not {raw!r}")


def query_float(request: web.Request, name: str, default: float, *, maximum: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError.bad_request(name, f"{name} must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or value <= 0 or value > maximum:
        raise ApiError.bad_request(name, f"{name} must be more than 0 and at most {maximum:g} seconds")
    return value


def query_int(request: web.Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    return parse_int(name, raw, minimum=minimum, maximum=maximum)


def parse_int(name: str, raw: str, *, minimum: int, maximum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ApiError.bad_request(name, f"{name} must be an integer, not {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ApiError.bad_request(name, f"{name} must be between {minimum} and {maximum}")
    return value
