"""Envelope encryption: a data key per run encrypts its records; key-encryption keys wrap data keys.

Formats (all integers big-endian, all lengths fixed):

    record       = version (1 byte, 0x01) ‖ data key id (8) ‖ nonce (12) ‖ ciphertext ‖ tag (16)
    wrapped key  = version (1 byte, 0x01) ‖ KEK id (8)      ‖ nonce (12) ‖ encrypted data key (32) ‖ tag (16)

- Both are AES-256-GCM (``cryptography``'s ``AESGCM``) with a fresh random 96-bit nonce per
  encryption. One data key per run keeps each key far below the 2**32 encryptions after which
  random nonces stop being safe.
- A key id is the first 8 bytes of SHA-256 of the key: it names a key without revealing it, so a
  record says which data key it needs and a wrapped key says which KEK wrapped it.
- What GCM authenticates besides the ciphertext: for a record, the label ``omni-privacy/record/v1``,
  the header (version and key id) and the caller's associated data; for a wrapped key, the label
  ``omni-privacy/wrap/v1`` and its header. The associated data of a record is its identity,
  ``record_aad(run_id, record)``, so a record copied to another run or another place in the same
  run no longer decrypts.

Invariants:
- **One failure type.** A tampered byte anywhere, a wrong associated data, a wrong key, a truncated
  blob, an unknown version or a KEK missing from the keyring all raise ``DecryptionError``; its
  message says which, and never contains key material or plaintext.
- **Keys do not leak through repr.** ``DataKey`` and ``KeyEncryptionKey`` show only their key id.
- **Rotation never touches data.** ``Keyring(current, *previous)`` wraps with ``current`` and
  unwraps with whichever KEK the wrapped key names. ``rewrap`` re-wraps a data key under the current
  KEK; the records encrypted with that data key are unchanged. Once every wrapped key has been
  rewrapped (``needs_rewrap`` is false for all), a previous KEK can be dropped.
- **One secret per run.** ``DataKey.token_key()`` derives (HKDF-SHA256) the key for the run's PII
  tokens (``omni_privacy.redact``) from its data key, so tokens stay the same across KEK rotation.

``ENCRYPTION_KEY`` (and each entry of ``ENCRYPTION_KEY_PREVIOUS``, comma-separated) is 32 random
bytes, base64 (standard or URL-safe, padding optional) or hex; ``base64:`` and ``hex:`` prefixes are
accepted. ``openssl rand -base64 32`` makes one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
KEY_BYTES = 32
KEY_ID_BYTES = 8
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = 1 + KEY_ID_BYTES
WRAPPED_KEY_BYTES = HEADER_BYTES + NONCE_BYTES + KEY_BYTES + TAG_BYTES

_RECORD_LABEL = b"omni-privacy/record/v1"
_WRAP_LABEL = b"omni-privacy/wrap/v1"
_AAD_LABEL = b"omni-privacy/aad/v1"
_TOKEN_KEY_INFO = b"omni-privacy/token-key/v1"
_HEX_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")


class DecryptionError(Exception):
    """Ciphertext that cannot be trusted: tampered, misplaced, or for a key not at hand."""


class KeyConfigError(ValueError):
    """A key setting (``ENCRYPTION_KEY``...) that is not a usable AES-256 key."""


def key_id(key: bytes) -> bytes:
    """The public name of a key: the first 8 bytes of its SHA-256."""
    return hashlib.sha256(key).digest()[:KEY_ID_BYTES]


def record_aad(run_id: str, record: str) -> bytes:
    """The associated data binding a record to its run and its place in it (e.g. ``"event/17"``)."""
    parts = [_AAD_LABEL]
    for part in (run_id.encode(), record.encode()):
        # Length-prefixed: ("run-1", "2/x") and ("run-12", "/x") give different bytes.
        parts += [len(part).to_bytes(4, "big"), part]
    return b"".join(parts)


def _split(blob: bytes, *, what: str, minimum: int) -> tuple[bytes, bytes, bytes, bytes]:
    """(header, key id, nonce, ciphertext with tag), or ``DecryptionError`` if it cannot be one."""
    if len(blob) < minimum:
        raise DecryptionError(f"{what} is truncated ({len(blob)} bytes)")
    if blob[0] != VERSION:
        raise DecryptionError(f"{what} has unknown format version {blob[0]}")
    header = blob[:HEADER_BYTES]
    return (
        header,
        header[1:],
        blob[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES],
        blob[HEADER_BYTES + NONCE_BYTES :],
    )


class DataKey:
    """An AES-256-GCM key that encrypts the records of one run."""

    __slots__ = ("_aead", "_key", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a data key is {KEY_BYTES} bytes, not {len(key)}")
        self._key = bytes(key)
        self._aead = AESGCM(self._key)
        self.key_id = key_id(self._key)

    @classmethod
    def generate(cls) -> DataKey:
        return cls(AESGCM.generate_key(bit_length=256))

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> bytes:
        header = bytes([VERSION]) + self.key_id
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + self._aead.encrypt(nonce, plaintext, _RECORD_LABEL + header + aad)

    def decrypt(self, blob: bytes, *, aad: bytes) -> bytes:
        header, blob_key_id, nonce, sealed = _split(
            blob, what="encrypted record", minimum=HEADER_BYTES + NONCE_BYTES + TAG_BYTES
        )
        if blob_key_id != self.key_id:
            raise DecryptionError(
                f"record was encrypted with data key {blob_key_id.hex()}, not {self.key_id.hex()}"
            )
        try:
            return self._aead.decrypt(nonce, sealed, _RECORD_LABEL + header + aad)
        except InvalidTag:
            raise DecryptionError(
                "record failed authentication: tampered, or associated data (run id, record) differ"
            ) from None

    def token_key(self) -> bytes:
        """The run's key for ``omni_privacy.redact`` tokens: HKDF-SHA256 of this data key.

        Stable for the run's life (rewrapping under a new KEK keeps the data key, so tokens made
        before a rotation match those made after), different for every run, and never the data
        key itself.
        """
        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_TOKEN_KEY_INFO).derive(
            self._key
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataKey) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id.hex()})"


class KeyEncryptionKey:
    """An AES-256 key that wraps data keys; loaded from ``ENCRYPTION_KEY``."""

    __slots__ = ("_aead", "_key", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a key-encryption key is {KEY_BYTES} bytes, not {len(key)}")
        self._key = bytes(key)
        self._aead = AESGCM(self._key)
        self.key_id = key_id(self._key)

    @classmethod
    def generate(cls) -> KeyEncryptionKey:
        return cls(AESGCM.generate_key(bit_length=256))

    @classmethod
    def from_setting(cls, value: str, *, setting: str = "ENCRYPTION_KEY") -> KeyEncryptionKey:
        """Parse a setting: 32 bytes as base64 or hex. Errors name ``setting``, never its value."""
        return cls(_parse_key(value, setting))

    def to_setting(self) -> str:
        """The key as ``from_setting`` reads it (standard base64): for tooling that makes keys."""
        return base64.b64encode(self._key).decode()

    def wrap(self, data_key: DataKey) -> bytes:
        header = bytes([VERSION]) + self.key_id
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + self._aead.encrypt(nonce, data_key._key, _WRAP_LABEL + header)

    def unwrap(self, wrapped: bytes) -> DataKey:
        header, wrapping_key_id, nonce, sealed = _split(
            wrapped, what="wrapped data key", minimum=WRAPPED_KEY_BYTES
        )
        if len(wrapped) != WRAPPED_KEY_BYTES:
            raise DecryptionError(f"wrapped data key has {len(wrapped)} bytes, not {WRAPPED_KEY_BYTES}")
        if wrapping_key_id != self.key_id:
            raise DecryptionError(
                f"data key was wrapped by KEK {wrapping_key_id.hex()}, not {self.key_id.hex()}"
            )
        try:
            return DataKey(self._aead.decrypt(nonce, sealed, _WRAP_LABEL + header))
        except InvalidTag:
            raise DecryptionError("wrapped data key failed authentication: tampered") from None

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(key_id={self.key_id.hex()})"


class Keyring:
    """The current KEK, which wraps, and previous ones, which still unwrap until rotation is done."""

    __slots__ = ("_by_id", "current")

    def __init__(self, current: KeyEncryptionKey, *previous: KeyEncryptionKey) -> None:
        self.current = current
        self._by_id: dict[bytes, KeyEncryptionKey] = {current.key_id: current}
        for kek in previous:
            self._by_id.setdefault(kek.key_id, kek)

    @classmethod
    def from_settings(cls, encryption_key: str, previous: str = "") -> Keyring:
        """From ``ENCRYPTION_KEY`` and ``ENCRYPTION_KEY_PREVIOUS`` (comma-separated, may be empty)."""
        current = KeyEncryptionKey.from_setting(encryption_key, setting="ENCRYPTION_KEY")
        older = [
            KeyEncryptionKey.from_setting(item, setting=f"ENCRYPTION_KEY_PREVIOUS[{i}]")
            for i, item in enumerate(_entries(previous))
        ]
        return cls(current, *older)

    @property
    def key_ids(self) -> list[bytes]:
        """The ids of every KEK that can unwrap, the current one first."""
        return list(self._by_id)

    def wrap(self, data_key: DataKey) -> bytes:
        return self.current.wrap(data_key)

    def unwrap(self, wrapped: bytes) -> DataKey:
        _, wrapping_key_id, _, _ = _split(wrapped, what="wrapped data key", minimum=WRAPPED_KEY_BYTES)
        kek = self._by_id.get(wrapping_key_id)
        if kek is None:
            raise DecryptionError(
                f"data key was wrapped by KEK {wrapping_key_id.hex()}, which is not in the keyring"
                f" ({', '.join(k.hex() for k in self._by_id)})"
            )
        return kek.unwrap(wrapped)

    def needs_rewrap(self, wrapped: bytes) -> bool:
        """Whether ``wrapped`` was wrapped by a KEK other than the current one."""
        _, wrapping_key_id, _, _ = _split(wrapped, what="wrapped data key", minimum=WRAPPED_KEY_BYTES)
        return wrapping_key_id != self.current.key_id

    def rewrap(self, wrapped: bytes) -> bytes:
        """The same data key wrapped by the current KEK (the data it encrypts stays as it is)."""
        return self.current.wrap(self.unwrap(wrapped))


def _entries(setting: str) -> Iterable[str]:
    return [item for item in (part.strip() for part in setting.split(",")) if item]


def _parse_key(value: str, setting: str) -> bytes:
    text = value.strip()
    hint = "set it to 32 random bytes, base64 or hex encoded (e.g. the output of `openssl rand -base64 32`)"
    if not text:
        raise KeyConfigError(f"{setting} is empty: {hint}")
    lowered = text.lower()
    if lowered.startswith("hex:"):
        return _decode_hex(text[4:], setting, hint)
    if lowered.startswith("base64:"):
        return _decode_base64(text[7:], setting, hint)
    if _HEX_KEY_RE.fullmatch(text):
        return bytes.fromhex(text)
    return _decode_base64(text, setting, hint)


def _decode_hex(text: str, setting: str, hint: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyConfigError(f"{setting} is not valid hex: {hint}") from None
    return _checked_length(key, setting, hint)


def _decode_base64(text: str, setting: str, hint: str) -> bytes:
    normalised = text.replace("-", "+").replace("_", "/").rstrip("=")
    try:
        key = base64.b64decode(normalised + "=" * (-len(normalised) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise KeyConfigError(f"{setting} is neither 64 hex digits nor valid base64: {hint}") from None
    return _checked_length(key, setting, hint)


def _checked_length(key: bytes, setting: str, hint: str) -> bytes:
    if len(key) != KEY_BYTES:
        raise KeyConfigError(f"{setting} decodes to {len(key)} bytes, an AES-256 key is {KEY_BYTES}: {hint}")
    return key
