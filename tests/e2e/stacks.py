"""Building the whole stack for a test."""

from __future__ import annotations

from pathlib import Path

from omni_devstack.servers import free_port
from omni_devstack.supervisor import Stack, StackConfig

ROOT = Path(__file__).resolve().parents[2]


def make_stack(
    tmp_path: Path,
    database_url: str,
    *,
    engine_replicas: int = 1,
    runner_replicas: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Stack:
    return Stack(
        StackConfig(
            home=tmp_path / "home",
            http_port=free_port(),
            # Its own embedded NATS, with authorization, as make run's: each service under its NKey.
            nats_port=free_port(),
            database_url=database_url,
            workflows_dir=ROOT / "workflows",
            integrations_dir=ROOT / "integrations",
            engine_replicas=engine_replicas,
            runner_replicas=runner_replicas,
            simulate=True,
            log_dir=tmp_path / "logs",
            extra_env={"OMNI_TOOLRUNNER_ACK_WAIT_S": "3", **(extra_env or {})},
        )
    )
