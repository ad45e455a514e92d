"""The first admin's key of ``omni run``: made once, kept private, or taken from OMNI_ADMIN_KEY."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from omni_contract.security import parse_api_key
from omni_devstack.servers import ServerStartError
from omni_devstack.supervisor import ADMIN_KEY_ENV, ADMIN_KEY_FILE, admin_key


def test_the_first_start_makes_a_key_readable_by_its_owner_only_and_later_starts_reuse_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)

    key, path = admin_key(tmp_path)
    again, same_path = admin_key(tmp_path)

    assert path == same_path == tmp_path / ADMIN_KEY_FILE
    assert parse_api_key(key) is not None
    assert again == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_omni_admin_key_wins_and_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ADMIN_KEY_ENV, "omni_abcdefgh_" + "k" * 43)

    key, path = admin_key(tmp_path)

    assert (key, path) == ("omni_abcdefgh_" + "k" * 43, None)
    assert not (tmp_path / ADMIN_KEY_FILE).exists()


def test_a_malformed_omni_admin_key_is_refused_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_KEY_ENV, "hunter2")

    with pytest.raises(ServerStartError, match=ADMIN_KEY_ENV):
        admin_key(tmp_path)
