"""The shipped declarations (``integrations/*.yaml``) run by the declared-tool adapter against fakes of
GitHub, Notion, Asana and a Zapier hook that speak those APIs' request and response shapes, over real
HTTP: what is sent (path, credential, headers, body), what comes back, and each failure's kind."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_fake import Fault, serving
from integrations_fake import (
    ASANA_TOKEN,
    ASANA_WORKSPACE,
    GITHUB_TOKEN,
    NOTION_TOKEN,
    NOTION_VERSION,
    IntegrationsFake,
)
from omni_contract.declared import decode_declaration, deprecations
from omni_toolrunner.declarations import load_files
from omni_toolrunner.providers import ProviderError, ProviderErrorKind, ToolCall
from omni_toolrunner.providers.declared import DeclaredHttpAdapter

SHIPPED = Path(__file__).resolve().parents[4] / "integrations"


@pytest.fixture
async def fake() -> AsyncIterator[IntegrationsFake]:
    fake = IntegrationsFake()
    async with serving(fake):
        yield fake


def environ(fake: IntegrationsFake, **overrides: str) -> dict[str, str]:
    values = {
        "GITHUB_TOKEN": GITHUB_TOKEN,
        "GITHUB_API_URL": fake.github_url,
        "NOTION_TOKEN": NOTION_TOKEN,
        "NOTION_API_URL": fake.notion_url,
        "ASANA_TOKEN": ASANA_TOKEN,
        "ASANA_API_URL": fake.asana_url,
        "ZAPIER_HOOK_URL": fake.hook_url,
    }
    values.update(overrides)
    return values


@pytest.fixture
def adapter(fake: IntegrationsFake, http_client: httpx.AsyncClient) -> DeclaredHttpAdapter:
    adapter = DeclaredHttpAdapter(http_client, environ=environ(fake))
    adapter.replace(declaration for _, declaration in load_files(SHIPPED))
    return adapter


def call(tool: str, input: dict[str, Any], **kwargs: Any) -> ToolCall:
    return ToolCall(tool=tool, input=input, idempotency_key=f"run-1:{tool}:1", **kwargs)


async def failure_of(adapter: DeclaredHttpAdapter, request: ToolCall) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await adapter.call(request)
    return caught.value


def test_every_shipped_declaration_loads_and_uses_no_deprecated_template() -> None:
    shipped = [declaration for _, declaration in load_files(SHIPPED)]
    assert {declaration.name for declaration in shipped} == {
        "github.create_issue",
        "github.get_issue",
        "notion.create_page",
        "asana.create_task",
        "zapier.trigger",
    }
    assert [warning for declaration in shipped for warning in deprecations(declaration)] == []


def legacy(text: str) -> str:
    """A declaration's text with its templates written the deprecated way: ``{{ input.x }}``."""
    return re.sub(r"\$\{([^}]*)\}", r"{{ \1 }}", text)


async def test_a_declaration_in_the_deprecated_syntax_sends_and_answers_the_same(
    fake: IntegrationsFake, http_client: httpx.AsyncClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = (SHIPPED / "github.create_issue.yaml").read_text()
    (tmp_path / "github.create_issue.yaml").write_text(legacy(source))
    assert "{{ input.owner }}" in legacy(source)
    with caplog.at_level(logging.WARNING, logger="omni_toolrunner.declarations"):
        loaded = load_files(tmp_path)
    assert "github.create_issue.yaml: $.request.url: {{ ... }} templates are deprecated" in caplog.text
    fake.repository("omni-org", "omni")
    results = []
    for declarations in ([declaration for _, declaration in load_files(SHIPPED)], [d for _, d in loaded]):
        adapter = DeclaredHttpAdapter(http_client, environ=environ(fake))
        adapter.replace(declarations)
        outcome = await adapter.call(
            call("github.create_issue", {"owner": "omni-org", "repo": "omni", "title": "T", "labels": ["ci"]})
        )
        sent = fake.requests_to("github")[-1]
        results.append((outcome.output["url"], outcome.output["state"], sent.path, sent.json))
    assert (
        results[0][2:]
        == results[1][2:]
        == ("/github/repos/omni-org/omni/issues", {"title": "T", "labels": ["ci"]})
    )
    assert [result[1] for result in results] == ["open", "open"]
    assert [result[0] for result in results] == [
        "https://github.com/omni-org/omni/issues/1",
        "https://github.com/omni-org/omni/issues/2",
    ]


async def test_github_issue_is_created_and_read_back(
    adapter: DeclaredHttpAdapter, fake: IntegrationsFake
) -> None:
    fake.repository("omni-org", "omni")
    created = await adapter.call(
        call(
            "github.create_issue",
            {"owner": "omni-org", "repo": "omni", "title": "Flaky test", "labels": ["ci"]},
        )
    )
    assert created.output == {
        "number": 1,
        "url": "https://github.com/omni-org/omni/issues/1",
        "id": fake.issues[("omni-org", "omni")][0]["id"],
        "state": "open",
    }
    sent = fake.requests_to("github")[-1]
    assert sent.path == "/github/repos/omni-org/omni/issues"
    assert sent.headers["authorization"] == f"Bearer {GITHUB_TOKEN}"
    assert sent.headers["x-github-api-version"] == "2022-11-28"
    assert sent.json == {"title": "Flaky test", "labels": ["ci"]}  # absent body and assignees left out

    read = await adapter.call(call("github.get_issue", {"owner": "omni-org", "repo": "omni", "number": 1}))
    assert read.output["title"] == "Flaky test"
    assert read.output["labels"][0]["name"] == "ci"


async def test_github_failures_keep_their_kind_and_message(
    adapter: DeclaredHttpAdapter, fake: IntegrationsFake
) -> None:
    fake.repository("omni-org", "omni")
    issue = {"owner": "omni-org", "repo": "omni", "title": "x"}

    missing = await failure_of(adapter, call("github.create_issue", {**issue, "repo": "nope"}))
    assert (missing.kind, missing.status, missing.retryable) == (ProviderErrorKind.BAD_REQUEST, 404, False)
    assert "Not Found" in missing.message

    invalid = await failure_of(adapter, call("github.create_issue", {**issue, "title": ""}))
    assert (invalid.kind, invalid.status) == (ProviderErrorKind.BAD_REQUEST, 422)
    assert invalid.message.startswith("Validation Failed: ")
    assert "title" in invalid.message

    fake.fail_next(Fault(status=429, headers={"Retry-After": "7"}), integration="github")
    limited = await failure_of(adapter, call("github.create_issue", issue))
    assert (limited.kind, limited.retry_after_s, limited.retryable) == (
        ProviderErrorKind.RATE_LIMITED,
        7.0,
        True,
    )
    assert "rate limit" in limited.message

    fake.fail_next(Fault(status=500), integration="github")
    server = await failure_of(adapter, call("github.create_issue", issue))
    assert (server.kind, server.retryable) == (ProviderErrorKind.SERVER, True)

    fake.fail_next(Fault(delay_s=2.0), integration="github")
    slow = await failure_of(adapter, call("github.create_issue", issue, timeout_s=0.3))
    assert slow.kind == ProviderErrorKind.TIMEOUT

    fake.fail_next(
        Fault(status=200, body="<html>maintenance</html>", content_type="text/html"), integration="github"
    )
    malformed = await adapter.call(call("github.create_issue", issue))
    assert malformed.output == {}  # nothing the mapping looks for: an empty output, not a crash


async def test_a_bad_token_is_an_auth_failure(fake: IntegrationsFake, http_client: httpx.AsyncClient) -> None:
    fake.repository("omni-org", "omni")
    adapter = DeclaredHttpAdapter(http_client, environ=environ(fake, GITHUB_TOKEN="ghp_wrong"))
    adapter.replace(declaration for _, declaration in load_files(SHIPPED))
    refused = await failure_of(
        adapter, call("github.create_issue", {"owner": "omni-org", "repo": "omni", "title": "x"})
    )
    assert (refused.kind, refused.status, refused.retryable) == (ProviderErrorKind.AUTH, 401, False)
    assert "Bad credentials" in refused.message


async def test_notion_page_is_added_to_a_database(
    adapter: DeclaredHttpAdapter, fake: IntegrationsFake
) -> None:
    outcome = await adapter.call(
        call(
            "notion.create_page", {"databaseId": "d9824bdc84454327be8b5b47500af6ce", "title": "Weekly notes"}
        )
    )
    [page] = fake.pages
    assert outcome.output == {"id": page["id"], "url": page["url"]}
    sent = fake.requests_to("notion")[-1]
    assert sent.headers["notion-version"] == NOTION_VERSION
    assert sent.headers["authorization"] == f"Bearer {NOTION_TOKEN}"
    assert sent.json == {
        "parent": {"database_id": "d9824bdc84454327be8b5b47500af6ce"},
        "properties": {"Name": {"title": [{"text": {"content": "Weekly notes"}}]}},
    }


async def test_asana_task_is_created_inside_its_data_envelope(
    adapter: DeclaredHttpAdapter, fake: IntegrationsFake
) -> None:
    outcome = await adapter.call(
        call(
            "asana.create_task",
            {"name": "Call the customer", "workspace": ASANA_WORKSPACE, "dueOn": "2026-12-24"},
        )
    )
    [task] = fake.tasks
    assert outcome.output == {"gid": task["gid"], "url": task["permalink_url"], "name": "Call the customer"}
    assert fake.requests_to("asana")[-1].json == {
        "data": {"name": "Call the customer", "workspace": ASANA_WORKSPACE, "due_on": "2026-12-24"}
    }
    fake.fail_next(Fault(status=503), integration="asana")
    unavailable = await failure_of(
        adapter, call("asana.create_task", {"name": "x", "workspace": ASANA_WORKSPACE})
    )
    assert unavailable.kind == ProviderErrorKind.SERVER


async def test_zapier_hook_gets_the_input_as_its_body(
    adapter: DeclaredHttpAdapter, fake: IntegrationsFake
) -> None:
    payload = {"event": "lesson.finished", "score": 0.9, "tags": ["es"]}
    outcome = await adapter.call(call("zapier.trigger", payload))
    assert fake.hooks_received == [payload]
    assert outcome.output["status"] == "success"
    assert outcome.output["requestId"]


async def test_a_missing_or_forbidden_secret_is_unavailable_before_any_request(
    fake: IntegrationsFake, http_client: httpx.AsyncClient
) -> None:
    env = environ(fake)
    del env["ZAPIER_HOOK_URL"]
    adapter = DeclaredHttpAdapter(
        http_client, environ=env, allowed_secrets=["ZAPIER_HOOK_URL", "NOTION_TOKEN"]
    )
    adapter.replace(declaration for _, declaration in load_files(SHIPPED))
    declared = adapter.declarations
    assert adapter.unavailable_reason(declared["zapier.trigger"]) == "ZAPIER_HOOK_URL is not set"
    assert "OMNI_TOOLRUNNER_DECLARED_SECRETS" in (
        adapter.unavailable_reason(declared["github.create_issue"]) or ""
    )
    assert adapter.unavailable_reason(declared["notion.create_page"]) is None
    failure = await failure_of(adapter, call("zapier.trigger", {"a": 1}))
    assert (failure.kind, failure.retryable) == (ProviderErrorKind.UNAVAILABLE, False)
    assert fake.requests == []


async def test_a_path_value_is_required_and_encoded_as_one_segment(
    adapter: DeclaredHttpAdapter, fake: IntegrationsFake
) -> None:
    failure = await failure_of(adapter, call("github.create_issue", {"owner": "omni-org", "title": "x"}))
    assert failure.kind == ProviderErrorKind.BAD_REQUEST
    assert "input.repo" in failure.message
    absent = await failure_of(
        adapter, call("github.get_issue", {"owner": "../../admin", "repo": "r", "number": 1})
    )
    assert absent.status == 404
    # Sent as ..%2F..%2Fadmin (the fake records the decoded path); unencoded, the dot segments would
    # have been resolved away and the request would have left /repos.
    assert fake.requests_to("github")[-1].path == "/github/repos/../../admin/r/issues/1"


async def test_a_service_that_cannot_be_reached_is_unavailable_and_retryable(
    http_client: httpx.AsyncClient,
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound but not listening: connections are refused
        adapter = DeclaredHttpAdapter(http_client, environ={})
        adapter.replace(
            [decode_declaration({"name": "status.check", "request": {"url": f"http://127.0.0.1:{port}/x"}})]
        )
        failure = await failure_of(adapter, call("status.check", {}))
    assert (failure.kind, failure.retryable) == (ProviderErrorKind.UNAVAILABLE, True)
    assert f"127.0.0.1:{port}" in failure.message
