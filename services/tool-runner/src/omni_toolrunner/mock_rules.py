"""The mock provider's rules, changed at run time through the KV bucket ``omni_mock_rules``.

Every replica of ``tool-runner-mock`` watches the key :data:`MOCK_RULES_KEY`. A put replaces the
replica's rules (``{"rules": [...], "strict": bool}`` or a bare list, as in a rules file; counts and
remembered answers start afresh); rules that do not validate are logged with the rule index and
field and the rules in force stay. A delete goes back to the rules the replica started with
(``OMNI_MOCK_RULES``). Tools that new rules name are announced in the registry at once.

From a shell: ``nats kv put omni_mock_rules rules '[{"tool": "mt.translate", "output": {...}}]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from omni_contract.kv import MOCK_RULES
from omni_runtime import nats as omni_nats

from omni_toolrunner.providers.mock import MockAdapter, MockRule, MockRulesError, decode_rules

log = logging.getLogger(__name__)

MOCK_RULES_KEY: Final = "rules"


async def mock_rules_bucket(js: JetStreamContext) -> KeyValue:
    return await omni_nats.ensure_key_value(js, MOCK_RULES)


class MockRulesWatcher:
    """Applies the bucket's rules to ``adapter``; ``changed`` runs after each change (re-announce)."""

    def __init__(self, kv: KeyValue, adapter: MockAdapter, changed: Callable[[], Awaitable[None]]) -> None:
        self._adapter = adapter
        # What a delete goes back to: the rules the replica started with.
        self._initial: tuple[list[MockRule], bool] = (adapter.rules, adapter.strict)
        self._follower = omni_nats.KeyFollower(
            kv, MOCK_RULES_KEY, self._apply, changed, name="mock-rules-watch"
        )

    async def start(self) -> None:
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    def _apply(self, entry: KeyValue.Entry) -> bool:
        if entry.operation in omni_nats.KV_DELETES or not entry.value:
            rules, strict = self._initial
            self._adapter.configure(rules, strict=strict)
            log.info("mock rules deleted: back to the %d rules the runner started with", len(rules))
            return True
        try:
            loaded = decode_rules(entry.value, f"{MOCK_RULES.name}/{MOCK_RULES_KEY}")
            self._adapter.configure(loaded.rules, strict=loaded.strict)
        except MockRulesError as exc:
            log.error("mock rules refused, the rules in force stay: %s", exc)
            return False
        log.info("mock rules replaced: %d rules%s", len(loaded.rules), " (strict)" if loaded.strict else "")
        return True
