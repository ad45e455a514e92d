"""``/deadletters``: read the messages Omni could not process, and deliver one again.

Dead letters are ``DeadLetter`` envelopes in the JetStream stream ``OMNI_DEADLETTERS`` (subjects
``omni.deadletter.<kind>``); a dead letter's id is its sequence in that stream. The gateway reads
the stream directly, one message per JetStream API request (``next_by_subj``), so a page costs
about one request per dead letter on it, whatever the stream holds.

A redrive publishes the original body to the original subject through JetStream, with the
``Nats-Msg-Id`` ``redrive:<id>``: a redrive retried after a lost answer is stored once. Only then
is the dead letter deleted, so a failure in between leaves it to be redriven again.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import msgspec
import nats.js.errors
from aiohttp import web
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from omni_contract import streams, subjects
from omni_contract.envelope import Envelope, decode_envelope, payload_of
from omni_contract.events import DEADLETTER_V1, DeadLetter
from omni_runtime.publish import publish

from omni_gateway.apidoc import Operation, json_answer, needs, page_parameters, param_ref
from omni_gateway.bodies import query_int, respond
from omni_gateway.errors import ApiError
from omni_gateway.jetstream import NO_MESSAGE_FOUND, Missing, jetstream_errors, publish_errors
from omni_gateway.state import GATEWAY
from omni_gateway.views import DeadLetterPage, DeadLetterRedriven, DeadLetterView

log = logging.getLogger(__name__)

STREAM = streams.DEADLETTERS.name
PREFIX = subjects.DEADLETTER_ALL.removesuffix(">")
MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_SEQ = 2**63 - 1
REDRIVE_MSG_ID = "redrive:{id}"
MAX_KIND = 128

# JetStream API error codes (nats-server's errors.json).
_STREAM_NOT_FOUND = 10059
_DELETE_FAILED = 10057  # carries "no message found" when the message is already gone
_SEQ = re.compile(r"[1-9][0-9]{0,18}")
_KIND = re.compile(r"[^\s*>]+")
_SUBJECT_TOKEN = re.compile(r"[^\s*>.]+")


# -- routes -------------------------------------------------------------------------------------
LIST_DEADLETTERS = Operation(
    method="get",
    path="/deadletters",
    access=needs("deadletter:read"),
    operation_id="listDeadLetters",
    tag="deadletters",
    summary="List dead letters, newest first, a page at a time",
    responses={"200": json_answer("One page; nextCursor fetches the next (older) one", "DeadLetterPage")},
    errors=("BadRequest", "DeadLettersUnavailable"),
    parameters=(
        {
            "name": "kind",
            "in": "query",
            "required": False,
            "description": "Only dead letters of this kind (e.g. trigger.rejected)",
            "schema": {"type": "string"},
        },
        *page_parameters(MAX_PAGE, DEFAULT_PAGE),
    ),
)


async def list_deadletters(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    limit = query_int(request, "limit", DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
    cursor = request.query.get("cursor") or None
    before = _seq_or_400("cursor", cursor) if cursor is not None else None
    kind = request.query.get("kind") or None
    if kind is not None and (len(kind) > MAX_KIND or not _KIND.fullmatch(kind)):
        raise ApiError.bad_request(
            "kind", f"kind must be 1 to {MAX_KIND} characters without whitespace or wildcards"
        )
    store = DeadLetterStore(gateway.js)
    letters, more = await store.page(limit=limit, before=before, kind=kind)
    next_cursor = str(letters[-1].id) if more and letters else None
    return respond(DeadLetterPage(dead_letters=letters, next_cursor=next_cursor))


GET_DEADLETTER = Operation(
    method="get",
    path="/deadletters/{id}",
    access=needs("deadletter:read"),
    operation_id="getDeadLetter",
    tag="deadletters",
    summary="Read one dead letter",
    responses={"200": json_answer("The dead letter", "DeadLetterView")},
    errors=("NotFound", "DeadLettersUnavailable"),
    parameters=(param_ref("DeadLetterId"),),
)


async def get_deadletter(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    seq = deadletter_id_of(request)
    return respond(await DeadLetterStore(gateway.js).get(seq))


REDRIVE_DEADLETTER = Operation(
    method="post",
    path="/deadletters/{id}/redrive",
    access=needs("deadletter:redrive"),
    operation_id="redriveDeadLetter",
    tag="deadletters",
    summary="Deliver a dead letter's original message again, and remove the dead letter",
    responses={"202": json_answer("The original message is stored again in JetStream", "DeadLetterRedriven")},
    errors=("NotFound", "NotRedrivable", "DeadLettersUnavailable"),
    description=(
        "The original body is published to the original subject with the Nats-Msg-Id "
        "redrive:<id>, so a retried redrive is stored once; then the dead letter is deleted "
        "and a second redrive of it is 404. What consumes the subject receives the "
        "message as if for the first time."
    ),
    parameters=(param_ref("DeadLetterId"),),
)


async def redrive_deadletter(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    seq = deadletter_id_of(request)
    redriven = await DeadLetterStore(gateway.js).redrive(seq, timeout_s=gateway.settings.rpc_timeout_s)
    return respond(redriven, status=202)


def deadletter_id_of(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not _SEQ.fullmatch(raw) or int(raw) > MAX_SEQ:
        raise _not_found(raw)
    return int(raw)


OPERATIONS = (LIST_DEADLETTERS, GET_DEADLETTER, REDRIVE_DEADLETTER)


# -- the stream ---------------------------------------------------------------------------------
class DeadLetterStore:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def page(
        self, *, limit: int, before: int | None = None, kind: str | None = None
    ) -> tuple[list[DeadLetterView], bool]:
        """Up to ``limit`` dead letters with a sequence below ``before``, newest first, and whether
        older ones remain.

        JetStream reads a stream forwards only, so the stream is read in windows walking back
        from the newest message; a window twice as wide follows each that held too few matches,
        so a rare ``kind`` costs few windows.
        """
        with _jetstream("read the dead letters"):
            info = await self.js.stream_info(STREAM)
        first, last = info.state.first_seq, info.state.last_seq
        if info.state.messages == 0:
            return [], False
        upper = last if before is None else min(before - 1, last)
        filter_subject = subjects.deadletter(kind) if kind is not None else subjects.DEADLETTER_ALL
        found: list[DeadLetterView] = []
        span = limit + 1
        while upper >= first and len(found) <= limit:
            lower = max(first, upper - span + 1)
            window = await self._read_forward(lower, upper, filter_subject)
            found.extend(_view(msg) for msg in reversed(window))
            upper = lower - 1
            span *= 2
        return found[:limit], len(found) > limit

    async def _read_forward(self, lower: int, upper: int, filter_subject: str) -> list[RawStreamMsg]:
        """The messages on ``filter_subject`` with ``lower <= seq <= upper``, in order."""
        msgs: list[RawStreamMsg] = []
        seq = lower
        while seq <= upper:
            try:
                msg = await self._get(seq, next_on=filter_subject)
            except Missing:
                break
            if msg.seq is None or msg.seq > upper:
                break
            msgs.append(msg)
            seq = msg.seq + 1
        return msgs

    async def get(self, seq: int) -> DeadLetterView:
        try:
            return _view(await self._get(seq))
        except Missing:
            raise _not_found(str(seq)) from None

    async def redrive(self, seq: int, *, timeout_s: float) -> DeadLetterRedriven:
        try:
            msg = await self._get(seq)
        except Missing:
            raise _not_found(str(seq)) from None
        read = _read(msg)
        if isinstance(read, str):
            raise _not_redrivable(seq, f"the dead letter cannot be read ({read})")
        _, letter = read
        _check_publishable(seq, letter.original_subject)
        body = _original_body(seq, letter)
        with publish_errors(
            f"the redrive of dead letter {seq}",
            _unavailable,
            no_stream=lambda: _not_redrivable(
                seq, f"no JetStream stream takes {letter.original_subject!r} any more"
            ),
        ):
            # The original body as it came, whose content type the letter does not keep.
            ack = await publish(
                self.js,
                letter.original_subject,
                body,
                msg_id=REDRIVE_MSG_ID.format(id=seq),
                timeout_s=timeout_s,
                envelope=False,
            )
        try:
            with _jetstream("delete the redriven dead letter"):
                await self.js.delete_msg(STREAM, seq)
        except Missing:
            # A concurrent redrive of the same letter got there first; its publish and ours were
            # one message (same Nats-Msg-Id), and that one request answers for it.
            raise _not_found(str(seq)) from None
        log.info(
            "redrove dead letter %d to %s (stream %s, seq %d%s)",
            seq,
            letter.original_subject,
            ack.stream,
            ack.seq,
            ", duplicate" if ack.duplicate else "",
        )
        return DeadLetterRedriven(
            id=seq,
            subject=letter.original_subject,
            stream=ack.stream,
            seq=ack.seq,
            duplicate=ack.duplicate,
        )

    async def _get(self, seq: int, *, next_on: str | None = None) -> RawStreamMsg:
        """The message at ``seq``; with ``next_on``, the first at or after it on that subject."""
        with _jetstream("read the dead letters"):
            if next_on is None:
                return await self.js.get_msg(STREAM, seq=seq)
            return await self.js.get_msg(STREAM, seq=seq, subject=next_on, next=True)


def _absent(exc: nats.js.errors.APIError) -> bool:
    """A missing message (or one deleted by a concurrent redrive); a missing stream is not."""
    if isinstance(exc, nats.js.errors.NotFoundError):
        return exc.err_code != _STREAM_NOT_FOUND
    return exc.err_code == NO_MESSAGE_FOUND or (
        exc.err_code == _DELETE_FAILED and "no message found" in (exc.description or "")
    )


@contextmanager
def _jetstream(doing: str) -> Iterator[None]:
    """JetStream failures as API errors; a missing message as :class:`Missing`."""
    with jetstream_errors(doing, _unavailable, missing=_absent):
        yield


# -- dead letters as the API shows them ---------------------------------------------------------
def _view(msg: RawStreamMsg) -> DeadLetterView:
    subject = msg.subject or ""
    stored_at = msg.time or datetime.now(UTC)  # the server always sends it
    read = _read(msg)
    if isinstance(read, str):
        # Never hidden: an operator sees what is there, and why it cannot be redriven.
        raw = msg.data or b""
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        return DeadLetterView(
            id=msg.seq or 0,
            subject=subject,
            stored_at=stored_at,
            source="",
            kind=subject.removeprefix(PREFIX),
            reason=f"the dead letter itself cannot be read: {read}",
            original_subject="",
            original_body=text,
            body_encoding=encoding,
            errors=[],
            stream_seq=None,
            at=None,
        )
    envelope, letter = read
    return DeadLetterView(
        id=msg.seq or 0,
        subject=subject,
        stored_at=stored_at,
        source=envelope.source,
        kind=letter.kind,
        reason=letter.reason,
        original_subject=letter.original_subject,
        original_body=letter.original_body,
        body_encoding=letter.body_encoding,
        errors=letter.errors,
        stream_seq=letter.stream_seq,
        at=letter.at,
    )


def _read(msg: RawStreamMsg) -> tuple[Envelope, DeadLetter] | str:
    """The envelope and the dead letter the message carries, or why they cannot be read."""
    try:
        envelope = decode_envelope(msg.data or b"")
        if envelope.type != DEADLETTER_V1:
            return f"unexpected event type {envelope.type!r}"
        return envelope, payload_of(envelope, DeadLetter)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return str(exc)


def _original_body(seq: int, letter: DeadLetter) -> bytes:
    if letter.body_encoding == "utf-8":
        return letter.original_body.encode("utf-8")
    if letter.body_encoding == "base64":
        try:
            return base64.b64decode(letter.original_body, validate=True)
        except binascii.Error:
            raise _not_redrivable(seq, "its original body is not valid base64") from None
    raise _not_redrivable(seq, f"its body encoding {letter.body_encoding!r} is unknown")


def _check_publishable(seq: int, subject: str) -> None:
    if not subject or not all(_SUBJECT_TOKEN.fullmatch(token) for token in subject.split(".")):
        raise _not_redrivable(seq, f"its original subject {subject!r} is not one a message can be sent to")


# -- parameters and errors ----------------------------------------------------------------------
def _seq_or_400(name: str, raw: str) -> int:
    if not _SEQ.fullmatch(raw) or int(raw) > MAX_SEQ:
        raise ApiError.bad_request(name, f"{name} must be the nextCursor of a previous page, not {raw!r}")
    return int(raw)


def _not_found(raw: str) -> ApiError:
    return ApiError(404, "not_found", f"dead letter {raw!r} not found")


def _not_redrivable(seq: int, why: str) -> ApiError:
    return ApiError(409, "not_redrivable", f"dead letter {seq} cannot be redriven: {why}")


def _unavailable(reason: str) -> ApiError:
    return ApiError(503, "deadletters_unavailable", f"dead-letter store unavailable: {reason}")
