"""Reading requests and writing JSON responses, with errors that name the field at fault."""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
from aiohttp import web

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


async def read_text(request: web.Request, limit: int) -> str:
    raw = await read_body(request, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError.bad_request("body", f"body is not valid UTF-8 (byte {exc.start})") from None


async def read_json_object(request: web.Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; an empty body counts as ``{}``."""
    text = await read_text(request, limit)
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        message = f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} (char {exc.pos})"
        raise ApiError.bad_request("body", message) from None
    if not isinstance(value, dict):
        raise ApiError.bad_request("body", f"body must be a JSON object, not {json_type(value)}")
    return value


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
