"""``${...}`` templates: parsing, references and rendering."""

from __future__ import annotations

from typing import Any

import pytest
from omni_engine.templating import (
    Reference,
    Scope,
    TemplateError,
    collect_references,
    format_path,
    parse_template,
    references,
    render,
    step_dependencies,
)


@pytest.fixture
def scope() -> Scope:
    return Scope(
        payload={"userId": "u1", "sourceLanguage": "en", "count": 3, "meta": {"tags": ["a", "b"]}},
        steps={
            "speech_to_text": {
                "text": "hola mundo",
                "confidence": 0.93,
                "segments": [{"text": "hola", "start": 0.0}, {"text": "mundo", "start": 0.4}],
                "empty": None,
            },
            "natural_language_understanding": {"intent": "greet", "grammar": {"errors": []}},
        },
        context={"sessionId": "s1", "flags": {"beta": True}},
    )


def test_whole_value_template_keeps_the_type(scope: Scope) -> None:
    value = {
        "analysis": "${steps.natural_language_understanding.output}",
        "confidence": "${steps.speech_to_text.output.confidence}",
        "count": "${trigger.payload.count}",
        "segments": "${steps.speech_to_text.output.segments}",
        "beta": "${context.flags.beta}",
        "empty": "${steps.speech_to_text.output.empty}",
    }
    assert render(value, scope) == {
        "analysis": {"intent": "greet", "grammar": {"errors": []}},
        "confidence": 0.93,
        "count": 3,
        "segments": [{"text": "hola", "start": 0.0}, {"text": "mundo", "start": 0.4}],
        "beta": True,
        "empty": None,
    }


def test_whole_value_result_does_not_alias_the_scope(scope: Scope) -> None:
    rendered = render("${steps.natural_language_understanding.output}", scope)
    rendered["grammar"]["errors"].append("x")
    assert scope.steps["natural_language_understanding"]["grammar"]["errors"] == []


def test_embedded_templates_are_stringified(scope: Scope) -> None:
    rendered = render(
        "user=${trigger.payload.userId} n=${trigger.payload.count}"
        " conf=${steps.speech_to_text.output.confidence} beta=${context.flags.beta}"
        " tags=${trigger.payload.meta.tags} none=[${steps.speech_to_text.output.empty}]",
        scope,
    )
    assert rendered == 'user=u1 n=3 conf=0.93 beta=true tags=["a","b"] none=[]'


def test_whitespace_around_a_lone_template_makes_it_embedded(scope: Scope) -> None:
    assert render(" ${trigger.payload.count}", scope) == " 3"
    assert render("${ trigger.payload.count }", scope) == 3


@pytest.mark.parametrize(
    "expression",
    [
        "${steps.speech_to_text.output.segments[1].text}",
        "${steps.speech_to_text.output.segments.1.text}",
    ],
)
def test_lists_are_indexed_with_dot_or_brackets(scope: Scope, expression: str) -> None:
    assert render(expression, scope) == "mundo"


def test_render_walks_nested_dicts_and_lists_and_leaves_other_values(scope: Scope) -> None:
    value: dict[str, Any] = {
        "list": ["${trigger.payload.userId}", {"deep": "${context.sessionId}"}, 7, None, True],
        "${not.a.key}": "plain",
    }
    assert render(value, scope) == {"list": ["u1", {"deep": "s1"}, 7, None, True], "${not.a.key}": "plain"}


def test_absent_optional_trigger_field_renders_as_none_or_empty(scope: Scope) -> None:
    assert render("${trigger.payload.audioData}", scope) is None
    assert render("${trigger.payload.audioData.size}", scope) is None
    assert render("audio: [${trigger.payload.audioData}]", scope) == "audio: []"


def test_dollar_dollar_escapes_a_template(scope: Scope) -> None:
    assert render("literal $${trigger.payload.userId} vs ${trigger.payload.userId}", scope) == (
        "literal ${trigger.payload.userId} vs u1"
    )
    assert references("$${steps.x.output}") == []


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("${steps.machine_translation.output.translatedText}", "step 'machine_translation' has no output"),
        ("${steps.speech_to_text.output.words}", "no field 'words' in steps.speech_to_text.output"),
        ("${steps.speech_to_text.output.segments[5]}", "index 5 is out of range"),
        ("${steps.speech_to_text.output.segments.first}", "is a list; index it with a number"),
        ("${steps.speech_to_text.output.text.length}", "is a string, not an object or list"),
        ("${steps.speech_to_text.output.empty.x}", "steps.speech_to_text.output.empty is null"),
        ("${context.userId}", "no field 'userId' in context"),
    ],
)
def test_missing_references_raise_template_error(scope: Scope, value: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as info:
        render({"outer": [value]}, scope)
    assert fragment in info.value.message
    assert info.value.location == ("outer", 0)
    assert info.value.path == value[2:-1]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("${}", "expected a path"),
        ("${trigger.payload.x", "missing the closing '}'"),
        ("${payload.x}", "unknown root 'payload'"),
        ("${trigger.event}", "only trigger.payload"),
        ("${steps.stt.text}", "steps.<step>.output"),
        ("${steps.stt.output..x}", "invalid path syntax"),
        ("${steps.stt.output.x[a]}", "invalid path syntax"),
        ("${trigger.payload.x + 1}", "invalid path syntax"),
    ],
)
def test_malformed_templates_are_rejected(text: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(text)
    assert fragment in info.value.message


def test_references_report_root_step_path_and_location() -> None:
    value = {
        "text": "${steps.speech_to_text.output.segments[0].text}",
        "config": {"language": "say it in ${trigger.payload.targetLanguage} for ${context.userId}"},
        "whole": "${steps.natural_language_understanding.output}",
    }
    assert references(value) == [
        Reference(
            "steps",
            "speech_to_text",
            ("segments", 0, "text"),
            "steps.speech_to_text.output.segments[0].text",
            ("text",),
            whole=True,
        ),
        Reference(
            "trigger", None, ("targetLanguage",), "trigger.payload.targetLanguage", ("config", "language")
        ),
        Reference("context", None, ("userId",), "context.userId", ("config", "language")),
        Reference(
            "steps",
            "natural_language_understanding",
            (),
            "steps.natural_language_understanding.output",
            ("whole",),
            whole=True,
        ),
    ]
    assert step_dependencies(value) == {"speech_to_text", "natural_language_understanding"}


def test_collect_references_reports_every_malformed_template() -> None:
    refs, errors = collect_references({"a": "${nope.x}", "b": ["${trigger.payload.ok}", "${steps.x}"]})
    assert [r.expression for r in refs] == ["trigger.payload.ok"]
    assert [e.location for e in errors] == [("a",), ("b", 1)]
    with pytest.raises(TemplateError):
        references({"a": "${nope.x}"})


def test_format_path_reads_like_the_yaml() -> None:
    assert format_path(("steps", 2, "input", "segments", 0)) == "steps[2].input.segments[0]"
    assert format_path(()) == ""
