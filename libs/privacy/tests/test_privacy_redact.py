"""Redaction to per-run tokens, resolution from the vault, masking for display."""

from __future__ import annotations

import json

import pytest
from omni_privacy.redact import TOKEN_RE, Json, make_token, mask, redact, resolve, tokens_in

KEY = b"k" * 32
OTHER_KEY = b"o" * 32

PAYLOAD: Json = {
    "customer": {"email": "anna.smith@example.com", "phone": "+44 20 7946 0958", "age": 41},
    "notes": [
        "Card 4111 1111 1111 1111 charged; reach anna.smith@example.com",
        "IBAN DE89 3704 0044 0532 0130 00 from 10.0.0.7",
        None,
        True,
        3.5,
    ],
    "anna.smith@example.com": "the key stays",
    "plain": "nothing to see",
}
ORIGINALS = ("anna.smith@example.com", "+44 20 7946 0958", "4111 1111 1111 1111", "DE89 3704", "10.0.0.7")


def test_redacted_values_hold_no_pii_and_resolve_back_to_the_original() -> None:
    redaction = redact(PAYLOAD, key=KEY, run_key="run-1")
    value = redaction.value
    assert isinstance(value, dict)
    stored = json.dumps({k: v for k, v in value.items() if k != "anna.smith@example.com"})
    for original in ORIGINALS:
        assert original not in stored
    assert resolve(value, redaction.vault_entries) == PAYLOAD
    assert set(redaction.vault_entries.values()) == {
        "anna.smith@example.com",
        "+44 20 7946 0958",
        "4111 1111 1111 1111",
        "DE89 3704 0044 0532 0130 00",
        "10.0.0.7",
    }


def test_keys_numbers_and_other_scalars_are_kept_as_they_are() -> None:
    value = redact(PAYLOAD, key=KEY, run_key="run-1").value
    assert isinstance(value, dict)
    assert value["anna.smith@example.com"] == "the key stays"
    assert value["plain"] == "nothing to see"
    customer = value["customer"]
    assert isinstance(customer, dict)
    assert customer["age"] == 41
    assert value["notes"][2:] == [None, True, 3.5]  # type: ignore[index]
    assert redact({"card": 4111111111111111}, key=KEY, run_key="r").value == {"card": 4111111111111111}


def test_the_same_value_gets_the_same_token_within_a_run_and_another_in_another_run() -> None:
    first = redact(PAYLOAD, key=KEY, run_key="run-1")
    again = redact(PAYLOAD, key=KEY, run_key="run-1")
    other_run = redact(PAYLOAD, key=KEY, run_key="run-2")
    other_key = redact(PAYLOAD, key=OTHER_KEY, run_key="run-1")
    assert first == again
    # Within one value, both mentions of the e-mail address became one token.
    email_tokens = [t for t, v in first.vault_entries.items() if v == "anna.smith@example.com"]
    assert len(email_tokens) == 1
    assert json.dumps(first.value, ensure_ascii=False).count(email_tokens[0]) == 2
    assert not set(first.vault_entries) & set(other_run.vault_entries)
    assert not set(first.vault_entries) & set(other_key.vault_entries)


def test_tokens_follow_the_documented_format_and_survive_ascii_json() -> None:
    token = make_token("EMAIL_ADDRESS", "anna@example.com", key=KEY, run_key="run-1")
    match = TOKEN_RE.fullmatch(token)
    assert match is not None
    assert match.group(1) == "EMAIL_ADDRESS"
    assert len(match.group(2)) == 16
    assert token.startswith("\u27e6pii:EMAIL_ADDRESS:")
    assert token.endswith("\u27e7")
    encoded = json.dumps({"to": token}, ensure_ascii=True)
    assert encoded.isascii()
    assert json.loads(encoded)["to"] == token


def test_redacting_redacted_data_changes_nothing() -> None:
    first = redact(PAYLOAD, key=KEY, run_key="run-1")
    second = redact(first.value, key=KEY, run_key="run-1")
    assert second.value == first.value
    assert second.vault_entries == {}


def test_resolve_leaves_tokens_its_lookup_does_not_know() -> None:
    redaction = redact("mail anna@example.com or 10.0.0.7", key=KEY, run_key="run-1")
    (email_token,) = [t for t, v in redaction.vault_entries.items() if v == "anna@example.com"]
    partial = resolve(redaction.value, {email_token: "anna@example.com"})
    assert isinstance(partial, str)
    assert partial.startswith("mail anna@example.com or \u27e6pii:IP_ADDRESS:")
    # A vault of another run knows none of these tokens.
    other_run = redact("mail anna@example.com or 10.0.0.7", key=KEY, run_key="run-2")
    assert resolve(redaction.value, other_run.vault_entries) == redaction.value


def test_resolve_accepts_a_lookup_function() -> None:
    redaction = redact(["anna@example.com"], key=KEY, run_key="run-1")
    asked: list[str] = []

    def lookup(token: str) -> str | None:
        asked.append(token)
        return redaction.vault_entries.get(token)

    assert resolve(redaction.value, lookup) == ["anna@example.com"]
    assert asked == list(redaction.vault_entries)


def test_tokens_in_lists_what_to_fetch_from_the_vault() -> None:
    redaction = redact(PAYLOAD, key=KEY, run_key="run-1")
    assert tokens_in(redaction.value) == set(redaction.vault_entries)
    assert tokens_in(PAYLOAD) == set()


def test_mask_shows_the_entity_type_and_hides_the_token() -> None:
    redaction = redact({"msg": "mail anna@example.com from 10.0.0.7"}, key=KEY, run_key="run-1")
    assert mask(redaction.value) == {"msg": "mail [EMAIL_ADDRESS] from [IP_ADDRESS]"}
    assert mask({"msg": "no tokens [here]"}) == {"msg": "no tokens [here]"}


def test_entities_limit_what_is_redacted() -> None:
    redaction = redact("anna@example.com from 10.0.0.7", key=KEY, run_key="r", entities={"IP_ADDRESS"})
    assert isinstance(redaction.value, str)
    assert redaction.value.startswith("anna@example.com from \u27e6pii:IP_ADDRESS:")


def test_tuples_are_walked_and_come_back_as_lists() -> None:
    value = redact(("anna@example.com",), key=KEY, run_key="r").value  # type: ignore[arg-type]
    assert isinstance(value, list)
    assert TOKEN_RE.fullmatch(value[0])  # type: ignore[arg-type]


def test_values_that_are_not_json_like_are_refused() -> None:
    with pytest.raises(TypeError, match="bytes"):
        redact({"raw": b"anna@example.com"}, key=KEY, run_key="r")  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="keys must be strings"):
        redact({1: "x"}, key=KEY, run_key="r")  # type: ignore[dict-item]


def test_a_short_key_or_an_empty_run_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        redact("x", key=b"short", run_key="r")
    with pytest.raises(ValueError, match="run_key"):
        redact("x", key=KEY, run_key="")
