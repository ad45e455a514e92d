"""Rows real engines wrote stay readable: every recorded history folds to the state it had.

``fixtures/history/<dir>/<scenario>.json`` holds the ``run_events`` rows of a real run and the
projection the engine saved when the run ended (``record_history.py`` writes them; a file once
committed is never rewritten). Each is decoded (upcast where it is of an older version) and folded
with the current code, and must give the same state. ``1-unversioned`` holds rows written before
versions were stored (all read as v1); ``2-typed`` rows written by the typed engine.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator
from omni_contract.events import RunEventType
from omni_contract.history import VERSIONS, decode_data
from omni_engine.state import RunState, apply

FIXTURES = Path(__file__).parent / "fixtures" / "history"
PROTO = Path(__file__).resolve().parents[3] / "proto"
FILES = sorted(FIXTURES.glob("*/*.json"))
# What the engine keeps in the projection that no event says: where its decisions resume, and
# which seq it last saved whole.
NOT_FOLDED = ("cursor", "snapshot_seq")
ENDS_AS = {"rerun": "completed"}  # each other scenario is named for the status its run ends with


def fold(doc: dict[str, Any]) -> RunState:
    run_id = doc["state"]["run_id"]
    state: RunState | None = None
    for row in doc["rows"]:
        data = decode_data(run_id, row["seq"], row["type"], row.get("v", 1), json.dumps(row["data"]))
        state = apply(state, run_id, data, datetime.fromisoformat(row["at"]))
    assert state is not None
    state.last_seq = doc["rows"][-1]["seq"]
    return state


def test_there_are_fixtures_of_both_eras() -> None:
    assert {path.parent.name for path in FILES} >= {"1-unversioned", "2-typed"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_recorded_history_folds_to_the_state_its_engine_saved(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    folded = msgspec.to_builtins(fold(doc))
    saved = msgspec.to_builtins(msgspec.convert(doc["state"], RunState))
    for key in NOT_FOLDED:
        folded.pop(key, None)
        saved.pop(key, None)
    assert folded == saved
    assert folded["status"] == ENDS_AS.get(path.stem, path.stem)


@pytest.mark.parametrize("era", sorted({p.parent.name for p in FILES}))
def test_the_fixtures_of_an_era_hold_every_event_type(era: str) -> None:
    seen = {
        row["type"]
        for path in FILES
        if path.parent.name == era
        for row in json.loads(path.read_text())["rows"]
    }
    every = {v for k, v in vars(RunEventType).items() if k.isupper() and isinstance(v, str)}
    assert seen == every


def test_the_rows_of_current_versions_fit_the_published_schemas() -> None:
    checked = 0
    for path in FILES:
        for row in json.loads(path.read_text())["rows"]:
            version = row.get("v", 1)
            if version != VERSIONS[row["type"]]:
                continue
            schema = json.loads((PROTO / "history" / f"{row['type']}.v{version}.schema.json").read_text())
            errors = [e.message for e in Draft202012Validator(schema).iter_errors(row["data"])]
            assert errors == [], f"{path.name} seq {row['seq']}"
            checked += 1
    assert checked > 50
