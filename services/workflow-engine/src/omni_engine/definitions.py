"""Workflow definitions as the engine serves them: files loaded at start and definitions registered
over the API, stored in PostgreSQL (every version, content-addressed) and cached in memory by
(name, hash). A cached definition never changes, so replicas only ask PostgreSQL which version is
current."""

from __future__ import annotations

import logging
from pathlib import Path

from omni_contract.rpc import FieldProblem

from omni_engine.definition import (
    WorkflowDefinition,
    WorkflowError,
    WorkflowValidationError,
    definition_to_dict,
    load_workflow_dir,
    parse_workflow,
    validate_payload,
)
from omni_engine.store import DefinitionRow, Store

log = logging.getLogger(__name__)


class InvalidDefinition(Exception):
    def __init__(self, message: str, problems: list[FieldProblem]) -> None:
        super().__init__(message)
        self.problems = problems


def problems_of(errors: list[WorkflowError]) -> list[FieldProblem]:
    return [FieldProblem(field=e.field or "", message=e.message, file=e.file, step=e.step) for e in errors]


def payload_problems(defn: WorkflowDefinition, payload: object) -> list[FieldProblem]:
    return [FieldProblem(field=p.field, message=p.message) for p in validate_payload(defn, payload)]


class Definitions:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_hash: dict[tuple[str, str], WorkflowDefinition] = {}
        self.load_errors: list[WorkflowError] = []

    def _parse_row(self, row: DefinitionRow) -> WorkflowDefinition:
        key = (row.name, row.hash)
        cached = self._by_hash.get(key)
        if cached is None:
            cached = parse_workflow(row.definition, source=f"{row.name}@{row.hash[:12]}")
            self._by_hash[key] = cached
        return cached

    async def save(self, defn: WorkflowDefinition, origin: str) -> bool:
        new = await self.store.save_definition(
            defn.name, defn.content_hash, defn.version, defn.trigger.event, definition_to_dict(defn), origin
        )
        self._by_hash[(defn.name, defn.content_hash)] = defn
        return new

    async def load_dir(self, directory: Path) -> list[WorkflowDefinition]:
        """Load every file; a bad file is logged (and kept in ``load_errors``), never fatal."""
        # Reading a handful of small files at start-up: blocking the loop briefly is fine here.
        if not directory.is_dir():  # noqa: ASYNC240
            log.warning("workflow directory %s does not exist", directory)
            return []
        defs, errors = load_workflow_dir(directory)
        self.load_errors = errors
        for error in errors:
            log.error("workflow definition rejected: %s", error)
        for defn in defs:
            if await self.save(defn, origin=defn.source):
                log.info(
                    "workflow %s version %s (%s) loaded from %s",
                    defn.name,
                    defn.version,
                    defn.content_hash[:12],
                    defn.source,
                )
        return defs

    async def register(self, source: str, filename: str) -> WorkflowDefinition:
        try:
            defn = parse_workflow(source, source=filename)
        except WorkflowValidationError as exc:
            raise InvalidDefinition(str(exc), problems_of(exc.errors)) from exc
        except WorkflowError as exc:
            raise InvalidDefinition(str(exc), problems_of([exc])) from exc
        await self.save(defn, origin="api")
        return defn

    async def current(self, name: str) -> WorkflowDefinition | None:
        row = await self.store.definition(name)
        return None if row is None else self._parse_row(row)

    async def get(self, name: str, hash_: str) -> WorkflowDefinition | None:
        cached = self._by_hash.get((name, hash_))
        if cached is not None:
            return cached
        row = await self.store.definition(name, hash_)
        return None if row is None else self._parse_row(row)

    async def all_current(self) -> list[WorkflowDefinition]:
        return [self._parse_row(row) for row in await self.store.current_definitions()]

    async def for_trigger(self, subject: str) -> list[WorkflowDefinition]:
        return [self._parse_row(row) for row in await self.store.current_definitions(trigger=subject)]
