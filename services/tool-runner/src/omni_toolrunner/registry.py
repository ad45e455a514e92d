"""This replica's entries in the tool registry (``omni_contract.tools``): announced at start,
refreshed every ``HEARTBEAT_S``, withdrawn at an orderly stop.

A replica whose provider cannot work (no API key) still announces its tools, as ``unavailable``
with the reason, so that callers learn why at once instead of from failed calls one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from omni_contract.kv import PROVIDER_HEALTH, TOOL_REGISTRY
from omni_contract.tools import (
    AVAILABLE,
    HEARTBEAT_S,
    UNAVAILABLE,
    ProviderHealth,
    ToolRegistration,
    ToolSpec,
    health_key,
    registry_key,
)
from omni_runtime import nats as omni_nats

log = logging.getLogger(__name__)


async def registry_bucket(js: JetStreamContext) -> KeyValue:
    return await omni_nats.ensure_key_value(js, TOOL_REGISTRY)


async def health_bucket(js: JetStreamContext) -> KeyValue:
    return await omni_nats.ensure_key_value(js, PROVIDER_HEALTH)


class ToolAnnouncer:
    def __init__(
        self,
        kv: KeyValue,
        specs: Sequence[ToolSpec],
        runner: str,
        *,
        unavailable_reason: str | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        health: tuple[KeyValue, Callable[[], ProviderHealth]] | None = None,
        reasons: Mapping[str, str] | None = None,
    ) -> None:
        self.kv = kv
        # Where this replica's view of its provider goes, and how to take it (``GET /servers``).
        self.health = health
        self.specs = list(specs)
        self.runner = runner
        self.reason = unavailable_reason
        # Per tool, why this replica cannot serve it (declared tools whose secret is missing).
        self.reasons = dict(reasons or {})
        self.heartbeat_s = heartbeat_s
        self.started_at = datetime.now(UTC)
        self._task: asyncio.Task[None] | None = None

    def _keys(self) -> list[str]:
        return [registry_key(spec.provider, spec.name, self.runner) for spec in self.specs]

    async def announce(self) -> None:
        """Write (or refresh) one entry per tool; the bucket's TTL drops them if this stops."""
        now = datetime.now(UTC)
        for key, spec in zip(self._keys(), self.specs, strict=True):
            reason = self.reason or self.reasons.get(spec.name)
            entry = ToolRegistration(
                spec=spec,
                runner=self.runner,
                status=UNAVAILABLE if reason else AVAILABLE,
                reason=reason,
                started_at=self.started_at,
                heartbeat_at=now,
            )
            await self.kv.put(key, msgspec.json.encode(entry))
        if self.health is not None:
            health_kv, take = self.health
            snapshot = take()
            await health_kv.put(health_key(snapshot.provider, snapshot.runner), msgspec.json.encode(snapshot))

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.announce()
            except Exception as exc:  # noqa: BLE001 - NATS away: the next beat tries again
                log.warning("tool registry heartbeat failed: %s", exc)

    async def start(self) -> None:
        await self.announce()
        self._task = asyncio.create_task(self._beat())
        log.info(
            "registered %d tools as %s%s",
            len(self.specs),
            UNAVAILABLE if self.reason else AVAILABLE,
            f" ({self.reason})" if self.reason else "",
        )

    async def replace(self, specs: Sequence[ToolSpec], reasons: Mapping[str, str] | None = None) -> None:
        """Serve ``specs`` from now on: announce them at once and delete the entries of tools dropped."""
        before = set(self._keys())
        self.specs = list(specs)
        self.reasons = dict(reasons or {})
        for key in before - set(self._keys()):
            try:
                await self.kv.delete(key)
            except Exception as exc:  # noqa: BLE001 - the TTL removes it anyway
                log.warning("could not withdraw %s from the tool registry: %s", key, exc)
        await self.announce()

    async def withdraw(self) -> None:
        """Stop the heartbeats and delete this replica's entries (an orderly stop)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        keys = [(self.kv, key) for key in self._keys()]
        if self.health is not None:
            health_kv, take = self.health
            snapshot = take()
            keys.append((health_kv, health_key(snapshot.provider, snapshot.runner)))
        for kv, key in keys:
            try:
                await kv.delete(key)
            except Exception as exc:  # noqa: BLE001 - the TTL removes it anyway
                log.warning("could not withdraw %s from the tool registry: %s", key, exc)
