"""Whom PostgreSQL runs as, and what that user may reach.

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and ``postgres`` run as
the unprivileged ``nobody`` user instead, and every directory on the way to their files must let
that user in.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    name: str


def run_as() -> RunAs | None:
    """Whom to run PostgreSQL as: None for the current user, ``nobody`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return RunAs(65534, 65534, "uid 65534")
    return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)


def allows(path: Path, who: RunAs, want: int) -> bool:
    """Whether ``who`` has the ``want`` bits (4 read, 2 write, 1 search/execute) on ``path``.

    Classic mode bits only (no ACLs); supplementary groups are dropped when we switch user.
    """
    st = path.stat()
    if st.st_uid == who.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == who.gid:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def blocking_ancestor(path: Path, who: RunAs) -> Path | None:
    """The first directory above ``path`` that ``who`` cannot enter, if any.

    Both the path as written and its resolved form are walked, since a symlink on the way
    sends the kernel through its target's directories too.
    """
    for route in (path, path.resolve()):
        for ancestor in reversed(route.parents):
            if ancestor.exists() and not allows(ancestor, who, 1):
                return ancestor
    return None


def postgres_can_use(data_dir: Path) -> bool:
    """Whether the user PostgreSQL runs as (``nobody`` when we are root) can reach ``data_dir``."""
    who = run_as()
    return who is None or blocking_ancestor(data_dir.absolute(), who) is None
