"""While the database (or NATS) cannot be reached, the engine keeps its work: a message is retried
for as long as the outage lasts and never dead-lettered for it, the outage is logged as a few
warnings rather than a traceback per message, and an RPC answers ``unavailable`` (the gateway's
503) instead of an internal error."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import asyncpg
import msgspec
import nats
import nats.errors
import pytest
from nats.aio.msg import Msg
from omni_contract import rpc, streams, subjects
from omni_engine import consumers
from omni_engine.api import EngineApi
from omni_engine.consumers import consume, is_transient
from omni_runtime import nats as omni_nats
from omni_testkit import wait_for

OUTAGE_ERRORS: list[BaseException] = [
    asyncpg.CannotConnectNowError("the database system is in recovery mode"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 15432)"),
    TimeoutError(),  # a pool acquire that timed out
    asyncpg.InternalClientError("cannot switch to state 11; another operation (2) is in progress"),
    nats.errors.ConnectionClosedError(),
    nats.errors.NoRespondersError(),
]


def wrapped(exc: BaseException) -> BaseException:
    """``exc`` as the cause of another error, as a layer that re-raises would leave it."""
    try:
        try:
            raise exc
        except BaseException as inner:
            raise RuntimeError("append failed") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize("exc", OUTAGE_ERRORS, ids=lambda e: type(e).__name__)
def test_errors_meaning_the_infrastructure_is_away_are_transient_also_when_wrapped(
    exc: BaseException,
) -> None:
    assert is_transient(exc)
    assert is_transient(wrapped(exc))


@pytest.mark.parametrize(
    "exc", [KeyError("definition"), asyncpg.UniqueViolationError("duplicate key"), ValueError("bad")]
)
def test_errors_of_the_work_itself_are_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


class FakeRequest:
    subject = "omni.rpc.engine.runs.get"
    headers: dict[str, str] | None = None
    data = b'{"name": "r-1"}'

    def __init__(self) -> None:
        self.answers: list[bytes] = []

    async def respond(self, data: bytes) -> None:
        self.answers.append(data)


@pytest.mark.parametrize("exc", OUTAGE_ERRORS[:6], ids=lambda e: type(e).__name__)
async def test_an_rpc_that_meets_an_unreachable_database_answers_unavailable(exc: BaseException) -> None:
    api = EngineApi(cast(Any, None), cast(Any, None), cast(Any, None))

    async def runs_get(_: rpc.GetRequest) -> None:
        raise exc

    request = FakeRequest()
    await api._wrap(runs_get, rpc.GetRequest)(cast(Any, request))
    await api.drain(5)  # each request is answered in a task of its own

    reply = msgspec.json.decode(request.answers[0], type=rpc.RpcReply)
    assert reply.error is not None
    assert reply.error.code == "unavailable"
    assert "database" in reply.error.message


@pytest.mark.integration
async def test_a_message_meeting_a_long_outage_is_kept_and_processed_once_the_database_is_back(
    nats_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumers, "TRANSIENT_RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(consumers, "TRANSIENT_RETRY_CAP_S", 0.1)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await omni_nats.ensure_streams(js, streams.ALL_STREAMS)
    letters = await js.subscribe(subjects.deadletter(">"), stream=streams.DEADLETTERS.name)
    pull = await omni_nats.puller(js, streams.ENGINE_RESULTS, batch=100)
    outage = 12  # failed tries, many more than max_failures
    tries = 0
    processed: list[bytes] = []

    async def database_away_for_a_while(msg: Msg) -> None:
        nonlocal tries
        tries += 1
        if tries <= outage:
            raise OUTAGE_ERRORS[tries % 6]
        processed.append(msg.data)

    stopping = asyncio.Event()
    caplog.set_level(logging.INFO, logger="omni_engine.consumers")
    loop = asyncio.create_task(
        consume(
            js, pull, database_away_for_a_while, stopping, name="result", max_failures=2, in_progress_s=0.5
        )
    )
    try:
        await js.publish(subjects.tool_result("local"), b'{"kept": true}')
        await wait_for(lambda: processed, timeout=60, interval=0.05, message="processed after the outage")
    finally:
        stopping.set()
        await asyncio.wait_for(loop, timeout=10)

    assert processed == [b'{"kept": true}']
    assert tries == outage + 1
    info = await js.consumer_info(streams.ENGINE_RESULTS.stream, streams.ENGINE_RESULTS.durable)
    assert info.num_ack_pending == 0
    assert info.num_pending == 0
    assert info.num_redelivered == 0  # held through the outage, never counted as a failed delivery
    with pytest.raises(nats.errors.TimeoutError):
        await letters.next_msg(timeout=0.5)
    # One warning for the whole outage, no traceback, and one line when it is over.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert not [r for r in caplog.records if r.exc_info]
    assert any("processing again" in r.getMessage() for r in caplog.records)
    await nc.close()
