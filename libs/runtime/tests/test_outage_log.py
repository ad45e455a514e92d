"""An outage is told in a few lines, not one per failed try: a warning when it starts, one every
``every_s`` while it lasts, one line when it is over; the NATS connection's callbacks so too."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omni_devstack.servers import NatsServer
from omni_runtime import nats as omni_nats
from omni_runtime.outage import OutageLog
from omni_testkit import wait_for

LOGGER = "omni_runtime.tests.outage"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def test_an_outage_warns_when_it_starts_then_at_most_once_per_interval_and_tells_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    outage = OutageLog(logging.getLogger(LOGGER), "sweeper", every_s=30.0, clock=clock)

    assert outage.failed("unreachable (%s)", "refused")
    assert outage.down
    clock.now += 29.9
    assert not outage.failed("unreachable (%s)", "refused")
    clock.now += 0.1
    assert outage.failed("unreachable (%s)", "refused")
    assert outage.recovered("sweeping again")
    assert outage.since is None
    assert not outage.recovered()  # no outage: nothing to say

    assert lines(caplog, logging.WARNING) == [
        "sweeper: unreachable (refused) (1 failed tries so far)",
        "sweeper: unreachable (refused) (3 failed tries so far)",
    ]
    assert lines(caplog, logging.INFO) == ["sweeper: sweeping again after 30.0s of outage (3 failed tries)"]


def test_the_next_outage_warns_at_once_after_a_recovery(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    outage = OutageLog(logging.getLogger(LOGGER), "poll", every_s=30.0, clock=clock)
    outage.failed("down")
    clock.now += 1
    outage.recovered()
    clock.now += 1
    assert outage.failed("down again")
    assert lines(caplog, logging.WARNING) == [
        "poll: down (1 failed tries so far)",
        "poll: down again (1 failed tries so far)",
    ]


def test_an_hour_of_failures_twice_a_second_is_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    outage = OutageLog(logging.getLogger(LOGGER), "timer poll", every_s=30.0, clock=clock)
    for _ in range(2 * 3600):
        outage.failed("database unreachable")
        clock.now += 0.5
    outage.recovered()
    assert len(lines(caplog, logging.WARNING)) == 120  # 7,200 failed tries: one warning per 30 s
    assert len(lines(caplog, logging.INFO)) == 1


def test_a_traceback_is_kept_when_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    outage = OutageLog(logging.getLogger(LOGGER), "sweeper", clock=Clock())
    try:
        raise KeyError("a bug")
    except KeyError:
        outage.failed("failed", exc_info=True)
    (record,) = caplog.records
    assert record.exc_info is not None


@pytest.mark.integration
async def test_a_nats_outage_is_a_warning_when_it_starts_and_a_line_when_it_ends_not_one_per_reconnect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="omni_runtime.nats")
    server = NatsServer(tmp_path / "first", port_setting=None, monitoring_port_setting=None)
    server.start()
    port = server.port
    nc = await omni_nats.connect(server.url, "outage-test")
    errors_seen: list[Exception] = []
    # Count the client's failed reconnects (each one calls the error callback) as they happen.
    log_error = nc._error_cb

    async def counting(exc: Exception) -> None:
        errors_seen.append(exc)
        await log_error(exc)

    nc._error_cb = counting
    again: NatsServer | None = None
    try:
        server.stop()
        await wait_for(lambda: len(errors_seen) >= 6, timeout=30, message="several failed reconnects")
        again = NatsServer(tmp_path / "again", port=port, port_setting=None, monitoring_port_setting=None)
        again.start()
        await wait_for(lambda: nc.is_connected, timeout=30, message="reconnected")
    finally:
        await nc.close()
        if again is not None:
            again.stop()

    records = [r for r in caplog.records if r.name == "omni_runtime.nats"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # six failed reconnects and more, one warning
    assert warnings[0].startswith("nats (outage-test): ")
    assert any(
        r.levelno == logging.INFO and r.getMessage().startswith("nats (outage-test): reconnected after")
        for r in records
    )
    assert len(records) <= 3  # the warning, the end of the outage, the close
