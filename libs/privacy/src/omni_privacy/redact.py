"""PII tokenisation of JSON-like values: redact to tokens, resolve tokens back, mask them for display.

The token format::

    ⟦pii:<ENTITY_TYPE>:<id>⟧        e.g. ⟦pii:EMAIL_ADDRESS:k5x2m7qa4bfz3d6w⟧

- ``⟦`` and ``⟧`` are U+27E6 and U+27E7 (mathematical white square brackets): characters ordinary
  text does not use, so a token is never confused with content, and no detector matches across
  one. They are plain JSON string characters (``\\u27e6``/``\\u27e7`` when JSON is ASCII-escaped);
  ``TOKEN_RE`` finds tokens either way once the JSON is decoded.
- ``<ENTITY_TYPE>`` is the Presidio entity name (``omni_privacy.detect.ENTITY_TYPES``).
- ``<id>`` is 16 characters of lower-case RFC 4648 base32 (``a``-``z``, ``2``-``7``): the first
  80 bits of HMAC-SHA256(key, run key ‖ entity type ‖ value). The key is a secret the caller
  holds, so nobody without it can tell which value a token stands for, nor make the token of a
  value they guess.

Invariants:
- **Deterministic per run.** With one key and one run key, a value always becomes the same token,
  wherever it appears in the run (so joins and equality still work on redacted data); with another
  run key the same value becomes another token, so tokens cannot be correlated across runs.
- **Only string values are redacted.** Mapping keys are kept as written (they are names chosen by
  workflow authors, not data), and numbers, booleans and ``None`` are kept as they are: a card
  number stored as a JSON number is *not* redacted. Lists and tuples are walked (tuples come back
  as lists); anything that is not JSON-like raises ``TypeError``.
- **Redaction is idempotent.** Text already in token form is left alone and nothing inside it is
  detected again, so redacting a value built from redacted data changes nothing more.
- **The vault is the only way back.** ``redact`` returns the redacted value and the vault entries
  (token → original); ``resolve`` puts originals back only for tokens its lookup knows and leaves
  any other token in place. ``mask`` shows a token as ``[ENTITY_TYPE]`` for callers who may not
  see PII, so the token itself (and with it a handle on the vault) never leaves the service.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from omni_privacy.detect import detect

Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"

TOKEN_OPEN = "\u27e6"  # noqa: S105 (a delimiter, not a credential)
TOKEN_CLOSE = "\u27e7"  # noqa: S105 (a delimiter, not a credential)
TOKEN_RE = re.compile(TOKEN_OPEN + r"pii:([A-Z][A-Z0-9_]{0,63}):([a-z2-7]{16})" + TOKEN_CLOSE)

_ID_BYTES = 10  # 80 bits: 16 base32 characters, no padding
_MIN_KEY_BYTES = 16
_DOMAIN = b"omni-privacy/token/v1"


@dataclass(frozen=True, slots=True)
class Redaction:
    """A redacted value and what the vault must keep to undo it (token → original text)."""

    value: Json
    vault_entries: dict[str, str]


def make_token(entity_type: str, original: str, *, key: bytes, run_key: str) -> str:
    """The token that stands for ``original`` (of ``entity_type``) in the run ``run_key``."""
    mac = hmac.new(key, _DOMAIN, hashlib.sha256)
    for part in (run_key.encode(), entity_type.encode(), original.encode()):
        # Length-prefixed, so ("ab", "c") and ("a", "bc") never feed the MAC the same bytes.
        mac.update(len(part).to_bytes(4, "big"))
        mac.update(part)
    token_id = base64.b32encode(mac.digest()[:_ID_BYTES]).decode().lower()
    return f"{TOKEN_OPEN}pii:{entity_type}:{token_id}{TOKEN_CLOSE}"


def redact(
    value: Json,
    *,
    key: bytes,
    run_key: str,
    entities: Collection[str] | None = None,
    min_score: float = 0.0,
) -> Redaction:
    """Replace every PII substring of every string in ``value`` by its token.

    ``key`` is the HMAC key (at least 16 bytes, kept secret by the caller); ``run_key`` scopes the
    tokens (a run id). ``entities`` and ``min_score`` are passed to ``detect``.
    """
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"the token key must be at least {_MIN_KEY_BYTES} bytes")
    if not run_key:
        raise ValueError("run_key must not be empty: it is what keeps tokens of different runs apart")
    entries: dict[str, str] = {}

    def redact_text(text: str) -> str:
        pieces: list[str] = []
        last = 0
        for token in TOKEN_RE.finditer(text):
            pieces.append(redact_plain(text[last : token.start()]))
            pieces.append(token.group(0))
            last = token.end()
        pieces.append(redact_plain(text[last:]))
        return "".join(pieces)

    def redact_plain(text: str) -> str:
        findings = detect(text, entities=entities, min_score=min_score) if text else []
        if not findings:
            return text
        pieces: list[str] = []
        last = 0
        for f in findings:
            original = text[f.start : f.end]
            token = make_token(f.entity_type, original, key=key, run_key=run_key)
            entries[token] = original
            pieces.append(text[last : f.start])
            pieces.append(token)
            last = f.end
        pieces.append(text[last:])
        return "".join(pieces)

    return Redaction(_map_strings(value, redact_text), entries)


def resolve(value: Json, lookup: Mapping[str, str] | Callable[[str], str | None]) -> Json:
    """``value`` with each token its lookup knows replaced by the original; other tokens stay."""
    find: Callable[[str], str | None] = lookup.get if isinstance(lookup, Mapping) else lookup

    def put_back(token: re.Match[str]) -> str:
        original = find(token.group(0))
        return token.group(0) if original is None else original

    return _map_strings(value, lambda text: TOKEN_RE.sub(put_back, text) if TOKEN_OPEN in text else text)


def mask(value: Json) -> Json:
    """``value`` with each token shown as ``[ENTITY_TYPE]``: for callers without ``pii:read``."""
    return _map_strings(value, lambda text: TOKEN_RE.sub(r"[\1]", text) if TOKEN_OPEN in text else text)


def tokens_in(value: Json) -> set[str]:
    """Every token in the strings of ``value``: what to fetch from the vault before ``resolve``."""
    found: set[str] = set()

    def collect(text: str) -> str:
        if TOKEN_OPEN in text:
            found.update(m.group(0) for m in TOKEN_RE.finditer(text))
        return text

    _map_strings(value, collect)
    return found


def _map_strings(value: object, change: Callable[[str], str]) -> Json:
    """A copy of a JSON-like value with ``change`` applied to every string that is not a key."""
    if isinstance(value, str):
        return change(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        result: dict[str, Json] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"mapping keys must be strings (JSON objects), not {type(k).__name__}")
            result[k] = _map_strings(v, change)
        return result
    if isinstance(value, list | tuple):
        return [_map_strings(item, change) for item in value]
    raise TypeError(f"not a JSON-like value: {type(value).__name__}")
