"""Stored results, keyed by idempotency key, so a redelivered invoke never calls the provider twice.

The store is the JetStream key-value bucket ``omni_contract.kv.TOOL_RESULTS``: every replica of
every runner sees the same entries, and entries expire after ``result_ttl_s``. A value is the
encoded result envelope exactly as it was first published, so a republish is byte for byte the
same message.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue


def storage_key(idempotency_key: str) -> str:
    """A key-value key for any idempotency key (KV keys allow only ``[-/_=.a-zA-Z0-9]``)."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


class ResultStore(Protocol):
    async def get(self, idempotency_key: str) -> bytes | None: ...

    async def put(self, idempotency_key: str, body: bytes) -> None: ...


class KvResultStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, idempotency_key: str) -> bytes | None:
        try:
            entry = await self._kv.get(storage_key(idempotency_key))
        except KeyNotFoundError:  # also raised for deleted and purged keys
            return None
        return entry.value or None

    async def put(self, idempotency_key: str, body: bytes) -> None:
        await self._kv.put(storage_key(idempotency_key), body)
