"""The KV bucket specs: deployments already hold these buckets, so names and settings are pinned,
and the keys and values of those in the contract are what proto/ describes."""

from __future__ import annotations

import pytest
from omni_contract import proto
from omni_contract.declared import StoredDeclaration
from omni_contract.kv import ALL_BUCKETS, KvBucketSpec, Storage
from omni_contract.tools import ProviderHealth, ToolRegistration


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
        "omni_security": (None, 1, Storage.FILE, None, False),
    }
    assert all(spec.description for spec in ALL_BUCKETS)


def test_the_buckets_in_the_contract_name_their_keys_and_values_and_proto_has_their_schemas() -> None:
    in_contract = {spec.name: (spec.key, spec.value_type) for spec in ALL_BUCKETS if spec.value_type}

    assert in_contract == {
        "omni_tools": ("{provider}.{category}.{action}.{runner}", ToolRegistration),
        "omni_providers": ("{provider}.{runner}", ProviderHealth),
        "omni_declared_tools": ("{category}.{action} (the tool name)", StoredDeclaration),
    }
    kv_files = {path for path in proto.generate() if path.startswith("kv/")}
    assert kv_files == {f"kv/{name}.schema.json" for name in in_contract}


def test_a_bucket_in_the_contract_names_both_its_keys_and_its_values() -> None:
    with pytest.raises(ValueError, match="omni_half: a bucket in the contract names both key and value_type"):
        KvBucketSpec(name="omni_half", description="half", key="{provider}")
    with pytest.raises(ValueError, match="omni_half"):
        KvBucketSpec(name="omni_half", description="half", value_type=ProviderHealth)
