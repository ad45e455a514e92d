"""Tool declarations: what a valid one looks like, each mistake named by its field, and the template rules."""

from __future__ import annotations

from typing import Any

import pytest
from omni_contract.declared import (
    DECLARED_PROVIDER,
    LEGACY_TEMPLATES_REFUSED_FROM,
    DeclarationError,
    decode_declaration,
    deprecations,
    integration_limits,
    lookup,
    render,
)


def declaration(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "name": "github.create_issue",
        "request": {
            "method": "POST",
            "url": "https://api.github.com/repos/${input.owner}/${input.repo}/issues",
            "body": {"title": "${input.title}", "labels": "${input.labels}"},
        },
        "auth": {"env": "GITHUB_TOKEN"},
        "output": {"url": "${response.html_url}", "status": "${status}"},
    }
    value.update(overrides)
    return value


def problems(value: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(DeclarationError) as caught:
        decode_declaration(value)
    return {problem.field: problem.message for problem in caught.value.problems}


def test_a_valid_declaration_decodes_into_the_registry_spec_of_the_integrations_provider() -> None:
    decoded = decode_declaration(declaration(description="Open an issue", timeoutMs=15000))
    spec = decoded.spec()
    assert (spec.name, spec.provider, spec.category) == ("github.create_issue", DECLARED_PROVIDER, "github")
    assert spec.requires_auth
    assert spec.timeout_ms == 15000
    assert decoded.auth is not None
    assert decoded.auth.scheme == "bearer"


@pytest.mark.parametrize(
    ("override", "field", "words"),
    [
        ({"name": "CreateIssue"}, "$.name", "<category>.<action>"),
        ({"name": "github.issues.create"}, "$.name", "<category>.<action>"),
        ({"request": {"url": "https://${input.host}/x"}}, "$.request.url", "literal http"),
        ({"request": {"url": "https://{{ input.host }}/x"}}, "$.request.url", "literal http"),
        ({"request": {"url": "https://api.github.com${input.path}"}}, "$.request.url", "literal http"),
        ({"request": {"url": "ftp://example.com/x"}}, "$.request.url", "literal http"),
        (
            {"request": {"url": "https://x.test/${env.GITHUB_TOKEN}"}},
            "$.request.url",
            "unknown root 'env'",
        ),
        ({"request": {"url": "https://x.test/${input.a + 1}"}}, "$.request.url", "is not a path"),
        ({"request": {"url": "https://x.test/{{ input.a + 1 }}"}}, "$.request.url", "is not a path"),
        ({"request": {"url": "https://x.test/${input.a"}}, "$.request.url", "missing the closing '}'"),
        (
            {"request": {"url": "https://x.test/", "query": {"q": "${input.a} {{ input.b }}"}}},
            "$.request.query.q",
            "mixes ${...} and {{ ... }}",
        ),
        (
            {"request": {"method": "GET", "url": "https://x.test/", "body": {"a": 1}}},
            "$.request.body",
            "no body",
        ),
        ({"auth": {"env": "github-token"}}, "$.auth.env", "environment variable"),
        ({"auth": {"env": "KEY", "scheme": "header"}}, "$.auth.name", "needs the header"),
        ({"auth": {"env": "HOOK", "scheme": "url"}}, "$.request.url", "only a path"),
        ({"output": {"x": "${request.url}"}}, "$.output.x", "unknown root 'request'"),
        ({"output": {"x": ["${response.id}", "{{ response.a }}/${response.b}"]}}, "$.output.x[1]", "mixes"),
        (
            {"request": {"url": "https://x.test/", "headers": {"Authorization": "x"}}},
            "$.request.headers.Authorization",
            "set by auth",
        ),
    ],
)
def test_each_mistake_is_named_by_its_field(override: dict[str, Any], field: str, words: str) -> None:
    found = problems(declaration(**override))
    assert field in found, found
    assert words in found[field]


def test_a_wrong_type_or_value_names_the_field_msgspec_found() -> None:
    assert "$.request.method" in problems(declaration(request={"method": "FETCH", "url": "https://x.test/"}))
    assert "$.timeoutMs" in problems(declaration(timeoutMs=0))
    assert "$.request" in problems({"name": "a.b"})


BODY = {
    "title": "${input.title}",
    "labels": "${ input.labels }",
    "assignees": "${input.assignees}",
    "summary": "#${input.n}: ${input.title} ${input.missing}",
    "nested": [{"content": "${input.title}"}],
    "fixed": 7,
}
# The same body in the deprecated syntax.
LEGACY_BODY = {
    "title": "{{ input.title }}",
    "labels": "{{input.labels}}",
    "assignees": "{{ input.assignees }}",
    "summary": "#{{ input.n }}: {{ input.title }} {{ input.missing }}",
    "nested": [{"content": "{{ input.title }}"}],
    "fixed": 7,
}


@pytest.mark.parametrize("body", [BODY, LEGACY_BODY], ids=["dollar", "legacy"])
def test_whole_templates_keep_types_and_absent_values_leave_entries_out(body: dict[str, Any]) -> None:
    scope = {"input": {"title": "Bug", "labels": ["a", "b"], "n": 3}}
    assert render(body, scope) == {
        "title": "Bug",
        "labels": ["a", "b"],
        "summary": "#3: Bug ",
        "nested": [{"content": "Bug"}],
        "fixed": 7,
    }


def test_dollar_dollar_writes_a_literal_template_and_paths_index_lists_either_way() -> None:
    scope = {"input": {"items": [{"id": 4}]}}
    assert (
        render("$${input.items} is ${input.items.0.id}/${input.items[0].id}", scope)
        == "${input.items} is 4/4"
    )
    assert decode_declaration(declaration(output={"id": "${response.items.0.id}", "raw": "$${x}"})).output


def test_a_declaration_in_the_legacy_syntax_is_valid_and_each_field_using_it_is_named_with_its_rewrite() -> (
    None
):
    legacy = decode_declaration(
        declaration(
            request={
                "method": "POST",
                "url": "https://api.github.com/repos/{{ input.owner }}/{{input.repo}}/issues",
                "query": {"plain": "x"},
                "body": LEGACY_BODY,
            },
            output={"url": "${response.html_url}", "first": "{{ response.items[0].id }}"},
        )
    )
    warnings = {warning.field: warning for warning in deprecations(legacy)}
    assert sorted(warnings) == [
        "$.output.first",
        "$.request.body.assignees",
        "$.request.body.labels",
        "$.request.body.nested[0].content",
        "$.request.body.summary",
        "$.request.body.title",
        "$.request.url",
    ]
    url = warnings["$.request.url"]
    assert url.replacement == "https://api.github.com/repos/${input.owner}/${input.repo}/issues"
    assert url.replacement in url.message
    assert "deprecated" in url.message
    assert LEGACY_TEMPLATES_REFUSED_FROM in url.message
    assert warnings["$.request.body.summary"].replacement == BODY["summary"]
    assert deprecations(decode_declaration(declaration())) == []


def test_paths_reach_into_lists_and_stop_at_anything_missing() -> None:
    scope = {"response": {"items": [{"id": 1}, {"id": 2}]}}
    assert lookup(scope, "response.items[1].id") == 2
    assert lookup(scope, "response.items[5].id") is None
    assert lookup(scope, "response.other.id") is None
    assert lookup(scope, "response.items.id") is None
    assert lookup(scope, "response.items.1.id") == 2


def test_an_integrations_limit_is_the_smallest_its_tools_declare() -> None:
    tools = [
        decode_declaration(declaration(name="github.create_issue", rateLimit={"requestsPerMinute": 80})),
        decode_declaration(
            declaration(name="github.get_issue", rateLimit={"requestsPerMinute": 60, "tokensPerMinute": 9})
        ),
        decode_declaration(declaration(name="notion.create_page")),
    ]
    assert integration_limits(tools) == {"github": (60, 9)}
    assert "$.rateLimit.requestsPerMinute" in problems(declaration(rateLimit={"requestsPerMinute": 0}))
