"""What a run leaves behind for people: a table, a PNG chart, and the results section of the README.

The README's results section sits between two markers and is the only part rewritten; the rest of
the file (how to run, what is measured, profiles and before/after notes) is written by hand.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["METRICS", "text_table", "update_readme", "write_chart"]

START_MARKER = "<!-- bench:results:start -->"
END_MARKER = "<!-- bench:results:end -->"
SYSTEM_ORDER = ("omni", "temporal", "dbos")
COLORS = {"omni": "#2a7ab0", "temporal": "#7a4fb5", "dbos": "#d9822b"}

# (scenario, metric, unit) in the order tables list them.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("latency", "p50_ms", "ms"),
    ("latency", "p99_ms", "ms"),
    ("latency", "mean_ms", "ms"),
    ("sparse", "p50_ms", "ms"),
    ("sparse", "p99_ms", "ms"),
    ("sparse", "p50_vs_latency", "x"),
    ("throughput", "workflows_per_s", "workflows/s"),
    ("throughput", "steps_per_s", "steps/s"),
    ("throughput", "cpu_s_per_step", "s"),
    ("long_history", "near_step_10_ms", "ms"),
    ("long_history", "near_step_1000_ms", "ms"),
    ("long_history", "ratio", "x"),
    ("fan_out", "wall_ms", "ms"),
    ("fan_out", "steps_per_s", "steps/s"),
    ("gateway", "requests_per_s", "requests/s"),
    ("gateway", "p50_ms", "ms"),
    ("gateway", "p99_ms", "ms"),
    ("gateway", "errors", "count"),
    ("gateway", "auth_cost_pct", "%"),
    ("gateway_open", "requests_per_s", "requests/s"),
    ("gateway_open", "p50_ms", "ms"),
    ("gateway_open", "p99_ms", "ms"),
    ("gateway_open", "errors", "count"),
)


def _systems(document: Mapping[str, Any]) -> list[str]:
    named = list(document.get("systems", [])) or list(SYSTEM_ORDER)
    return [s for s in SYSTEM_ORDER if s in named]


def _format(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.3g}"


def _cells(document: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the results table: one line per (scenario, metric), one column per system."""
    systems = _systems(document)
    values: dict[tuple[str, str, str], float] = {}
    errored = {(e["system"], e["scenario"]) for e in document.get("errors", [])}
    not_applicable = {(n["system"], n["scenario"]) for n in document.get("not_applicable", [])}
    skipped = set(document.get("skipped", {}))
    for row in document.get("rows", []):
        if row["metric"] == "error":
            continue
        values[(row["system"], row["scenario"], row["metric"])] = row["value"]
    scenarios = set(document.get("scenarios", []))
    body: list[list[str]] = []
    for scenario, metric, unit in METRICS:
        if scenarios and scenario not in scenarios:
            continue
        line = [scenario, metric, unit]
        for system in systems:
            if (system, scenario, metric) in values:
                line.append(_format(values[(system, scenario, metric)]))
            elif (system, scenario) in errored:
                line.append("error")
            elif (system, scenario) in not_applicable:
                line.append("n/a")
            elif system in skipped:
                line.append("skipped")
            else:
                line.append("-")
        body.append(line)
    return ["scenario", "metric", "unit", *systems], body


def text_table(document: Mapping[str, Any]) -> str:
    header, body = _cells(document)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in [header, *body]
    ]
    return "\n".join(lines)


def _markdown_table(document: Mapping[str, Any]) -> str:
    header, body = _cells(document)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|",
    ]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Chart


# (title, scenario, ((metric, label), ...), scale); a metric may name another scenario as
# "scenario:metric" (the latency panel shows sparse's figures beside the back-to-back ones).
_PANELS: tuple[tuple[str, str, Sequence[tuple[str, str]], float], ...] = (
    (
        "Latency, 5 sequential steps (ms, lower is better)",
        "latency",
        (
            ("p50_ms", "p50"),
            ("p99_ms", "p99"),
            ("sparse:p50_ms", "p50, idle gaps"),
            ("sparse:p99_ms", "p99, idle gaps"),
        ),
        1.0,
    ),
    ("Throughput (steps/s, higher is better)", "throughput", (("steps_per_s", "steps/s"),), 1.0),
    ("CPU per step (ms, lower is better)", "throughput", (("cpu_s_per_step", "CPU ms/step"),), 1000.0),
    (
        "Long history: step latency (ms)",
        "long_history",
        (("near_step_10_ms", "near step 10"), ("near_step_1000_ms", "near the last step")),
        1.0,
    ),
    ("Fan-out: one run of parallel steps (ms)", "fan_out", (("wall_ms", "wall"),), 1.0),
    ("HTTP execute-and-wait (ms)", "gateway", (("p50_ms", "p50"), ("p99_ms", "p99")), 1.0),
)


def write_chart(document: Mapping[str, Any], path: Path) -> None:
    """A PNG with one panel per scenario, one bar colour per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = _systems(document)
    values = {
        (row["system"], row["scenario"], row["metric"]): float(row["value"])
        for row in document.get("rows", [])
        if row["metric"] != "error"
    }
    figure, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for axis, (title, scenario, metrics, scale) in zip(axes.flat, _PANELS, strict=True):
        axis.set_title(title, fontsize=10)
        width = 0.8 / max(1, len(systems))
        drawn = False
        for offset, system in enumerate(systems):
            xs: list[float] = []
            heights: list[float] = []
            for position, (metric, _label) in enumerate(metrics):
                own, _, named = metric.rpartition(":")
                key = (system, own or scenario, named)
                if key in values:
                    xs.append(position - 0.4 + width * (offset + 0.5))
                    heights.append(values[key] * scale)
            if not xs:
                continue
            drawn = True
            bars = axis.bar(xs, heights, width=width * 0.95, color=COLORS.get(system), label=system)
            axis.bar_label(bars, labels=[_format(h) for h in heights], fontsize=8, padding=2)
        axis.set_xticks(range(len(metrics)), [label for _metric, label in metrics])
        axis.margins(y=0.15)
        axis.spines[["top", "right"]].set_visible(False)
        if drawn:
            axis.legend(fontsize=8, frameon=False)
        else:
            axis.set_xticks([])
            axis.set_yticks([])
            axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes, color="gray")
    machine = document.get("machine", {})
    figure.suptitle(
        f"Omni vs Temporal vs DBOS - {document.get('mode', '')} run {document.get('generated_at', '')}, "
        f"{machine.get('cores', '?')} cores, {machine.get('cpu_model', '')}",
        fontsize=11,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------------------------------
# README


def _machine_line(document: Mapping[str, Any]) -> str:
    machine = document.get("machine", {})
    versions = machine.get("versions", {})
    parts = [
        f"{machine.get('cores', '?')} cores ({machine.get('cpu_model', 'unknown CPU')})",
        f"{machine.get('memory_gb', '?')} GB",
        f"{machine.get('os', '')}",
        f"Python {machine.get('python', '?')} on {machine.get('event_loop', 'asyncio')}",
        f"PostgreSQL {versions.get('postgres', '?')}",
        f"{versions.get('nats-server') or 'nats-server ?'}",
        f"{versions.get('temporal-cli') or 'temporal ?'}",
        f"temporalio {versions.get('temporalio', '?')}",
        f"dbos {versions.get('dbos', '?')}",
        f"Omni at {versions.get('omni (git)', '?')}",
    ]
    return ", ".join(parts)


def results_block(document: Mapping[str, Any], chart: Path, raw: Path, readme: Path) -> str:
    base = readme.parent
    chart_link = Path(os.path.relpath(chart, base)).as_posix()
    raw_link = Path(os.path.relpath(raw, base)).as_posix()
    params = document.get("params", {})
    lines = [
        START_MARKER,
        "## Latest results",
        "",
        f"A {document.get('mode', 'full')} run at {document.get('generated_at', '?')} (UTC), "
        f"{document.get('wall_s', '?')} s in all, on {_machine_line(document)}. "
        f"Raw rows: [`{raw_link}`]({raw_link}).",
        "",
        "Sizes: "
        + ", ".join(
            [
                f"latency {params.get('latency_runs')} runs after {params.get('warmup')} warm-up",
                f"sparse {params.get('sparse_runs')} runs, each after {params.get('sparse_gap_s')} s idle",
                f"throughput {params.get('throughput_workflows')} workflows",
                f"long history {params.get('long_history_steps')} steps",
                f"fan-out {params.get('fan_out_width')} steps",
                f"gateway {params.get('gateway_clients')} clients for {params.get('gateway_duration_s')} s",
            ]
        )
        + ".",
        "",
        _markdown_table(document),
        "",
        "`n/a`: the system cannot run that scenario (see Scenarios above). `skipped`: the system was not run;"
        " `error`: the scenario failed (see Errors below).",
        "",
        f"![Omni, Temporal and DBOS side by side]({chart_link})",
        "",
        "Durability in this run:",
        "",
    ]
    for system, text in document.get("durability", {}).items():
        lines.append(f"- **{system}**: {text}")
    postgres = document.get("machine", {}).get("postgres", {})
    if postgres:
        lines.append(
            f"- PostgreSQL server: fsync={postgres.get('fsync')}, "
            f"synchronous_commit={postgres.get('synchronous_commit')}, "
            f"wal_sync_method={postgres.get('wal_sync_method')}"
        )
    nats = document.get("machine", {}).get("nats")
    if nats:
        lines.append(f"- NATS server: {nats}")
    skipped = document.get("skipped", {})
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{system} ({why})" for system, why in skipped.items()) + "."]
    errors = document.get("errors", [])
    if errors:
        lines += ["", "Errors:", ""]
        lines += [f"- {e['system']} {e['scenario']}: {e['message']}" for e in errors]
    lines.append(END_MARKER)
    return "\n".join(lines)


def update_readme(readme: Path, document: Mapping[str, Any], chart: Path, raw: Path) -> None:
    """Replace the results section of ``readme`` (between the markers), or write a README holding it."""
    block = results_block(document, chart, raw, readme)
    if readme.exists():
        text = readme.read_text()
        if START_MARKER in text and END_MARKER in text:
            before = text.split(START_MARKER, 1)[0]
            after = text.split(END_MARKER, 1)[1]
            readme.write_text(before + block + after)
            return
        readme.write_text(text.rstrip("\n") + "\n\n" + block + "\n")
        return
    readme.parent.mkdir(parents=True, exist_ok=True)
    readme.write_text("# Benchmarks\n\n" + block + "\n")
