"""The ``integrations`` provider: tools declared as data (``omni_contract.declared``), one HTTP call each.

The adapter holds the current declarations (the runner's watcher replaces them as the bucket
changes) and turns a call into the declared request: templates filled from the step input, the
credential read from the runner's environment and sent as the declaration says, the answer mapped
to the declared output. Failures are classified like every other adapter's (401/403 ``auth``, 429
``rate_limited`` with Retry-After, 5xx ``server``, other 4xx ``bad_request``).

Credentials: a declaration names the environment variable that holds its secret. Declarations can
be registered over the API, so the runner hands out only the variables on its allow-list
(``OMNI_TOOLRUNNER_DECLARED_SECRETS``; by default the integration tokens the product documents); a
declaration naming any other variable is served as unavailable, with that reason.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx
from omni_contract.declared import (
    DECLARED_PROVIDER,
    HttpToolDeclaration,
    as_text,
    lookup,
    render,
    substitute,
)
from omni_contract.templates import TemplateSyntaxError

from omni_toolrunner.providers.base import ProviderError, ProviderErrorKind, ToolCall, ToolOutcome
from omni_toolrunner.providers.declaration import (
    Idempotency,
    ProviderBinding,
    ProviderDeclaration,
    ProviderEnv,
    fixed_model,
)
from omni_toolrunner.providers.http_client import HttpAdapter, failures_logged
from omni_toolrunner.providers.http_errors import classify_status, retry_after, send, shorten

if TYPE_CHECKING:
    from omni_toolrunner.settings import ToolRunnerSettings

logger = logging.getLogger(__name__)

# The integration credentials the product documents; an operator widens or narrows the list.
DEFAULT_SECRETS = (
    "GITHUB_TOKEN",
    "INTERCOM_TOKEN",
    "ADOBE_EXPRESS_TOKEN",
    "ASANA_TOKEN",
    "NOTION_TOKEN",
    "ZAPIER_HOOK_URL",
    "V0_API_KEY",
    "WINDSOR_API_KEY",
)


USER_AGENT = "omni-integrations/1"


class DeclaredHttpAdapter(HttpAdapter):
    """Serves whatever tools are declared; :meth:`replace` swaps the set as declarations change."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        allowed_secrets: Iterable[str] = DEFAULT_SECRETS,
    ) -> None:
        super().__init__(client)
        self._environ = os.environ if environ is None else environ
        self._allowed = frozenset(allowed_secrets)
        self._declarations: dict[str, HttpToolDeclaration] = {}
        self._tools: frozenset[str] = frozenset()

    @property
    def provider(self) -> str:
        return DECLARED_PROVIDER

    @property
    def tools(self) -> frozenset[str]:
        return self._tools

    @property
    def declarations(self) -> dict[str, HttpToolDeclaration]:
        return dict(self._declarations)

    def replace(self, declarations: Iterable[HttpToolDeclaration]) -> None:
        self._declarations = {declaration.name: declaration for declaration in declarations}
        self._tools = frozenset(self._declarations)

    def unavailable_reason(self, declaration: HttpToolDeclaration) -> str | None:
        """Why this runner cannot serve ``declaration`` (its secret is missing or not allowed), or None."""
        if declaration.auth is None:
            return None
        env = declaration.auth.env
        if env not in self._allowed:
            return f"{env} is not among the secrets declared tools may use (OMNI_TOOLRUNNER_DECLARED_SECRETS)"
        if not self._environ.get(env, "").strip():
            return f"{env} is not set"
        return None

    async def call(self, request: ToolCall) -> ToolOutcome:
        declaration = self._declarations.get(request.tool)
        if declaration is None:
            raise ProviderError(ProviderErrorKind.UNKNOWN_TOOL, f"no declared tool {request.tool!r}")
        with failures_logged(logger, DECLARED_PROVIDER, request):
            reason = self.unavailable_reason(declaration)
            if reason is not None:
                raise ProviderError(ProviderErrorKind.UNAVAILABLE, reason, retryable=False)
            try:
                prepared = self._prepare(declaration, request)
                who = f"{declaration.name} ({prepared.url.netloc.decode()})"
                response = await send(self._client, prepared, provider=who, timeout_s=request.timeout_s)
                return _outcome(declaration, request, response)
            except TemplateSyntaxError as exc:
                # Registration refuses these; a declaration stored before the rules changed can hold one.
                raise ProviderError(
                    ProviderErrorKind.BAD_REQUEST,
                    f"the declaration of {declaration.name} has an invalid template: {exc}",
                    retryable=False,
                ) from None

    # -- building the request ---------------------------------------------------------------------

    def _prepare(self, declaration: HttpToolDeclaration, call: ToolCall) -> httpx.Request:
        spec = declaration.request
        scope: dict[str, Any] = {"input": call.input, "idempotencyKey": call.idempotency_key}
        url = self._url(declaration, scope)
        params = {name: as_text(value) for name, value in render(spec.query, scope).items()}
        headers = {name: as_text(value) for name, value in render(spec.headers, scope).items()}
        auth = declaration.auth
        if auth is not None and auth.scheme != "url":
            secret = self._environ[auth.env].strip()
            if auth.scheme == "bearer":
                headers["Authorization"] = f"Bearer {secret}"
            elif auth.scheme == "token":
                headers["Authorization"] = f"token {secret}"
            elif auth.scheme == "basic":
                headers["Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
            elif auth.scheme == "header":
                assert auth.name is not None
                headers[auth.name] = secret
            else:  # query
                assert auth.name is not None
                params[auth.name] = secret
        content: bytes | None = None
        if spec.body is not None:
            content = json.dumps(render(spec.body, scope), separators=(",", ":")).encode()
            headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Accept", "application/json")
        headers.setdefault("User-Agent", USER_AGENT)  # GitHub refuses requests without one
        return httpx.Request(spec.method, url, params=params or None, headers=headers, content=content)

    def _url(self, declaration: HttpToolDeclaration, scope: dict[str, Any]) -> str:
        spec = declaration.request

        def fill(path: str) -> str:
            value = lookup(scope, path)
            if value is None or value == "":
                raise ProviderError(
                    ProviderErrorKind.BAD_REQUEST,
                    f"the URL needs {path}, and the input has no value for it",
                )
            return quote(as_text(value), safe="")

        path = substitute(spec.url, fill)
        auth = declaration.auth
        if auth is not None and auth.scheme == "url":
            return self._environ[auth.env].strip() + path
        if spec.base_url_env:
            base = self._environ.get(spec.base_url_env, "").strip()
            if base:
                parts = urlsplit(path)
                rest = path[len(f"{parts.scheme}://{parts.netloc}") :]
                return base.rstrip("/") + rest
        return path


def _outcome(declaration: HttpToolDeclaration, call: ToolCall, response: httpx.Response) -> ToolOutcome:
    body = _body(response)
    if not 200 <= response.status_code < 300:
        error = classify_status(
            response.status_code,
            _message(body) or f"HTTP {response.status_code}",
            retry_after_s=retry_after(response.headers.get("Retry-After")),
        )
        if not declaration.retryable:
            error.retryable = False
        raise error
    if declaration.output is None:
        return ToolOutcome(output={"status": response.status_code, "body": body})
    scope = {
        "input": call.input,
        "response": body,
        "status": response.status_code,
        "headers": {name.lower(): value for name, value in response.headers.items()},
    }
    return ToolOutcome(output=render(declaration.output, scope))  # an object renders as an object


def _body(response: httpx.Response) -> Any:
    """The answer's JSON, or its text when it is not JSON (a hook may answer ``ok``)."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def _message(body: Any) -> str | None:
    """The human message of an error body, in the shapes these APIs use (with the first detail of
    a list of errors, such as GitHub's ``Validation Failed`` and the field it is about)."""
    if isinstance(body, str):
        return shorten(body.strip()) or None
    if not isinstance(body, dict):
        return None
    detail = _first_error(body.get("errors"))
    for key in ("message", "error_description"):
        if isinstance(body.get(key), str):
            return f"{body[key]}: {detail}" if detail and detail != body[key] else str(body[key])
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return detail


def _first_error(errors: Any) -> str | None:
    if not isinstance(errors, list) or not errors:
        return None
    first = errors[0]
    if not isinstance(first, dict):
        return str(first)
    if first.get("message"):
        return str(first["message"])
    parts = [str(first[key]) for key in ("field", "code") if first.get(key)]
    return " ".join(parts) or None


def _bind(
    settings: ToolRunnerSettings, environ: Mapping[str, str], client: httpx.AsyncClient
) -> ProviderBinding:
    adapter = DeclaredHttpAdapter(client, environ=environ, allowed_secrets=settings.declared_secrets)
    return ProviderBinding(adapter, "execute_tool", fixed_model(None), None)


DECLARATION = ProviderDeclaration(
    name=DECLARED_PROVIDER,
    env=ProviderEnv(),  # each declaration names its credential, from OMNI_TOOLRUNNER_DECLARED_SECRETS
    tools=(),
    bind=_bind,
    idempotency=Idempotency.PER_TOOL,
    per_tool_credentials=True,
    tools_at_run_time=True,
)
