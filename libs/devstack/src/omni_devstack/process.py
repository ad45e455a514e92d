"""What every server child process shares: starting, stopping and restarting it, also as a (sync or
async) context manager, stopping it signal by signal, and quoting the tail of its log when it fails.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import signal
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 40


def log_tail(path: Path, offset: int, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines written to ``path`` after byte ``offset``."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def with_log(message: str, log_path: Path, offset: int) -> str:
    """``message`` followed by what the server wrote to ``log_path`` since ``offset``."""
    tail = log_tail(log_path, offset)
    body = tail if tail else "(empty)"
    return f"{message}\n--- last lines of {log_path} ---\n{body}"


def terminate(proc: subprocess.Popen[bytes], name: str, signals: list[tuple[int, float]]) -> None:
    """Send each signal in turn and wait its bound for the process to exit; SIGKILL at the end."""
    for signum, bound in signals:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        try:
            proc.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            logger.warning(
                "%s (pid %d) still running %.1fs after %s", name, proc.pid, bound, signal.Signals(signum).name
            )
        else:
            return
    if proc.poll() is None:
        logger.warning("killing %s (pid %d)", name, proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


class ServerProcess(abc.ABC):
    """A server process that is started and stopped, also as a (sync or async) context manager."""

    _proc: subprocess.Popen[bytes] | None

    @abc.abstractmethod
    def start(self) -> Self: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def _pin_ports(self) -> None:
        """Ask the next start for the ports in use now (a port picked by the server included)."""

    def exit_code(self) -> int | None:
        """The exit status of a server that ended without :meth:`stop` (a crash, a kill -9), else
        None. Asking reaps the ended process, so no zombie is left to hold its lock files."""
        return self._proc.poll() if self._proc is not None else None

    def restart(self) -> Self:
        """Start the server again, on the ports and data it had, so its clients' URL stays valid.

        Used after a crash (:meth:`exit_code` is not None); a running server is stopped first.
        """
        self._pin_ports()
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
