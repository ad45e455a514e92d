"""Runs the whole Omni system as local processes: embedded NATS and PostgreSQL (or the servers
named by ``NATS_URL`` / ``DATABASE_URL``), the provider simulator when no provider key is set, and
every service. ``omni run`` (``make run``) and the end-to-end tests use the same ``Stack``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from omni_contract.permissions import Role
from omni_contract.providers import ALWAYS_STARTED, PROVIDER_KEYS
from omni_contract.security import new_api_key, parse_api_key
from omni_runtime.logging import LOG_FORMAT_ENV, choose_format

from omni_devstack.nats_auth import NatsAuth
from omni_devstack.servers import (
    NatsServer,
    PortInUseError,
    PostgresServer,
    ServerStartError,
    free_port,
    port_in_use,
    postgres_can_use,
)

log = logging.getLogger(__name__)

DATABASE = "omni"
STOP_TIMEOUT_S = 8.0
# An embedded server that exits on its own is started again at once, then after waits doubling
# from the first to the longest, until it runs again.
RESTART_FIRST_S = 0.5
RESTART_LONGEST_S = 10.0
WATCH_INTERVAL_S = 0.2
ADMIN_KEY_ENV = "OMNI_ADMIN_KEY"
ADMIN_KEY_FILE = "admin-key"


def admin_key(home: Path) -> tuple[str, Path | None]:
    """The first admin's API key: ``OMNI_ADMIN_KEY`` when set, else the one kept in
    ``<home>/admin-key`` (created, readable by its owner only, on the first start). The path is
    None when the key came from the environment."""
    given = os.environ.get(ADMIN_KEY_ENV, "").strip()
    if given:
        if parse_api_key(given) is None:
            raise ServerStartError(
                f"{ADMIN_KEY_ENV} is not an Omni API key (omni_<8 lowercase letters or digits>_<43 "
                "characters>); unset it and a key is made for you"
            )
        return given, None
    path = home / ADMIN_KEY_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip(), path
    key = new_api_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(key + "\n")
    return key, path


@dataclass
class ServiceSpec:
    """One service process: a Python module run with ``python -m``. ``role`` (and, for a
    tool-runner, ``provider``) names its NATS identity on the embedded server."""

    name: str
    module: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    role: Role | None = None
    provider: str | None = None


# Providers ``omni run`` starts a runner for when one of their key variables is set.
# (The list is omni_contract.providers', which the gateway's GET /servers reports on too.)
KEYED_PROVIDERS: dict[str, tuple[str, ...]] = {
    provider: variables
    for provider, variables in PROVIDER_KEYS.items()
    if variables and provider not in ALWAYS_STARTED
}


@dataclass
class StackConfig:
    home: Path
    http_port: int = 8080
    nats_url: str | None = None  # use this server instead of starting one
    database_url: str | None = None
    nats_port: int = 14222
    pg_port: int = 15432
    workflows_dir: Path = Path("workflows")
    engine_replicas: int = 1
    runner_replicas: int = 1
    local_runner_replicas: int = 1
    # Declared tools (``integrations/*.yaml``) served by tool-runner-integrations; None: not started.
    integrations_dir: Path | None = Path("integrations")
    simulate: bool | None = None  # None: simulate when OPENROUTER_API_KEY is unset
    sim_port: int = 0
    log_dir: Path | None = None  # None: service logs go to this process's stderr
    extra_env: dict[str, str] = field(default_factory=dict)


class ServiceProcess:
    def __init__(self, spec: ServiceSpec, env: Mapping[str, str], log_dir: Path | None) -> None:
        self.spec = spec
        self.env = dict(env)
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        out: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._log = out = (self.log_dir / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.spec.module, *self.spec.args],
            env={**self.env, **self.spec.env},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            # Own process group: a terminal's Ctrl-C reaches the supervisor only, which then stops
            # the services in order (gateway first, NATS last).
            start_new_session=True,
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is finished or handed back."""
        self.signal(signal.SIGKILL)
        self.wait(5)

    def close_log(self) -> None:
        if self._log:
            self._log.close()
            self._log = None


class _Watched:
    """An embedded server the stack restarts when it exits on its own."""

    def __init__(self, label: str, server: NatsServer | PostgresServer) -> None:
        self.label = label
        self.server = server
        self.restarts = 0
        self.down_since: float | None = None
        self.attempts = 0
        self.next_try = 0.0
        self.delay = RESTART_FIRST_S

    def check(self) -> None:
        now = time.monotonic()
        if self.down_since is None:
            code = self.server.exit_code()
            if code is None:
                return
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            log.warning("%s %s; restarting it", self.label, how)
            self.down_since, self.attempts, self.next_try, self.delay = now, 0, now, RESTART_FIRST_S
        if now < self.next_try:
            return
        self.attempts += 1
        try:
            self.server.restart()
        except (ServerStartError, OSError) as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning(
                "%s did not start again (try %d): %s; next try in %.1fs (log: %s)",
                self.label,
                self.attempts,
                first_line,
                self.delay,
                self.server.log_path,
            )
            self.next_try = time.monotonic() + self.delay
            self.delay = min(RESTART_LONGEST_S, self.delay * 2)
            return
        self.restarts += 1
        log.warning(
            "%s is running again, %.1fs after it went down (try %d)",
            self.label,
            time.monotonic() - self.down_since,
            self.attempts,
        )
        self.down_since = None


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.nats: NatsServer | None = None
        self.postgres: PostgresServer | None = None
        self.nats_url = config.nats_url or ""
        self.database_url = config.database_url or ""
        self.sim_url: str | None = None
        self.processes: dict[str, ServiceProcess] = {}
        self.simulated = False
        self.admin_key = ""
        self.admin_key_path: Path | None = None
        # The embedded NATS runs with authorization: each service as its own NKey identity, allowed
        # only its role's subjects. None: NATS_URL names a server someone else runs.
        self.nats_auth: NatsAuth | None = None
        self._watched: list[_Watched] = []
        self._watcher: threading.Thread | None = None
        self._stop_watching = threading.Event()

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.config.http_port}"

    @property
    def admin_nats_url(self) -> str:
        """The NATS URL for tools and tests that need every subject (the embedded server's admin)."""
        return self.nats_auth.admin().url(self.nats_url) if self.nats_auth is not None else self.nats_url

    @property
    def application_nats_url(self) -> str:
        """The NATS URL an application uses: it may publish trigger events (app.>) only."""
        return (
            self.nats_auth.application().url(self.nats_url) if self.nats_auth is not None else self.nats_url
        )

    @property
    def auth_headers(self) -> dict[str, str]:
        """What a client of the gateway sends to act as the first admin."""
        return {"Authorization": f"Bearer {self.admin_key}"}

    # -- start ---------------------------------------------------------------------------------
    def start(self, ready_timeout: float = 60.0) -> None:
        cfg = self.config
        cfg.home.mkdir(parents=True, exist_ok=True)
        if port_in_use(cfg.http_port):
            raise PortInUseError("the gateway", "127.0.0.1", cfg.http_port, "OMNI_HTTP_PORT")
        self.admin_key, self.admin_key_path = admin_key(cfg.home)
        try:
            self._start_servers()
            self._watch_servers()
            self._start_services()
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _start_servers(self) -> None:
        cfg = self.config
        if not self.nats_url:
            self.nats_auth = NatsAuth.in_home(cfg.home)
            # An identity for every provider's runner (and the tests' mock), started now or later.
            self.nats = NatsServer(
                cfg.home / "nats",
                port=cfg.nats_port,
                monitoring_port=0,
                config=self.nats_auth.authorization({*PROVIDER_KEYS, "mock"}),
            ).start()
            self.nats_url = self.nats.url
        if not self.database_url:
            self.postgres = PostgresServer(self._pg_dir(), port=cfg.pg_port).start()
            self.postgres.ensure_database(DATABASE)
            self.database_url = self.postgres.dsn(DATABASE)

    def _watch_servers(self) -> None:
        """Restart the embedded NATS and PostgreSQL, with back-off, whenever one exits on its own
        (a crash, an out-of-memory kill, a kill -9); the services reconnect to the same URLs.
        Servers named by ``NATS_URL`` / ``DATABASE_URL`` are someone else's to run."""
        if self.nats is not None:
            self._watched.append(_Watched("NATS", self.nats))
        if self.postgres is not None:
            self._watched.append(_Watched("PostgreSQL", self.postgres))
        if not self._watched:
            return
        self._stop_watching.clear()
        self._watcher = threading.Thread(target=self._watch, name="omni-server-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop_watching.wait(WATCH_INTERVAL_S):
            for watched in self._watched:
                try:
                    watched.check()
                except Exception:  # the watcher must outlive whatever one check meets
                    log.exception("watching %s failed", watched.label)

    def restarts(self) -> dict[str, int]:
        """How many times each embedded server was restarted after exiting on its own."""
        return {w.label: w.restarts for w in self._watched}

    def _pg_dir(self) -> Path:
        wanted = self.config.home / "postgres"
        if postgres_can_use(wanted):
            return wanted
        # As root, PostgreSQL runs as ``nobody``, which cannot enter e.g. a clone under /root.
        digest = hashlib.sha256(str(self.config.home.resolve()).encode()).hexdigest()[:12]
        fallback = Path("/var/lib/omni") / digest / "postgres"
        fallback.parent.mkdir(parents=True, exist_ok=True)
        for directory in (fallback.parent.parent, fallback.parent):
            directory.chmod(0o755)
        log.warning("PostgreSQL data in %s (the unprivileged server user cannot reach %s)", fallback, wanted)
        return fallback

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
        env.update(
            {
                "NATS_URL": self.nats_url,
                "DATABASE_URL": self.database_url,
                "PYTHONUNBUFFERED": "1",
                "OMNI_ENGINE_WORKFLOWS_DIR": str(self.config.workflows_dir.resolve()),
                "OMNI_GATEWAY_HTTP_PORT": str(self.config.http_port),
            }
        )
        # The services' stderr is a log file, or this process's stderr without being its tty (for
        # them); so the choice is made here: readable lines when a person watches this terminal.
        env[LOG_FORMAT_ENV] = "json" if self.config.log_dir is not None else choose_format()
        env.update(self.config.extra_env)
        return env

    def service_specs(self) -> list[ServiceSpec]:
        cfg = self.config
        specs: list[ServiceSpec] = []
        simulate = cfg.simulate if cfg.simulate is not None else not os.environ.get("OPENROUTER_API_KEY")
        if simulate:
            port = cfg.sim_port or free_port()
            self.sim_url = f"http://127.0.0.1:{port}"
            self.simulated = True
            specs.append(
                ServiceSpec(
                    "provider-simulator", "omni_simulator.main", ["--host", "127.0.0.1", "--port", str(port)]
                )
            )
        runner_env = (
            {"OPENROUTER_API_KEY": "simulated", "OPENROUTER_BASE_URL": f"{self.sim_url}/api/v1"}
            if simulate
            else {}
        )
        for i in range(cfg.engine_replicas):
            specs.append(ServiceSpec(f"workflow-engine-{i + 1}", "omni_engine.main", role=Role.ENGINE))
        for i in range(cfg.runner_replicas):
            specs.append(_runner(f"tool-runner-openrouter-{i + 1}", "openrouter", runner_env))
        for i in range(cfg.local_runner_replicas):
            specs.append(_runner(f"tool-runner-local-{i + 1}", "local"))
        # Further providers run when their key is in the environment (OpenRouter always runs).
        for provider, variables in KEYED_PROVIDERS.items():
            if any(os.environ.get(name) for name in variables):
                specs.append(_runner(f"tool-runner-{provider}-1", provider))
        if cfg.integrations_dir is not None and cfg.integrations_dir.is_dir():
            declarations = {"OMNI_TOOLRUNNER_DECLARATIONS_DIR": str(cfg.integrations_dir.resolve())}
            specs.append(_runner("tool-runner-integrations-1", "integrations", declarations))
        specs.append(
            ServiceSpec(
                "security-service",
                "omni_security.main",
                env={ADMIN_KEY_ENV: self.admin_key},
                role=Role.SECURITY,
            )
        )
        specs.append(ServiceSpec("gateway", "omni_gateway.main", role=Role.GATEWAY))
        return specs

    def _start_services(self) -> None:
        env = self.base_env()
        for spec in self.service_specs():
            if self.nats_auth is not None and spec.role is not None:
                spec.env = {**self.nats_auth.service_env(spec.role, provider=spec.provider), **spec.env}
            process = ServiceProcess(spec, env, self.config.log_dir)
            process.start()
            self.processes[spec.name] = process

    def start_service(self, name: str) -> None:
        """(Re)start one service by name, e.g. after ``kill``."""
        process = self.processes[name]
        process.close_log()
        process.start()

    def kill(self, name: str) -> None:
        self.processes[name].kill()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for process in self.processes.values():
                if not process.running():
                    raise ServerStartError(f"{process.name} exited during start-up (see its log)")
            status, body = http_get(self.gateway_url + "/readyz")
            if status == 200:
                return
            last = f"{status} {body[:300]}"
            time.sleep(0.1)
        raise ServerStartError(f"the gateway did not become ready within {timeout:.0f}s: {last}")

    # -- stop ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM every service (gateway first), wait, SIGKILL what is left; then the servers."""
        order = sorted(
            self.processes.values(), key=lambda p: (p.name != "gateway", p.name == "provider-simulator")
        )
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.join()  # a restart in progress finishes first; the servers stop below
            self._watcher = None
        for process in order:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in order:
            if not process.wait(max(0.1, deadline - time.monotonic())):
                log.warning("%s did not stop in time; killing it", process.name)
                process.kill()
            process.close_log()
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def describe(self) -> str:
        lines = [
            f"Omni gateway:  {self.gateway_url}",
            f"NATS:          {self.nats_url}",
            f"PostgreSQL:    {_redact(self.database_url)}",
        ]
        if self.admin_key_path is not None:
            where = f"$(cat {self.admin_key_path})"
            lines.append(
                f"Admin key:     in {self.admin_key_path} (made at the first start; {ADMIN_KEY_ENV} wins)"
            )
        else:
            where = f"${ADMIN_KEY_ENV}"
            lines.append(f"Admin key:     from {ADMIN_KEY_ENV}")
        lines.append(
            f'Use it:        curl -H "Authorization: Bearer {where}" {self.gateway_url}/security/whoami'
        )
        if self.nats_auth is not None:
            lines.append(
                f"Applications:  publish app.> on NATS as {_redact(self.application_nats_url)} "
                f"(password in {self.nats_auth.directory})"
            )
        if self.simulated:
            lines.append(
                f"Providers:     SIMULATED at {self.sim_url} (set OPENROUTER_API_KEY to use OpenRouter)"
            )
        return "\n".join(lines)


def _runner(name: str, provider: str, env: dict[str, str] | None = None) -> ServiceSpec:
    return ServiceSpec(
        name,
        "omni_toolrunner.main",
        ["--provider", provider],
        env or {},
        role=Role.TOOL_RUNNER,
        provider=provider,
    )


def _redact(dsn: str) -> str:
    if "@" in dsn and ":" in dsn.split("@", 1)[0].split("//", 1)[-1]:
        scheme, rest = dsn.split("//", 1)
        user = rest.split(":", 1)[0]
        return f"{scheme}//{user}:***@{rest.split('@', 1)[1]}"
    return dsn


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """A tiny GET on loopback; (0, reason) when nothing answers."""
    rest = url.split("//", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request("GET", "/" + path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)
    finally:
        conn.close()


__all__ = ["DATABASE", "ServiceSpec", "Stack", "StackConfig", "http_get"]
