"""The ``integrations`` runner's declarations: shipped files written to the bucket, and the bucket watched.

At start the runner writes the declarations it ships (YAML files in ``declarations_dir``) to the
``omni_declared_tools`` bucket, each under origin ``file:<file name>``. A declaration registered
over the API (origin ``api``) under the same name wins: files never overwrite it, so an edit made
over the API survives a restart. A file that does not validate is logged with its file name and the
field at fault, and skipped; the rest still load. One that uses the deprecated ``{{ }}`` templates
loads, with a warning per field.

Then it watches the bucket: every put or delete swaps the adapter's set of tools and re-announces
the registry entries, so a declaration registered over the API is callable within moments on every
replica, and a deleted one disappears from ``GET /tools``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from omni_contract.declared import (
    ORIGIN_API,
    ORIGIN_FILE_PREFIX,
    DeclarationError,
    HttpToolDeclaration,
    StoredDeclaration,
    declared_key,
    decode_declaration,
    deprecations,
)
from omni_contract.kv import DECLARED_TOOLS
from omni_runtime import nats as omni_nats

log = logging.getLogger(__name__)


async def declarations_bucket(js: JetStreamContext) -> KeyValue:
    return await omni_nats.ensure_key_value(js, DECLARED_TOOLS)


def load_files(directory: Path) -> list[tuple[str, HttpToolDeclaration]]:
    """The valid declarations in ``directory`` (``*.yaml``, ``*.yml``, ``*.json``), with their file names."""
    found: list[tuple[str, HttpToolDeclaration]] = []
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    for path in files:
        try:
            raw = msgspec.yaml.decode(path.read_bytes()) if path.suffix != ".json" else None
            declaration = decode_declaration(raw if raw is not None else path.read_bytes())
        except DeclarationError as exc:
            for problem in exc.problems:
                log.error(
                    "declared tool file %s: %s: %s (skipped)", path.name, problem.field, problem.message
                )
            continue
        except (OSError, msgspec.DecodeError) as exc:
            log.error("declared tool file %s cannot be read: %s (skipped)", path.name, exc)
            continue
        for warning in deprecations(declaration):
            log.warning("declared tool file %s: %s: %s", path.name, warning.field, warning.message)
        found.append((path.name, declaration))
    return found


async def publish_files(kv: KeyValue, directory: Path) -> int:
    """Write the shipped declarations that are new or changed; leave API-registered ones alone.

    Returns how many were written. Replicas starting together may both write one: the second put
    stores the same declaration again, which is harmless.
    """
    written = 0
    for file_name, declaration in load_files(directory):
        key = declared_key(declaration.name)
        origin = ORIGIN_FILE_PREFIX + file_name
        try:
            entry = await kv.get(key)
            current = msgspec.json.decode(entry.value, type=StoredDeclaration) if entry.value else None
        except nats.js.errors.KeyNotFoundError:
            current = None
        except msgspec.DecodeError:
            current = None  # unreadable: the file's version replaces it
        if current is not None and current.origin == ORIGIN_API:
            log.info(
                "declared tool %s was registered over the API; %s left unused", declaration.name, file_name
            )
            continue
        if current is not None and current.declaration == declaration and current.origin == origin:
            continue
        stored = StoredDeclaration(declaration=declaration, origin=origin, updated_at=datetime.now(UTC))
        await kv.put(key, msgspec.json.encode(stored))
        written += 1
    return written


Apply = Callable[[list[HttpToolDeclaration]], Awaitable[None]]


class DeclarationWatcher:
    """Follows the bucket and calls ``apply`` with the whole current set after each change."""

    def __init__(self, kv: KeyValue, apply: Apply) -> None:
        self._apply = apply
        self._current: dict[str, HttpToolDeclaration] = {}
        self._follower = omni_nats.KeyFollower(
            kv, ">", self._take, self._publish, name="declared-tools-watch"
        )

    async def start(self) -> None:
        """Start watching; returns once the bucket's present contents have been applied."""
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    def _take(self, entry: KeyValue.Entry) -> bool:
        if entry.operation in omni_nats.KV_DELETES or not entry.value:
            if self._current.pop(entry.key, None) is None:
                return False
            log.info("declared tool %s withdrawn", entry.key)
            return True
        try:
            stored = msgspec.json.decode(entry.value, type=StoredDeclaration)
        except msgspec.DecodeError as exc:
            log.error("declared tool %s is unreadable in the bucket (%s); ignored", entry.key, exc)
            return False
        self._current[stored.declaration.name] = stored.declaration
        log.info("declared tool %s (%s) loaded", stored.declaration.name, stored.origin)
        return True

    async def _publish(self) -> None:
        await self._apply(sorted(self._current.values(), key=lambda d: d.name))
