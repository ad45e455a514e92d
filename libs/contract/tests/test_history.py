"""The typed run history: decoding rows of every version, the upcasters, and the errors for rows
that cannot be read."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from omni_contract import history, proto
from omni_contract.events import RunEventType, ToolError, Usage
from omni_contract.history import (
    HistoryError,
    HistoryEvent,
    RunCompleted,
    RunError,
    RunStarted,
    StepCompleted,
    StepError,
    StepFailed,
    StepFallback,
    StepFannedOut,
    StepRef,
    StepRetrying,
    StepScheduled,
    decode_data,
    encode_data,
)


def read(type_: str, version: int, data: dict[str, Any]) -> HistoryEvent:
    return decode_data("r1", 7, type_, version, msgspec.json.encode(data))


def test_every_history_type_has_a_struct_and_every_struct_a_known_type() -> None:
    types = {v for k, v in vars(RunEventType).items() if k.isupper() and isinstance(v, str)}
    assert set(history.VERSIONS) == types
    assert all(cls.TYPE in types for cls in history.EVENT_STRUCTS)


def test_every_version_above_1_has_its_upcasters() -> None:
    assert history.upcaster_problems() == []
    assert history.VERSIONS[RunEventType.STEP_SCHEDULED] == 2
    assert history.VERSIONS[RunEventType.STEP_FAILED] == 2


def test_a_missing_or_stray_upcaster_is_named() -> None:
    versions = {"a.b": 3, "c.d": 1}
    problems = history.upcaster_problems(
        versions, {("a.b", 1): lambda d: d, ("c.d", 1): lambda d: d, ("e.f", 1): lambda d: d}
    )
    assert problems == [
        "a.b v2 has no upcaster to v3",
        "upcaster of c.d v1: c.d is at v1",
        "upcaster of e.f v1: no such event type",
    ]


def test_an_event_of_the_current_version_round_trips() -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    events: list[HistoryEvent] = [
        RunStarted(
            workflow="w",
            hash="h",
            version="1",
            payload={"n": 1},
            context={},
            steps=[StepRef(name="a", tool=None)],
        ),
        StepScheduled(
            step="a",
            attempt=1,
            tool="t.t",
            provider="p",
            provider_index=0,
            provider_attempt=1,
            idempotency_key="r1:a:1",
            input={},
            timeout_ms=500,
        ),
        StepFannedOut(step="each", items=[1, "two", None]),
        StepCompleted(step="a", output={"x": 1}, attempt=1, provider="p", usage=Usage(total_tokens=3)),
        StepFallback(
            step="a", attempt=1, error=StepError(kind="server", message="m"), reason="r", from_="p", to="q"
        ),
        StepRetrying(
            step="a",
            attempt=1,
            error=StepError(kind="server", message="m"),
            delay_ms=10.0,
            retry_at=at,
            reason="r",
        ),
        RunCompleted(duration_ms=1.5, output={"a": {"x": 1}}),
    ]
    for event in events:
        assert decode_data("r1", 1, event.TYPE, event.VERSION, encode_data(event)) == event
    assert b'"from":"p"' in encode_data(events[4])
    assert b"retry_at" not in encode_data(events[3])  # optional fields left out are not written


# -- the upcasters, on rows as the engines of the time wrote them ---------------------------------
# The first engine (commit ccf774a, through 321aa4c) recorded a step's attempt with these fields
# and a failure with the failed result's provider and duration (services/workflow-engine/src/
# omni_engine/engine.py of those commits).
FIRST_ENGINE_SCHEDULED = {
    "step": "speak",
    "attempt": 1,
    "tool": "tts.speak",
    "provider": "openai",
    "idempotency_key": "r1:speak:1",
    "input": {"text": "hi"},
}
FIRST_ENGINE_FAILED = {
    "step": "speak",
    "attempt": 1,
    "provider": "openai",
    "error": {"kind": "auth", "message": "bad key", "status": 401},
    "duration_ms": 12.5,
}


def test_a_first_engine_attempt_was_on_the_first_provider_for_the_first_time() -> None:
    event = read(RunEventType.STEP_SCHEDULED, 1, FIRST_ENGINE_SCHEDULED)
    assert event == StepScheduled(
        step="speak",
        attempt=1,
        tool="tts.speak",
        provider="openai",
        provider_index=0,
        provider_attempt=1,
        idempotency_key="r1:speak:1",
        input={"text": "hi"},
    )


def test_a_v1_attempt_of_a_later_engine_keeps_its_positions() -> None:
    later = {
        **FIRST_ENGINE_SCHEDULED,
        "attempt": 4,
        "provider_index": 1,
        "provider_attempt": 2,
        "timeout_ms": 900,
    }
    event = read(RunEventType.STEP_SCHEDULED, 1, later)
    assert isinstance(event, StepScheduled)
    assert (event.provider_index, event.provider_attempt, event.timeout_ms) == (1, 2, 900)


def test_a_v1_for_each_fan_out_stays_a_fan_out() -> None:
    event = read(RunEventType.STEP_SCHEDULED, 1, {"step": "each", "items": ["a", "b"]})
    assert event == StepFannedOut(step="each", items=["a", "b"])


def test_a_first_engine_step_failure_failed_its_run_and_loses_the_results_fields() -> None:
    event = read(RunEventType.STEP_FAILED, 1, FIRST_ENGINE_FAILED)
    assert event == StepFailed(
        step="speak", attempt=1, error=StepError(kind="auth", message="bad key", status=401), handling="fail"
    )
    template = read(
        RunEventType.STEP_FAILED,
        1,
        {"step": "a", "attempt": 1, "error": {"kind": "template", "message": "m"}},
    )
    assert isinstance(template, StepFailed)
    assert template.handling == "fail"


@pytest.mark.parametrize("address", ["lines#1", "book~c"])
def test_a_v1_failure_of_an_item_or_a_compensation_gets_no_handling(address: str) -> None:
    event = read(
        RunEventType.STEP_FAILED,
        1,
        {"step": address, "attempt": 1, "error": {"kind": "server", "message": "m"}},
    )
    assert isinstance(event, StepFailed)
    assert event.handling is None


def test_a_v1_failure_of_a_later_engine_keeps_its_handling() -> None:
    row = {"step": "a", "error": {"kind": "timeout", "message": "m"}, "handling": "recover"}
    assert read(RunEventType.STEP_FAILED, 1, row) == StepFailed(
        step="a", error=StepError(kind="timeout", message="m"), handling="recover"
    )


def test_the_error_of_a_tool_is_the_error_of_its_step() -> None:
    tool = ToolError(kind="rate_limited", message="slow down", retryable=True, retry_after_s=2.0)
    step = StepError(**msgspec.structs.asdict(tool))
    assert msgspec.json.encode(step) == msgspec.json.encode(tool)
    run = RunError(step="a", **msgspec.structs.asdict(step))
    assert msgspec.to_builtins(run) == {**msgspec.to_builtins(tool), "step": "a"}


# -- rows that cannot be read --------------------------------------------------------------------
def test_an_unknown_type_names_the_run_the_seq_and_the_type() -> None:
    with pytest.raises(HistoryError, match=r"run 'r1', event 7 \(step\.paused v1\): unknown event type"):
        read("step.paused", 1, {"step": "a"})


@pytest.mark.parametrize("version", [0, 3])
def test_an_unknown_version_names_what_this_code_reads(version: int) -> None:
    with pytest.raises(
        HistoryError, match=rf"event 7 \(step.failed v{version}\): unknown version: .* v1 to v2"
    ):
        read(RunEventType.STEP_FAILED, version, FIRST_ENGINE_FAILED)


@pytest.mark.parametrize("version", [1, 2])
def test_data_that_does_not_fit_its_type_says_what_is_wrong(version: int) -> None:
    with pytest.raises(
        HistoryError, match=r"run 'r1', event 7 \(step\.scheduled v\d\): .*`attempt`"
    ) as caught:
        read(RunEventType.STEP_SCHEDULED, version, {"step": "a", "tool": "t.t"})
    assert (caught.value.run_id, caught.value.seq, caught.value.type) == ("r1", 7, "step.scheduled")


def test_data_that_is_not_json_is_refused_with_its_place() -> None:
    with pytest.raises(HistoryError, match=r"run 'r1', event 7 \(run\.completed v1\): JSON is malformed"):
        decode_data("r1", 7, RunEventType.RUN_COMPLETED, 1, b"{nope")


# -- the mechanism, with a type of this test's own ------------------------------------------------
class Greeted(HistoryEvent, kw_only=True):
    TYPE: ClassVar[str] = "test.greeted"
    VERSION: ClassVar[int] = 3

    greeting: str
    times: int


def test_a_row_is_upcast_through_every_version_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    def v1_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {"greeting": data.pop("hello"), **data}  # renamed

    def v2_v3(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "times": data.get("times", 1)}  # required from v3 on

    monkeypatch.setitem(history.STRUCTS_OF_TYPE, Greeted.TYPE, (Greeted,))
    monkeypatch.setitem(history.VERSIONS, Greeted.TYPE, 3)
    monkeypatch.setitem(history._DECODERS, Greeted, msgspec.json.Decoder(Greeted))
    monkeypatch.setitem(history.UPCASTERS, (Greeted.TYPE, 1), v1_v2)
    monkeypatch.setitem(history.UPCASTERS, (Greeted.TYPE, 2), v2_v3)
    assert history.upcaster_problems() == []

    assert read(Greeted.TYPE, 1, {"hello": "hi"}) == Greeted(greeting="hi", times=1)
    assert read(Greeted.TYPE, 2, {"greeting": "hey", "times": 2}) == Greeted(greeting="hey", times=2)
    assert read(Greeted.TYPE, 3, {"greeting": "yo", "times": 3}) == Greeted(greeting="yo", times=3)


# -- the published schemas -----------------------------------------------------------------------
def test_the_schema_of_a_previous_version_is_reported_and_removed(tmp_path: Path) -> None:
    files = proto.generate()
    proto.write(tmp_path, files)
    old = tmp_path / "history" / "step.failed.v1.schema.json"
    old.write_text("{}", encoding="utf-8")
    assert proto.drift(tmp_path, files) == [
        "history/step.failed.v1.schema.json: not made by the code any more"
    ]
    proto.write(tmp_path, files)
    assert not old.exists()
    assert proto.drift(tmp_path, files) == []


def test_each_history_type_has_the_schema_of_its_current_version() -> None:
    files = proto.generate()
    assert {rel for rel in files if rel.startswith("history/")} == {
        f"history/{t}.v{v}.schema.json" for t, v in history.VERSIONS.items()
    }
