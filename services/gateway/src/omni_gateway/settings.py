"""The gateway's settings: ``OMNI_GATEWAY_*`` environment variables, built once in ``main``."""

from __future__ import annotations

from omni_runtime.settings import ServiceSettings
from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

MAX_EXECUTE_WAIT_S = 300.0

HTTP_PORT_ENV = "OMNI_GATEWAY_HTTP_PORT"
HTTP_PORT_SHARED_ENV = "OMNI_HTTP_PORT"


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="OMNI_GATEWAY_", extra="ignore", populate_by_name=True)

    http_host: str = Field(default="127.0.0.1", description="Interface the public API listens on")
    http_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        validation_alias=AliasChoices(HTTP_PORT_ENV, HTTP_PORT_SHARED_ENV),
        description=f"Port of the public API ({HTTP_PORT_ENV}, or {HTTP_PORT_SHARED_ENV}); 0 picks one",
    )
    rpc_timeout_s: float = Field(
        default=5.0, gt=0, description="How long a request to the workflow engine may take"
    )
    execute_wait_s: float = Field(
        default=30.0,
        gt=0,
        le=MAX_EXECUTE_WAIT_S,
        description="How long POST /workflows/{name}/execute waits for the run to end by default",
    )
    max_body_bytes: int = Field(default=1024 * 1024, gt=0, description="Largest request body accepted")
    sse_heartbeat_s: float = Field(
        default=15.0, gt=0, description="Interval of keep-alive comments on server-sent event streams"
    )
    tool_wait_margin_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Added to a tool's own timeout: how long POST /tools/{category}/{action}/{provider} waits "
            "for the runner's result (the runner may first have to pick the work up) before 504"
        ),
    )
    readiness_timeout_s: float = Field(
        default=1.0, gt=0, description="How long /readyz waits for the workflow engine to answer"
    )
    auth_cache_s: float = Field(
        default=30.0,
        ge=0,
        description="How long an authenticated identity is reused without asking the security-service "
        "(any change to keys or roles drops the cache at once)",
    )
    auth_cache_size: int = Field(default=10_000, ge=1, description="Identities cached at most")
    insecure_no_auth: bool = Field(
        default=False,
        description="Let every request in as an administrator of the default tenant, without "
        "credentials. Only for measuring what authentication costs (make bench); never set by make run",
    )
