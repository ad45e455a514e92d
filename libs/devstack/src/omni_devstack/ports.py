"""TCP ports on loopback: a free one to listen on, and whether one is taken.

A port that is taken raises :class:`PortInUseError` naming the setting to change.
"""

from __future__ import annotations

import errno
import random
import socket
from pathlib import Path

from omni_devstack.errors import PortInUseError

# The servers listen on loopback only.
LOOPBACK = "127.0.0.1"
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10_000


def _ephemeral_floor() -> int:
    """The first port the kernel hands out for ``bind(0)`` and outgoing connections."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is picked below the kernel's ephemeral range, so no ``bind(0)`` (a service's health
    server, a test fake) and no outgoing connection can be given it between now and the moment
    the caller binds it. Only a process that binds that very port number can still take it;
    servers that can pick their own port (``NatsServer``) do so instead of relying on this.
    """
    floor = _ephemeral_floor()
    candidates = random.sample(range(_LOWEST_PORT, floor), k=min(64, floor - _LOWEST_PORT))
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # all taken: let the kernel pick
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """Tell whether a server could not listen on ``host:port`` because something holds it.

    The probe binds with ``SO_REUSEADDR`` like the servers do, so connections lingering in
    TIME_WAIT from an earlier run do not count as "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
        return False


def check_port_free(what: str, host: str, port: int, setting: str | None) -> None:
    """Raise :class:`PortInUseError` naming ``setting`` when ``port`` (0: any) is taken."""
    if port and port_in_use(port, host):
        raise PortInUseError(what, host, port, setting)
