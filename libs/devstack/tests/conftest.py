from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A scratch directory every user can enter.

    pytest's own tmp_path is private to us; when the tests run as root, PostgreSQL runs as an
    unprivileged user that must reach its data directory.
    """
    path = Path(tempfile.mkdtemp(prefix="omni-devstack-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
