"""The scenarios: how large each is in a smoke and in a full run, and how a system's raw
measurements become result rows ``{"system", "scenario", "metric", "value", "unit"}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypedDict

from bench.common import mean, median, percentile
from bench.systems.base import System

__all__ = ["FULL", "SCENARIOS", "SMOKE", "Params", "Row", "derived_rows", "run_scenario"]

SCENARIOS = ("latency", "sparse", "throughput", "long_history", "fan_out", "gateway_open", "gateway")


class Row(TypedDict):
    system: str
    scenario: str
    metric: str
    value: float
    unit: str


@dataclass(frozen=True)
class Params:
    """Sizes of one run. ``warmup`` 5-step workflows run (and are discarded) before the scenarios."""

    warmup: int
    latency_runs: int
    sparse_runs: int
    sparse_gap_s: float
    throughput_workflows: int
    long_history_steps: int
    fan_out_width: int
    gateway_clients: int
    gateway_duration_s: float
    scenario_timeout_s: float
    start_timeout_s: float

    def with_overrides(self, overrides: Mapping[str, str]) -> Params:
        """A copy with ``name=value`` overrides (``--set latency_runs=50``), typed like the field."""
        types = {f.name: f.type for f in fields(self)}
        changes: dict[str, Any] = {}
        for name, text in overrides.items():
            if name not in types:
                raise ValueError(f"unknown parameter {name!r}; known: {', '.join(types)}")
            changes[name] = float(text) if types[name] in (float, "float") else int(text)
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SMOKE = Params(
    warmup=1,
    latency_runs=5,
    # Gaps longer than the engine's pull requests last (2 s; its wait for work is 1 s): every run
    # then arrives on a pull re-issued after an idle one expired, the path the full run measures.
    sparse_runs=3,
    sparse_gap_s=2.2,
    throughput_workflows=10,
    long_history_steps=30,
    fan_out_width=20,
    gateway_clients=4,
    gateway_duration_s=2.0,
    scenario_timeout_s=45.0,
    start_timeout_s=90.0,
)
FULL = Params(
    warmup=10,
    latency_runs=200,
    sparse_runs=30,
    sparse_gap_s=2.0,
    throughput_workflows=2000,
    long_history_steps=1000,
    fan_out_width=1000,
    gateway_clients=50,
    gateway_duration_s=20.0,
    scenario_timeout_s=1800.0,
    start_timeout_s=180.0,
)


def _row(system: System, scenario: str, metric: str, value: float, unit: str) -> Row:
    return Row(system=system.name, scenario=scenario, metric=metric, value=float(value), unit=unit)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


async def run_scenario(system: System, scenario: str, params: Params) -> list[Row] | None:
    """Run one scenario on a started system; its rows, or None when the system cannot run it."""
    if scenario == "latency":
        runs = await system.latency(params.latency_runs)
        if not runs:
            raise RuntimeError("latency returned no measurement")
        return [
            _row(system, scenario, "p50_ms", _ms(median(runs)), "ms"),
            _row(system, scenario, "p99_ms", _ms(percentile(runs, 99)), "ms"),
            _row(system, scenario, "mean_ms", _ms(mean(runs)), "ms"),
        ]
    if scenario == "sparse":
        runs = await system.sparse(params.sparse_runs, params.sparse_gap_s)
        if not runs:
            raise RuntimeError("sparse returned no measurement")
        return [
            _row(system, scenario, "p50_ms", _ms(median(runs)), "ms"),
            _row(system, scenario, "p99_ms", _ms(percentile(runs, 99)), "ms"),
        ]
    if scenario == "throughput":
        result = await system.throughput(params.throughput_workflows)
        rows = [
            _row(system, scenario, "workflows_per_s", result.workflows / result.wall_s, "workflows/s"),
            _row(system, scenario, "steps_per_s", result.steps / result.wall_s, "steps/s"),
        ]
        if result.cpu_s is not None:
            rows.append(_row(system, scenario, "cpu_s_per_step", result.cpu_s / result.steps, "s"))
        return rows
    if scenario == "long_history":
        gaps = await system.long_history(params.long_history_steps)
        if len(gaps) < 20:
            raise RuntimeError(f"long_history returned {len(gaps)} step latencies; at least 20 are needed")
        near_start = median(gaps[4:15])  # steps 5 to 15
        near_end = median(gaps[-10:])
        return [
            _row(system, scenario, "near_step_10_ms", _ms(near_start), "ms"),
            _row(system, scenario, "near_step_1000_ms", _ms(near_end), "ms"),
            _row(system, scenario, "ratio", near_end / near_start, "x"),
        ]
    if scenario == "fan_out":
        wall = await system.fan_out(params.fan_out_width)
        if wall is None:
            return None
        return [
            _row(system, scenario, "wall_ms", _ms(wall), "ms"),
            _row(system, scenario, "steps_per_s", params.fan_out_width / wall, "steps/s"),
        ]
    if scenario in ("gateway", "gateway_open"):
        outcome = await system.gateway(
            params.gateway_clients, params.gateway_duration_s, authenticated=scenario == "gateway"
        )
        if outcome is None:
            return None
        latencies, errors = outcome
        if not latencies:
            raise RuntimeError(f"no request succeeded ({errors} errors)")
        return [
            _row(
                system, scenario, "requests_per_s", len(latencies) / params.gateway_duration_s, "requests/s"
            ),
            _row(system, scenario, "p50_ms", _ms(median(latencies)), "ms"),
            _row(system, scenario, "p99_ms", _ms(percentile(latencies, 99)), "ms"),
            _row(system, scenario, "errors", errors, "count"),
        ]
    raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")


def derived_rows(rows: Sequence[Row]) -> list[Row]:
    """Rows computed from one system's other rows: ``sparse``'s ``p50_vs_latency`` (its p50 over
    the same run's back-to-back ``latency`` p50), when both scenarios ran."""
    p50 = {(r["system"], r["scenario"]): r["value"] for r in rows if r["metric"] == "p50_ms"}
    rate = {(r["system"], r["scenario"]): r["value"] for r in rows if r["metric"] == "requests_per_s"}
    derived: list[Row] = []
    for (system, scenario), checked in rate.items():
        unchecked = rate.get((system, "gateway_open"))
        if scenario == "gateway" and unchecked:
            # What authenticating every request costs: the share of throughput it takes.
            derived.append(
                Row(
                    system=system,
                    scenario="gateway",
                    metric="auth_cost_pct",
                    value=100.0 * (1.0 - checked / unchecked),
                    unit="%",
                )
            )
    for (system, scenario), sparse in p50.items():
        back_to_back = p50.get((system, "latency"))
        if scenario == "sparse" and back_to_back:
            derived.append(
                Row(
                    system=system,
                    scenario="sparse",
                    metric="p50_vs_latency",
                    value=sparse / back_to_back,
                    unit="x",
                )
            )
    return derived
