"""End-to-end fixtures: the whole stack as processes (the same ``Stack`` that ``make run`` uses),
on the per-test NATS server and database that ``omni_testkit`` provides."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from omni_devstack.servers import free_port
from omni_devstack.supervisor import Stack, StackConfig

ROOT = Path(__file__).resolve().parents[1]


def make_stack(
    tmp_path: Path,
    nats_url: str,
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
            nats_url=nats_url,
            database_url=database_url,
            workflows_dir=ROOT / "workflows",
            engine_replicas=engine_replicas,
            runner_replicas=runner_replicas,
            simulate=True,
            log_dir=tmp_path / "logs",
            extra_env={"OMNI_TOOLRUNNER_ACK_WAIT_S": "3", **(extra_env or {})},
        )
    )


@pytest.fixture
def stack(
    tmp_path: Path, nats_url: str, database_url: str, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    options: dict[str, int] = getattr(request, "param", {}) or {}
    s = make_stack(tmp_path, nats_url, database_url, **options)
    try:
        s.start(ready_timeout=90)
        yield s
    finally:
        s.stop()
        for log in sorted((tmp_path / "logs").glob("*.log")):
            # Shown by pytest only when the test failed.
            print(f"----- {log.name} (last 40 lines)")
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
