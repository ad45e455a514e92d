"""Building a dead letter: a message Omni could not take, kept with the reason."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from omni_contract import events, subjects
from omni_contract.envelope import encode_envelope, new_envelope


class Letter(NamedTuple):
    subject: str  # where to publish it
    body: bytes  # the omni.deadletter.v1 envelope
    msg_id: str  # its Nats-Msg-Id: one letter per original message and kind


def dead_letter(
    kind: str,
    reason: str,
    *,
    original_subject: str,
    original: bytes,
    stream_seq: int | None,
    source: str,
    errors: Sequence[dict[str, Any]] = (),
) -> Letter:
    """The letter for one message (its body kept as text, or base64 when it is not UTF-8)."""
    try:
        body, encoding = original.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(original).decode("ascii"), "base64"
    letter = events.DeadLetter(
        kind=kind,
        reason=reason,
        original_subject=original_subject,
        original_body=body,
        body_encoding=encoding,
        errors=list(errors),
        stream_seq=stream_seq,
        at=datetime.now(UTC),
    )
    msg_id = f"{kind}:{original_subject}:{stream_seq}" if stream_seq is not None else uuid.uuid4().hex
    envelope = new_envelope(events.DEADLETTER_V1, source, letter, id_=msg_id)
    return Letter(subjects.deadletter(kind), encode_envelope(envelope), msg_id)
