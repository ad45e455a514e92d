from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from omni_toolrunner.providers import ProviderError, ProviderErrorKind, ToolCall
from omni_toolrunner.providers.mock import (
    MOCK_RULES_ENV,
    MockAdapter,
    MockError,
    MockRule,
    MockRulesError,
    load_rules,
)


def call(tool: str, key: str = "k", timeout_s: float = 30.0, **values: Any) -> ToolCall:
    return ToolCall(tool=tool, input=values, idempotency_key=key, timeout_s=timeout_s)


async def test_without_rules_a_call_gets_its_input_echoed_with_the_tool() -> None:
    outcome = await MockAdapter().call(call("nlu.analyze", text="hola", meta={"n": 1}))
    assert outcome.output == {"echo": {"text": "hola", "meta": {"n": 1}}, "tool": "nlu.analyze"}


async def test_a_strict_mock_answers_a_call_no_rule_matches_with_unknown_tool() -> None:
    mock = MockAdapter([{"tool": "mt.translate", "output": {"translatedText": "hi"}}], strict=True)
    with pytest.raises(ProviderError) as caught:
        await mock.call(call("nlu.analyze", text="hola"))
    assert caught.value.kind is ProviderErrorKind.UNKNOWN_TOOL
    assert (await mock.call(call("mt.translate", key="k2", text="hola"))).output == {"translatedText": "hi"}


async def test_the_first_live_rule_whose_match_is_a_subset_of_the_input_answers() -> None:
    mock = MockAdapter(
        [
            {
                "tool": "mt.translate",
                "match": {"targetLanguage": "fr"},
                "output": {"translatedText": "salut"},
            },
            {"tool": "mt.translate", "match": {"targetLanguage": "es"}, "output": {"translatedText": "hola"}},
            {"tool": "*", "output": {"any": True}},
        ]
    )
    spanish = await mock.call(call("mt.translate", key="a", text="hi", targetLanguage="es"))
    french = await mock.call(call("mt.translate", key="b", text="hi", targetLanguage="fr"))
    german = await mock.call(call("mt.translate", key="c", text="hi", targetLanguage="de"))
    other_tool = await mock.call(call("nlu.analyze", key="d", text="hi"))
    assert spanish.output == {"translatedText": "hola"}
    assert french.output == {"translatedText": "salut"}
    assert german.output == {"any": True}
    assert other_tool.output == {"any": True}


async def test_a_nested_match_is_a_subset_at_every_level() -> None:
    mock = MockAdapter(
        [
            {
                "tool": "feedback.generate",
                "match": {"analysis": {"grammar": {"isCorrect": False}}},
                "output": {"score": 10},
            }
        ]
    )
    wrong = await mock.call(
        call(
            "feedback.generate", key="a", text="x", analysis={"grammar": {"isCorrect": False, "issues": [1]}}
        )
    )
    right = await mock.call(
        call("feedback.generate", key="b", text="x", analysis={"grammar": {"isCorrect": True}})
    )
    flat = await mock.call(call("feedback.generate", key="c", text="x", analysis="not an object"))
    assert wrong.output == {"score": 10}
    assert "echo" in right.output
    assert "echo" in flat.output


async def test_a_boolean_in_a_match_does_not_match_a_number() -> None:
    mock = MockAdapter([{"tool": "*", "match": {"flag": True}, "output": {"matched": True}}])
    assert "echo" in (await mock.call(call("util.echo", key="a", flag=1))).output
    assert (await mock.call(call("util.echo", key="b", flag=True))).output == {"matched": True}


async def test_a_tool_glob_matches_a_family_of_tools() -> None:
    mock = MockAdapter([{"tool": "tts.*", "output": {"format": "text"}}])
    assert (await mock.call(call("tts.speak", text="hi"))).output == {"format": "text"}
    assert "echo" in (await mock.call(call("stt.transcribe", key="k2", audioData="AAAA"))).output


async def test_a_rule_with_times_is_spent_after_that_many_calls() -> None:
    mock = MockAdapter(
        [
            {
                "tool": "nlu.analyze",
                "times": 2,
                "error": {"kind": "server", "message": "down", "status": 503},
            },
            {"tool": "nlu.analyze", "output": {"intent": "statement"}},
        ]
    )
    for key in ("a", "b"):
        with pytest.raises(ProviderError) as caught:
            await mock.call(call("nlu.analyze", key=key, text="hi"))
        assert caught.value.kind is ProviderErrorKind.SERVER
    assert (await mock.call(call("nlu.analyze", key="c", text="hi"))).output == {"intent": "statement"}
    first, second = mock.stats().rules
    assert (first.calls, first.remaining, first.spent) == (2, 0, True)
    assert (second.calls, second.remaining, second.spent) == (1, None, False)


async def test_a_rule_waits_at_least_its_delay_before_answering() -> None:
    mock = MockAdapter([{"tool": "stt.transcribe", "delay_ms": 150, "output": {"text": "hi"}}])
    started = time.perf_counter()
    outcome = await mock.call(call("stt.transcribe", audioData="AAAA"))
    assert time.perf_counter() - started >= 0.150
    assert outcome.output == {"text": "hi"}


async def test_a_delay_longer_than_the_call_timeout_ends_in_a_timeout_at_the_deadline() -> None:
    mock = MockAdapter([{"tool": "stt.transcribe", "delay_ms": 60_000, "output": {"text": "late"}}])
    started = time.perf_counter()
    with pytest.raises(ProviderError) as caught:
        await mock.call(call("stt.transcribe", timeout_s=0.1, audioData="AAAA"))
    elapsed = time.perf_counter() - started
    assert caught.value.kind is ProviderErrorKind.TIMEOUT
    assert caught.value.retryable
    assert 0.1 <= elapsed < 5


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        ({"kind": "rate_limited", "message": "slow down", "status": 429, "retry_after_s": 2.5}, True),
        ({"kind": "auth", "message": "bad key", "status": 401}, False),
        ({"kind": "bad_request", "message": "nope", "status": 400, "retryable": True}, True),
        ({"kind": "malformed_response", "message": "garbage"}, True),
    ],
)
async def test_a_rule_error_is_raised_as_a_provider_error_with_its_fields(
    error: dict[str, Any], retryable: bool
) -> None:
    mock = MockAdapter([{"tool": "mt.translate", "error": error}])
    with pytest.raises(ProviderError) as caught:
        await mock.call(call("mt.translate", text="hi", targetLanguage="es"))
    assert caught.value.kind == error["kind"]
    assert caught.value.message == error["message"]
    assert caught.value.status == error.get("status")
    assert caught.value.retry_after_s == error.get("retry_after_s")
    assert caught.value.retryable is retryable


async def test_a_repeated_idempotency_key_gets_the_first_answer_without_spending_the_rule_again() -> None:
    mock = MockAdapter(
        [
            {"tool": "tts.speak", "times": 1, "error": {"kind": "timeout", "message": "slow"}},
            {"tool": "tts.speak", "output": {"format": "wav"}},
        ]
    )
    for _ in range(3):
        with pytest.raises(ProviderError) as caught:
            await mock.call(call("tts.speak", key="attempt-1", text="hi"))
        assert caught.value.kind is ProviderErrorKind.TIMEOUT
    assert (await mock.call(call("tts.speak", key="attempt-2", text="hi"))).output == {"format": "wav"}
    stats = mock.stats()
    assert stats.calls == 4
    assert stats.replays == 2
    assert stats.by_key == {"attempt-1": 3, "attempt-2": 1}
    assert [rule.calls for rule in stats.rules] == [1, 1]


async def test_concurrent_calls_with_one_key_consult_the_rules_once() -> None:
    mock = MockAdapter([{"tool": "util.echo", "times": 1, "delay_ms": 50, "output": {"n": 1}}])
    outcomes = await asyncio.gather(*(mock.call(call("util.echo", key="same")) for _ in range(5)))
    assert [o.output for o in outcomes] == [{"n": 1}] * 5
    assert mock.stats().rules[0].calls == 1


async def test_an_answer_handed_out_is_a_copy_of_the_rule_output() -> None:
    mock = MockAdapter([{"tool": "util.echo", "output": {"items": [1]}}])
    first = await mock.call(call("util.echo", key="a"))
    first.output["items"].append(2)
    assert (await mock.call(call("util.echo", key="b"))).output == {"items": [1]}
    assert (await mock.call(call("util.echo", key="a"))).output == {"items": [1]}


async def test_add_rule_appends_and_clear_forgets_rules_counts_and_answers() -> None:
    mock = MockAdapter()
    assert mock.add_rule(MockRule(tool="search.web", output={"results": []})) == 0
    assert "search.web" in mock.tools
    assert (await mock.call(call("search.web", query="x"))).output == {"results": []}
    mock.clear()
    assert "search.web" not in mock.tools
    assert mock.stats().calls == 0
    assert "echo" in (await mock.call(call("search.web", query="x"))).output


async def test_configure_replaces_the_rules_and_sets_strictness() -> None:
    mock = MockAdapter([{"tool": "*", "output": {"old": True}}])
    await mock.call(call("util.echo", key="a"))
    mock.configure(
        [MockRule(tool="util.echo", error=MockError(kind=ProviderErrorKind.SERVER, message="x"))], strict=True
    )
    with pytest.raises(ProviderError) as caught:
        await mock.call(call("util.echo", key="a"))  # the remembered answer went with the old rules
    assert caught.value.kind is ProviderErrorKind.SERVER
    with pytest.raises(ProviderError) as unknown:
        await mock.call(call("nlu.analyze", key="b", text="x"))
    assert unknown.value.kind is ProviderErrorKind.UNKNOWN_TOOL


def test_configure_with_a_bad_rule_keeps_the_rules_it_had() -> None:
    mock = MockAdapter([{"tool": "*", "output": {"kept": True}}])
    with pytest.raises(MockRulesError, match=r"rules\[1\]\.times"):
        mock.configure([{"tool": "a"}, {"tool": "b", "times": 0}])
    assert len(mock.stats().rules) == 1


def test_a_rule_built_in_code_is_checked_like_one_from_a_file() -> None:
    with pytest.raises(MockRulesError, match=r"rules\[0\]\.delay_ms: Expected `int` >= 0"):
        MockAdapter([MockRule(tool="x", delay_ms=-1)])


def test_a_rule_cannot_answer_with_both_output_and_error() -> None:
    with pytest.raises(ValueError, match="not both"):
        MockRule(tool="x", output={}, error=MockError(kind=ProviderErrorKind.SERVER, message="m"))


def test_rules_load_from_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "strict: true\n"
        "rules:\n"
        "  - tool: stt.transcribe\n"
        "    match: {language: es}\n"
        "    output: {text: hola, confidence: 0.9, segments: []}\n"
        "    delay_ms: 20\n"
        "  - tool: '*'\n"
        "    times: 3\n"
        "    error: {kind: rate_limited, message: busy, status: 429, retry_after_s: 1}\n"
    )
    loaded = load_rules(path)
    assert loaded.strict
    assert [rule.tool for rule in loaded.rules] == ["stt.transcribe", "*"]
    assert loaded.rules[1].error == MockError(
        kind=ProviderErrorKind.RATE_LIMITED, message="busy", status=429, retry_after_s=1.0
    )


async def test_the_rules_file_named_by_the_environment_configures_the_mock(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text('[{"tool": "lang.detect", "output": {"language": "fr", "confidence": 1.0}}]')
    mock = MockAdapter.from_env({MOCK_RULES_ENV: str(path)})
    assert (await mock.call(call("lang.detect", text="bonjour"))).output == {
        "language": "fr",
        "confidence": 1.0,
    }
    assert MockAdapter.from_env({}).stats().rules == []


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "bad.json",
            '[{"tool": "a"}, {"tool": "b", "delay_ms": "soon"}]',
            r"rules\[1\]\.delay_ms: Expected `int`, got `str`",
        ),
        (
            "bad.json",
            '{"rules": [{"tool": "a", "error": {"kind": "boom", "message": "m"}}]}',
            r"rules\[0\]\.error\.kind: Invalid enum value 'boom'",
        ),
        ("bad.yaml", "- tool: a\n  delay: 5\n", r"rules\[0\]: Object contains unknown field `delay`"),
        (
            "bad.yaml",
            "- tool: a\n  output: {}\n  error: {kind: server, message: m}\n",
            r"rules\[0\]: a rule answers with `output` or with `error`, not both",
        ),
        ("bad.yaml", "- match: {a: 1}\n", r"rules\[0\]: Object missing required field `tool`"),
        ("bad.yaml", "- tool: a\n  times: [1\n", r"bad\.yaml: while parsing"),
        ("bad.json", '{"rules": [], "strict": "yes"}', r"Expected `bool`, got `str` - at `\$\.strict`"),
    ],
)
def test_a_bad_rules_file_is_refused_naming_the_rule_and_field(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(MockRulesError, match=message) as caught:
        MockAdapter.from_env({MOCK_RULES_ENV: str(path)})
    assert str(path) in str(caught.value)


def test_a_missing_rules_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(MockRulesError, match="cannot read mock rules"):
        MockAdapter.from_file(tmp_path / "absent.yaml")


def test_the_mock_serves_the_known_tools_and_those_its_rules_name() -> None:
    mock = MockAdapter([{"tool": "scrape.page"}, {"tool": "search.*"}])
    assert {"stt.transcribe", "tts.speak", "lang.detect", "util.echo", "scrape.page"} <= mock.tools
    assert "search.*" not in mock.tools
    assert mock.provider == "mock"
