"""Tools declared by configuration: one HTTP call, described as data, instead of an adapter in code.

A team adds an integration (GitHub, Notion, Asana, a Zapier hook...) by registering a
:class:`HttpToolDeclaration` over the API (``PUT /tools/declarations/{name}``) or by shipping it as a
YAML file in the ``integrations`` runner's declarations directory. Declarations live in the JetStream
KV bucket :data:`DECLARED_TOOLS_BUCKET`, one key per tool name; the ``integrations`` tool-runner
watches the bucket and serves every declared tool as ``(name, integrations)``.

A declaration says:

- ``request``: the method, the URL, query parameters, headers and a JSON body, each a *template*
  over the call: ``${input.owner}`` is the step input's ``owner``; ``${idempotencyKey}`` the call's
  idempotency key. A string that is one whole template keeps the value's type (a list stays a
  list); templates inside a longer string are written out as text. A body or query entry whose
  template finds nothing is left out, so optional input fields need no special syntax. Values put
  into the URL's path are percent-encoded.
- ``auth``: where the secret comes from (``env``, an environment variable of the runner, never the
  declaration itself) and how it is sent (``bearer``, ``token``, ``basic``, a named ``header`` or
  ``query`` parameter, or ``url`` when the secret *is* the address, as a Zapier hook's is).
- ``rateLimit``: the service's quota (requests and tokens per minute), shared by the runner's
  replicas and by every tool of the same integration (category).
- ``output``: the step output, as templates over the answer: ``${response.html_url}`` (the JSON
  body), ``${status}``, ``${headers.etag}``, ``${input.title}``. Without it the output is
  ``{status, body}``.

Templates are the workflows' ``${...}`` (``omni_contract.templates``): the same paths
(``response.items[0].id`` or ``response.items.0.id``), ``$${`` for a literal ``${``. The older
``{{ path }}`` still works and reads the same paths, but it is deprecated: registering a declaration
that uses it answers with a warning per field, with the field rewritten, and it will be refused
from Omni :data:`LEGACY_TEMPLATES_REFUSED_FROM` on. One string cannot mix the two.

The host of the URL is literal: input can choose paths and parameters, never where the request (and
its credential) goes. ``request.baseUrlEnv`` names a runner variable that replaces the URL's origin
(a GitHub Enterprise server, a test double); only the runner's operator sets it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec

from omni_contract.templates import Placeholder, TemplateSyntaxError, parse_path, scan
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
# The deprecated template syntax: ``{{ input.owner }}``, read like ``${input.owner}``.
LEGACY_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
LEGACY_TEMPLATES_REFUSED_FROM: Final = "0.3.0"

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
    # The tenant that declared it; None: shipped with the deployment, seen by every tenant and
    # changed only by the default tenant.
    tenant: str | None = None


def declared_key(name: str) -> str:
    """The bucket key of tool ``name`` (tool names are valid keys as they are)."""
    return name


class Problem(msgspec.Struct, frozen=True):
    field: str  # a JSON path into the declaration, e.g. ``$.request.url``
    message: str


class DeclarationWarning(msgspec.Struct, frozen=True):
    """What a declaration should change though it still works; ``replacement`` is the field rewritten."""

    field: str  # a JSON path into the declaration, e.g. ``$.request.url``
    message: str
    replacement: str


class RegisteredDeclaration(StoredDeclaration, kw_only=True):
    """The answer to a registration: the declaration as stored, and what to change in it."""

    warnings: list[DeclarationWarning] = []


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
    for where, text, roots in _template_fields(declaration):
        yield from _check_template(where, text, roots)
    origin, templated = _origin(request.url)
    if auth is not None and auth.scheme == "url":
        if request.url.startswith(("http://", "https://")):
            yield Problem(
                "$.request.url",
                "with auth scheme 'url' the address is the secret: request.url is only a path to append",
            )
    elif not re.match(r"^https?://[^/{}\s]+/" if templated else r"^https?://[^/{}\s]+(/|$)", origin):
        yield Problem(
            "$.request.url",
            "must start with a literal http:// or https:// origin (templates may fill in the path only)",
        )
    for name in request.headers:
        if name.lower() == "authorization" and auth is not None:
            yield Problem(f"$.request.headers.{name}", "set by auth; do not declare it as well")
    if request.body is not None and request.method in ("GET", "DELETE"):
        yield Problem("$.request.body", f"a {request.method} request has no body")
    if request.base_url_env is not None and not ENV_NAME.match(request.base_url_env):
        yield Problem("$.request.baseUrlEnv", f"{request.base_url_env!r} is not an environment variable name")
    if auth is not None:
        if not ENV_NAME.match(auth.env):
            yield Problem("$.auth.env", f"{auth.env!r} is not an environment variable name (A-Z, 0-9, _)")
        if auth.scheme in ("header", "query") and not auth.name:
            yield Problem("$.auth.name", f"auth scheme {auth.scheme!r} needs the header or parameter name")


def _origin(url: str) -> tuple[str, bool]:
    """The URL's literal text before its first template, and whether it has one. (A malformed
    template is reported on its own; the URL is then read as it is written.)"""
    try:
        first = next(_parts(url), "")
        templated = any(isinstance(part, Placeholder) for part in _parts(url))
    except TemplateSyntaxError:
        return url, False
    return (first if isinstance(first, str) else ""), templated


# -- templates --------------------------------------------------------------------------------------

_EXAMPLE_PATH = "input.owner or response.items[0].id"
_MIXED = "mixes ${...} and {{ ... }} templates: write every template in it as ${...}"


def _template_fields(declaration: HttpToolDeclaration) -> Iterator[tuple[str, str, frozenset[str]]]:
    """Every string that is a template, with its path in the declaration and the roots it may read."""
    request = declaration.request
    yield from _strings(request.url, "$.request.url", REQUEST_ROOTS)
    for name, value in request.query.items():
        yield from _strings(value, f"$.request.query.{name}", REQUEST_ROOTS)
    for name, value in request.headers.items():
        yield from _strings(value, f"$.request.headers.{name}", REQUEST_ROOTS)
    yield from _strings(request.body, "$.request.body", REQUEST_ROOTS)
    if declaration.output is not None:
        yield from _strings(declaration.output, "$.output", OUTPUT_ROOTS)


def _strings(value: Any, where: str, roots: frozenset[str]) -> Iterator[tuple[str, str, frozenset[str]]]:
    """The strings in ``value`` (inside lists and objects too), each with its path."""
    if isinstance(value, str):
        yield where, value, roots
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}", roots)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]", roots)


def _is_legacy(text: str) -> bool:
    """Whether ``text`` is written in ``{{ }}`` templates (and so has no ``${``)."""
    return "${" not in text and LEGACY_TEMPLATE.search(text) is not None


def _is_mixed(text: str) -> bool:
    return "${" in text and LEGACY_TEMPLATE.search(text) is not None


def _parts(text: str) -> Iterator[str | Placeholder]:
    """One declared string as literal text and placeholders, in either syntax; raises
    ``TemplateSyntaxError`` for an unclosed ``${`` or a string that mixes the two."""
    if _is_mixed(text):
        raise TemplateSyntaxError(text, _MIXED, snippet=text)
    if not _is_legacy(text):
        yield from scan(text)
        return
    end = 0
    for match in LEGACY_TEMPLATE.finditer(text):
        if match.start() > end:
            yield text[end : match.start()]
        yield Placeholder(match.group(1))
        end = match.end()
    if end < len(text):
        yield text[end:]


def _modernised(text: str) -> str:
    """``text`` with its ``{{ path }}`` templates written ``${path}``."""
    return LEGACY_TEMPLATE.sub(lambda match: f"${{{match.group(1)}}}", text)


def _check_template(where: str, text: str, roots: frozenset[str]) -> Iterator[Problem]:
    if _is_mixed(text):
        yield Problem(where, _MIXED)
        return
    shown = "{{{{ {} }}}}" if _is_legacy(text) else "${{{}}}"
    try:
        for part in _parts(text):
            if isinstance(part, str):
                continue
            expression = part.expression.strip()
            try:
                root = parse_path(expression, _EXAMPLE_PATH)[0]
            except TemplateSyntaxError:
                yield Problem(where, f"{shown.format(expression)} is not a path such as {_EXAMPLE_PATH}")
                continue
            if root not in roots:
                yield Problem(
                    where,
                    f"{shown.format(expression)}: unknown root {root!r} (use {', '.join(sorted(roots))})",
                )
    except TemplateSyntaxError as exc:
        yield Problem(where, f"{exc.snippet!r}: {exc.message}")


def deprecations(declaration: HttpToolDeclaration) -> list[DeclarationWarning]:
    """A warning for each field written in ``{{ }}`` templates, with the field rewritten."""
    return [
        DeclarationWarning(
            where,
            f"{{{{ ... }}}} templates are deprecated and refused from Omni {LEGACY_TEMPLATES_REFUSED_FROM}"
            f" on: write {_modernised(text)!r}",
            _modernised(text),
        )
        for where, text, _ in _template_fields(declaration)
        if _is_legacy(text)
    ]


def lookup(scope: dict[str, Any], expression: str) -> Any:
    """The value at ``expression`` (a path) in ``scope``, or None when any part of it is missing.

    Raises ``TemplateSyntaxError`` when ``expression`` is not a path (``check`` refuses those)."""
    value: Any = scope
    for part in parse_path(expression, _EXAMPLE_PATH):
        if isinstance(value, dict):
            value = value.get(str(part))
        elif isinstance(value, list) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            return None
        if value is None:
            return None
    return value


def substitute(text: str, fill: Callable[[str], str]) -> str:
    """``text`` with each template replaced by ``fill(path)``: for the caller that writes values its
    own way (the URL, whose path values are percent-encoded)."""
    return "".join(part if isinstance(part, str) else fill(part.expression.strip()) for part in _parts(text))


def render(value: Any, scope: dict[str, Any]) -> Any:
    """``value`` with its templates filled from ``scope``; see the module's rules.

    Objects drop entries whose whole-value template found nothing; lists keep their items.
    """
    if isinstance(value, str):
        pieces = list(_parts(value.strip()))
        if len(pieces) == 1 and isinstance(pieces[0], Placeholder):
            return lookup(scope, pieces[0].expression.strip())
        return "".join(
            part if isinstance(part, str) else as_text(lookup(scope, part.expression.strip()))
            for part in _parts(value)
        )
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
