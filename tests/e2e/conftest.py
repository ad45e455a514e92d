"""End-to-end fixtures: the whole stack as processes (the same ``Stack`` that ``make run`` uses),
with its own embedded NATS (under authorization, as ``make run``'s) and the per-test database that
``omni_testkit`` provides."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from omni_devstack.supervisor import Stack

from .stacks import make_stack


@pytest.fixture
def stack(tmp_path: Path, database_url: str, request: pytest.FixtureRequest) -> Iterator[Stack]:
    options: dict[str, Any] = getattr(request, "param", {}) or {}
    s = make_stack(tmp_path, database_url, **options)
    try:
        s.start(ready_timeout=90)
        yield s
    finally:
        s.stop()
        for log in sorted((tmp_path / "logs").glob("*.log")):
            # Shown by pytest only when the test failed.
            print(f"----- {log.name} (last 40 lines)")
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
