"""The KV bucket specs: deployments already hold these buckets, so names and settings are pinned."""

from __future__ import annotations

from omni_contract.kv import ALL_BUCKETS, Storage


def test_every_bucket_keeps_the_name_and_settings_deployments_have() -> None:
    found = {
        spec.name: (spec.ttl_s, spec.history, spec.storage, spec.max_value_size, spec.direct)
        for spec in ALL_BUCKETS
    }

    assert found == {
        "omni_tools": (15.0, 1, Storage.FILE, None, False),
        "omni_providers": (15.0, 1, Storage.FILE, None, False),
        "omni_declared_tools": (None, 1, Storage.FILE, None, False),
        "omni_tool_results": (24 * 3600.0, 1, Storage.FILE, None, True),
        "omni_circuits": (None, 1, Storage.FILE, None, False),
        "omni_ratelimits": (3600.0, 1, Storage.FILE, None, False),
        "omni_mock_rules": (None, 1, Storage.FILE, None, False),
    }
    assert all(spec.description for spec in ALL_BUCKETS)
