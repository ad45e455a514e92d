"""The errors a server's start raises: both say what failed and what to do about it."""

from __future__ import annotations


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


class PortInUseError(ServerStartError):
    """The port a server was asked to listen on is held by another process."""

    def __init__(self, what: str, host: str, port: int, setting: str | None) -> None:
        self.what = what
        self.host = host
        self.port = port
        self.setting = setting
        remedy = f"set {setting} to a free port" if setting else "choose another port"
        super().__init__(
            f"{what} cannot listen on {host}:{port}: the port is already in use. "
            f"Stop the process that holds it, or {remedy}."
        )
