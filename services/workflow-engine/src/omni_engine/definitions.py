"""Workflow definitions as the engine serves them: files loaded at start and definitions registered
over the API, stored in PostgreSQL (every version, content-addressed) and cached in memory by
(id, hash). A cached definition never changes, so replicas only ask PostgreSQL which version is
current. The cache keeps the ``cache_size`` definitions used last (a parsed definition is a few
to tens of kilobytes, and every registered version is a new one: an unbounded cache grew with
every registration); one that fell out is read again from PostgreSQL and parsed when a run or a
request needs it. (A list of more current workflows than the cache holds parses some on every
list: the price of a bound.)

A workflow is addressed by its id (``id:``, or the slug of its display name). A version is
immutable: registering the same id and version with other content is refused
(``version_exists``); registering the very same content again changes nothing.

Tenants: a workflow loaded from a file is shared (every tenant lists, reads and runs it); one
registered over the API belongs to the registering tenant (the default tenant when none) and only
that tenant sees it. Another tenant saving a version of it, or a tenant other than the default one
saving a version of a shared one, is refused as ``id_taken``, without naming the owner. Who sees
what is read from PostgreSQL with the current version (the same query as without tenants), never
from the cache: the cache holds parsed contents by (id, hash), which are the same for everyone.

Reading is defensive: a stored definition that no longer validates (stored before a limit
existed, or by an older engine) is logged and left out of lists and trigger matching, and asking
for it by id is answered with a clear error; it never fails a list, and readiness never reads it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

from omni_contract.rpc import FieldProblem

from omni_engine.definition import (
    WorkflowDefinition,
    WorkflowError,
    WorkflowValidationError,
    address_field,
    definition_to_dict,
    load_workflow_dir,
    parse_workflow,
    validate_payload,
)
from omni_engine.store import DefinitionRow, ForeignWorkflow, IdTaken, Store, VersionExists
from omni_engine.tenants import DEFAULT_TENANT

log = logging.getLogger(__name__)


class InvalidDefinition(Exception):
    def __init__(self, message: str, problems: list[FieldProblem]) -> None:
        super().__init__(message)
        self.problems = problems


class DefinitionConflict(Exception):
    """A definition that is valid but cannot be stored: ``code`` is ``version_exists`` or
    ``id_taken`` (both 409), ``problem`` names the field."""

    def __init__(self, code: str, message: str, problem: FieldProblem) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.problem = problem


class StoredDefinitionInvalid(Exception):
    """A stored definition that no longer loads: it is not served until a valid version replaces it."""

    def __init__(self, id_: str, hash_: str, error: WorkflowValidationError) -> None:
        first = error.errors[0] if error.errors else None
        super().__init__(
            f"the stored definition of workflow {id_!r} ({hash_[:12]}) no longer loads"
            + (f": {first}" if first is not None else "")
            + "; register a corrected version"
        )
        self.id = id_
        self.hash = hash_
        self.errors = error.errors


def problems_of(errors: list[WorkflowError]) -> list[FieldProblem]:
    return [FieldProblem(field=e.field or "", message=e.message, file=e.file, step=e.step) for e in errors]


def invalid_definition(exc: WorkflowValidationError) -> InvalidDefinition:
    """The API's error for a definition with problems: a short message (how many, and the first)
    and one detail per problem (at most ``MAX_ERRORS`` and a count, so the reply stays small)."""
    count = len(exc.errors)
    first = str(exc.errors[0]) if exc.errors else exc.file
    message = first if count == 1 else f"{count} problems in {exc.file}, the first: {first}"
    return InvalidDefinition(message, problems_of(exc.errors))


def payload_problems(defn: WorkflowDefinition, payload: object) -> list[FieldProblem]:
    return [FieldProblem(field=p.field, message=p.message) for p in validate_payload(defn, payload)]


DEFAULT_CACHE_SIZE = 1000


class Definitions:
    def __init__(self, store: Store, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, not {cache_size}")
        self.store = store
        # Least recently used first; at most ``cache_size`` entries.
        self._by_hash: OrderedDict[tuple[str, str], WorkflowDefinition] = OrderedDict()
        self.cache_size = cache_size
        self.load_errors: list[WorkflowError] = []

    @property
    def cached(self) -> int:
        """How many parsed definitions the cache holds."""
        return len(self._by_hash)

    def _cached(self, key: tuple[str, str]) -> WorkflowDefinition | None:
        found = self._by_hash.get(key)
        if found is not None:
            self._by_hash.move_to_end(key)
        return found

    def _keep(self, defn: WorkflowDefinition, key: tuple[str, str]) -> None:
        self._by_hash[key] = defn
        self._by_hash.move_to_end(key)
        while len(self._by_hash) > self.cache_size:
            self._by_hash.popitem(last=False)

    def _parse_row(self, row: DefinitionRow) -> WorkflowDefinition:
        """The definition of a stored row; raises ``StoredDefinitionInvalid`` when it no longer loads."""
        key = (row.id, row.hash)
        cached = self._cached(key)
        if cached is None:
            try:
                cached = parse_workflow(row.definition, source=f"{row.id}@{row.hash[:12]}")
            except WorkflowValidationError as exc:
                raise StoredDefinitionInvalid(row.id, row.hash, exc) from None
            self._keep(cached, key)
        return cached

    def _parse_rows(self, rows: list[DefinitionRow]) -> tuple[list[WorkflowDefinition], list[WorkflowError]]:
        """The rows that load, and one error for each that does not (logged, never raised)."""
        found: list[WorkflowDefinition] = []
        problems: list[WorkflowError] = []
        for row in rows:
            try:
                found.append(self._parse_row(row))
            except StoredDefinitionInvalid as exc:
                log.error("stored workflow definition skipped: %s", exc)
                problems.append(WorkflowError(f"{row.id}@{row.hash[:12]}", None, None, str(exc)))
        return found, problems

    async def save(
        self, defn: WorkflowDefinition, origin: str, *, tenant: str | None = None, shared: bool = False
    ) -> bool:
        """Store ``defn`` as the current version of its id; False when this content was stored
        before (nothing changes). A ``shared`` one (a file's) is saved as the default tenant and
        shared; else a new workflow belongs to ``tenant`` (None: the default tenant), and ``tenant``
        must be allowed to save versions of an existing one (None: always). Raises
        ``DefinitionConflict``."""
        try:
            new = await self.store.save_definition(
                defn.id,
                defn.display_name,
                defn.content_hash,
                defn.version,
                defn.trigger.event,
                definition_to_dict(defn),
                origin,
                id_from_name=defn.explicit_id is None,
                owner=None if shared else tenant or DEFAULT_TENANT,
                writer=DEFAULT_TENANT if shared else tenant,
            )
        except ForeignWorkflow:
            field = address_field(defn)
            if field == "id":
                message = (
                    f"the id {defn.id!r} is taken by a workflow this caller cannot change: give this "
                    "workflow another id"
                )
            else:
                message = (
                    f"the name {defn.display_name!r} gives the id {defn.id!r}, which is taken by a "
                    "workflow this caller cannot change: give this workflow an id of its own"
                )
            raise DefinitionConflict(
                "id_taken", message, FieldProblem(field=field, message=message, file=defn.source)
            ) from None
        except VersionExists as exc:
            message = (
                f"workflow {defn.id!r} already has a version {defn.version!r} with other content "
                f"({exc.hash[:12]}): a version is immutable, register this one under a new version"
            )
            problem = FieldProblem(field="version", message=message, file=defn.source)
            raise DefinitionConflict("version_exists", message, problem) from None
        except IdTaken as exc:
            field = address_field(defn)
            if field == "id":  # unreachable: an explicit id is the workflow's own address
                message = f"the id {defn.id!r} belongs to workflow {exc.name!r}"
            else:
                message = (
                    f"the name {defn.display_name!r} gives the id {defn.id!r}, which belongs to "
                    f"workflow {exc.name!r}: give this workflow an id of its own (or the same name "
                    "to register a new version of that one)"
                )
            raise DefinitionConflict(
                "id_taken", message, FieldProblem(field=field, message=message, file=defn.source)
            ) from None
        self._keep(defn, (defn.id, defn.content_hash))
        return new

    async def load_dir(self, directory: Path) -> list[WorkflowDefinition]:
        """Load every file; a bad file is logged (and kept in ``load_errors``), never fatal. A file
        whose version is stored with other content (or whose name gives another workflow's id) is
        such a bad file: the stored version stays current."""
        # Reading a handful of small files at start-up: blocking the loop briefly is fine here.
        if not directory.is_dir():  # noqa: ASYNC240
            log.warning("workflow directory %s does not exist", directory)
            return []
        defs, errors = load_workflow_dir(directory)
        loaded: list[WorkflowDefinition] = []
        for defn in defs:
            try:
                new = await self.save(defn, origin=defn.source, shared=True)
            except DefinitionConflict as exc:
                errors.append(WorkflowError(defn.source, None, exc.problem.field, exc.message))
                continue
            loaded.append(defn)
            if new:
                log.info(
                    "workflow %s version %s (%s) loaded from %s",
                    defn.id,
                    defn.version,
                    defn.content_hash[:12],
                    defn.source,
                )
        self.load_errors = errors
        for error in errors:
            log.error("workflow definition rejected: %s", error)
        return loaded

    async def register(
        self, source: str, filename: str, tenant: str | None = None
    ) -> tuple[WorkflowDefinition, bool]:
        """Validate and store a definition for ``tenant`` (see ``save``); True when it is a new
        version, False when the same content was registered before. Raises ``InvalidDefinition``
        or ``DefinitionConflict``."""
        try:
            defn = parse_workflow(source, source=filename)
        except WorkflowValidationError as exc:
            raise invalid_definition(exc) from exc
        except WorkflowError as exc:
            raise InvalidDefinition(str(exc), problems_of([exc])) from exc
        created = await self.save(defn, origin="api", tenant=tenant)
        return defn, created

    async def current(self, id_: str, tenant: str | None = None) -> WorkflowDefinition | None:
        """The current version of workflow ``id_``, None when ``tenant`` does not see it (None:
        every tenant's); raises ``StoredDefinitionInvalid`` when it no longer loads."""
        row = await self.store.definition(id_, tenant=tenant)
        return None if row is None else self._parse_row(row)

    async def get(self, id_: str, hash_: str) -> WorkflowDefinition | None:
        """The version ``hash_`` of workflow ``id_``: a run's own (no tenant is checked)."""
        cached = self._cached((id_, hash_))
        if cached is not None:
            return cached
        row = await self.store.definition(id_, hash_)
        return None if row is None else self._parse_row(row)

    async def all_current(
        self, tenant: str | None = None
    ) -> tuple[list[WorkflowDefinition], list[WorkflowError]]:
        """The current version of every workflow ``tenant`` sees (None: every workflow), and one
        error per stored one that no longer loads."""
        return self._parse_rows(await self.store.current_definitions(tenant=tenant))

    async def for_trigger(self, subject: str, tenant: str | None = None) -> list[WorkflowDefinition]:
        """The workflows ``subject`` starts for an event of ``tenant`` (None: every workflow); one
        that no longer loads is logged and left out."""
        found, _ = self._parse_rows(await self.store.current_definitions(trigger=subject, tenant=tenant))
        return found
