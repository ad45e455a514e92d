"""The integrations fake itself, over HTTP: each API's happy path, auth failure and a validation failure."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from http_fake import Fault, serving
from integrations_fake import (
    ASANA_TOKEN,
    GITHUB_TOKEN,
    NOTION_TOKEN,
    NOTION_VERSION,
    Call,
    IntegrationsFake,
)

DATABASE = "8f3c1d2e4b5a49c7a1e2f3d4c5b6a7e8"


@pytest.fixture
async def fake() -> AsyncIterator[IntegrationsFake]:
    fake = IntegrationsFake()
    fake.repository("acme", "widgets")
    async with serving(fake):
        yield fake


def github(token: str = GITHUB_TOKEN, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}", "Accept": "application/vnd.github+json"}


def notion(token: str = NOTION_TOKEN, version: str | None = NOTION_VERSION) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if version is not None:
        headers["Notion-Version"] = version
    return headers


def asana(token: str = ASANA_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


PAGE: dict[str, Any] = {
    "parent": {"database_id": DATABASE},
    "properties": {"Name": {"title": [{"text": {"content": "Launch notes"}}]}},
    "children": [{"object": "block", "type": "paragraph", "paragraph": {"rich_text": []}}],
}

# --- GitHub ------------------------------------------------------------------------------------------


async def test_github_creates_numbered_issues_and_returns_them(
    fake: IntegrationsFake, http_client: httpx.AsyncClient
) -> None:
    url = f"{fake.github_url}/repos/acme/widgets/issues"
    first = await http_client.post(
        url,
        headers=github(),
        json={"title": "Crash on start", "body": "Stack trace...", "labels": ["bug"], "assignees": ["octo"]},
    )
    second = await http_client.post(url, headers=github(scheme="token"), json={"title": "Docs"})

    assert (first.status_code, second.status_code) == (201, 201)
    issue = first.json()
    assert (issue["number"], second.json()["number"]) == (1, 2)
    assert issue["html_url"] == "https://github.com/acme/widgets/issues/1"
    assert issue["url"] == f"{fake.github_url}/repos/acme/widgets/issues/1" == first.headers["Location"]
    assert (issue["title"], issue["body"], issue["state"]) == ("Crash on start", "Stack trace...", "open")
    assert [label["name"] for label in issue["labels"]] == ["bug"]
    assert [user["login"] for user in issue["assignees"]] == ["octo"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", issue["created_at"])
    assert [i["title"] for i in fake.issues[("acme", "widgets")]] == ["Crash on start", "Docs"]

    fetched = await http_client.get(f"{url}/1", headers=github())
    assert (fetched.status_code, fetched.json()) == (200, issue)
    missing = await http_client.get(f"{url}/9", headers=github())
    assert (missing.status_code, missing.json()["message"]) == (404, "Not Found")


async def test_github_rejects_bad_or_missing_credentials(
    fake: IntegrationsFake, http_client: httpx.AsyncClient
) -> None:
    url = f"{fake.github_url}/repos/acme/widgets/issues"
    wrong = await http_client.post(url, headers=github("ghp_wrong"), json={"title": "x"})
    missing = await http_client.post(url, json={"title": "x"})

    assert wrong.status_code == 401
    assert wrong.json() == {
        "message": "Bad credentials",
        "documentation_url": "https://docs.github.com/rest",
        "status": "401",
    }
    assert (missing.status_code, missing.json()["message"]) == (401, "Requires authentication")
    assert fake.issues[("acme", "widgets")] == []


async def test_github_validates_the_title_and_knows_only_declared_repositories(
    fake: IntegrationsFake, http_client: httpx.AsyncClient
) -> None:
    no_title = await http_client.post(
        f"{fake.github_url}/repos/acme/widgets/issues", headers=github(), json={"body": "no title"}
    )
    unknown = await http_client.post(
        f"{fake.github_url}/repos/acme/gadgets/issues", headers=github(), json={"title": "x"}
    )

    assert no_title.status_code == 422
    assert no_title.json()["message"] == "Validation Failed"
    assert no_title.json()["errors"] == [{"resource": "Issue", "code": "missing_field", "field": "title"}]
    assert (unknown.status_code, unknown.json()["message"]) == (404, "Not Found")


async def test_github_rate_limit_carries_the_headers_the_test_gives(
    fake: IntegrationsFake, http_client: httpx.AsyncClient
) -> None:
    fake.fail_next(Fault(status=429, headers={"Retry-After": "60", "x-ratelimit-reset": "1767225600"}))

    limited = await http_client.post(
        f"{fake.github_url}/repos/acme/widgets/issues", headers=github(), json={"title": "x"}
    )
    after = await http_client.post(
        f"{fake.github_url}/repos/acme/widgets/issues", headers=github(), json={"title": "x"}
    )

    assert limited.status_code == 429
    assert limited.json()["message"].startswith("API rate limit exceeded")
    assert (limited.headers["Retry-After"], limited.headers["x-ratelimit-reset"]) == ("60", "1767225600")
    assert after.status_code == 201


# --- Notion ------------------------------------------------------------------------------------------


async def test_notion_creates_a_page(fake: IntegrationsFake, http_client: httpx.AsyncClient) -> None:
    response = await http_client.post(f"{fake.notion_url}/v1/pages", headers=notion(), json=PAGE)

    assert response.status_code == 200
    page = response.json()
    assert page["object"] == "page"
    assert page["url"] == f"https://www.notion.so/{page['id'].replace('-', '')}"
    assert page["parent"] == {"type": "database_id", "database_id": "8f3c1d2e-4b5a-49c7-a1e2-f3d4c5b6a7e8"}
    assert page["properties"] == PAGE["properties"]
    assert fake.pages == [page]
    fetched = await http_client.get(f"{fake.notion_url}/v1/pages/{page['id']}", headers=notion())
    assert fetched.json() == page


async def test_notion_needs_a_valid_token_and_a_version(
    fake: IntegrationsFake, http_client: httpx.AsyncClient
) -> None:
    wrong = await http_client.post(f"{fake.notion_url}/v1/pages", headers=notion("ntn_wrong"), json=PAGE)
    unversioned = await http_client.post(
        f"{fake.notion_url}/v1/pages", headers=notion(version=None), json=PAGE
    )

    assert wrong.status_code == 401
    assert {k: wrong.json()[k] for k in ("object", "status", "code", "message")} == {
        "object": "error",
        "status": 401,
        "code": "unauthorized",
        "message": "API token is invalid.",
    }
    assert (unversioned.status_code, unversioned.json()["code"]) == (400, "missing_version")
    assert unversioned.json()["message"].startswith("Notion-Version header failed validation")
    assert fake.pages == []


@pytest.mark.parametrize("missing", ["parent", "properties"])
async def test_notion_validates_the_body(
    fake: IntegrationsFake, http_client: httpx.AsyncClient, missing: str
) -> None:
    body = {k: v for k, v in PAGE.items() if k != missing}

    response = await http_client.post(f"{fake.notion_url}/v1/pages", headers=notion(), json=body)

    assert response.status_code == 400
    assert (response.json()["code"], response.json()["status"]) == ("validation_error", 400)
    assert f"body.{missing}" in response.json()["message"]


async def test_a_fault_gets_the_error_body_of_its_integration(
    fake: IntegrationsFake, http_client: httpx.AsyncClient
) -> None:
    fake.fail_next(Fault(status=500))

    response = await http_client.post(f"{fake.notion_url}/v1/pages", headers=notion(), json=PAGE)

    assert response.status_code == 500
    assert (response.json()["object"], response.json()["code"]) == ("error", "internal_server_error")


# --- Asana -------------------------------------------------------------------------------------------


async def test_asana_creates_a_task(fake: IntegrationsFake, http_client: httpx.AsyncClient) -> None:
    response = await http_client.post(
        f"{fake.asana_url}/api/1.0/tasks",
        headers=asana(),
        json={
            "data": {"name": "Ship it", "notes": "by Friday", "projects": ["1201"], "due_on": "2026-12-04"}
        },
    )

    assert response.status_code == 201
    task = response.json()["data"]
    assert (task["resource_type"], task["name"], task["notes"], task["completed"]) == (
        "task",
        "Ship it",
        "by Friday",
        False,
    )
    assert task["gid"].isdigit()
    assert task["permalink_url"] == f"https://app.asana.com/0/0/{task['gid']}"
    assert task["projects"] == [{"gid": "1201", "resource_type": "project"}]
    assert task["due_on"] == "2026-12-04"
    assert fake.tasks == [task]


async def test_asana_rejects_a_bad_token_and_a_task_without_data_or_name(
    fake: IntegrationsFake, http_client: httpx.AsyncClient
) -> None:
    url = f"{fake.asana_url}/api/1.0/tasks"
    wrong = await http_client.post(url, headers=asana("2/0/0:wrong"), json={"data": {"name": "x"}})
    no_data = await http_client.post(url, headers=asana(), json={"name": "x"})
    no_name = await http_client.post(url, headers=asana(), json={"data": {"notes": "x"}})

    assert wrong.status_code == 401
    assert wrong.json()["errors"][0]["message"] == "Not Authorized"
    assert (no_data.status_code, no_data.json()["errors"][0]["message"]) == (400, "data: Missing input")
    assert (no_name.status_code, no_name.json()["errors"][0]["message"]) == (400, "name: Missing input")
    assert fake.tasks == []


# --- Zapier ------------------------------------------------------------------------------------------


async def test_zapier_catch_hook_takes_any_json(
    fake: IntegrationsFake, http_client: httpx.AsyncClient
) -> None:
    response = await http_client.post(fake.hook_url, json={"event": "deployed", "version": 3})

    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == "success"
    assert set(answer) == {"attempt", "id", "request_id", "status"}
    assert fake.hooks_received == [{"event": "deployed", "version": 3}]


async def test_zapier_unknown_hook_is_404(fake: IntegrationsFake, http_client: httpx.AsyncClient) -> None:
    response = await http_client.post(f"{fake.zapier_url}/hooks/catch/1234567/nope/", json={"x": 1})

    assert response.status_code == 404
    assert fake.hooks_received == []


# --- shared ------------------------------------------------------------------------------------------


async def test_requests_are_recorded_with_lower_cased_headers(
    fake: IntegrationsFake, http_client: httpx.AsyncClient
) -> None:
    await http_client.post(fake.hook_url, json={"a": 1}, params={"q": "1"}, headers={"X-Trace": "t1"})

    [sent] = fake.requests
    assert isinstance(sent, Call)
    assert (sent.method, sent.integration, sent.query, sent.json) == ("POST", "zapier", {"q": "1"}, {"a": 1})
    assert sent.path == "/zapier/hooks/catch/1234567/3abc9de/"
    assert "x-trace" in dict(sent.headers)
    assert sent.headers["x-trace"] == sent.headers["X-Trace"] == "t1"
    assert fake.requests_to("zapier") == [sent]


async def test_a_fault_can_be_aimed_at_one_integration_and_skips_rejected_requests(
    fake: IntegrationsFake, http_client: httpx.AsyncClient
) -> None:
    fake.fail_next(Fault(status=503), integration="asana")

    hook = await http_client.post(fake.hook_url, json={})
    rejected = await http_client.post(f"{fake.asana_url}/api/1.0/tasks", json={"data": {"name": "x"}})
    failed = await http_client.post(
        f"{fake.asana_url}/api/1.0/tasks", headers=asana(), json={"data": {"name": "x"}}
    )

    assert (hook.status_code, rejected.status_code, failed.status_code) == (200, 401, 503)
    assert failed.json()["errors"][0]["message"] == "Service Unavailable"


def test_real_urls_map_to_the_fake(fake: IntegrationsFake) -> None:
    assert fake.url_for("https://api.github.com/repos/acme/widgets/issues") == (
        f"{fake.base_url}/github/repos/acme/widgets/issues"
    )
    assert fake.url_for("https://app.asana.com/api/1.0/tasks") == f"{fake.asana_url}/api/1.0/tasks"
    with pytest.raises(ValueError, match="not a URL"):
        fake.url_for("https://example.com/")
