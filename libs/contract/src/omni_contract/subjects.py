"""Every NATS subject Omni uses, defined once.

Subjects are hierarchical: ``omni.<area>.<what>[.<qualifier>...]``. Services build concrete
subjects with the functions below; wildcard forms are the constants used for stream and consumer
filters.
"""

from __future__ import annotations

import re

# Application trigger events: product teams publish here (e.g. ``app.coach.session.start``).
APP_PREFIX = "app."
APP_ALL = "app.>"

# Tool work: the engine publishes one invoke per step attempt to the provider's subject; the
# tool-runner of that provider consumes it and publishes the result.
TOOL_INVOKE_ALL = "omni.tool.invoke.>"
TOOL_RESULT_ALL = "omni.tool.result.>"

# Run progress notices, for observers (gateway waits, server-sent events).
RUN_EVENTS_ALL = "omni.run.>"

# Dead letters: rejected trigger events and work that cannot be processed.
DEADLETTER_ALL = "omni.deadletter.>"

# Request/reply endpoints of the workflow engine (NATS services API, queue group shared by replicas).
ENGINE_SERVICE_NAME = "workflow-engine"
ENGINE_RPC_PREFIX = "omni.rpc.engine"
ENGINE_WORKFLOWS_LIST = f"{ENGINE_RPC_PREFIX}.workflows.list"
ENGINE_WORKFLOWS_GET = f"{ENGINE_RPC_PREFIX}.workflows.get"
ENGINE_WORKFLOWS_REGISTER = f"{ENGINE_RPC_PREFIX}.workflows.register"
ENGINE_RUNS_START = f"{ENGINE_RPC_PREFIX}.runs.start"
ENGINE_RUNS_GET = f"{ENGINE_RPC_PREFIX}.runs.get"
ENGINE_RUNS_LIST = f"{ENGINE_RPC_PREFIX}.runs.list"
ENGINE_RUNS_EVENTS = f"{ENGINE_RPC_PREFIX}.runs.events"
ENGINE_RUNS_CANCEL = f"{ENGINE_RPC_PREFIX}.runs.cancel"
ENGINE_RUNS_RERUN = f"{ENGINE_RPC_PREFIX}.runs.rerun"
ENGINE_WORKFLOWS_VERSIONS = f"{ENGINE_RPC_PREFIX}.workflows.versions"

# Request/reply endpoints of the security-service (queue group shared by its replicas): the
# gateway and every other service ask it who a caller is and what it may do.
SECURITY_SERVICE_NAME = "security-service"
SECURITY_RPC_PREFIX = "omni.rpc.security"
SECURITY_RPC_ALL = f"{SECURITY_RPC_PREFIX}.>"
SECURITY_AUTHENTICATE = f"{SECURITY_RPC_PREFIX}.authenticate"
SECURITY_CHECK = f"{SECURITY_RPC_PREFIX}.check"
SECURITY_ADMIN = f"{SECURITY_RPC_PREFIX}.admin"
SECURITY_PING = f"{SECURITY_RPC_PREFIX}.ping"
"""Answered (with an empty result) once the service's handlers take requests: readiness checks."""
"""One endpoint for the administrative operations (keys, principals, roles, assignments, audit
reads); the request names the operation, so a new one needs no new subject or permission."""

# Audit events: every service publishes what it did on behalf of whom; the security-service
# consumes them into its hash-chained audit log.
AUDIT_ALL = "omni.audit.>"


_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def _token(value: str) -> str:
    """Make ``value`` safe as one subject token (no dots, spaces or wildcards)."""
    if _SAFE_TOKEN.fullmatch(value):  # the usual case (ids, names), checked without a loop per character
        return value
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in value) or "_"


def tool_invoke(provider: str) -> str:
    return f"omni.tool.invoke.{_token(provider)}"


def tool_result(provider: str) -> str:
    return f"omni.tool.result.{_token(provider)}"


def run_event(run_id: str, event_type: str) -> str:
    """``omni.run.<run_id>.<event>``: subscribe to ``run_events_of(run_id)`` to follow one run."""
    return f"omni.run.{_token(run_id)}.{_token(event_type)}"


def run_events_of(run_id: str) -> str:
    return f"omni.run.{_token(run_id)}.>"


def run_events_of_type(event_type: str) -> str:
    """Every run's notices of one event type, e.g. all ``run.completed``."""
    return f"omni.run.*.{_token(event_type)}"


def deadletter(kind: str) -> str:
    return f"omni.deadletter.{_token(kind)}"


def audit(service: str) -> str:
    """``omni.audit.<service>``: the audit events one service publishes."""
    return f"omni.audit.{_token(service)}"


def is_app_subject(subject: str) -> bool:
    return subject.startswith(APP_PREFIX) and len(subject) > len(APP_PREFIX)
