from __future__ import annotations

import socket

from omni_devstack.servers import PortInUseError, free_port, port_in_use


def test_free_port_is_not_in_use() -> None:
    assert not port_in_use(free_port())


def test_port_with_a_listener_is_in_use() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert port_in_use(sock.getsockname()[1])


def test_port_in_use_error_names_port_and_setting() -> None:
    error = PortInUseError("NATS", "127.0.0.1", 4321, "OMNI_NATS_PORT")
    assert "127.0.0.1:4321" in str(error)
    assert "OMNI_NATS_PORT" in str(error)


def test_free_port_is_below_the_ephemeral_range_so_no_bind_to_port_0_can_take_it() -> None:
    floor = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])  # noqa: SIM115
    ports = {free_port() for _ in range(20)}
    assert all(10_000 <= port < floor for port in ports)
