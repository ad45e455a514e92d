"""Omni, Temporal and DBOS side by side, in one run on one machine: ``make bench``.

``python -m bench.harness [--smoke] [--systems omni,temporal,dbos] [--scenarios ...] [--out DIR]``

It starts one embedded PostgreSQL (fsync and synchronous_commit on, as always in the devstack) and
one embedded NATS server for the whole run, then runs each system, one after another, in a child
process of its own (:mod:`bench.runner`) through every scenario it supports. It writes
``<out>/<UTC date>.json`` (machine, durability, rows, errors), the chart ``<out>/latest.png``, and
the results section of the README.

A full run writes to ``bench/results/`` and ``bench/README.md``. ``--smoke`` runs every scenario
with tiny counts (a few seconds each) into a temporary directory, which is removed unless
something failed. The exit code is 1 when any system or scenario recorded an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from omni_devstack.servers import NatsServer, PostgresServer

from bench import report
from bench.common import REPO_ROOT, machine_info
from bench.runner import SYSTEM_MODULES
from bench.scenarios import FULL, SCENARIOS, SMOKE, Params

logger = logging.getLogger("bench.harness")

BENCH_DIR = REPO_ROOT / "bench"
SYSTEMS = ("omni", "temporal", "dbos")
_CHILD_GRACE_S = 30.0
NATS_DURABILITY = (
    "JetStream file store, server default sync: a message is acknowledged once written to the file,"
    " and the server fsyncs every two minutes"
)


@dataclass
class RunResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    durability: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    not_applicable: list[dict[str, str]] = field(default_factory=list)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)

    def error(self, system: str, scenario: str, message: str) -> None:
        self.errors.append({"system": system, "scenario": scenario, "message": message})
        self.rows.append(
            {"system": system, "scenario": scenario, "metric": "error", "value": 1.0, "unit": "count"}
        )


def _csv(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown)} (known: {', '.join(allowed)})"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.harness",
        description="Benchmark Omni, Temporal and DBOS side by side.",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny counts, temporary output, fails on any error"
    )
    parser.add_argument(
        "--systems",
        type=lambda text: _csv(text, SYSTEMS, "system"),
        default=list(SYSTEMS),
        help="comma-separated, of omni,temporal,dbos (default: all)",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: _csv(text, SCENARIOS, "scenario"),
        default=list(SCENARIOS),
        help=f"comma-separated, of {','.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--out", type=Path, help="results directory (default: bench/results; smoke: a temp dir)"
    )
    parser.add_argument(
        "--readme", type=Path, help="README to update (default: bench/README.md; smoke: <out>)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a size, e.g. --set latency_runs=50 (repeatable)",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of each system runner process (the peers run on asyncio by default)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the servers' data and the systems' logs")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------------
# Servers


def _scratch_root() -> Path:
    # PostgreSQL runs as nobody when we are root: its data must be below directories anyone may enter.
    root = Path(tempfile.mkdtemp(prefix="omni-bench-"))
    root.chmod(0o755)
    return root


async def _postgres_facts(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        fsync = await conn.fetchval("SHOW fsync")
        synchronous_commit = await conn.fetchval("SHOW synchronous_commit")
        wal_sync_method = await conn.fetchval("SHOW wal_sync_method")
    finally:
        await conn.close()
    return {
        "version": version,
        "fsync": fsync,
        "synchronous_commit": synchronous_commit,
        "wal_sync_method": wal_sync_method,
    }


# --------------------------------------------------------------------------------------------------
# Children


def _available(system: str) -> str | None:
    """None when the system's module exists; else why it is skipped."""
    module = SYSTEM_MODULES[system]
    if importlib.util.find_spec(module) is None:
        return f"{module.replace('.', '/')}.py does not exist yet"
    return None


def _stop_child(proc: subprocess.Popen[bytes], system: str) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=_CHILD_GRACE_S)
    except subprocess.TimeoutExpired:
        logger.warning(
            "%s did not stop within %.0fs of SIGTERM; killing its process group", system, _CHILD_GRACE_S
        )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_system(system: str, spec: dict[str, Any], scratch: Path, timeout: float, result: RunResult) -> None:
    spec_path = scratch / f"{system}.spec.json"
    out_path = scratch / f"{system}.result.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    began = time.monotonic()
    # Its own session: a Ctrl-C reaches only the harness, which then stops the child in order.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.runner", str(spec_path), str(out_path)],
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    failure: str | None = None
    try:
        code = proc.wait(timeout=timeout)
        if code != 0:
            failure = f"runner exited with code {code}"
    except subprocess.TimeoutExpired:
        failure = f"runner did not finish within {timeout:.0f}s"
        _stop_child(proc, system)
    finally:
        _stop_child(proc, system)
    try:
        outcome: dict[str, Any] = json.loads(out_path.read_text())
    except (OSError, json.JSONDecodeError):
        outcome = {"rows": [], "errors": [], "not_applicable": [], "durability": None, "seconds": {}}
    result.rows.extend(outcome["rows"])
    result.errors.extend({"system": system, **error} for error in outcome["errors"])
    result.not_applicable.extend({"system": system, "scenario": s} for s in outcome["not_applicable"])
    if outcome.get("durability"):
        result.durability[system] = outcome["durability"]
    result.seconds[system] = {**outcome.get("seconds", {}), "total": time.monotonic() - began}
    if failure is not None:
        done = {row["scenario"] for row in outcome["rows"]} | set(outcome["not_applicable"])
        missing = [s for s in spec["scenarios"] if s not in done] or ["runner"]
        for scenario in missing:
            result.error(system, scenario, failure)
        logger.error("%s: %s", system, failure)


# --------------------------------------------------------------------------------------------------
# The run


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (make killed, CI time-out) unwinds like Ctrl-C, so children and servers are stopped.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    params: Params = (SMOKE if args.smoke else FULL).with_overrides(
        dict(item.split("=", 1) for item in args.overrides)
    )
    began = time.monotonic()
    started_at = dt.datetime.now(dt.UTC)
    scratch = _scratch_root()
    result = RunResult()
    pg = PostgresServer(scratch / "postgres", port=0, port_setting=None)
    nats = NatsServer(scratch / "nats", port=0, port_setting=None, monitoring_port_setting=None)
    machine: dict[str, Any] = {}
    try:
        logger.info("starting PostgreSQL and NATS in %s", scratch)
        pg.start()
        nats.start()
        postgres = asyncio.run(_postgres_facts(pg.dsn()))
        machine = machine_info({"event_loop": args.loop, "postgres": postgres, "nats": NATS_DURABILITY})
        machine["versions"]["postgres"] = postgres["version"]
        child_timeout = params.start_timeout_s * 2 + params.scenario_timeout_s * (len(args.scenarios) + 1)
        for system in args.systems:
            reason = _available(system)
            if reason is not None:
                logger.warning("skipping %s: %s", system, reason)
                result.skipped[system] = reason
                continue
            logger.info("== %s: %s", system, ", ".join(args.scenarios))
            spec = {
                "system": system,
                "workdir": str(scratch / "systems" / system),
                "nats_url": nats.url,
                "pg_dsn": pg.dsn(),
                "pg_pid": pg.pid,
                "nats_pid": nats.pid,
                "smoke": args.smoke,
                "scenarios": args.scenarios,
                "params": params.as_dict(),
                "loop": args.loop,
            }
            run_system(system, spec, scratch, child_timeout, result)
    finally:
        nats.stop()
        pg.stop()
        if result.errors or args.keep:
            logger.info("servers' data and systems' logs kept in %s", scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    document = {
        "generated_at": started_at.isoformat(timespec="seconds"),
        "mode": "smoke" if args.smoke else "full",
        "wall_s": round(time.monotonic() - began, 1),
        "machine": machine,
        "durability": result.durability,
        "params": params.as_dict(),
        "systems": args.systems,
        "scenarios": args.scenarios,
        "rows": result.rows,
        "errors": result.errors,
        "skipped": result.skipped,
        "not_applicable": result.not_applicable,
        "seconds": result.seconds,
    }
    if args.out is not None:
        out_dir: Path = args.out
    elif args.smoke:
        out_dir = Path(tempfile.mkdtemp(prefix="omni-bench-smoke-"))
    else:
        out_dir = BENCH_DIR / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    readme: Path = args.readme or (out_dir / "README.md" if args.smoke else BENCH_DIR / "README.md")
    json_path = out_dir / f"{started_at:%Y-%m-%d}.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    chart = out_dir / "latest.png"
    report.write_chart(document, chart)
    report.update_readme(readme, document, chart, json_path)
    logger.info("\n%s", report.text_table(document))
    logger.info("wrote %s, %s and %s in %.0fs", json_path, chart, readme, time.monotonic() - began)
    if result.errors:
        for error in result.errors:
            logger.error("error: %s %s: %s", error["system"], error["scenario"], error["message"])
        logger.error("results kept in %s", out_dir)
        return 1
    if args.smoke and args.out is None:
        logger.info("smoke run passed; removed %s", out_dir)
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
