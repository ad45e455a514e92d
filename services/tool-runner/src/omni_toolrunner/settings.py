"""Settings of one tool-runner replica, built once in ``main`` and passed down.

Runner settings use the ``OMNI_TOOLRUNNER_`` prefix. A provider's credentials keep the names the
rest of the world uses for them (``OPENROUTER_API_KEY``, ...), so an existing environment works as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from omni_runtime.settings import ServiceSettings
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from omni_toolrunner.providers.declared import DEFAULT_SECRETS


class ToolRunnerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="OMNI_TOOLRUNNER_", extra="ignore")

    provider: str = Field(default="openrouter", description="The provider this replica serves")
    ack_wait_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Ack wait of the work consumer: work held by a runner that stopped sending in-progress "
            "acks is redelivered after this long"
        ),
    )
    max_deliver: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Deliveries of one work message before it is dead-lettered (tool.invoke.exhausted); "
            "applied to the shared consumer at start-up (default: the contract's)"
        ),
    )
    max_concurrency: int = Field(default=32, ge=1, description="Invokes in flight at once per replica")
    fetch_batch: int = Field(
        default=32, ge=1, description="Messages asked for per fetch (held beyond max_concurrency at most)"
    )
    fetch_timeout_s: float = Field(default=5.0, gt=0, description="How long one idle pull request waits")
    call_timeout_s: float = Field(
        default=60.0, gt=0, description="Provider call deadline when the invoke does not state one"
    )
    result_ttl_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="How long a result is kept for redelivered or republished invokes",
    )
    publish_timeout_s: float = Field(default=5.0, gt=0, description="Wait for a JetStream publish ack")
    provider_concurrency: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Calls to the provider in flight at once across all replicas (the shared consumer's "
            "max_ack_pending; excess work waits in the stream); default: the contract's"
        ),
    )
    circuit_threshold: int = Field(
        default=5, ge=1, description="Provider failures in a row (on one replica) that open the circuit"
    )
    circuit_cooldown_s: float = Field(
        default=30.0, gt=0, description="How long an open circuit refuses calls before one probe"
    )

    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Calls to the provider per rate window across all replicas (excess work waits, unacknowledged, "
            "and the rest stays in the stream); default: no limit"
        ),
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Tokens the provider may use per rate window across all replicas; default: no limit",
    )
    rate_window_s: float = Field(
        default=60.0, gt=0, le=3600, description="The rate limits' window (a minute unless tests shorten it)"
    )
    declarations_dir: Path | None = Field(
        default=None,
        description="integrations provider: directory of declared tool files written to the bucket at start",
    )
    declared_secrets: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_SECRETS),
        description=(
            "integrations provider: the environment variables declared tools may use as credentials "
            "(comma-separated)"
        ),
    )

    @field_validator("declared_secrets", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    openrouter_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENROUTER_API_KEY", "openrouter_api_key")
    )
    openrouter_base_url: str = Field(
        default="https://openrouter.ai/api/v1",
        validation_alias=AliasChoices("OPENROUTER_BASE_URL", "openrouter_base_url"),
    )
    openrouter_model: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENROUTER_MODEL", "openrouter_model"),
        description="Model used when a step's config names none (the adapter's default otherwise)",
    )

    @property
    def heartbeat_interval_s(self) -> float:
        """How often held work is reported in progress: well inside ``ack_wait_s``."""
        return max(self.ack_wait_s / 3, 0.05)
