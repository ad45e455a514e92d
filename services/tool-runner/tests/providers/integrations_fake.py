"""Four SaaS APIs that declared HTTP tools call, on one fake server, for tests over real HTTP.

Each integration has its own path prefix (standing in for its real host) and its own credential, so
one server plays all four::

    /github   https://api.github.com    POST /repos/{owner}/{repo}/issues, GET .../issues/{number}
    /notion   https://api.notion.com    POST /v1/pages, GET /v1/pages/{id}
    /asana    https://app.asana.com     POST /api/1.0/tasks, GET /api/1.0/tasks/{gid}
    /zapier   https://hooks.zapier.com  POST /hooks/catch/{account}/{hook}/

The answers and error bodies are the real APIs' shapes, trimmed to the fields a client uses:

* GitHub takes ``Authorization: Bearer <token>`` or ``token <token>`` (401 ``Requires authentication``
  without the header, ``Bad credentials`` with a wrong one) and a ``User-Agent`` (403 without, as GitHub
  does). Only repositories a test declares with :meth:`IntegrationsFake.repository` exist (404
  ``Not Found`` otherwise); a missing title is 422 ``Validation Failed`` with a ``missing_field`` error.
* Notion takes ``Authorization: Bearer <token>`` (401 ``unauthorized``) and a ``Notion-Version`` header
  (400 ``missing_version``); a body without ``parent`` or ``properties`` is 400 ``validation_error``.
* Asana takes ``Authorization: Bearer <token>`` (401 ``Not Authorized``) and ``{"data": {...}}`` bodies
  (400 ``data: Missing input`` / ``name: Missing input``).
* A Zapier catch hook needs no header: its URL is the secret. An unknown hook is 404.

:meth:`IntegrationsFake.fail_next` works as in :class:`http_fake.FakeProvider`: the next admitted request
(credentials accepted) gets the fault, with the error body of the integration it went to when the fault
has none; ``integration=`` aims a fault at one integration. Every request is recorded in ``requests``
(as :class:`Call`, a :class:`http_fake.Recorded` with the method and integration), and what was created
is kept: ``issues[(owner, repo)]``, ``pages``, ``tasks``, ``hooks_received``.

Serve it with ``http_fake.serving``: it answers every method on every path.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from http_fake import FakeProvider, Fault, Recorded

GITHUB_TOKEN = "ghp_testOmni0123456789abcdefghijklmnop"
GITHUB_LOGIN = "omni-bot"
NOTION_TOKEN = "ntn_testOmni0123456789abcdefghijklmnopqrstuvwx"
NOTION_VERSION = "2022-06-28"
ASANA_TOKEN = "2/1200000000000001/1200000000000002:0123456789abcdef0123456789abcdef"
ASANA_WORKSPACE = "1200000000000000"
ZAPIER_ACCOUNT = "1234567"
ZAPIER_HOOK = "3abc9de"

INTEGRATIONS = ("github", "notion", "asana", "zapier")
# The real base each prefix stands for: the fake's ``<base_url>/<integration>`` replaces it.
REAL_BASE_URLS = {
    "github": "https://api.github.com",
    "notion": "https://api.notion.com",
    "asana": "https://app.asana.com",
    "zapier": "https://hooks.zapier.com",
}

_GITHUB_DOCS = "https://docs.github.com/rest"
_GITHUB_ISSUE_DOCS = "https://docs.github.com/rest/issues/issues#create-an-issue"
_GITHUB_ERRORS = {
    400: ("Problems parsing JSON", _GITHUB_ISSUE_DOCS),
    401: ("Bad credentials", _GITHUB_DOCS),
    403: ("Resource not accessible by personal access token", _GITHUB_ISSUE_DOCS),
    404: ("Not Found", _GITHUB_ISSUE_DOCS),
    410: ("Issues are disabled for this repo", _GITHUB_ISSUE_DOCS),
    422: ("Validation Failed", _GITHUB_ISSUE_DOCS),
    429: (
        "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include"
        " the request ID 0000:0000:0000000:0000000:00000000.",
        "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
    ),
}
_NOTION_ERRORS = {
    400: ("validation_error", "body failed validation."),
    401: ("unauthorized", "API token is invalid."),
    403: ("restricted_resource", "API token does not have access to this resource."),
    404: (
        "object_not_found",
        "Could not find object. Make sure the relevant pages and databases are shared with your integration.",
    ),
    409: ("conflict_error", "Conflict occurred while saving. Please try again."),
    429: ("rate_limited", "You have been rate limited. Please try again in a few minutes."),
    500: ("internal_server_error", "Unexpected error occurred."),
    502: ("bad_gateway", "Bad Gateway."),
    503: ("service_unavailable", "Notion is unavailable, please try again later."),
    504: ("gateway_timeout", "Gateway Timeout."),
}
_ASANA_HELP = (
    "For more information on API status codes and how to handle them, read the docs on errors:"
    " https://developers.asana.com/docs/errors"
)
_ASANA_ERRORS = {
    400: "Bad Request",
    401: "Not Authorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    429: "You have made too many requests recently. Please, be chill.",
    500: "Server Error",
    503: "Service Unavailable",
}
_ZAPIER_ERRORS = {
    404: "Not found: this hook does not exist or its Zap is off.",
    410: "This hook has been deleted.",
    429: "Rate limit exceeded: too many requests to this hook, please slow down.",
    500: "Internal server error.",
}


@dataclass(frozen=True, slots=True)
class Call(Recorded):
    """A recorded request, with its method and the integration its path went to (None: no prefix)."""

    method: str = "POST"
    integration: str | None = None


class Headers(dict[str, str]):
    """Recorded headers: keys lower-cased, looked up in any case (``h["Authorization"]`` works too)."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__((str(k).lower(), v) for k, v in dict(items).items())

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


_Handler = Callable[[web.Request, Any, dict[str, str]], Awaitable[web.StreamResponse]]
_INVALID_JSON = object()


def _now() -> datetime:
    return datetime.now(UTC)


def _iso_seconds(at: datetime) -> str:  # GitHub: 2026-01-02T03:04:05Z
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_millis(at: datetime) -> str:  # Notion, Asana: 2026-01-02T03:04:05.678Z
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _dashed(notion_id: str) -> str:
    """Notion accepts ids with or without dashes and answers with dashes."""
    bare = notion_id.replace("-", "")
    if re.fullmatch(r"[0-9a-fA-F]{32}", bare):
        return str(uuid.UUID(bare))
    return notion_id


class IntegrationsFake(FakeProvider):
    """GitHub issues, Notion pages, Asana tasks and a Zapier catch hook behind one server."""

    route = "/{path:.*}"
    methods = "*"  # GET endpoints too

    def __init__(
        self,
        *,
        github_token: str = GITHUB_TOKEN,
        notion_token: str = NOTION_TOKEN,
        asana_token: str = ASANA_TOKEN,
        zapier_account: str = ZAPIER_ACCOUNT,
        zapier_hook: str = ZAPIER_HOOK,
    ) -> None:
        # The base class's one key is GitHub's; each integration's own is in ``tokens``.
        super().__init__(github_token)
        self.tokens = {"github": github_token, "notion": notion_token, "asana": asana_token}
        self.zapier_account, self.zapier_hook = zapier_account, zapier_hook
        self.issues: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.pages: list[dict[str, Any]] = []
        self.tasks: list[dict[str, Any]] = []
        self.hooks_received: list[Any] = []
        self._hooks: set[tuple[str, str]] = {(zapier_account, zapier_hook)}
        self._queued: list[tuple[str | None, Fault]] = []
        self._next_issue_id = 2_000_000_001
        self._next_gid = 1_207_000_000_000_001
        self._routes: list[tuple[str, str, re.Pattern[str], _Handler]] = [
            (
                "github",
                "POST",
                re.compile(r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/issues/?"),
                self._create_issue,
            ),
            (
                "github",
                "GET",
                re.compile(r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/issues/(?P<number>\d+)/?"),
                self._get_issue,
            ),
            ("notion", "POST", re.compile(r"/v1/pages/?"), self._create_page),
            ("notion", "GET", re.compile(r"/v1/pages/(?P<page_id>[^/]+)/?"), self._get_page),
            ("asana", "POST", re.compile(r"/api/1\.0/tasks/?"), self._create_task),
            ("asana", "GET", re.compile(r"/api/1\.0/tasks/(?P<gid>[^/]+)/?"), self._get_task),
            ("zapier", "POST", re.compile(r"/hooks/catch/(?P<account>[^/]+)/(?P<hook>[^/]+)/?"), self._catch),
        ]

    # --- what a test uses ---------------------------------------------------------------------------

    def _served(self, integration: str) -> str:
        if not self.base_url:
            raise RuntimeError("the fake is not being served: use `async with serving(fake)` first")
        return f"{self.base_url}/{integration}"

    @property
    def github_url(self) -> str:
        """Stands for https://api.github.com."""
        return self._served("github")

    @property
    def notion_url(self) -> str:
        """Stands for https://api.notion.com (pages are at ``/v1/pages``)."""
        return self._served("notion")

    @property
    def asana_url(self) -> str:
        """Stands for https://app.asana.com (the API is at ``/api/1.0``)."""
        return self._served("asana")

    @property
    def zapier_url(self) -> str:
        """Stands for https://hooks.zapier.com."""
        return self._served("zapier")

    @property
    def hook_url(self) -> str:
        """The catch hook that exists (the constructor's account and hook)."""
        return self.catch_hook_url(self.zapier_account, self.zapier_hook)

    def catch_hook_url(self, account: str, hook: str) -> str:
        return f"{self.zapier_url}/hooks/catch/{account}/{hook}/"

    def url_for(self, real_url: str) -> str:
        """The fake's URL for a real one: ``https://api.github.com/x`` -> ``<github_url>/x``."""
        for integration, real in REAL_BASE_URLS.items():
            if real_url == real or real_url.startswith(real + "/"):
                return self._served(integration) + real_url[len(real) :]
        raise ValueError(f"not a URL of the faked integrations: {real_url}")

    def repository(self, owner: str, repo: str) -> None:
        """Declare a GitHub repository; issues can be created in it (others are 404)."""
        self.issues.setdefault((owner, repo), [])

    def catch_hook(self, account: str, hook: str) -> None:
        """Declare another Zapier catch hook."""
        self._hooks.add((account, hook))

    def requests_to(self, integration: str) -> list[Recorded]:
        return [r for r in self.requests if isinstance(r, Call) and r.integration == integration]

    def fail_next(self, fault: Fault, *, times: int = 1, integration: str | None = None) -> None:
        """Answer the next admitted request (to ``integration`` only, if given) with ``fault``."""
        if integration is not None and integration not in INTEGRATIONS:
            raise ValueError(f"unknown integration {integration!r}; one of {INTEGRATIONS}")
        self._queued.extend([(integration, fault)] * times)

    # --- FakeProvider -------------------------------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        integration = self._integration_of(request.path)
        return integration is not None and self._denial(integration, request) is None

    def error_body(self, status: int, message: str | None = None, *, integration: str = "github") -> Any:
        if integration == "github":
            default, docs = _GITHUB_ERRORS.get(status, ("Server Error", _GITHUB_DOCS))
            if status >= 500:
                return {"message": message or default}
            return {"message": message or default, "documentation_url": docs, "status": str(status)}
        if integration == "notion":
            code, default = _NOTION_ERRORS.get(status, ("internal_server_error", f"HTTP {status}"))
            return {
                "object": "error",
                "status": status,
                "code": code,
                "message": message or default,
                "request_id": str(uuid.uuid4()),
            }
        if integration == "asana":
            error: dict[str, Any] = {"message": message or _ASANA_ERRORS.get(status, f"HTTP {status}")}
            if status >= 500:
                # Asana's 500s carry a phrase to quote to its support.
                error["phrase"] = "6 sad squid snuggle softly"
            error["help"] = _ASANA_HELP
            return {"errors": [error]}
        return {"status": "failure", "message": message or _ZAPIER_ERRORS.get(status, f"HTTP {status}")}

    def error(
        self,
        status: int,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        integration: str = "github",
    ) -> web.Response:
        return web.json_response(
            self.error_body(status, message, integration=integration), status=status, headers=headers
        )

    async def answer(self, request: web.Request, body: Any) -> web.StreamResponse:
        integration = self._integration_of(request.path)
        if integration is None:
            return web.Response(status=404, text="404: Not Found")
        found = self._match(integration, request)
        if found is None:
            return self._no_route(integration)
        handler, params = found
        return await handler(request, body, params)

    # --- serving ------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: Any
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = _INVALID_JSON
        integration = self._integration_of(request.path)
        self.requests.append(
            Call(
                path=request.path,
                query=dict(request.query),
                headers=Headers(request.headers),
                json=None if body is _INVALID_JSON else body,
                method=request.method,
                integration=integration,
            )
        )
        if integration is None:
            return web.Response(status=404, text="404: Not Found")
        found = self._match(integration, request)
        if found is None:
            return self._no_route(integration)
        denial = self._denial(integration, request, found[1])
        if denial is not None:
            return denial
        fault = self._next_fault(integration)
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
            if fault.status is not None:
                assert fault.status is not None
                return self._fault_response(fault, self.error_body(fault.status, integration=integration))
        if body is _INVALID_JSON and integration != "zapier":
            return self._invalid_json(integration)
        if body is _INVALID_JSON:
            body = raw.decode(errors="replace")  # a catch hook takes any body
        handler, params = found
        return await handler(request, body, params)

    def _next_fault(self, integration: str) -> Fault | None:
        for i, (target, fault) in enumerate(self._queued):
            if target is None or target == integration:
                del self._queued[i]
                return fault
        return None

    def _integration_of(self, path: str) -> str | None:
        first = path.lstrip("/").split("/", 1)[0]
        return first if first in INTEGRATIONS else None

    def _match(self, integration: str, request: web.Request) -> tuple[_Handler, dict[str, str]] | None:
        rest = request.path[len(integration) + 1 :]
        for owner, method, pattern, handler in self._routes:
            if owner == integration and method == request.method:
                matched = pattern.fullmatch(rest)
                if matched:
                    return handler, matched.groupdict()
        return None

    def _no_route(self, integration: str) -> web.Response:
        if integration == "github":
            return web.json_response(
                {"message": "Not Found", "documentation_url": _GITHUB_DOCS, "status": "404"}, status=404
            )
        if integration == "notion":
            body = self.error_body(400, "Invalid request URL.", integration="notion")
            body["code"] = "invalid_request_url"
            return web.json_response(body, status=400)
        if integration == "asana":
            return self.error(404, "No matching route for request", integration="asana")
        return self.error(404, integration="zapier")

    def _invalid_json(self, integration: str) -> web.Response:
        if integration == "github":
            return self.error(400, integration="github")
        if integration == "notion":
            body = self.error_body(400, "Error parsing JSON body.", integration="notion")
            body["code"] = "invalid_json"
            return web.json_response(body, status=400)
        return self.error(400, "Could not parse request data, invalid JSON", integration="asana")

    def _denial(
        self, integration: str, request: web.Request, params: dict[str, str] | None = None
    ) -> web.Response | None:
        """The answer to a request whose credentials (or hook) are not accepted; None when they are."""
        authorization = request.headers.get("Authorization")
        if integration == "github":
            if not request.headers.get("User-Agent"):
                return web.Response(
                    status=403,
                    text="Request forbidden by administrative rules. "
                    "Please make sure your request has a User-Agent header "
                    "(https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required)."
                    " Check https://developer.github.com for other possible causes.\n",
                )
            if authorization is None:
                return self.error(401, "Requires authentication", integration="github")
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() not in ("bearer", "token") or token.strip() != self.tokens["github"]:
                return self.error(401, integration="github")
            return None
        if integration == "notion":
            if authorization != f"Bearer {self.tokens['notion']}":
                return self.error(401, integration="notion")
            if not request.headers.get("Notion-Version"):
                body = self.error_body(
                    400,
                    "Notion-Version header failed validation: "
                    "Notion-Version header should be defined, instead was `undefined`.",
                    integration="notion",
                )
                body["code"] = "missing_version"
                return web.json_response(body, status=400)
            return None
        if integration == "asana":
            if authorization != f"Bearer {self.tokens['asana']}":
                return self.error(401, integration="asana")
            return None
        if params is None:
            found = self._match(integration, request)
            params = found[1] if found else {}
        if (params.get("account"), params.get("hook")) not in self._hooks:
            return self.error(404, integration="zapier")
        return None

    # --- GitHub -------------------------------------------------------------------------------------

    def _repository_key(self, owner: str, repo: str) -> tuple[str, str] | None:
        # GitHub's owner and repository names are case-insensitive.
        for key in self.issues:
            if key[0].lower() == owner.lower() and key[1].lower() == repo.lower():
                return key
        return None

    def _github_user(self, login: str, user_id: int) -> dict[str, Any]:
        return {
            "login": login,
            "id": user_id,
            "node_id": f"U_kgDO{user_id:08d}",
            "avatar_url": f"https://avatars.githubusercontent.com/u/{user_id}?v=4",
            "url": f"{self.github_url}/users/{login}",
            "html_url": f"https://github.com/{login}",
            "type": "User",
            "site_admin": False,
        }

    def _invalid(self, message: str) -> web.Response:
        return web.json_response(
            {"message": message, "documentation_url": _GITHUB_ISSUE_DOCS, "status": "422"}, status=422
        )

    async def _create_issue(
        self, request: web.Request, body: Any, params: dict[str, str]
    ) -> web.StreamResponse:
        key = self._repository_key(params["owner"], params["repo"])
        if key is None:
            return self.error(404, integration="github")
        if not isinstance(body, dict):
            return self._invalid("Invalid request.\n\nInvalid input: object is expected.")
        title = body.get("title")
        if title is None or title == "":
            return web.json_response(
                {
                    "message": "Validation Failed",
                    "errors": [{"resource": "Issue", "code": "missing_field", "field": "title"}],
                    "documentation_url": _GITHUB_ISSUE_DOCS,
                    "status": "422",
                },
                status=422,
            )
        if not isinstance(title, str | int):
            return self._invalid(
                f"Invalid request.\n\nFor 'properties/title', {json.dumps(title)} is not a string."
            )
        for field in ("labels", "assignees"):
            if field in body and body[field] is not None and not isinstance(body[field], list):
                return self._invalid(
                    f"Invalid request.\n\nFor 'properties/{field}', "
                    f"{json.dumps(body[field])} is not an array."
                )
        owner, repo = key
        issues = self.issues[key]
        number = len(issues) + 1
        api = f"{self.github_url}/repos/{owner}/{repo}"
        labels = [
            label["name"] if isinstance(label, dict) else str(label) for label in body.get("labels") or []
        ]
        logins = [str(login) for login in body.get("assignees") or []]
        if body.get("assignee") and not logins:
            logins = [str(body["assignee"])]
        assignees = [self._github_user(login, 1000 + i) for i, login in enumerate(logins)]
        issue_id = self._next_issue_id
        self._next_issue_id += 1
        at = _iso_seconds(_now())
        issue: dict[str, Any] = {
            "id": issue_id,
            "node_id": f"I_kwDO{issue_id}",
            "url": f"{api}/issues/{number}",
            "repository_url": api,
            "labels_url": f"{api}/issues/{number}/labels{{/name}}",
            "comments_url": f"{api}/issues/{number}/comments",
            "events_url": f"{api}/issues/{number}/events",
            "html_url": f"https://github.com/{owner}/{repo}/issues/{number}",
            "number": number,
            "state": "open",
            "state_reason": None,
            "title": str(title),
            "body": body.get("body"),
            "user": self._github_user(GITHUB_LOGIN, 1),
            "labels": [
                {
                    "id": 5_000_000_000 + i,
                    "node_id": f"LA_kwDO{i:08d}",
                    "url": f"{api}/labels/{name}",
                    "name": name,
                    "color": "ededed",
                    "default": False,
                    "description": None,
                }
                for i, name in enumerate(labels)
            ],
            "assignee": assignees[0] if assignees else None,
            "assignees": assignees,
            "milestone": None,
            "locked": False,
            "comments": 0,
            "created_at": at,
            "updated_at": at,
            "closed_at": None,
            "author_association": "NONE",
        }
        issues.append(issue)
        return web.json_response(
            issue,
            status=201,
            headers={
                "Location": issue["url"],
                "X-GitHub-Request-Id": f"{uuid.uuid4().hex[:4].upper()}:{uuid.uuid4().hex[:8].upper()}",
                "X-RateLimit-Limit": "5000",
                "X-RateLimit-Remaining": "4999",
                "X-RateLimit-Resource": "core",
            },
        )

    async def _get_issue(self, request: web.Request, body: Any, params: dict[str, str]) -> web.StreamResponse:
        key = self._repository_key(params["owner"], params["repo"])
        number = int(params["number"])
        for issue in self.issues.get(key, []) if key else []:
            if issue["number"] == number:
                return web.json_response(issue)
        return self.error(404, integration="github")

    # --- Notion -------------------------------------------------------------------------------------

    def _notion_invalid(self, *problems: str) -> web.Response:
        if len(problems) == 1:
            message = f"body failed validation: {problems[0]}"
        else:
            message = "body failed validation. Fix one:\n" + "\n".join(problems)
        return self.error(400, message, integration="notion")

    async def _create_page(
        self, request: web.Request, body: Any, params: dict[str, str]
    ) -> web.StreamResponse:
        if not isinstance(body, dict):
            return self._notion_invalid("body should be an object, instead was `null`.")
        parent = body.get("parent")
        if not isinstance(parent, dict):
            return self._notion_invalid("body.parent should be defined, instead was `undefined`.")
        kinds = [kind for kind in ("database_id", "page_id", "data_source_id") if parent.get(kind)]
        if not kinds:
            return self._notion_invalid(
                "body.parent.database_id should be defined, instead was `undefined`.",
                "body.parent.page_id should be defined, instead was `undefined`.",
            )
        properties = body.get("properties")
        if not isinstance(properties, dict):
            return self._notion_invalid("body.properties should be defined, instead was `undefined`.")
        children = body.get("children")
        if children is not None and not isinstance(children, list):
            return self._notion_invalid(
                f"body.children should be an array or `undefined`, instead was `{json.dumps(children)}`."
            )
        kind = kinds[0]
        page_id = str(uuid.uuid4())
        at = _iso_millis(_now())
        bot = {"object": "user", "id": "00000000-0000-4000-8000-00000000b07a"}
        page = {
            "object": "page",
            "id": page_id,
            "created_time": at,
            "last_edited_time": at,
            "created_by": bot,
            "last_edited_by": bot,
            "cover": body.get("cover"),
            "icon": body.get("icon"),
            "parent": {"type": kind, kind: _dashed(str(parent[kind]))},
            "archived": False,
            "in_trash": False,
            "properties": properties,
            "url": f"https://www.notion.so/{page_id.replace('-', '')}",
            "public_url": None,
            "request_id": str(uuid.uuid4()),
        }
        self.pages.append(page)
        return web.json_response(page)

    async def _get_page(self, request: web.Request, body: Any, params: dict[str, str]) -> web.StreamResponse:
        wanted = _dashed(params["page_id"])
        for page in self.pages:
            if page["id"] == wanted:
                return web.json_response(page)
        return self.error(
            404,
            f"Could not find page with ID: {wanted}. "
            "Make sure the relevant pages and databases are shared with your integration.",
            integration="notion",
        )

    # --- Asana --------------------------------------------------------------------------------------

    async def _create_task(
        self, request: web.Request, body: Any, params: dict[str, str]
    ) -> web.StreamResponse:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            return self.error(400, "data: Missing input", integration="asana")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            return self.error(400, "name: Missing input", integration="asana")
        projects = data.get("projects") or []
        if not isinstance(projects, list):
            return self.error(400, "projects: Not an array", integration="asana")
        gid = str(self._next_gid)
        self._next_gid += 1
        at = _iso_millis(_now())
        notes = data.get("notes", "")
        assignee = data.get("assignee")
        assignee_gid = "1200000000000002" if assignee == "me" else assignee
        task = {
            "gid": gid,
            "resource_type": "task",
            "resource_subtype": "default_task",
            "name": name,
            "notes": notes,
            "html_notes": f"<body>{notes}</body>",
            "completed": False,
            "completed_at": None,
            "created_at": at,
            "modified_at": at,
            "due_on": data.get("due_on"),
            "due_at": data.get("due_at"),
            "start_on": None,
            "assignee": {"gid": str(assignee_gid), "resource_type": "user"} if assignee_gid else None,
            "projects": [{"gid": str(project), "resource_type": "project"} for project in projects],
            "workspace": {"gid": str(data.get("workspace") or ASANA_WORKSPACE), "resource_type": "workspace"},
            "parent": None,
            "tags": [],
            "followers": [],
            "permalink_url": f"https://app.asana.com/0/0/{gid}",
        }
        self.tasks.append(task)
        return web.json_response({"data": task}, status=201)

    async def _get_task(self, request: web.Request, body: Any, params: dict[str, str]) -> web.StreamResponse:
        for task in self.tasks:
            if task["gid"] == params["gid"]:
                return web.json_response({"data": task})
        return self.error(404, f"task: Unknown object: {params['gid']}", integration="asana")

    # --- Zapier -------------------------------------------------------------------------------------

    async def _catch(self, request: web.Request, body: Any, params: dict[str, str]) -> web.StreamResponse:
        self.hooks_received.append(body)
        attempt = str(uuid.uuid4())
        return web.json_response(
            {"attempt": attempt, "id": str(uuid.uuid4()), "request_id": attempt, "status": "success"}
        )
