"""The CloudEvents-style envelope every Omni message travels in.

Omni uses the structured mode of the CloudEvents NATS binding: the message body is the JSON
envelope below (content type ``application/cloudevents+json``). Transport concerns that other
tools read without parsing the body stay in NATS headers: ``Nats-Msg-Id`` (JetStream
de-duplication) and ``traceparent`` / ``tracestate`` (W3C trace context).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"

T = TypeVar("T", bound=msgspec.Struct)

# NATS header names used across services.
HDR_MSG_ID = "Nats-Msg-Id"
HDR_TRACEPARENT = "traceparent"
HDR_TRACESTATE = "tracestate"
HDR_CONTENT_TYPE = "content-type"
# The tenant an application event (``app.>``) comes from: the gateway's POST /events/{subject} sets
# the caller's. The runs it starts belong to that tenant, and it reaches only that tenant's runs
# and workflows (absent: the default tenant, omni_contract.security.DEFAULT_TENANT).
HDR_TENANT = "Omni-Tenant"


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One event. ``data`` stays raw JSON until a reader decodes it into its typed payload."""

    id: str
    type: str
    source: str
    time: datetime
    data: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    # Always written: the empty default only lets envelopes that lack it be read (and filled in),
    # while ``omit_defaults`` would drop a default of "1.0", and readers tell a CloudEvent by it.
    specversion: str = ""
    datacontenttype: str = "application/json"
    correlation_id: str | None = None
    causation_id: str | None = None
    subject: str | None = None

    def __post_init__(self) -> None:
        if not self.specversion:
            self.specversion = SPEC_VERSION


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_envelope(
    type_: str,
    source: str,
    data: Any,
    *,
    id_: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    subject: str | None = None,
    time: datetime | None = None,
) -> Envelope:
    """Wrap a payload (a Struct or any JSON-encodable value) in an envelope."""
    return Envelope(
        id=id_ or uuid.uuid4().hex,
        type=type_,
        source=source,
        time=time or utcnow(),
        data=msgspec.Raw(_encoder.encode(data)),
        correlation_id=correlation_id,
        causation_id=causation_id,
        subject=subject,
    )


def encode_envelope(env: Envelope) -> bytes:
    return _encoder.encode(env)


def decode_envelope(body: bytes) -> Envelope:
    """Decode an envelope; raises ``msgspec.ValidationError``/``DecodeError`` on a bad body."""
    return _decoder.decode(body)


def encode(value: Any) -> bytes:
    """Encode any payload to JSON with the contract's encoder."""
    return _encoder.encode(value)


def payload_of(env: Envelope, cls: type[T]) -> T:
    """Decode the envelope's ``data`` as the typed payload ``cls``."""
    return msgspec.json.decode(env.data, type=cls)
