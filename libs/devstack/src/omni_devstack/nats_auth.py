"""NATS credentials for a local Omni, and the nats-server authorization that uses them.

Every service identity (the gateway, the workflow engine, the security-service, the tool-runner
of each provider) connects with an NKey of its own; applications connect as the user ``app``
and operators' tools as ``admin``, each with a password (a URL is all a client needs:
``nats://app:<password>@127.0.0.1:4222``). What each may publish and subscribe to is
``omni_contract.permissions``.

Invariants:
- A secret is made once, then kept and reused by every later start: ``<identity>.nk`` (an NKey
  user seed) or ``<user>.password`` under ``<OMNI_HOME>/nats/credentials/``, readable by its owner
  only (files 0600, the directory 0700). A file is created whole or not at all, so two starts at
  once end up with the same secret.
- The server's configuration grants each identity exactly ``permissions_for`` of its role. It
  names public keys and the two passwords, so it is written readable by its owner only
  (``NatsServer(config=...)``). A client without credentials, or with unknown ones, is refused.
- A service process learns who it is from its environment (:meth:`ServiceIdentity.env`): its seed
  file and its reply-inbox prefix, which ``omni_runtime.nats.connect`` reads.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import nkeys  # type: ignore[import-untyped]  # no type information shipped
from omni_contract.permissions import (
    RESPONSE_WINDOW_S,
    SERVICE_ROLES,
    Permissions,
    Role,
    identity,
    inbox_prefix,
    permissions_for,
)
from omni_runtime.settings import INBOX_PREFIX_ENV, NKEY_SEED_FILE_ENV

log = logging.getLogger(__name__)

CREDENTIALS_DIR = Path("nats", "credentials")
"""Where the credentials live, under the Omni home (``OMNI_HOME``, ``~/.omni`` by default)."""
SEED_SUFFIX = ".nk"
PASSWORD_SUFFIX = ".password"  # noqa: S105 - a file name, not a password


@dataclass(frozen=True)
class ServiceIdentity:
    """One service identity: its NKey (the seed kept in ``seed_file``) and its reply inbox."""

    role: Role
    provider: str | None
    name: str
    seed_file: Path
    public_key: str
    inbox_prefix: str

    @property
    def permissions(self) -> Permissions:
        return permissions_for(self.role, provider=self.provider)

    def env(self) -> dict[str, str]:
        """The environment a process of this identity needs to connect (``omni_runtime.nats.connect``)."""
        return {NKEY_SEED_FILE_ENV: str(self.seed_file), INBOX_PREFIX_ENV: self.inbox_prefix}


@dataclass(frozen=True)
class PasswordUser:
    """A user connecting with a password: the application, or the admin (operators' tools)."""

    role: Role
    user: str
    password: str = field(repr=False)
    password_file: Path

    @property
    def permissions(self) -> Permissions:
        return permissions_for(self.role)

    def url(self, server_url: str) -> str:
        """``server_url`` (one URL or several, comma-separated) with this user's credentials in it."""
        return ",".join(self._with_credentials(url.strip()) for url in server_url.split(",") if url.strip())

    def _with_credentials(self, url: str) -> str:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{self.user}:{self.password}@{host}"))


class NatsAuth:
    """The credentials kept in ``directory``; each is made the first time it is asked for."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory).absolute()

    @classmethod
    def in_home(cls, home: Path | str) -> NatsAuth:
        return cls(Path(home) / CREDENTIALS_DIR)

    def service(self, role: Role | str, *, provider: str | None = None) -> ServiceIdentity:
        """The identity of one service (a tool-runner's for one ``provider``)."""
        role = Role(role)
        if role not in SERVICE_ROLES:
            raise ValueError(f"{role} connects with a password, not an NKey")
        name = identity(role, provider=provider)
        path = self.directory / f"{name}{SEED_SUFFIX}"
        seed = self._kept(path, _new_seed, _check_seed)
        public_key: bytes = nkeys.from_seed(bytearray(seed.encode())).public_key
        return ServiceIdentity(
            role=role,
            provider=provider,
            name=name,
            seed_file=path,
            public_key=public_key.decode(),
            inbox_prefix=inbox_prefix(role, provider=provider),
        )

    def service_env(self, role: Role | str, *, provider: str | None = None) -> dict[str, str]:
        """What a process of this service needs in its environment to connect as itself."""
        return self.service(role, provider=provider).env()

    def application(self) -> PasswordUser:
        """The user applications connect as: publishes trigger events (``app.>``), nothing else."""
        return self._password_user(Role.APPLICATION)

    def admin(self) -> PasswordUser:
        """The user operators' tools (the ``nats`` CLI) and tests connect as: may do anything."""
        return self._password_user(Role.ADMIN)

    def authorization(self, providers: Iterable[str]) -> str:
        """The nats-server ``authorization`` block for every service (a tool-runner per provider in
        ``providers``), the application and the admin."""
        services = [self.service(role) for role in (Role.GATEWAY, Role.ENGINE, Role.SECURITY)]
        services += [self.service(Role.TOOL_RUNNER, provider=p) for p in sorted(set(providers))]
        return render_authorization(services, [self.application(), self.admin()])

    def _password_user(self, role: Role) -> PasswordUser:
        user = identity(role)
        path = self.directory / f"{user}{PASSWORD_SUFFIX}"
        password = self._kept(path, lambda: secrets.token_urlsafe(32), _check_password)
        return PasswordUser(role=role, user=user, password=password, password_file=path)

    def _kept(self, path: Path, make: Callable[[], str], check: Callable[[Path, str], None]) -> str:
        """The secret in ``path``, made (and written 0600, whole or not at all) when missing."""
        self._ensure_directory()
        if not path.exists():
            _create(path, make())
        elif stat.S_IMODE(path.stat().st_mode) & 0o077:
            log.warning("%s was readable by others; now by its owner only", path)
            path.chmod(0o600)
        secret = path.read_text(encoding="utf-8").strip()
        check(path, secret)
        return secret

    def _ensure_directory(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, mode=0o700, exist_ok=True)
            self.directory.chmod(0o700)  # mkdir's mode is reduced by the umask


def _create(path: Path, secret: str) -> None:
    """Write ``secret`` to a private temporary file, then link it in place: a concurrent start
    either links first (and this one reads its secret) or finds the whole file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secret + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
            log.info("created %s", path)
        except FileExistsError:
            pass  # another start made it first: use that one
    finally:
        temporary.unlink(missing_ok=True)


def _new_seed() -> str:
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode()


def _check_seed(path: Path, seed: str) -> None:
    try:
        key = nkeys.from_seed(bytearray(seed.encode()))
        public_key: bytes = key.public_key
    except (nkeys.NkeysError, ValueError) as exc:
        raise ValueError(f"{path} holds no NKey seed ({exc}); remove it and a new one is made") from None
    if not public_key.startswith(b"U"):
        raise ValueError(f"{path} holds an NKey seed that is not a user's; remove it and a new one is made")


def _check_password(path: Path, password: str) -> None:
    if not password:
        raise ValueError(f"{path} is empty; remove it and a new password is made")


def render_authorization(services: Iterable[ServiceIdentity], users: Iterable[PasswordUser]) -> str:
    """The nats-server ``authorization`` block granting each identity its permissions."""
    entries = [_entry(f"{s.name} ({s.role})", {"nkey": s.public_key}, s.permissions) for s in services]
    entries += [
        _entry(f"{u.user} ({u.role})", {"user": u.user, "password": u.password}, u.permissions) for u in users
    ]
    return "authorization {\n  users = [\n" + "".join(entries) + "  ]\n}\n"


def _entry(comment: str, credentials: dict[str, str], permissions: Permissions) -> str:
    lines = [f"    # {comment}", "    {"]
    lines += [f"      {key}: {_quoted(value)}" for key, value in credentials.items()]
    lines.append("      permissions: {")
    for direction, subjects in (("publish", permissions.publish), ("subscribe", permissions.subscribe)):
        lines.append(f"        {direction}: {{allow: [")
        lines += [f"          {_quoted(subject)}," for subject in subjects]
        lines.append("        ]}")
    if permissions.allow_responses:
        lines.append(f'        allow_responses: {{max: 1, expires: "{RESPONSE_WINDOW_S}s"}}')
    lines += ["      }", "    }"]
    return "\n".join(lines) + "\n"


def _quoted(value: str) -> str:
    # Quoted, a value starting with $ is a string, not a reference to a variable ($JS.API...).
    return json.dumps(value)
