"""Logs a person reads on a terminal are short lines, machines get JSON; a service that stops
while NATS cannot be drained in time closes without a stray asyncio traceback."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import re
import sys
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from omni_runtime import db, service
from omni_runtime.logging import ConsoleFormatter, JsonFormatter, choose_format, run_id_var
from omni_testkit import wait_for


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("omni_engine.engine", level, __file__, 1, message, None, None)


def test_a_console_line_is_time_service_level_message_and_run_id() -> None:
    token = run_id_var.set("4f1c2a")
    try:
        line = ConsoleFormatter("workflow-engine").format(record("step translate completed"))
    finally:
        run_id_var.reset(token)

    assert re.fullmatch(r"\d\d:\d\d:\d\d workflow-engine INFO step translate completed run=4f1c2a", line), (
        line
    )


def test_a_console_line_without_a_run_has_no_run_field_and_no_trace_ids() -> None:
    line = ConsoleFormatter("gateway").format(record("public API on :8080", logging.WARNING))

    assert re.fullmatch(r"\d\d:\d\d:\d\d gateway WARNING public API on :8080", line), line


def test_a_json_line_keeps_the_run_id() -> None:
    token = run_id_var.set("4f1c2a")
    try:
        doc = json.loads(JsonFormatter("workflow-engine").format(record("step done")))
    finally:
        run_id_var.reset(token)

    assert doc["service"] == "workflow-engine"
    assert doc["msg"] == "step done"
    assert doc["run_id"] == "4f1c2a"


@pytest.mark.parametrize(
    ("setting", "env", "tty", "chosen"),
    [
        ("auto", None, True, "console"),
        ("auto", None, False, "json"),
        ("auto", "json", True, "json"),  # OMNI_LOG_FORMAT=json on a terminal
        ("auto", "console", False, "console"),  # what omni run passes when a person watches
        ("json", "console", True, "json"),  # an explicit setting wins
        ("auto", "nonsense", True, "console"),
    ],
)
def test_the_format_is_json_unless_a_terminal_or_omni_log_format_says_console(
    monkeypatch: pytest.MonkeyPatch, setting: str, env: str | None, tty: bool, chosen: str
) -> None:
    if env is None:
        monkeypatch.delenv("OMNI_LOG_FORMAT", raising=False)
    else:
        monkeypatch.setenv("OMNI_LOG_FORMAT", env)
    stream = Terminal() if tty else io.StringIO()

    assert choose_format(setting, stream=stream) == chosen


@pytest.mark.integration
async def test_a_drain_that_outlasts_its_bound_closes_nats_without_an_unretrieved_exception(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "DRAIN_TIMEOUT_S", 0.3)
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    nc = await nats.connect(nats_url)
    release = asyncio.Event()
    started = asyncio.Event()

    async def stuck(_: Msg) -> None:  # a handler that outlives the drain's bound
        started.set()
        await release.wait()

    await nc.subscribe("omni.test.stuck", cb=stuck)
    await nc.publish("omni.test.stuck", b"x")
    await asyncio.wait_for(started.wait(), timeout=5)
    try:
        await asyncio.wait_for(service._drain(nc), timeout=10)
    finally:
        release.set()
    await wait_for(lambda: nc.is_closed, timeout=5)
    gc.collect()  # an unretrieved exception is reported when its future is collected
    await asyncio.sleep(0)
    loop.set_exception_handler(None)

    assert [p.get("message") for p in problems] == []


def pool_record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord(
        "asyncpg.pool",
        logging.WARNING,
        __file__,
        1,
        "Failed to restore the pool connection floor; retrying",
        None,
        info,
    )


def test_the_pools_reconnection_failures_during_an_outage_are_one_line_now_and_then() -> None:
    outage = db._PoolOutageFilter()
    first = pool_record(ConnectionRefusedError(111, "Connect call failed"))
    again = pool_record(ConnectionRefusedError(111, "Connect call failed"))
    other = pool_record(KeyError("not an outage"))

    assert outage.filter(first)
    assert first.exc_info is None
    assert first.getMessage().endswith(
        "the database is unreachable (ConnectionRefusedError: [Errno 111] Connect call failed)"
    )
    assert not outage.filter(again)  # within POOL_WARN_EVERY_S of the first
    assert outage.filter(other)
    assert other.exc_info is not None  # anything else keeps its traceback
