"""``omni run`` as a person meets it: on a terminal every log line is short and readable
(``HH:MM:SS service LEVEL message``), and Ctrl-C stops everything without a traceback."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from omni_devstack.servers import free_port
from omni_testkit import wait_for

from .test_omni_run import stop_tree

ROOT = Path(__file__).resolve().parents[2]
LOG_LINE = re.compile(r"\d\d:\d\d:\d\d [a-z][a-z0-9-]* (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S")

pytestmark = pytest.mark.e2e


class TerminalOutput:
    """What a program writes to a pseudo-terminal, read as it comes (a terminal nobody reads
    would block the writers once its buffer is full)."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                return
            if not data:
                return
            self.chunks.append(data)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace").replace("\r\n", "\n")


def start_on_a_terminal(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """``omni run`` writing to a pseudo-terminal; returns the process and the terminal's master."""
    master, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "omni_devstack.cli", "run"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    return proc, master


async def test_omni_run_on_a_terminal_prints_short_lines_and_stops_on_ctrl_c_without_a_traceback(
    world_tmp: Path,
) -> None:
    unset = {"NATS_URL", "DATABASE_URL", "OPENROUTER_API_KEY", "OMNI_LOG_FORMAT"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(
        {
            "OMNI_HOME": str(world_tmp / "home"),
            "OMNI_HTTP_PORT": str(free_port()),
            "OMNI_NATS_PORT": str(free_port()),
            "OMNI_PG_PORT": str(free_port()),
        }
    )
    proc, master = start_on_a_terminal(env)
    output = TerminalOutput(master)
    try:
        await wait_for(lambda: "Press Ctrl-C to stop." in output.text, timeout=120, interval=0.1)
        # Ctrl-C reaches the terminal's foreground process group: omni alone, as every service
        # and server runs in a session of its own.
        proc.send_signal(signal.SIGINT)
        await wait_for(lambda: proc.poll() is not None, timeout=15, interval=0.1, message="omni stopped")
    finally:
        stop_tree(proc)
        output.thread.join(timeout=10)
        os.close(master)
    text = output.text

    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "never retrieved" not in text
    log_lines = [line for line in text.splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)]
    assert not [line for line in text.splitlines() if line.startswith("{")], "JSON on a terminal"
    assert [line for line in log_lines if not LOG_LINE.match(line)] == []
    services = {line.split()[1] for line in log_lines}
    assert {"omni", "gateway", "workflow-engine", "tool-runner-openrouter", "provider-simulator"} <= services
    stopping = text[text.index("Press Ctrl-C to stop.") :]
    assert "omni: stopping" in stopping
    assert [line for line in stopping.splitlines() if " WARNING " in line or " ERROR " in line] == []
