"""The security-service's settings (``OMNI_SECURITY_*``; the admin key also as ``OMNI_ADMIN_KEY``)."""

from __future__ import annotations

from omni_runtime.settings import DatabaseSettings
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict


class SecuritySettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMNI_SECURITY_", extra="ignore")

    admin_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OMNI_ADMIN_KEY", "OMNI_SECURITY_ADMIN_KEY", "admin_key"),
        description="An API key (omni_<8>_<43>) that the principal 'admin' of the default tenant "
        "holds from the first start on (make run creates one in OMNI_HOME)",
    )
    failure_window_s: float = Field(
        default=60.0, gt=0, description="Window of failed authentications per source"
    )
    slow_after: int = Field(default=3, ge=0, description="Failures in the window before answers are delayed")
    refuse_after: int = Field(default=10, ge=1, description="Failures in the window before a source gets 429")
    audit_batch: int = Field(default=200, ge=1, description="Audit events appended per transaction")
