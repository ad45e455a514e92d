"""The start keys of tenants (``tenants.scoped``): the default tenant's are those of before tenants,
and no two tenants' keys can be the same string."""

from __future__ import annotations

from omni_engine.tenants import of_run, scoped, sees


def test_the_default_tenants_keys_are_those_written_before_tenants() -> None:
    assert scoped("key", None, "k-1") == "key:k-1"
    assert scoped("key", "default", "k-1") == "key:k-1"
    assert scoped("trigger", None, "app.x:e-1:flow") == "trigger:app.x:e-1:flow"


def test_two_tenants_never_share_a_key() -> None:
    keys = {
        scoped("key", "a", "b:c"),
        scoped("key", "a:b", "c"),
        scoped("key", "default", "1:a:b:c"),
        scoped("key", "default", "@1:a:b:c"),
        scoped("key", "a", "x"),
        scoped("key", "b", "x"),
    }
    assert len(keys) == 6


def test_a_run_without_a_tenant_is_the_default_tenants_and_no_tenant_sees_every_run() -> None:
    assert of_run(None) == "default"
    assert sees("default", None)
    assert not sees("acme", None)
    assert sees("acme", "acme")
    assert sees(None, "acme")
