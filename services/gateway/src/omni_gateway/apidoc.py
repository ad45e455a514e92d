"""How a handler module describes the routes it serves for the OpenAPI document: one
:class:`Operation` beside each handler, all of them listed in the module's ``OPERATIONS``.

``omni_gateway.openapi`` keeps the document's frame (info, tags, the shared components) and
assembles its paths from the modules' operations; a test holds every route of the app to exactly
one operation of the module its handler lives in, so a route and its description cannot drift
apart. An operation refers to what the document shares by name: error responses (``errors``,
names of ``omni_gateway.openapi.ERRORS``), parameters (:func:`param_ref`) and schemas
(:func:`schema_ref`, the bodies' struct names)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEMA_REF = "#/components/schemas/{name}"


@dataclass(frozen=True)
class Access:
    """Who may call an operation. ``public``: anyone, without credentials. Otherwise the caller
    must authenticate and, when ``permission`` is set, hold it: ``resource:action[:instance]``
    (``omni_contract.security``), where ``{param}`` stands for the route's path parameter, so
    ``workflow:execute:{name}`` asks for the workflow being executed."""

    permission: str | None = None
    public: bool = False

    def wanted(self, path_params: Mapping[str, str]) -> tuple[str, str, str]:
        """``(resource, action, instance)`` for one request."""
        assert self.permission is not None
        resource, action, *instance = self.permission.split(":", 2)
        return resource, action, instance[0].format_map(path_params) if instance else ""


PUBLIC = Access(public=True)
AUTHENTICATED = Access()


def needs(permission: str) -> Access:
    return Access(permission=permission)


@dataclass(frozen=True, kw_only=True)
class Operation:
    """One operation (a method on a path) as the OpenAPI document shows it."""

    method: str  # lower case, as the document spells it: get, post, put, delete
    path: str  # the route as the app registers it: /runs/{runId}
    operation_id: str
    tag: str
    summary: str
    responses: dict[str, Any]  # by status, the answers that are not errors
    access: Access  # who may call it: the gateway enforces this, the document shows it
    errors: tuple[str, ...] = ()  # the error responses, by name; every operation may also fail with a 500
    description: str | None = None
    parameters: tuple[dict[str, Any], ...] = ()
    request_body: dict[str, Any] | None = None


def json_answer(description: str, schema: str) -> dict[str, Any]:
    """An answer whose JSON body is the schema of that name."""
    return {"description": description, "content": {"application/json": {"schema": schema_ref(schema)}}}


def schema_ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMA_REF.format(name=name)}


def param_ref(name: str) -> dict[str, str]:
    """A parameter that several routes share (``omni_gateway.openapi``'s components)."""
    return {"$ref": f"#/components/parameters/{name}"}


def string_header(description: str) -> dict[str, Any]:
    """A string response header, such as ``Location``."""
    return {"description": description, "schema": {"type": "string"}}


def page_parameters(max_page: int, default_page: int) -> tuple[dict[str, Any], ...]:
    """``limit`` and ``cursor``, the query parameters of a route that answers a page at a time."""
    return (
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": max_page, "default": default_page},
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "description": "nextCursor of the previous page",
            "schema": {"type": "string"},
        },
    )
