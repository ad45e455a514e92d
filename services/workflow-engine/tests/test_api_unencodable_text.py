"""An RPC error whose text UTF-8 cannot carry is still answered: PyYAML reads an escaped surrogate
pair ("\\ud83d\\ude00") as two lone surrogates, the error quoting them is escaped, and the caller
gets a readable ``invalid_workflow`` answer rather than an empty reply."""

from __future__ import annotations

from typing import Any, cast

import msgspec
import pytest
from engine_harness import Harness
from omni_contract import rpc, subjects
from omni_engine.api import EngineApi
from omni_engine.definitions import InvalidDefinition
from omni_engine.engine import EngineError

# The escapes are YAML's: the request itself is plain ASCII.
SURROGATE_PAIR = r"\ud83d\ude00"
# An invalid step name: the error names the step as written.
DEFINITION = f"""\
name: coach
version: 1.0.0
trigger:
  event: app.coach.start
steps:
  - name: "greet{SURROGATE_PAIR}"
    tool: nlu.analyze
    provider: local
    input: {{}}
"""


@pytest.mark.integration
async def test_a_definition_with_an_escaped_surrogate_pair_is_refused_with_a_readable_answer(
    harness: Harness,
) -> None:
    request = rpc.RegisterWorkflowRequest(source=DEFINITION)
    raw = await harness.nc.request(
        subjects.ENGINE_WORKFLOWS_REGISTER, msgspec.json.encode(request), timeout=10
    )

    assert raw.data, "an empty reply"
    reply = msgspec.json.decode(raw.data, type=rpc.RpcReply)
    assert reply.error is not None
    assert reply.error.code == "invalid_workflow"
    steps = {d.step for d in reply.error.details}
    fields = {d.field for d in reply.error.details}
    if not reply.error.message.startswith("<api>:6: invalid YAML: found invalid Unicode character escape"):
        # PyYAML's pure-Python parser reads the escapes as lone surrogates: the answer escapes
        # them. (libyaml's parser refuses such escapes at once: the line above.)
        assert "greet\\ud83d\\ude00" in steps, steps
        assert "steps[0].name" in fields, fields
    # The engine still answers afterwards.
    listing = await harness.call(subjects.ENGINE_WORKFLOWS_LIST, {})
    assert listing.error is None


class FakeRequest:
    subject = subjects.ENGINE_WORKFLOWS_REGISTER
    headers: dict[str, str] | None = None
    data = b'{"source": "name: x"}'

    def __init__(self) -> None:
        self.answers: list[bytes] = []

    async def respond(self, data: bytes) -> None:
        self.answers.append(data)


@pytest.mark.parametrize(
    "error",
    [
        EngineError("bad_request", "step 'greet\ud83d\ude00' is odd"),
        EngineError(
            "bad_request", "odd", [rpc.FieldProblem(field="steps[0].\udc80", message="m", step="s\ud83d")]
        ),
        InvalidDefinition("1 problem", [rpc.FieldProblem(field="f", message="name 'g\ud83d' is invalid")]),
    ],
    ids=["message", "detail", "invalid-definition"],
)
async def test_an_error_reply_holding_lone_surrogates_is_escaped_not_left_empty(error: Exception) -> None:
    api = EngineApi(cast(Any, None), cast(Any, None), cast(Any, None))

    async def register(_: rpc.RegisterWorkflowRequest) -> None:
        raise error

    request = FakeRequest()
    await api._wrap(register, rpc.RegisterWorkflowRequest)(cast(Any, request))
    await api.drain(5)  # each request is answered in a task of its own

    (answer,) = request.answers
    reply = msgspec.json.decode(answer, type=rpc.RpcReply)
    assert reply.error is not None
    texts = [reply.error.message]
    for d in reply.error.details:
        texts += [d.field, d.message, d.step or ""]
    escaped = " ".join(texts)
    assert "\\ud83d" in escaped or "\\udc80" in escaped, escaped  # a backslash escape, as text
