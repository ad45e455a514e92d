from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from omni_contract import events, proto, rpc, subjects
from omni_contract.envelope import decode_envelope, encode_envelope, new_envelope, payload_of

PROTO_DIR = Path(__file__).resolve().parents[3] / "proto"


def test_envelope_round_trips_its_typed_payload() -> None:
    invoke = events.ToolInvoke(
        run_id="r1",
        step="s",
        attempt=1,
        tool="nlu.analyze",
        provider="openrouter",
        input={"text": "hi"},
        idempotency_key="r1:s:1",
    )
    env = new_envelope(events.TOOL_INVOKE_V1, "test", invoke, correlation_id="r1")
    decoded = decode_envelope(encode_envelope(env))
    assert decoded.type == events.TOOL_INVOKE_V1
    assert decoded.correlation_id == "r1"
    assert decoded.time.tzinfo is not None
    assert payload_of(decoded, events.ToolInvoke) == invoke


def test_a_reader_accepts_a_payload_with_fields_it_does_not_know() -> None:
    # Payloads grow by optional fields: an older reader must not reject a newer producer's message.
    body = (
        b'{"run_id":"r","seq":1,"event":"run.started","status":"running","workflow":"w",'
        b'"at":"2026-01-01T00:00:00Z","added_later":{"x":1}}'
    )
    progress = msgspec.json.decode(body, type=events.RunProgress)
    assert progress.seq == 1


def test_an_encoded_envelope_always_names_its_cloudevents_specversion() -> None:
    # Readers (the engine's trigger consumer) tell a CloudEvent from a bare payload by this field.
    body = msgspec.json.decode(encode_envelope(new_envelope("app.x", "omni.gateway", {"a": 1})))
    assert body["specversion"] == "1.0"


def test_an_envelope_written_without_specversion_is_read_as_version_1_0() -> None:
    env = decode_envelope(b'{"id":"1","type":"t","source":"s","time":"2026-01-01T00:00:00Z"}')
    assert env.specversion == "1.0"
    assert msgspec.json.decode(encode_envelope(env))["specversion"] == "1.0"


def test_envelope_without_required_attributes_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match="id"):
        decode_envelope(b'{"type":"x","source":"y","time":"2026-01-01T00:00:00Z"}')


def test_subject_builders_keep_tokens_safe() -> None:
    assert subjects.tool_invoke("openrouter") == "omni.tool.invoke.openrouter"
    assert subjects.tool_invoke("a.b c*") == "omni.tool.invoke.a_b_c_"
    assert subjects.run_events_of("abc") == "omni.run.abc.>"
    assert subjects.is_app_subject("app.coach.session.start")
    assert not subjects.is_app_subject("app.")
    assert not subjects.is_app_subject("omni.tool.invoke.x")


def test_rpc_reply_without_result_decodes_as_null() -> None:
    reply = msgspec.json.decode(b'{"error":{"code":"not_found","message":"no"}}', type=rpc.RpcReply)
    assert reply.error is not None
    assert bytes(reply.result) == b"null"


def test_proto_files_match_the_code() -> None:
    problems = proto.drift(PROTO_DIR, proto.generate())
    assert problems == [], "proto/ is stale: run `make proto`"


def test_drift_is_detected(tmp_path: Path) -> None:
    files = proto.generate()
    proto.write(tmp_path, files)
    assert proto.drift(tmp_path, files) == []
    (tmp_path / "asyncapi.json").write_text("{}")
    assert proto.drift(tmp_path, files) == ["asyncapi.json: differs from the code"]
