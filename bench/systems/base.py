"""The one interface every benchmarked system implements.

The harness runs each system in a child process of its own (``python -m bench.runner``), calls
:meth:`System.start` once with a :class:`BenchEnv`, then each scenario in turn, then
:meth:`System.stop`. A system module (``bench/systems/<module>.py``) exposes its implementation
as a module-level ``create_system()`` function, or a ``SYSTEM`` attribute (a class constructible
without arguments, or an instance), or a class whose ``name`` is the system's name.

Every scenario runs the same shape in the system's idiomatic form, with steps that do no work of
their own: what is measured is the cost of orchestrating them durably.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from omni_devstack.servers import PostgresEndpoint

__all__ = ["BenchEnv", "System", "Throughput"]


@dataclass
class BenchEnv:
    """What the harness started for this run, shared by every system.

    ``pg`` creates databases on the run's one PostgreSQL (``create_database(name) -> dsn``);
    ``pg_pid`` and ``nats_pid`` are the servers' process ids, for systems that count their CPU.
    ``workdir`` is this system's own scratch directory (the harness creates it).
    """

    workdir: Path
    nats_url: str
    pg: PostgresEndpoint
    smoke: bool
    pg_pid: int | None = None
    nats_pid: int | None = None


@dataclass
class Throughput:
    """One throughput run: ``workflows`` runs of ``steps`` steps in all, in ``wall_s`` seconds.

    ``cpu_s`` is the CPU time (user + system) of the system's own processes during the run
    (servers and workers, as its ``durability``/docs say), or None when it cannot be measured.
    """

    workflows: int
    steps: int
    wall_s: float
    cpu_s: float | None


@runtime_checkable
class System(Protocol):
    name: str
    """``omni``, ``temporal`` or ``dbos``."""
    durability: str
    """One line: what is made durable (fsynced) when."""

    async def start(self, env: BenchEnv) -> None:
        """Start (or connect to) everything the system needs; return once it accepts work."""
        ...

    async def stop(self) -> None:
        """Stop what :meth:`start` started."""
        ...

    async def latency(self, runs: int) -> list[float]:
        """Seconds per run, for ``runs`` 5-step sequential workflows each started and awaited in turn."""
        ...

    async def sparse(self, runs: int, gap_s: float) -> list[float]:
        """Seconds per run, for ``runs`` of the same workflows as :meth:`latency`, each started and
        awaited after ``gap_s`` seconds in which the system had nothing to do."""
        ...

    async def throughput(self, workflows: int) -> Throughput:
        """Start ``workflows`` 5-step workflows as fast as the system accepts them; wait for all."""
        ...

    async def long_history(self, steps: int) -> list[float]:
        """Per-step latency (seconds), in step order, of one workflow of ``steps`` sequential steps."""
        ...

    async def fan_out(self, width: int) -> float | None:
        """Wall seconds of one run of ``width`` parallel steps; None when the system cannot express it."""
        ...

    async def gateway(
        self, clients: int, duration_s: float, *, authenticated: bool = True
    ) -> tuple[list[float], int] | None:
        """HTTP execute-and-wait by ``clients`` concurrent clients for ``duration_s``: (latencies, errors).

        ``authenticated`` False: through a gateway that checks no credentials (what authentication
        costs is the difference). None when the system has no HTTP gateway of its own.
        """
        ...
