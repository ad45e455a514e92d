"""Generate the language-neutral contract in ``proto/`` from this library.

- ``proto/events/<type>.schema.json``: a JSON Schema per event type (the envelope's ``data``),
- ``proto/envelope.schema.json``: the envelope itself,
- ``proto/history/<type>.v<N>.schema.json``: a JSON Schema per run history event type, at the
  version the engine writes (``omni_contract.history``); the runs.events reply refers to them,
- ``proto/rpc/<type>.schema.json``: the request and reply of each engine endpoint,
- ``proto/kv/<bucket>.schema.json``: the value of each entry of a KV bucket in the contract (the
  buckets of ``omni_contract.kv`` that name a key pattern and value type),
- ``proto/asyncapi.json``: an AsyncAPI 3.0 document of the NATS side (channels = subjects).

``python -m omni_contract.proto write DIR`` writes the files; ``check DIR`` exits non-zero when the
files on disk differ from what the code generates (a test runs it, so drift fails the build).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from omni_contract import events, history, kv, rpc, security, streams, subjects
from omni_contract.envelope import Envelope

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _schema(cls: type[Any], title: str) -> dict[str, Any]:
    schema: dict[str, Any] = msgspec.json.schema(cls)
    return {"$schema": SCHEMA_DIALECT, "title": title, **schema}


def history_path(event_type: str) -> str:
    """Where the schema of ``event_type``'s current version is, relative to ``proto/``."""
    return f"history/{event_type}.v{history.VERSIONS[event_type]}.schema.json"


def history_schema(event_type: str) -> dict[str, Any]:
    """The schema of a history event's ``data`` (one of two shapes for ``step.scheduled``)."""
    structs = history.STRUCTS_OF_TYPE[event_type]
    refs, defs = msgspec.json.schema_components(structs, ref_template="#/$defs/{name}")
    root: dict[str, Any] = refs[0] if len(refs) == 1 else {"oneOf": list(refs)}
    return {
        "$schema": SCHEMA_DIALECT,
        "title": f"{event_type} v{history.VERSIONS[event_type]}",
        **root,
        "$defs": defs,
    }


def _typed_history(reply: dict[str, Any]) -> dict[str, Any]:
    """The runs.events reply with each record's ``data`` tied to its ``type``: a record of a type
    carries the payload of that type's schema (``proto/history``)."""
    record = reply["$defs"]["RunEventRecord"]
    record["properties"]["data"] = {
        "type": "object",
        "description": "The payload of `type` at its current version: see proto/history",
    }
    record["oneOf"] = [
        {
            "properties": {
                "type": {"const": event_type},
                "data": {"$ref": f"../{history_path(event_type)}"},
            }
        }
        for event_type in sorted(history.VERSIONS)
    ]
    return reply


def _dump(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


# Which subjects carry which event types, for the AsyncAPI document.
CHANNELS: list[tuple[str, str, str, str]] = [
    # (channel id, address, event type, description)
    ("toolInvoke", "omni.tool.invoke.{provider}", events.TOOL_INVOKE_V1, "Work for a provider's tool-runner"),
    ("toolResult", "omni.tool.result.{provider}", events.TOOL_RESULT_V1, "Results of tool invocations"),
    ("runProgress", "omni.run.{runId}.{event}", events.RUN_PROGRESS_V1, "Progress notices of one run"),
    ("deadLetter", "omni.deadletter.{kind}", events.DEADLETTER_V1, "Rejected or unprocessable messages"),
]

RPC_ENDPOINTS: list[tuple[str, str, type[Any] | None, type[Any] | None]] = [
    ("workflowsList", subjects.ENGINE_WORKFLOWS_LIST, rpc.ListWorkflowsRequest, None),
    ("workflowsGet", subjects.ENGINE_WORKFLOWS_GET, rpc.GetRequest, None),
    ("workflowsRegister", subjects.ENGINE_WORKFLOWS_REGISTER, rpc.RegisterWorkflowRequest, None),
    ("runsStart", subjects.ENGINE_RUNS_START, rpc.StartRunRequest, rpc.StartRunReply),
    ("runsGet", subjects.ENGINE_RUNS_GET, rpc.GetRequest, rpc.RunSummary),
    ("runsList", subjects.ENGINE_RUNS_LIST, rpc.ListRunsRequest, rpc.RunPage),
    ("runsEvents", subjects.ENGINE_RUNS_EVENTS, rpc.RunEventsRequest, rpc.RunEventsReply),
    ("runsCancel", subjects.ENGINE_RUNS_CANCEL, rpc.CancelRunRequest, rpc.RunSummary),
    ("runsRerun", subjects.ENGINE_RUNS_RERUN, rpc.RerunRequest, rpc.StartRunReply),
    ("workflowsVersions", subjects.ENGINE_WORKFLOWS_VERSIONS, rpc.GetRequest, rpc.WorkflowVersions),
    ("securityAuthenticate", subjects.SECURITY_AUTHENTICATE, security.AuthenticateRequest, security.Identity),
    ("securityCheck", subjects.SECURITY_CHECK, security.CheckRequest, security.Decision),
    ("securityAdmin", subjects.SECURITY_ADMIN, security.AdminRequest, None),
    ("securityPing", subjects.SECURITY_PING, None, None),
]

# Key-value buckets whose entries are part of the contract: (bucket, key pattern, value type), from
# the bucket specs that name them (the others are internal to one service).
KV_BUCKETS: list[tuple[str, str, type[Any]]] = [
    (spec.name, spec.key, spec.value_type)
    for spec in kv.ALL_BUCKETS
    if spec.key is not None and spec.value_type is not None
]


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel_id, address, event_type, description in CHANNELS:
        message_id = event_type.replace(".", "_")
        messages[message_id] = {
            "name": event_type,
            "contentType": "application/cloudevents+json",
            "payload": {"$ref": f"events/{event_type}.schema.json"},
        }
        channels[channel_id] = {
            "address": address,
            "description": description,
            "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
        }
        operations[f"send_{channel_id}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
        }
    channels["auditEvents"] = {
        "address": "omni.audit.{service}",
        "description": "Audit events every service publishes; the security-service appends them to its log",
        "messages": {"AuditEvent": {"$ref": "#/components/messages/AuditEvent"}},
    }
    messages["AuditEvent"] = {
        "name": "AuditEvent",
        "contentType": "application/json",
        "payload": {"$ref": "security/AuditEvent.schema.json"},
    }
    operations["send_auditEvents"] = {"action": "send", "channel": {"$ref": "#/channels/auditEvents"}}
    channels["appEvents"] = {
        "address": "app.{event}",
        "description": "Application trigger events: the bare JSON payload, or a CloudEvents envelope",
    }
    operations["receive_appEvents"] = {"action": "receive", "channel": {"$ref": "#/channels/appEvents"}}
    for op_id, subject, request, reply in RPC_ENDPOINTS:
        service = (
            "Security-service" if subject.startswith(subjects.SECURITY_RPC_PREFIX) else "Workflow engine"
        )
        channels[op_id] = {"address": subject, "description": f"{service} request/reply endpoint"}
        operation: dict[str, Any] = {"action": "receive", "channel": {"$ref": f"#/channels/{op_id}"}}
        if request is not None:
            operation["x-request"] = {"$ref": f"rpc/{request.__name__}.schema.json"}
        if reply is not None:
            operation["x-reply"] = {"$ref": f"rpc/{reply.__name__}.schema.json"}
        operations[op_id] = operation
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Omni NATS contract",
            "version": "1.0.0",
            "description": "Subjects, streams and event types of Omni. Generated from libs/contract.",
        },
        "defaultContentType": "application/cloudevents+json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
        "x-streams": [
            {
                "name": s.name,
                "subjects": list(s.subjects),
                "retention": s.retention.value,
                "maxAgeSeconds": s.max_age_s,
                "description": s.description,
            }
            for s in streams.ALL_STREAMS
        ],
    }


def generate() -> dict[str, str]:
    """Relative path -> file content."""
    files = {"envelope.schema.json": _dump(_schema(Envelope, "Omni event envelope"))}
    for event_type, cls in sorted(events.EVENT_PAYLOADS.items()):
        files[f"events/{event_type}.schema.json"] = _dump(_schema(cls, event_type))
    rpc_types = {t for _, _, req, rep in RPC_ENDPOINTS for t in (req, rep) if t is not None}
    for cls in sorted(rpc_types | {rpc.RpcReply}, key=lambda c: c.__name__):
        schema = _schema(cls, cls.__name__)
        if cls is rpc.RunEventsReply:
            schema = _typed_history(schema)
        files[f"rpc/{cls.__name__}.schema.json"] = _dump(schema)
    for event_type in sorted(history.VERSIONS):
        files[history_path(event_type)] = _dump(history_schema(event_type))
    for bucket, key, cls in KV_BUCKETS:
        schema = _schema(cls, cls.__name__)
        schema["description"] = f"The value of each entry of KV bucket {bucket!r}, keyed {key}"
        files[f"kv/{bucket}.schema.json"] = _dump(schema)
    files["security/AuditEvent.schema.json"] = _dump(_schema(security.AuditEvent, "AuditEvent"))
    files["asyncapi.json"] = _dump(asyncapi())
    return files


# Directories whose every file is generated: a file there that the code no longer makes (the
# schema of a history event's previous version) is removed by ``write`` and reported by ``check``.
OWNED_DIRS = ("history",)


def _stale(root: Path, files: dict[str, str]) -> list[str]:
    return sorted(
        path.relative_to(root).as_posix()
        for folder in OWNED_DIRS
        if (root / folder).is_dir()
        for path in (root / folder).iterdir()
        if path.relative_to(root).as_posix() not in files
    )


def write(root: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    for rel in _stale(root, files):
        (root / rel).unlink()


def drift(root: Path, files: dict[str, str]) -> list[str]:
    """Paths whose content on disk differs from ``files`` (missing files included), and files in
    ``OWNED_DIRS`` the code does not make."""
    problems = []
    for rel, content in sorted(files.items()):
        path = root / rel
        if not path.exists():
            problems.append(f"{rel}: missing")
        elif path.read_text(encoding="utf-8") != content:
            problems.append(f"{rel}: differs from the code")
    problems += [f"{rel}: not made by the code any more" for rel in _stale(root, files)]
    return problems


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2 or args[0] not in {"write", "check"}:
        sys.stderr.write("usage: python -m omni_contract.proto write|check DIR\n")
        return 2
    root = Path(args[1])
    files = generate()
    if args[0] == "write":
        write(root, files)
        return 0
    problems = drift(root, files)
    for problem in problems:
        sys.stderr.write(f"proto drift: {problem}\n")
    if problems:
        sys.stderr.write("run `make proto` and commit the result\n")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
