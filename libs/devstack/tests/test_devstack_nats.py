from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import nats
import pytest
from omni_devstack.servers import NatsServer, PortInUseError, ServerStartError, free_port, port_in_use
from omni_testkit.processes import live_pids

pytestmark = pytest.mark.integration


async def test_nats_server_accepts_jetstream_stream_creation(tmp_path: Path) -> None:
    async with NatsServer(tmp_path) as server:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            info = await js.add_stream(name="ORDERS", subjects=["orders.>"])
            assert info.config.name == "ORDERS"
            ack = await js.publish("orders.created", b"1")
            assert ack.seq == 1
        finally:
            await nc.drain()


async def test_nats_jetstream_data_survives_restart_on_same_directory_and_port(tmp_path: Path) -> None:
    async with NatsServer(tmp_path, port=free_port()) as server:
        port = server.port
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="KEPT", subjects=["kept.>"])
        await js.publish("kept.one", b"payload")
        await nc.drain()

    async with NatsServer(tmp_path, port=port) as server:
        nc = await nats.connect(server.url)
        try:
            message = await nc.jetstream().get_last_msg("KEPT", "kept.one")
            assert message.data == b"payload"
        finally:
            await nc.drain()


def test_nats_server_on_occupied_port_names_port_and_setting(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "first") as first:
        second = NatsServer(tmp_path / "second", port=first.port, port_setting="OMNI_NATS_PORT")
        with pytest.raises(PortInUseError, match=rf"127\.0\.0\.1:{first.port}.*OMNI_NATS_PORT") as caught:
            second.start()
        assert caught.value.port == first.port
        assert not second.is_running()


def test_nats_server_on_port_held_by_another_program_names_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUseError, match=rf":{port}\b.*MY_PORT_SETTING"):
            NatsServer(tmp_path, port=port, port_setting="MY_PORT_SETTING").start()


def test_nats_stop_leaves_no_process_and_frees_the_port(tmp_path: Path) -> None:
    server = NatsServer(tmp_path).start()
    pid, port = server.pid, server.port
    assert pid is not None
    server.stop()
    assert live_pids({pid}) == set()
    assert not port_in_use(port)
    assert not server.is_running()
    assert list(tmp_path.glob("*.ports")) == []
    server.stop()  # stopping twice is harmless


def test_nats_server_listens_on_the_requested_ports(tmp_path: Path) -> None:
    port, monitoring = free_port(), free_port()
    with NatsServer(tmp_path, port=port, monitoring_port=monitoring) as server:
        assert server.port == port
        assert server.monitoring_url == f"http://127.0.0.1:{monitoring}"


def test_nats_start_failure_reports_the_tail_of_the_server_log(tmp_path: Path) -> None:
    broken = tmp_path / "broken-nats-server"
    broken.write_text("#!/bin/sh\necho 'fatal: cannot open store' >&2\nexit 3\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    server = NatsServer(tmp_path / "data", binary=broken)
    with pytest.raises(ServerStartError, match=r"(?s)exited with code 3.*fatal: cannot open store"):
        server.start()
    assert (tmp_path / "data" / "nats-server.log").read_text().strip() == "fatal: cannot open store"
    assert not server.is_running()


def test_nats_output_goes_to_the_log_file_in_the_data_directory(tmp_path: Path) -> None:
    with NatsServer(tmp_path):
        pass
    log = (tmp_path / "nats-server.log").read_text()
    assert "Server is ready" in log
    assert "JetStream" in log
    assert os.path.isdir(tmp_path / "jetstream")
