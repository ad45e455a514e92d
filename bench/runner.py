"""One system through its scenarios, in a process of its own: ``python -m bench.runner SPEC OUT``.

The harness (:mod:`bench.harness`) writes SPEC (JSON: the servers it started, the scenarios and
their sizes) and reads OUT, which this process rewrites after every scenario, so whatever finished
before a crash or a time-out is kept. A process per system keeps systems from sharing an event
loop, threads or process-wide state (DBOS is a singleton), and makes "this process" in CPU
accounting mean this system alone.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni_devstack.servers import ExistingPostgres

from bench.scenarios import Params, Row, derived_rows, run_scenario
from bench.systems.base import BenchEnv, System

__all__ = ["SYSTEM_MODULES", "load_system", "main"]

logger = logging.getLogger("bench.runner")

SYSTEM_MODULES = {
    "omni": "bench.systems.omni",
    "temporal": "bench.systems.temporal",
    "dbos": "bench.systems.dbos_system",
}


def load_system(name: str) -> System:
    """Import the system's module and build its :class:`System`.

    The module offers ``create_system()``, or ``SYSTEM`` (a class or an instance), or a class
    whose ``name`` attribute is ``name``.
    """
    module = importlib.import_module(SYSTEM_MODULES[name])
    candidate: Any = getattr(module, "create_system", None) or getattr(module, "SYSTEM", None)
    if candidate is None:
        for value in vars(module).values():
            if isinstance(value, type) and getattr(value, "name", None) == name:
                candidate = value
                break
    if candidate is None:
        raise LookupError(f"{module.__name__} has no create_system(), SYSTEM, nor a class named {name!r}")
    system = candidate() if callable(candidate) else candidate
    if not isinstance(system, System):
        raise TypeError(
            f"{module.__name__} built {system!r}, which does not implement bench.systems.base.System"
        )
    return system


@dataclass
class Outcome:
    system: str
    durability: str | None = None
    rows: list[Row] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    not_applicable: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def error(self, scenario: str, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        logger.error("%s %s failed: %s", self.system, scenario, message)
        logger.debug("%s", "".join(traceback.format_exception(exc)))
        self.errors.append({"scenario": scenario, "message": message})
        self.rows.append(Row(system=self.system, scenario=scenario, metric="error", value=1.0, unit="count"))

    def write(self, path: Path) -> None:
        staging = path.with_suffix(".tmp")
        staging.write_text(json.dumps(self.__dict__, indent=2))
        staging.replace(path)


async def _bounded(what: str, within_s: float, factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    try:
        async with asyncio.timeout(within_s):
            return await factory()
    except TimeoutError as exc:
        raise TimeoutError(f"{what} did not finish within {within_s:g}s") from exc


async def run(spec: dict[str, Any], out: Path) -> Outcome:
    name: str = spec["system"]
    params = Params(**spec["params"])
    scenarios: list[str] = spec["scenarios"]
    outcome = Outcome(system=name)
    outcome.write(out)
    env = BenchEnv(
        workdir=Path(spec["workdir"]),
        nats_url=spec["nats_url"],
        pg=ExistingPostgres(spec["pg_dsn"]),
        smoke=spec["smoke"],
        pg_pid=spec.get("pg_pid"),
        nats_pid=spec.get("nats_pid"),
    )
    try:
        system = load_system(name)
    except Exception as exc:  # noqa: BLE001 - any import or build failure is this system's error row
        for scenario in scenarios:
            outcome.error(scenario, RuntimeError(f"could not load the system: {exc}"))
        outcome.write(out)
        return outcome
    outcome.durability = system.durability
    began = time.perf_counter()
    try:
        await _bounded("start", params.start_timeout_s, lambda: system.start(env))
        outcome.seconds["start"] = time.perf_counter() - began
        logger.info("%s started in %.1fs", name, outcome.seconds["start"])
        if params.warmup:
            await _bounded("warm-up", params.scenario_timeout_s, lambda: system.latency(params.warmup))
    except Exception as exc:  # noqa: BLE001 - a system that cannot start fails each scenario, visibly
        for scenario in scenarios:
            outcome.error(scenario, RuntimeError(f"start failed: {type(exc).__name__}: {exc}"))
        outcome.write(out)
        await _stop(system, params, outcome)
        outcome.write(out)
        return outcome
    try:
        for scenario in scenarios:
            began = time.perf_counter()
            logger.info("%s %s ...", name, scenario)
            try:
                rows = await _bounded(
                    scenario,
                    params.scenario_timeout_s,
                    functools.partial(run_scenario, system, scenario, params),
                )
            except Exception as exc:  # noqa: BLE001 - recorded as an error row; the run goes on
                outcome.error(scenario, exc)
            else:
                if rows is None:
                    outcome.not_applicable.append(scenario)
                    logger.info("%s %s: not applicable", name, scenario)
                else:
                    outcome.rows.extend(rows)
                    logger.info(
                        "%s %s: %s",
                        name,
                        scenario,
                        ", ".join(f"{r['metric']}={r['value']:.4g}{r['unit']}" for r in rows),
                    )
                    # Once both latency and sparse have run: sparse p50 over back-to-back p50.
                    for derived in derived_rows(outcome.rows):
                        if derived not in outcome.rows:
                            outcome.rows.append(derived)
                            logger.info(
                                "%s %s: %s=%.3g%s",
                                name,
                                derived["scenario"],
                                derived["metric"],
                                derived["value"],
                                derived["unit"],
                            )
            outcome.seconds[scenario] = time.perf_counter() - began
            outcome.write(out)
    finally:
        await _stop(system, params, outcome)
        outcome.write(out)
    return outcome


async def _stop(system: System, params: Params, outcome: Outcome) -> None:
    try:
        await _bounded("stop", params.start_timeout_s, system.stop)
    except Exception as exc:  # noqa: BLE001 - a failed stop is reported, the results stand
        outcome.error("stop", exc)


async def _main_async(spec: dict[str, Any], out: Path) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    # The harness asks for an orderly end with SIGTERM (time-out, Ctrl-C): stop the system first.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    await run(spec, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runner", description=__doc__)
    parser.add_argument("spec", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    Path(spec["workdir"]).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("BENCH_DEBUG") else logging.INFO,
        format=f"%(asctime)s [{spec['system']}] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # One line per HTTP request of the gateway scenario would drown the results.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if spec.get("loop") == "uvloop":
            import uvloop

            uvloop.run(_main_async(spec, args.out))
        else:
            asyncio.run(_main_async(spec, args.out))
    except asyncio.CancelledError:
        logger.warning("stopped by SIGTERM; results so far are in %s", args.out)
        return 128 + signal.SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
