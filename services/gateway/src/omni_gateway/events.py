"""``POST /events/{subject}``: publish an application event for callers that do not speak NATS."""

from __future__ import annotations

import re
import uuid

from aiohttp import web
from omni_contract import streams, subjects
from omni_contract.envelope import HDR_TENANT, encode_envelope, new_envelope
from omni_runtime.publish import publish

from omni_gateway.apidoc import Operation, json_answer, needs
from omni_gateway.bodies import read_json_object, respond
from omni_gateway.errors import ApiError
from omni_gateway.guard import identity_of
from omni_gateway.jetstream import publish_errors
from omni_gateway.state import EVENT_SOURCE, GATEWAY
from omni_gateway.views import EventAccepted

MAX_SUBJECT = 256
MAX_EVENT_ID = 200
# Headers that name the event's id, in order of preference (the CloudEvents HTTP binding first).
EVENT_ID_HEADERS = ("ce-id", "Idempotency-Key")
# A subject token: no wildcards, dots, whitespace, control characters or lone surrogates.
_TOKEN = re.compile("[^\\s*>.\\x00-\\x1f\\x7f-\\x9f\\ud800-\\udfff]+")
EVENT_SUBJECT_PATTERN = r"^app(\.[^\s*>.\x00-\x1f\x7f-\x9f]+)+$"
"""The same rule in the OpenAPI document (whose strings hold no lone surrogates anyway)."""
_EVENT_ID = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: it also travels as Nats-Msg-Id


def check_app_subject(subject: str) -> None:
    """A concrete subject under ``app.``: no wildcards, spaces or empty tokens."""
    if not subjects.is_app_subject(subject):
        raise ApiError.bad_request("subject", f"subject must start with {subjects.APP_PREFIX!r}")
    if len(subject) > MAX_SUBJECT:
        raise ApiError.bad_request("subject", f"subject is longer than {MAX_SUBJECT} characters")
    if not all(_TOKEN.fullmatch(token) for token in subject.split(".")):
        raise ApiError.bad_request(
            "subject",
            "subject must be dot-separated tokens without wildcards (*, >), whitespace or control characters",
        )


def event_id_of(request: web.Request) -> str:
    for header in EVENT_ID_HEADERS:
        value = request.headers.get(header)
        if value is None:
            continue
        if len(value) > MAX_EVENT_ID or not _EVENT_ID.fullmatch(value):
            raise ApiError.bad_request(
                header, f"{header} must be 1 to {MAX_EVENT_ID} printable ASCII characters without spaces"
            )
        return value
    return uuid.uuid4().hex


PUBLISH_EVENT = Operation(
    method="post",
    path="/events/{subject}",
    access=needs("event:publish:{subject}"),
    operation_id="publishEvent",
    tag="events",
    summary="Publish an application event",
    responses={"202": json_answer("The event is stored in JetStream", "EventAccepted")},
    errors=("BadRequest", "PayloadTooLarge", "EventsUnavailable"),
    description=(
        "The body is the event's JSON payload. It is stored wrapped in a CloudEvents "
        "envelope whose type is the subject; a repeated id (ce-id or Idempotency-Key) "
        "within the de-duplication window is stored once."
    ),
    request_body={
        "required": False,
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    parameters=(
        {
            "name": "subject",
            "in": "path",
            "required": True,
            "description": (
                "A concrete subject under app.: dot-separated tokens without wildcards, "
                "whitespace or control characters"
            ),
            "schema": {"type": "string", "pattern": EVENT_SUBJECT_PATTERN, "maxLength": MAX_SUBJECT},
        },
        {
            "name": "ce-id",
            "in": "header",
            "required": False,
            "description": "The event id (also its de-duplication id)",
            "schema": {"type": "string", "maxLength": MAX_EVENT_ID},
        },
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "Used as the event id when ce-id is absent",
            "schema": {"type": "string", "maxLength": MAX_EVENT_ID},
        },
    ),
)


async def publish_event(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    subject = request.match_info["subject"]
    check_app_subject(subject)
    event_id = event_id_of(request)
    payload = await read_json_object(request, gateway.settings.max_body_bytes)
    envelope = new_envelope(subject, EVENT_SOURCE, payload, id_=event_id)
    with publish_errors(
        f"an event on {subject}",
        _events_unavailable,
        no_stream=lambda: _events_unavailable("no JetStream stream takes application events"),
    ):
        # The id doubles as the JetStream de-duplication id: a retried POST is stored once.
        ack = await publish(
            gateway.js,
            subject,
            encode_envelope(envelope),
            msg_id=event_id,
            stream=streams.APP_EVENTS.name,
            timeout_s=gateway.settings.rpc_timeout_s,
            # The run it starts belongs to the publisher's tenant; a client cannot choose another.
            extra_headers={HDR_TENANT: identity_of(request).tenant},
        )
    accepted = EventAccepted(
        id=event_id, subject=subject, stream=ack.stream, seq=ack.seq, duplicate=ack.duplicate
    )
    return respond(accepted, status=202)


OPERATIONS = (PUBLISH_EVENT,)


def _events_unavailable(reason: str) -> ApiError:
    return ApiError(503, "events_unavailable", f"event store unavailable: {reason}")
