"""Settings shared by every service. Each service subclasses ``ServiceSettings`` with its own
``OMNI_<SERVICE>_`` env prefix; ``NATS_URL`` and ``DATABASE_URL`` are read without a prefix because
they describe the environment, not one service."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

NKEY_SEED_FILE_ENV = "OMNI_NATS_NKEY_SEED_FILE"
CREDS_FILE_ENV = "OMNI_NATS_CREDS_FILE"
INBOX_PREFIX_ENV = "OMNI_NATS_INBOX_PREFIX"


class NatsClientSettings(BaseSettings):
    """Who a process is to NATS. Read without a service's prefix, like ``NATS_URL``: every replica
    started as one identity has the same. None set: no credentials (a server without authorization)."""

    model_config = SettingsConfigDict(extra="ignore")

    nats_nkey_seed_file: str | None = Field(
        default=None,
        validation_alias=AliasChoices(NKEY_SEED_FILE_ENV, "nats_nkey_seed_file"),
        description="File holding this identity's NKey seed (SU...), to authenticate to NATS",
    )
    nats_creds_file: str | None = Field(
        default=None,
        validation_alias=AliasChoices(CREDS_FILE_ENV, "nats_creds_file"),
        description="A NATS credentials file (user JWT and seed), for servers run in operator mode",
    )
    nats_inbox_prefix: str | None = Field(
        default=None,
        validation_alias=AliasChoices(INBOX_PREFIX_ENV, "nats_inbox_prefix"),
        description="Prefix of this identity's reply subjects (default _INBOX), where it may subscribe",
    )


class ServiceSettings(NatsClientSettings):
    model_config = SettingsConfigDict(env_prefix="OMNI_", extra="ignore")

    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        validation_alias=AliasChoices("NATS_URL", "nats_url"),
        description="NATS server(s), comma-separated",
    )
    instance: str = Field(default="", description="Replica name; defaults to host:pid")
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=0, description="Port of /healthz, /readyz, /metrics; 0 picks one")
    log_format: str = Field(default="auto", description="json | console | auto (json when not a tty)")
    log_level: str = "INFO"
    shutdown_grace_s: float = Field(default=8.0, description="Time to finish in-flight work on SIGTERM")


class DatabaseSettings(ServiceSettings):
    database_url: str = Field(
        default="postgresql://127.0.0.1:5432/omni",
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
    )
    db_pool_min: int = 2
    db_pool_max: int = 10
