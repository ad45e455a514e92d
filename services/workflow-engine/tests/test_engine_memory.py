"""What the engine keeps in memory is bounded (issue 9, item 16: the engine grew from 83 to 210 MB
under a probe of mixed traffic, most of it held by parsed definitions of registered workflows).
The parsed-definition cache keeps the definitions used last, not every version ever registered
or read; the states of runs in progress are cached up to a number of bytes, not only a count; the
metrics' ``workflow`` label names a bounded number of workflows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from engine_harness import Harness, ok
from omni_contract.events import ToolInvoke, ToolResult
from omni_contract.history import RunStarted, StepRef
from omni_engine.definitions import Definitions
from omni_engine.engine import Engine, EngineMetrics
from omni_engine.state import RunState, apply
from omni_engine.store import Store, init_connection
from omni_runtime import db
from omni_testkit import wait_for
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.integration


def definition(name: str, version: str = "1") -> str:
    return (
        f"name: {name}\nversion: '{version}'\ntrigger:\n  event: app.test.memory\n"
        "steps:\n  - name: only\n    tool: util.echo\n    provider: p\n"
    )


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    pool: asyncpg.Pool = await db.create_pool(
        database_url, "engine", min_size=1, max_size=2, init=init_connection
    )
    async with pool.acquire() as conn:
        await db.apply_migrations(conn, "engine", db.migration_files("omni_engine"))
    try:
        yield Store(pool)
    finally:
        await pool.close()


async def test_registering_many_workflows_and_versions_keeps_only_the_cache_size_parsed(
    store: Store,
) -> None:
    definitions = Definitions(store, cache_size=3)
    for i in range(10):
        await definitions.register(definition(f"memory-names-{i}"), "<test>")
    for version in range(10):
        await definitions.register(definition("memory-versions", version=str(version)), "<test>")
    assert definitions.cached == 3


async def test_a_definition_dropped_from_the_cache_is_read_again_when_asked_for(store: Store) -> None:
    definitions = Definitions(store, cache_size=2)
    first, _ = await definitions.register(definition("memory-reread-0"), "<test>")
    for i in range(1, 5):
        await definitions.register(definition(f"memory-reread-{i}"), "<test>")
    assert definitions.cached == 2
    again = await definitions.get(first.id, first.content_hash)
    assert again is not None
    assert again.content_hash == first.content_hash
    current = await definitions.current(first.id)
    assert current is not None
    assert current.content_hash == first.content_hash
    assert definitions.cached == 2


async def test_the_definition_used_last_stays_cached_while_others_are_registered(store: Store) -> None:
    definitions = Definitions(store, cache_size=2)
    hot, _ = await definitions.register(definition("memory-hot"), "<test>")
    for i in range(5):
        await definitions.register(definition(f"memory-cold-{i}"), "<test>")
        assert await definitions.get(hot.id, hot.content_hash) is hot  # a hit: the same object


async def test_a_cache_of_no_definitions_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="cache_size"):
        Definitions(store, cache_size=0)


async def test_runs_of_a_workflow_whose_definition_left_the_cache_still_complete(harness: Harness) -> None:
    await harness.stop_engine()
    await harness.start_engine(definition_cache_size=1)
    release = asyncio.Event()

    async def held(invoke: ToolInvoke) -> ToolResult | None:
        await release.wait()
        return ok(invoke)

    harness.respond = held
    await harness.register(definition("memory-evicted"))
    run_id = await harness.start("memory-evicted", {})
    await wait_for(lambda: bool(harness.invokes("only")), timeout=10)
    for i in range(3):  # each registration pushes the one before out of a cache of one
        await harness.register(definition(f"memory-evictor-{i}"))
    await harness.register(definition("memory-evicted", version="2"))
    release.set()  # the run's result arrives now: its version must be read again
    assert (await harness.finished(run_id))["status"] == "completed"
    second = await harness.start("memory-evicted", {})
    assert (await harness.finished(second))["status"] == "completed"


def test_the_workflow_label_names_the_first_workflows_and_counts_the_rest_as_other() -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry, max_workflow_labels=2)
    for i in range(50):
        metrics.runs_started.labels(metrics.workflow(f"random-{i}")).inc()
    metrics.runs_started.labels(metrics.workflow("random-0")).inc()  # one named before stays named
    counts = {
        sample.labels["workflow"]: sample.value
        for metric in registry.collect()
        if metric.name == "omni_engine_runs_started"
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
    assert counts == {"random-0": 2, "random-1": 1, "other": 48}


STUCK = """
name: memory-stuck
version: '1'
trigger:
  event: app.test.memory.stuck
  payload:
    text: string
steps:
  - name: only
    tool: util.echo
    provider: p
    input:
      text: "${trigger.payload.text}"
"""


def running_state(run_id: str, text: str) -> RunState:
    now = datetime.now(UTC)
    started = RunStarted(
        workflow="w",
        hash="h",
        version="1",
        payload={"text": text},
        context={},
        steps=[StepRef(name="a", tool="t.t")],
    )
    return apply(None, run_id, started, now)


def bare_engine(**kwargs: Any) -> Engine:
    """An engine whose state cache alone is exercised (nothing here reaches a store or NATS)."""
    none: Any = None
    return Engine(none, none, none, EngineMetrics(CollectorRegistry()), **kwargs)


def test_the_states_of_runs_in_progress_are_cached_up_to_the_byte_bound() -> None:
    engine = bare_engine(cache_bytes=50_000)
    for i in range(100):
        engine._remember(running_state(f"run-{i}", "x" * 4_000))
    assert engine.cached_bytes <= 50_000
    assert 5 <= engine.cached_runs <= 12  # about 4 kB each
    assert engine._forget("run-99") is not None  # the latest stay, the oldest went first
    assert engine._forget("run-0") is None


def test_a_state_larger_than_the_byte_bound_is_not_cached_and_a_finished_one_is_dropped() -> None:
    engine = bare_engine(cache_bytes=10_000)
    engine._remember(running_state("big", "x" * 20_000))
    assert engine.cached_runs == 0
    small = running_state("small", "x")
    engine._remember(small)
    assert engine.cached_runs == 1
    small.status = "completed"
    engine._remember(small)
    assert (engine.cached_runs, engine.cached_bytes) == (0, 0)


async def test_runs_are_completed_when_their_states_do_not_all_fit_the_cache(harness: Harness) -> None:
    await harness.stop_engine()
    await harness.start_engine(run_cache_bytes=20_000)
    release = asyncio.Event()

    async def held(invoke: ToolInvoke) -> ToolResult | None:
        await release.wait()
        return ok(invoke)

    harness.respond = held
    await harness.register(STUCK)
    runs = [await harness.start("memory-stuck", {"text": f"{i}" + "x" * 2_000}) for i in range(20)]
    await wait_for(lambda: len(harness.invokes("only")) == 20, timeout=30)
    release.set()
    for run_id in runs:
        assert (await harness.finished(run_id))["status"] == "completed"
