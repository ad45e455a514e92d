"""Tools declared by configuration: one HTTP call, described as data, instead of an adapter in code.

A team adds an integration (GitHub, Notion, Asana, a Zapier hook...) by registering a
:class:`HttpToolDeclaration` over the API (``PUT /tools/declarations/{name}``) or by shipping it as a
YAML file in the ``integrations`` runner's declarations directory. Declarations live in the JetStream
KV bucket :data:`DECLARED_TOOLS_BUCKET`, one key per tool name; the ``integrations`` tool-runner
watches the bucket and serves every declared tool as ``(name, integrations)``.

A declaration says:

- ``request``: the method, the URL, query parameters, headers and a JSON body, each a *template*
  over the call: ``{{ input.owner }}`` is the step input's ``owner``; ``{{ idempotencyKey }}`` the
  call's idempotency key. A string that is one whole template keeps the value's type (a list stays a
  list); templates inside a longer string are written out as text. A body or query entry whose
  template finds nothing is left out, so optional input fields need no special syntax. Values put
  into the URL's path are percent-encoded.
- ``auth``: where the secret comes from (``env``, an environment variable of the runner, never the
  declaration itself) and how it is sent (``bearer``, ``token``, ``basic``, a named ``header`` or
  ``query`` parameter, or ``url`` when the secret *is* the address, as a Zapier hook's is).
- ``rateLimit``: the service's quota (requests and tokens per minute), shared by the runner's
  replicas and by every tool of the same integration (category).
- ``output``: the step output, as templates over the answer: ``{{ response.html_url }}`` (the JSON
  body), ``{{ status }}``, ``{{ headers.etag }}``, ``{{ input.title }}``. Without it the output is
  ``{status, body}``.

The host of the URL is literal: input can choose paths and parameters, never where the request (and
its credential) goes. ``request.baseUrlEnv`` names a runner variable that replaces the URL's origin
(a GitHub Enterprise server, a test double); only the runner's operator sets it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec

from omni_contract.tools import Capability, ToolSpec

DECLARED_TOOLS_BUCKET: Final = "omni_declared_tools"
DECLARED_TOOLS_DESCRIPTION: Final = (
    "Tools declared by configuration (HTTP calls), served by tool-runner-integrations"
)
DECLARED_PROVIDER: Final = "integrations"
"""The provider (and tool-runner deployable, ``tool-runner-integrations``) that serves declared tools."""

ORIGIN_API: Final = "api"
ORIGIN_FILE_PREFIX: Final = "file:"

TOOL_NAME = re.compile(r"^[a-z][a-z0-9_-]*\.[a-z][a-z0-9_-]*$")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\])*$")
_SEGMENT = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")

REQUEST_ROOTS: Final = frozenset({"input", "idempotencyKey"})
OUTPUT_ROOTS: Final = frozenset({"input", "response", "status", "headers"})

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
AuthScheme = Literal["bearer", "token", "basic", "header", "query", "url"]


class AuthSpec(msgspec.Struct, kw_only=True, rename="camel"):
    """The credential: the runner reads ``env`` from its environment and sends it as ``scheme`` says.

    ``bearer``/``token``: ``Authorization: Bearer|token <secret>``; ``basic``: the secret is
    ``user:password``; ``header``/``query``: sent under ``name``; ``url``: the secret is the base URL
    and ``request.url`` is appended to it (empty for a hook URL as it is).
    """

    env: str
    scheme: AuthScheme = "bearer"
    name: str | None = None


class RateLimitSpec(msgspec.Struct, kw_only=True, rename="camel"):
    """The integration's own quota, shared by every replica of the integrations runner. Tools of one
    integration (the name's first part: ``github``) share one limit: the smallest they declare."""

    requests_per_minute: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tokens_per_minute: Annotated[int, msgspec.Meta(ge=1)] | None = None


class HttpRequestSpec(msgspec.Struct, kw_only=True, rename="camel"):
    method: Method = "GET"
    url: str = ""
    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    body: Any = None
    base_url_env: str | None = None


class HttpToolDeclaration(msgspec.Struct, kw_only=True, rename="camel"):
    """A tool whose one call is the HTTP request described here."""

    name: str  # <category>.<action>, e.g. github.create_issue
    description: str = ""
    version: str = "1"
    category: str | None = None  # default: the name's first part
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=600_000)] = 30_000
    retryable: bool = True
    scopes: list[str] = msgspec.field(default_factory=lambda: ["tools:execute"])
    capabilities: list[Capability] = []
    input_schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})
    output_schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})
    request: HttpRequestSpec
    auth: AuthSpec | None = None
    output: dict[str, Any] | None = None
    rate_limit: RateLimitSpec | None = None

    def spec(self) -> ToolSpec:
        """The registry's description of this tool as the ``integrations`` runner serves it."""
        return ToolSpec(
            name=self.name,
            provider=DECLARED_PROVIDER,
            description=self.description,
            version=self.version,
            category=self.category or self.name.partition(".")[0],
            timeout_ms=self.timeout_ms,
            retryable=self.retryable,
            requires_auth=self.auth is not None,
            scopes=list(self.scopes),
            capabilities=list(self.capabilities),
            input_schema=self.input_schema,
            output_schema=self.output_schema,
        )


class StoredDeclaration(msgspec.Struct, kw_only=True, rename="camel"):
    """A declaration as the bucket keeps it: where it came from and when."""

    declaration: HttpToolDeclaration
    origin: str = ORIGIN_API  # "api", or "file:<file name>" for a shipped one
    updated_at: datetime | None = None


def declared_key(name: str) -> str:
    """The bucket key of tool ``name`` (tool names are valid keys as they are)."""
    return name


class Problem(msgspec.Struct, frozen=True):
    field: str  # a JSON path into the declaration, e.g. ``$.request.url``
    message: str


def decode_declaration(raw: bytes | dict[str, Any]) -> HttpToolDeclaration:
    """Decode and check a declaration; raises :class:`DeclarationError` naming every bad field."""
    try:
        if isinstance(raw, bytes):
            declaration = msgspec.json.decode(raw, type=HttpToolDeclaration)
        else:
            declaration = msgspec.convert(raw, HttpToolDeclaration)
    except msgspec.ValidationError as exc:
        raise DeclarationError([Problem(_path_of(str(exc)), str(exc))]) from exc
    except msgspec.DecodeError as exc:
        raise DeclarationError([Problem("$", f"not valid JSON: {exc}")]) from exc
    problems = list(check(declaration))
    if problems:
        raise DeclarationError(problems)
    return declaration


class DeclarationError(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems


def check(declaration: HttpToolDeclaration) -> Iterator[Problem]:
    """What is wrong with a declaration that decoded: names, the URL, templates, the credential."""
    if not TOOL_NAME.match(declaration.name):
        yield Problem(
            "$.name",
            f"{declaration.name!r} is not <category>.<action> in lower case (letters, digits, _ and -)",
        )
    request = declaration.request
    auth = declaration.auth
    for where, template in _templates(request.url, "$.request.url"):
        yield from _check_template(where, template, REQUEST_ROOTS)
    origin = TEMPLATE.split(request.url, maxsplit=1)[0]
    if auth is not None and auth.scheme == "url":
        if request.url.startswith(("http://", "https://")):
            yield Problem(
                "$.request.url",
                "with auth scheme 'url' the address is the secret: request.url is only a path to append",
            )
    elif not re.match(
        r"^https?://[^/{}\s]+/" if origin != request.url else r"^https?://[^/{}\s]+(/|$)", origin
    ):
        yield Problem(
            "$.request.url",
            "must start with a literal http:// or https:// origin (templates may fill in the path only)",
        )
    for name, value in request.query.items():
        for where, template in _templates(value, f"$.request.query.{name}"):
            yield from _check_template(where, template, REQUEST_ROOTS)
    for name, value in request.headers.items():
        if name.lower() == "authorization" and auth is not None:
            yield Problem(f"$.request.headers.{name}", "set by auth; do not declare it as well")
        for where, template in _templates(value, f"$.request.headers.{name}"):
            yield from _check_template(where, template, REQUEST_ROOTS)
    for where, template in _templates(request.body, "$.request.body"):
        yield from _check_template(where, template, REQUEST_ROOTS)
    if request.body is not None and request.method in ("GET", "DELETE"):
        yield Problem("$.request.body", f"a {request.method} request has no body")
    if request.base_url_env is not None and not ENV_NAME.match(request.base_url_env):
        yield Problem("$.request.baseUrlEnv", f"{request.base_url_env!r} is not an environment variable name")
    if auth is not None:
        if not ENV_NAME.match(auth.env):
            yield Problem("$.auth.env", f"{auth.env!r} is not an environment variable name (A-Z, 0-9, _)")
        if auth.scheme in ("header", "query") and not auth.name:
            yield Problem("$.auth.name", f"auth scheme {auth.scheme!r} needs the header or parameter name")
    if declaration.output is not None:
        for where, template in _templates(declaration.output, "$.output"):
            yield from _check_template(where, template, OUTPUT_ROOTS)


# -- templates --------------------------------------------------------------------------------------


def _templates(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every ``{{ ... }}`` expression in ``value`` (strings inside lists and objects too), with its path."""
    if isinstance(value, str):
        for match in TEMPLATE.finditer(value):
            yield where, match.group(1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _templates(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _templates(item, f"{where}[{index}]")


def _check_template(where: str, expression: str, roots: frozenset[str]) -> Iterator[Problem]:
    if not _PATH.match(expression):
        yield Problem(
            where, f"{{{{ {expression} }}}} is not a path such as input.owner or response.items[0].id"
        )
        return
    root = parse_path(expression)[0]
    if root not in roots:
        yield Problem(
            where, f"{{{{ {expression} }}}}: unknown root {root!r} (use {', '.join(sorted(roots))})"
        )


def parse_path(expression: str) -> list[str | int]:
    """``response.items[0].id`` as ``["response", "items", 0, "id"]``."""
    return [name if name else int(index) for name, index in _SEGMENT.findall(expression)]


_MISSING: Final = object()


def lookup(scope: dict[str, Any], expression: str) -> Any:
    """The value at ``expression`` in ``scope``, or None when any part of the path is missing."""
    value: Any = scope
    for part in parse_path(expression):
        if isinstance(part, int):
            if not isinstance(value, list) or part >= len(value):
                return None
            value = value[part]
        else:
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
    return value


def render(value: Any, scope: dict[str, Any]) -> Any:
    """``value`` with its templates filled from ``scope``; see the module's rules.

    Objects drop entries whose whole-value template found nothing; lists keep their items.
    """
    if isinstance(value, str):
        whole = TEMPLATE.fullmatch(value.strip())
        if whole is not None:
            return lookup(scope, whole.group(1))
        return TEMPLATE.sub(lambda m: as_text(lookup(scope, m.group(1))), value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            rendered = render(item, scope)
            if rendered is not None:
                out[key] = rendered
        return out
    if isinstance(value, list):
        return [render(item, scope) for item in value]
    return value


def as_text(value: Any) -> str:
    """A value written into a string: text as it is, nothing as empty, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return msgspec.json.encode(value).decode()


def _path_of(message: str) -> str:
    """The field a msgspec validation message is about: ``... - at `$.request.method```, or the
    missing field itself for ``Object missing required field `request```."""
    match = re.search(r"at `(\$[^`]*)`", message)
    path = match.group(1) if match else "$"
    missing = re.match(r"Object missing required field `([^`]+)`", message)
    return f"{path}.{missing.group(1)}" if missing else path


def integration_limits(declarations: list[HttpToolDeclaration]) -> dict[str, tuple[int | None, int | None]]:
    """Per integration (the tool name's first part), the smallest requests and tokens per minute its
    declarations state."""
    limits: dict[str, tuple[int | None, int | None]] = {}
    for declaration in declarations:
        if declaration.rate_limit is None:
            continue
        category = declaration.name.partition(".")[0]
        requests, tokens = limits.get(category, (None, None))
        limits[category] = (
            _smallest(requests, declaration.rate_limit.requests_per_minute),
            _smallest(tokens, declaration.rate_limit.tokens_per_minute),
        )
    return limits


def _smallest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)
