"""Workflow definitions: loading, validation errors, payload checks, serialisation and hashing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from omni_engine.definition import (
    MAX_DEFINITION_BYTES,
    MAX_DEPTH,
    MAX_ERRORS,
    MAX_STEPS,
    FieldError,
    WorkflowDefinition,
    WorkflowError,
    WorkflowValidationError,
    definition_to_dict,
    load_workflow_dir,
    load_workflow_file,
    parse_workflow,
    to_json_schema,
    validate_payload,
    workflow_slug,
)

REPO = Path(__file__).resolve().parents[3]
COACH = REPO / "workflows" / "bilingual-coach.yaml"
FIXTURES = Path(__file__).parent / "fixtures"

MINIMAL = """
name: minimal
version: 1.0.0
trigger:
  event: app.test.start
  payload:
    text: string
    count?: integer
steps:
  - name: echo
    tool: text.echo
    provider: mock
    input:
      text: "${trigger.payload.text}"
    output:
      text: string
"""


@pytest.fixture(scope="module")
def coach() -> WorkflowDefinition:
    return load_workflow_file(COACH)


def errors_of(source: str | Path | dict[str, Any]) -> list[WorkflowError]:
    def load() -> WorkflowDefinition:
        if isinstance(source, Path):
            return load_workflow_file(source)
        return parse_workflow(source, "test.yaml")

    with pytest.raises(WorkflowValidationError) as info:
        load()
    assert info.value.errors
    return info.value.errors


# ---------------------------------------------------------------------------------------------
# The shipped workflow


def test_bilingual_coach_loads_with_five_chained_steps(coach: WorkflowDefinition) -> None:
    assert coach.name == "bilingual-coach"
    assert coach.trigger.event == "app.coach.session.start"
    assert coach.step_names == [
        "speech_to_text",
        "natural_language_understanding",
        "machine_translation",
        "coach_feedback",
        "text_to_speech",
    ]
    assert [s.tool for s in coach.steps] == [
        "stt.transcribe",
        "nlu.analyze",
        "mt.translate",
        "feedback.generate",
        "tts.speak",
    ]
    assert all(s.providers[0] == "openrouter" for s in coach.steps)
    assert coach.trigger.required_fields == ["userId", "sessionId", "targetLanguage", "sourceLanguage"]
    assert not coach.trigger.payload["audioData"].required
    assert not coach.trigger.payload["textInput"].required
    assert coach.dependencies()["coach_feedback"] == {
        "speech_to_text",
        "natural_language_understanding",
        "machine_translation",
    }
    assert coach.guards is not None
    assert coach.guards.budget is not None
    assert coach.guards.budget.max_ms == 120000
    assert coach.step("speech_to_text").timeout_ms == 12000


def test_bilingual_coach_keeps_the_tool_field_contracts(coach: WorkflowDefinition) -> None:
    contracts = {
        "stt.transcribe": ({"audioData", "language"}, {"text", "confidence", "segments"}),
        "nlu.analyze": (
            {"text", "language", "context"},
            {"intent", "grammar", "entities", "sentiment", "confidence"},
        ),
        "mt.translate": ({"text", "sourceLanguage", "targetLanguage"}, {"translatedText", "confidence"}),
        "feedback.generate": (
            {"text", "analysis", "translation", "targetLanguage"},
            {"feedback", "score", "suggestions"},
        ),
        "tts.speak": ({"text", "language", "voice"}, {"audioData", "format", "text"}),
    }
    for step in coach.steps:
        inputs, outputs = contracts[step.tool]
        assert set(step.input) == inputs, step.name
        assert set(step.output) == outputs, step.name
    feedback = coach.step("coach_feedback")
    assert feedback.input["analysis"] == "${steps.natural_language_understanding.output}"
    assert feedback.input["translation"] == "${steps.machine_translation.output.translatedText}"


# ---------------------------------------------------------------------------------------------
# One fixture per class of error: each names file, step, field (and line)

CASES = [
    ("yaml_syntax", None, None, "invalid YAML", 11),
    ("duplicate_key", "echo", "steps[0].tool", "duplicate key 'tool' (first written on line 8)", 10),
    ("unknown_key", "second", "steps[1].inputs", "unknown key 'inputs' (allowed here: name,", 17),
    ("missing_key", "second", "steps[1].tool", "missing required key 'tool'", 10),
    ("wrong_type", "slow", "steps[0].config", "expected a mapping, got integer 12000", 10),
    ("duplicate_step", "echo", "steps[1].name", "duplicate step name 'echo' (also steps[0])", 10),
    ("invalid_step_name", "Speech-To-Text", "steps[0].name", "invalid step name 'Speech-To-Text'", 7),
    ("invalid_workflow_id", None, "id", "invalid workflow id 'Bilingual Coach'", 3),
    ("invalid_tool", "transcribe", "steps[0].tool", "expected <category>.<action>", 8),
    ("invalid_provider", "echo", "steps[0].provider", "invalid provider name ''", 9),
    ("bad_trigger_event", None, "trigger.event", "invalid trigger event 'coach.session.start'", 5),
    (
        "unknown_output_type",
        "echo",
        "steps[0].output.text",
        "unknown type 'str' (expected one of: string,",
        11,
    ),
    ("unknown_payload_type", None, "trigger.payload.userId", "unknown type 'text'", 7),
    ("bad_timeout", "echo", "steps[0].config.timeout", "positive integer number of milliseconds", 11),
    ("template_syntax", "echo", "steps[0].config.prompt", "missing the closing '}'", 13),
    ("unknown_root", "echo", "steps[0].input.text", "unknown root 'payload'", 13),
    (
        "unknown_payload_field",
        "echo",
        "steps[0].input.language",
        "reference to unknown trigger payload field 'lang'",
        15,
    ),
    ("unknown_step", "nlu", "steps[1].input.text", "reference to unknown step 'foo'", 20),
    ("forward_reference", "first", "steps[0].input.text", "forward reference to step 'second'", 11),
    ("self_reference", "loop", "steps[0].input.text", "refers to its own output", 11),
    (
        "undeclared_output",
        "second",
        "steps[1].input.options[0]",
        "step 'first' does not declare output field 'transcript'",
        17,
    ),
    ("unknown_fallback", None, "guards.fallbacks.stt", "fallback for 'stt'", 12),
]


@pytest.mark.parametrize(("fixture", "step", "field", "message", "line"), CASES, ids=[c[0] for c in CASES])
def test_each_error_names_file_step_field_and_line(
    fixture: str, step: str | None, field: str | None, message: str, line: int
) -> None:
    path = FIXTURES / f"{fixture}.yaml"
    errors = errors_of(path)
    assert len(errors) == 1, errors
    err = errors[0]
    assert (err.file, err.step, err.field, err.line) == (str(path), step, field, line)
    assert message in err.message
    text = str(err)
    assert text.startswith(f"{path}:{line}: ")
    if step is not None:
        assert f"step {step!r}: " in text
    assert err.to_dict() == {
        "file": str(path),
        "step": step,
        "field": field,
        "message": err.message,
        "line": line,
    }


def test_every_fixture_is_covered() -> None:
    covered = {c[0] for c in CASES} | {"several_errors"}
    assert {p.stem for p in FIXTURES.glob("*.yaml")} == covered


def test_error_text_reads_field_relative_to_its_step() -> None:
    err = WorkflowError("workflows/x.yaml", "nlu", "steps[1].input.text", "reference to unknown step 'foo'")
    assert str(err) == "workflows/x.yaml: step 'nlu': field 'input.text': reference to unknown step 'foo'"
    top = WorkflowError("workflows/x.yaml", None, "trigger.payload.userId", "unknown type 'text'", line=7)
    assert str(top) == "workflows/x.yaml:7: field 'trigger.payload.userId': unknown type 'text'"


def test_all_errors_of_a_definition_are_reported_together() -> None:
    path = FIXTURES / "several_errors.yaml"
    with pytest.raises(WorkflowValidationError) as info:
        load_workflow_file(path)
    errors = info.value.errors
    assert [(e.step, e.field) for e in errors] == [
        ("first", "steps[0].input.text"),
        ("second", "steps[1].input.text"),
        ("second", "steps[1].input.other"),
    ]
    assert "unknown trigger payload field 'missing'" in errors[0].message
    assert "does not declare output field 'nope'" in errors[1].message
    assert "unknown step 'third'" in errors[2].message
    assert str(info.value).count("\n") == 2
    assert info.value.to_dict()["errors"][2]["field"] == "steps[1].input.other"


def test_structural_errors_are_collected_across_steps() -> None:
    data = yaml.safe_load(MINIMAL)
    data["steps"].append({"name": "Bad", "tool": "x", "provider": "mock", "extra": 1})
    data["extra"] = True
    errors = errors_of(data)
    assert {(e.step, e.field) for e in errors} == {
        (None, "extra"),
        ("Bad", "steps[1].name"),
        ("Bad", "steps[1].tool"),
        ("Bad", "steps[1].extra"),
    }
    assert all(e.line is None and e.file == "test.yaml" for e in errors)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the definition is empty"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        (MINIMAL.replace("version: 1.0.0", "version: 1.10"), "write the version as a string"),
        (MINIMAL.replace("steps:", "steps: []\nold_steps:"), "unknown key 'old_steps'"),
        (MINIMAL.replace("count?: integer", "count?: integer\n    count: integer"), "declared twice"),
        (MINIMAL.replace("count?: integer", "bad-name: string"), "invalid payload field name 'bad-name'"),
        (
            MINIMAL.replace("text: string\n    count", "text: {type: string, optional: true}\n    count"),
            "'optional'",
        ),
        (MINIMAL.replace("input:", "provider: gemini\n    input:"), "duplicate key 'provider'"),
        (
            MINIMAL.replace("output:\n      text: string", "output:\n      text: string\n      9x: string"),
            "9x",
        ),
        (MINIMAL.replace("${trigger.payload.text}", "${trigger.payload.text.length}"), "goes below"),
    ],
)
def test_other_invalid_definitions(text: str, fragment: str) -> None:
    errors = errors_of(text)
    assert any(fragment in e.message for e in errors), [str(e) for e in errors]


def test_yaml_booleans_and_dates_stay_plain_data() -> None:
    text = MINIMAL.replace(
        'text: "${trigger.payload.text}"', 'text: "${trigger.payload.text}"\n      mode: on'
    )
    text = text.replace("output:", "config:\n      since: 2024-01-31\n      strict: true\n    output:")
    step = parse_workflow(text).steps[0]
    assert step.input["mode"] == "on"
    assert step.config == {"since": "2024-01-31", "strict": True}


def test_version_may_be_a_bare_integer() -> None:
    assert parse_workflow(MINIMAL.replace("version: 1.0.0", "version: 3")).version == "3"


# ---------------------------------------------------------------------------------------------
# Directories


def test_a_bad_file_does_not_stop_the_good_ones(tmp_path: Path) -> None:
    shutil.copy(COACH, tmp_path / "bilingual-coach.yaml")
    shutil.copy(FIXTURES / "forward_reference.yaml", tmp_path / "b-broken.yaml")
    shutil.copy(FIXTURES / "yaml_syntax.yaml", tmp_path / "c-broken.yml")
    (tmp_path / "minimal.yml").write_text(MINIMAL)
    (tmp_path / "notes.txt").write_text("not a workflow")
    (tmp_path / ".hidden.yaml").write_text("{")

    definitions, errors = load_workflow_dir(tmp_path)

    assert sorted(d.name for d in definitions) == ["bilingual-coach", "minimal"]
    assert sorted(Path(e.file).name for e in errors) == ["b-broken.yaml", "c-broken.yml"]
    assert {d.source for d in definitions} == {
        str(tmp_path / "bilingual-coach.yaml"),
        str(tmp_path / "minimal.yml"),
    }


def test_a_workflow_name_used_twice_keeps_the_first_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(MINIMAL)
    (tmp_path / "b.yaml").write_text(MINIMAL.replace("tool: text.echo", "tool: text.upper"))
    definitions, errors = load_workflow_dir(tmp_path)
    assert [d.source for d in definitions] == [str(tmp_path / "a.yaml")]
    assert [(e.file, e.field) for e in errors] == [(str(tmp_path / "b.yaml"), "name")]
    assert "already defined in" in errors[0].message


def test_loading_a_missing_directory_or_file_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        load_workflow_dir(tmp_path / "absent")
    errors = errors_of(tmp_path / "absent.yaml")
    assert errors[0].file == str(tmp_path / "absent.yaml")
    assert "cannot read file" in errors[0].message


# ---------------------------------------------------------------------------------------------
# Trigger payloads


def test_valid_payloads_pass(coach: WorkflowDefinition) -> None:
    payload = {"userId": "u", "sessionId": "s", "targetLanguage": "es", "sourceLanguage": "en"}
    assert validate_payload(coach, payload) == []
    assert validate_payload(coach, {**payload, "audioData": "UklGRg==", "textInput": None}) == []


def test_payload_errors_name_each_field(coach: WorkflowDefinition) -> None:
    payload = {"userId": 42, "sessionId": None, "sourceLanguage": "en", "audioData": ["x"], "mood": "happy"}
    assert validate_payload(coach, payload) == [
        FieldError("payload.userId", "expected string, got integer"),
        FieldError("payload.sessionId", "required field is null (expected string)"),
        FieldError("payload.targetLanguage", "required field is missing (expected string)"),
        FieldError("payload.audioData", "expected string, got array"),
        FieldError(
            "payload.mood",
            "unknown field (declared fields: userId, sessionId, targetLanguage, sourceLanguage, "
            "audioData, textInput)",
        ),
    ]
    assert validate_payload(coach, [1]) == [FieldError("payload", "expected an object, got array")]


def test_numbers_integers_and_booleans_are_told_apart() -> None:
    defn = parse_workflow(
        MINIMAL.replace("count?: integer", "count?: integer\n    ratio?: number\n    flag?: boolean")
    )
    base = {"text": "t"}
    assert validate_payload(defn, {**base, "count": 3, "ratio": 2, "flag": False}) == []
    assert validate_payload(defn, {**base, "count": 3.0, "ratio": 0.5}) == []
    assert validate_payload(defn, {**base, "count": 2.5, "ratio": True, "flag": 1}) == [
        FieldError("payload.count", "expected integer, got number"),
        FieldError("payload.ratio", "expected number, got boolean"),
        FieldError("payload.flag", "expected boolean, got integer"),
    ]
    assert validate_payload(defn, {**base, "count": True}) == [
        FieldError("payload.count", "expected integer, got boolean")
    ]


def test_json_schema_describes_the_payload(coach: WorkflowDefinition) -> None:
    schema = to_json_schema(coach)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["userId", "sessionId", "targetLanguage", "sourceLanguage"]
    assert schema["properties"]["userId"] == {"type": "string"}
    assert schema["properties"]["audioData"] == {"type": ["string", "null"]}
    json.dumps(schema)


# ---------------------------------------------------------------------------------------------
# Serialisation and content hash


def test_definition_to_dict_round_trips(coach: WorkflowDefinition) -> None:
    data = definition_to_dict(coach)
    json.dumps(data)
    again = parse_workflow(json.loads(json.dumps(data)), "<api>")
    assert definition_to_dict(again) == data
    assert again.content_hash == coach.content_hash
    assert data["trigger"]["payload"]["audioData?"] == "string"
    assert data["steps"][0]["provider"] == ["openrouter", "gemini", "local"]
    assert data["guards"]["budget"] == {"maxMs": 120000, "maxTokens": 8000, "maxCost": 0.5}
    # YAML text of the dict parses too (the gateway may hand either to the engine).
    assert parse_workflow(yaml.safe_dump(data)).content_hash == coach.content_hash


def _reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reverse_keys(v) for k, v in reversed(list(value.items()))}
    if isinstance(value, list):
        return [_reverse_keys(v) for v in value]
    return value


def test_content_hash_ignores_key_order_whitespace_and_spelling(coach: WorkflowDefinition) -> None:
    raw = yaml.safe_load(COACH.read_text())
    reordered = _reverse_keys(raw)
    assert list(reordered) != list(raw)
    assert parse_workflow(reordered).content_hash == coach.content_hash
    # Flow style, no comments, providers as a list instead of a|b|c: same definition.
    raw["steps"][0]["provider"] = ["openrouter", "gemini", "local"]
    flow = yaml.safe_dump(raw, default_flow_style=True, width=10_000)
    assert parse_workflow(flow).content_hash == coach.content_hash
    assert len(coach.content_hash) == 64


def test_content_hash_changes_with_the_definition(coach: WorkflowDefinition) -> None:
    raw = yaml.safe_load(COACH.read_text())
    raw["steps"][0]["config"]["timeout"] = 13000
    assert parse_workflow(raw).content_hash != coach.content_hash
    raw = yaml.safe_load(COACH.read_text())
    raw["steps"][0]["provider"] = "gemini|openrouter"
    assert parse_workflow(raw).content_hash != coach.content_hash


def test_parse_does_not_alias_the_callers_data() -> None:
    raw = yaml.safe_load(MINIMAL)
    defn = parse_workflow(raw)
    raw["steps"][0]["input"]["text"] = "changed"
    assert defn.steps[0].input["text"] == "${trigger.payload.text}"


# ---------------------------------------------------------------------------------------------
# Display names and ids (issue 9, item 6)


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Bilingual Coach Workflow", "bilingual-coach-workflow"),
        ("bilingual-coach", "bilingual-coach"),  # a name that is already an id keeps it
        ("order_review.v2", "order_review.v2"),
        ("Order.Review", "order-review"),
        ("  Café   Crème! ", "cafe-creme"),
        ("Coach (beta) — Español", "coach-beta-espanol"),
        ("日本語", ""),
    ],
)
def test_a_name_gives_its_slug(name: str, slug: str) -> None:
    assert workflow_slug(name) == slug


def test_a_display_name_with_spaces_is_accepted_and_addressed_by_its_slug() -> None:
    defn = parse_workflow(MINIMAL.replace("name: minimal", "name: Bilingual Coach Workflow"))

    assert (defn.id, defn.name, defn.display_name) == (
        "bilingual-coach-workflow",
        "bilingual-coach-workflow",
        "Bilingual Coach Workflow",
    )
    assert definition_to_dict(defn)["name"] == "Bilingual Coach Workflow"
    assert "id" not in definition_to_dict(defn)


def test_an_explicit_id_is_the_address_and_part_of_the_definition() -> None:
    defn = parse_workflow(MINIMAL.replace("name: minimal", "name: 日本語のコーチ\nid: coach-ja"))

    assert (defn.id, defn.display_name) == ("coach-ja", "日本語のコーチ")
    data = definition_to_dict(defn)
    assert data["id"] == "coach-ja"
    assert parse_workflow(data).content_hash == defn.content_hash
    assert parse_workflow(
        MINIMAL.replace("name: minimal", "name: 日本語のコーチ\nid: coach-jp")
    ).content_hash != (defn.content_hash)


def test_a_definition_without_an_id_keeps_the_hash_it_had_before_ids(coach: WorkflowDefinition) -> None:
    # Stored rows are keyed by this hash: a change would make every stored workflow a new version.
    assert coach.content_hash == "7e0657b4cf527f9d1cd19547108c72aa7a71a1805f3fd1020f354f970c93e51c"
    assert coach.id == "bilingual-coach"


@pytest.mark.parametrize(
    ("replacement", "field", "fragment"),
    [
        ("name: 日本語", "name", "add an id"),
        ("name: '  '", "name", "must not be empty"),
        ('name: "Tab\\there"', "name", "control character"),
        ("name: " + "n" * 201, "name", "more than the 200 allowed"),
        ("name: minimal\nid: Not A Slug", "id", "invalid workflow id 'Not A Slug'"),
        ("name: minimal\nid: " + "a" * 129, "id", "at most 128 characters"),
        ("name: minimal\ndescription: " + "d" * 4001, "description", "more than the 4000 allowed"),
    ],
)
def test_names_ids_and_descriptions_are_checked(replacement: str, field: str, fragment: str) -> None:
    errors = errors_of(MINIMAL.replace("name: minimal", replacement))

    assert [(e.field, fragment in e.message) for e in errors] == [(field, True)], errors


def test_a_version_is_printable_and_short() -> None:
    assert [e.field for e in errors_of(MINIMAL.replace("version: 1.0.0", "version: '" + "9" * 65 + "'"))] == [
        "version"
    ]


def test_two_files_whose_names_give_one_slug_keep_the_first(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(MINIMAL.replace("name: minimal", "name: Order Review"))
    (tmp_path / "b.yaml").write_text(MINIMAL.replace("name: minimal", "name: order review!"))

    definitions, errors = load_workflow_dir(tmp_path)

    assert [d.id for d in definitions] == ["order-review"]
    assert [(Path(e.file).name, e.field) for e in errors] == [("b.yaml", "name")]


# ---------------------------------------------------------------------------------------------
# Limits, checked before anything is stored (issue 9, item 13), and errors that stay small (15)


def test_a_workflow_with_too_many_steps_is_one_error_naming_steps() -> None:
    data = yaml.safe_load(MINIMAL)
    data["steps"] = [dict(data["steps"][0], name=f"s{i}") for i in range(10_000)]

    errors = errors_of(data)

    assert [(e.field, e.message) for e in errors] == [
        ("steps", f"10000 steps, more than the {MAX_STEPS} a workflow may have")
    ]


def test_a_workflow_of_exactly_the_step_limit_loads() -> None:
    data = yaml.safe_load(MINIMAL)
    data["steps"] = [dict(data["steps"][0], name=f"s{i}") for i in range(MAX_STEPS)]

    assert len(parse_workflow(data).steps) == MAX_STEPS


def test_a_definition_larger_than_the_limit_is_refused_as_text_and_as_stored_json() -> None:
    text = MINIMAL + "# " + "x" * MAX_DEFINITION_BYTES + "\n"
    assert "more than" in errors_of(text)[0].message
    # Small as text, large once aliases are expanded into the stored JSON.
    blown = MINIMAL.replace("input:", "input:\n      blob: &b " + "y" * 5000)
    blown = blown.replace("output:", "config:\n      copies: [" + ", ".join(["*b"] * 60) + "]\n    output:")
    assert [e.message.startswith("the definition is") for e in errors_of(blown)] == [True]


def test_nesting_deeper_than_the_limit_is_refused_in_yaml_and_in_data() -> None:
    deep_text = MINIMAL.replace("output:", "config:\n      deep: " + "[" * 40 + "]" * 40 + "\n    output:")
    assert any(f"more than {MAX_DEPTH} levels" in e.message for e in errors_of(deep_text))
    very_deep = MINIMAL.replace(
        "output:", "config:\n      deep: " + "[" * 5000 + "]" * 5000 + "\n    output:"
    )
    assert any("nested" in e.message for e in errors_of(very_deep))
    data = yaml.safe_load(MINIMAL)
    nested: dict[str, Any] = {}
    node = nested
    for _ in range(40):
        node["a"] = {}
        node = node["a"]
    data["steps"][0]["config"] = nested
    assert any(f"more than {MAX_DEPTH} levels" in e.message for e in errors_of(data))


def test_many_problems_are_capped_and_long_values_are_cut() -> None:
    data = yaml.safe_load(MINIMAL)
    data["steps"] = [dict(data["steps"][0], name="N" * 10_000 + str(i)) for i in range(MAX_STEPS)]

    errors = errors_of(data)

    assert len(errors) == MAX_ERRORS + 1
    assert errors[-1].message == f"and {MAX_STEPS - MAX_ERRORS} more problems, not listed"
    assert all(len(e.message) <= 500 and len(e.step or "") <= 200 for e in errors)
