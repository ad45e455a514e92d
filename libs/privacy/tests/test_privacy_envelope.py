"""Envelope encryption: record format, tampering, associated data, KEK settings and rotation."""

from __future__ import annotations

import base64
import hashlib

import pytest
from omni_privacy.envelope import (
    HEADER_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    VERSION,
    WRAPPED_KEY_BYTES,
    DataKey,
    DecryptionError,
    KeyConfigError,
    KeyEncryptionKey,
    Keyring,
    record_aad,
)

AAD = record_aad("run-1", "event/17")
KEY_BYTES = bytes(range(32))


def flip(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


def test_a_record_decrypts_to_its_plaintext_and_follows_the_format() -> None:
    data_key = DataKey.generate()
    blob = data_key.encrypt(b"hello, run", aad=AAD)
    assert blob[0] == VERSION
    assert blob[1:HEADER_BYTES] == data_key.key_id
    assert len(blob) == HEADER_BYTES + NONCE_BYTES + len(b"hello, run") + TAG_BYTES
    assert data_key.decrypt(blob, aad=AAD) == b"hello, run"
    assert data_key.decrypt(data_key.encrypt(b"", aad=AAD), aad=AAD) == b""


def test_each_encryption_uses_a_fresh_nonce() -> None:
    data_key = DataKey.generate()
    first, second = data_key.encrypt(b"same", aad=AAD), data_key.encrypt(b"same", aad=AAD)
    assert first != second
    nonce = slice(HEADER_BYTES, HEADER_BYTES + NONCE_BYTES)
    assert first[nonce] != second[nonce]


def test_changing_any_byte_of_a_record_makes_it_fail() -> None:
    data_key = DataKey.generate()
    blob = data_key.encrypt(b"payload", aad=AAD)
    for index in range(len(blob)):
        with pytest.raises(DecryptionError):
            data_key.decrypt(flip(blob, index), aad=AAD)


def test_a_truncated_or_extended_record_fails() -> None:
    data_key = DataKey.generate()
    blob = data_key.encrypt(b"payload", aad=AAD)
    with pytest.raises(DecryptionError, match="truncated"):
        data_key.decrypt(blob[:20], aad=AAD)
    with pytest.raises(DecryptionError):
        data_key.decrypt(blob[:-1], aad=AAD)
    with pytest.raises(DecryptionError):
        data_key.decrypt(blob + b"\x00", aad=AAD)


def test_a_record_moved_to_another_run_or_place_fails() -> None:
    data_key = DataKey.generate()
    blob = data_key.encrypt(b"payload", aad=AAD)
    for wrong in (record_aad("run-2", "event/17"), record_aad("run-1", "event/18"), b""):
        with pytest.raises(DecryptionError, match="associated data"):
            data_key.decrypt(blob, aad=wrong)


def test_record_aad_cannot_be_confused_by_moving_characters_between_its_parts() -> None:
    assert record_aad("run-1", "2/x") != record_aad("run-12", "/x")


def test_a_record_fails_under_another_data_key() -> None:
    blob = DataKey.generate().encrypt(b"payload", aad=AAD)
    with pytest.raises(DecryptionError, match="encrypted with data key"):
        DataKey.generate().decrypt(blob, aad=AAD)


def test_an_unknown_format_version_fails() -> None:
    data_key = DataKey.generate()
    blob = data_key.encrypt(b"payload", aad=AAD)
    with pytest.raises(DecryptionError, match="version 2"):
        data_key.decrypt(bytes([2]) + blob[1:], aad=AAD)


def test_a_wrapped_data_key_unwraps_to_the_same_key_and_any_changed_byte_fails() -> None:
    kek = KeyEncryptionKey.generate()
    data_key = DataKey.generate()
    wrapped = kek.wrap(data_key)
    assert len(wrapped) == WRAPPED_KEY_BYTES
    assert wrapped[1:HEADER_BYTES] == kek.key_id
    assert kek.unwrap(wrapped) == data_key
    for index in range(len(wrapped)):
        with pytest.raises(DecryptionError):
            kek.unwrap(flip(wrapped, index))
    with pytest.raises(DecryptionError, match="wrapped by KEK"):
        KeyEncryptionKey.generate().unwrap(wrapped)


def test_after_rotation_old_records_decrypt_and_the_old_kek_can_be_dropped() -> None:
    old_kek, new_kek = KeyEncryptionKey.generate(), KeyEncryptionKey.generate()
    data_key = DataKey.generate()
    record = data_key.encrypt(b"before rotation", aad=AAD)
    wrapped = Keyring(old_kek).wrap(data_key)

    rotating = Keyring(new_kek, old_kek)
    assert rotating.key_ids == [new_kek.key_id, old_kek.key_id]
    assert rotating.unwrap(wrapped).decrypt(record, aad=AAD) == b"before rotation"
    assert rotating.needs_rewrap(wrapped)
    rewrapped = rotating.rewrap(wrapped)
    assert not rotating.needs_rewrap(rewrapped)
    assert rewrapped[1:HEADER_BYTES] == new_kek.key_id

    rotated = Keyring(new_kek)  # the old KEK dropped
    assert rotated.unwrap(rewrapped).decrypt(record, aad=AAD) == b"before rotation"
    with pytest.raises(DecryptionError, match="not in the keyring"):
        rotated.unwrap(wrapped)


def test_new_data_keys_are_wrapped_by_the_current_kek() -> None:
    old_kek, new_kek = KeyEncryptionKey.generate(), KeyEncryptionKey.generate()
    keyring = Keyring(new_kek, old_kek)
    wrapped = keyring.wrap(DataKey.generate())
    assert not keyring.needs_rewrap(wrapped)
    new_kek.unwrap(wrapped)


@pytest.mark.parametrize(
    "setting",
    [
        base64.b64encode(KEY_BYTES).decode(),
        base64.b64encode(KEY_BYTES).decode().rstrip("="),
        base64.urlsafe_b64encode(KEY_BYTES).decode(),
        KEY_BYTES.hex(),
        KEY_BYTES.hex().upper(),
        "hex:" + KEY_BYTES.hex(),
        "base64:" + base64.b64encode(KEY_BYTES).decode(),
        "  " + base64.b64encode(KEY_BYTES).decode() + "\n",
    ],
)
def test_encryption_key_is_read_from_base64_or_hex(setting: str) -> None:
    kek = KeyEncryptionKey.from_setting(setting)
    assert kek.key_id == hashlib.sha256(KEY_BYTES).digest()[:8]
    assert KeyEncryptionKey.from_setting(kek.to_setting()).key_id == kek.key_id


@pytest.mark.parametrize(
    "setting",
    [
        "",
        "   ",
        "not a key!",
        base64.b64encode(bytes(16)).decode(),  # AES-128 sized
        base64.b64encode(bytes(33)).decode(),
        bytes(31).hex(),
        "hex:zz" + bytes(31).hex(),
        "c2VjcmV0",  # "secret"
    ],
)
def test_a_malformed_encryption_key_is_refused_naming_the_setting_but_not_its_value(setting: str) -> None:
    with pytest.raises(KeyConfigError, match="ENCRYPTION_KEY") as caught:
        KeyEncryptionKey.from_setting(setting)
    if setting.strip():
        assert setting.strip() not in str(caught.value)


def test_the_keyring_reads_current_and_previous_settings_and_names_the_bad_one() -> None:
    old, new = KeyEncryptionKey.generate(), KeyEncryptionKey.generate()
    keyring = Keyring.from_settings(new.to_setting(), f"{old.to_setting()}, ")
    assert keyring.key_ids == [new.key_id, old.key_id]
    assert Keyring.from_settings(new.to_setting()).key_ids == [new.key_id]
    with pytest.raises(KeyConfigError, match=r"ENCRYPTION_KEY_PREVIOUS\[1\]"):
        Keyring.from_settings(new.to_setting(), f"{old.to_setting()},bad")


def test_keys_show_only_their_id() -> None:
    data_key = DataKey(KEY_BYTES)
    kek = KeyEncryptionKey(KEY_BYTES)
    for key in (data_key, kek):
        shown = repr(key)
        assert KEY_BYTES.hex() not in shown
        assert base64.b64encode(KEY_BYTES).decode() not in shown
        assert key.key_id.hex() in shown


def test_keys_of_the_wrong_length_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        DataKey(bytes(16))
    with pytest.raises(ValueError, match="32 bytes"):
        KeyEncryptionKey(bytes(24))


def test_the_token_key_is_stable_per_data_key_across_rewrap_and_differs_between_runs() -> None:
    old_kek, new_kek = KeyEncryptionKey.generate(), KeyEncryptionKey.generate()
    data_key = DataKey(KEY_BYTES)
    token_key = data_key.token_key()
    assert len(token_key) == 32
    assert token_key != KEY_BYTES
    rewrapped = Keyring(new_kek, old_kek).rewrap(old_kek.wrap(data_key))
    assert Keyring(new_kek).unwrap(rewrapped).token_key() == token_key
    assert DataKey.generate().token_key() != token_key
