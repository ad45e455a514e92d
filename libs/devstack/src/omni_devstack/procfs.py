"""Other processes as Linux's ``/proc`` shows them: whether one exists (or is a zombie), and where it
works. PostgreSQL's start uses them to tell a stale ``postmaster.pid`` from a live server.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (``Z`` for a zombie), None when there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def process_cwd(pid: int) -> Path | None:
    """The working directory of process ``pid``, None when there is none (or it is not ours to see)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory`` (PostgreSQL's processes work in
    their cluster's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            if process_cwd(pid) == directory and process_state(pid) not in (None, "Z"):
                found.append(pid)
    return found
