"""The services ``omni run`` starts write to its terminal without seeing it as theirs, so the
stack tells them which log format a person (or a machine) reading that output wants."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from omni_devstack.supervisor import Stack, StackConfig


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stderr", "setting", "log_dir", "passed"),
    [
        (Terminal(), None, False, "console"),
        (io.StringIO(), None, False, "json"),  # piped or redirected: for machines
        (Terminal(), "json", False, "json"),  # OMNI_LOG_FORMAT=json make run
        (Terminal(), None, True, "json"),  # service logs going to files
    ],
)
def test_services_are_told_the_log_format_of_the_supervisors_output(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    stderr: io.StringIO,
    setting: str | None,
    log_dir: bool,
    passed: str,
) -> None:
    monkeypatch.setattr(sys, "stderr", stderr)
    if setting is None:
        monkeypatch.delenv("OMNI_LOG_FORMAT", raising=False)
    else:
        monkeypatch.setenv("OMNI_LOG_FORMAT", setting)
    stack = Stack(StackConfig(home=tmp_path, log_dir=tmp_path / "logs" if log_dir else None))

    assert stack.base_env()["OMNI_LOG_FORMAT"] == passed
