"""Each detector on known positives (published examples where they exist) and hard negatives."""

from __future__ import annotations

import itertools

import pytest
from omni_privacy.detect import (
    CREDIT_CARD,
    CRYPTO,
    EMAIL_ADDRESS,
    ENTITY_TYPES,
    IBAN_CODE,
    IP_ADDRESS,
    PHONE_NUMBER,
    REPORT_THRESHOLD,
    US_SSN,
    Finding,
    _without_overlaps,
    detect,
    iban_valid,
    luhn_valid,
    ssn_valid,
)


def found(text: str) -> list[tuple[str, str]]:
    return [(f.entity_type, text[f.start : f.end]) for f in detect(text)]


def assert_detects(entity: str, value: str, *, before: str = "see ", after: str = " please.") -> None:
    text = f"{before}{value}{after}"
    assert found(text) == [(entity, value)], f"{value!r} in {text!r}: {found(text)}"


def assert_nothing(text: str) -> None:
    assert found(text) == [], f"{text!r}: {found(text)}"


@pytest.mark.parametrize(
    "value",
    [
        "anna.smith@example.com",
        "first_last+tag@mail.example.co.uk",
        "J.Doe@Company.ORG",
        "x%1@startup.io",
        "b.weber@uni-berlin.de",
    ],
)
def test_email_addresses_are_found(value: str) -> None:
    assert_detects(EMAIL_ADDRESS, value)


def test_an_email_address_ends_before_the_sentence_does() -> None:
    assert found("Write to anna@example.com.") == [(EMAIL_ADDRESS, "anna@example.com")]
    assert found("<anna@example.com>") == [(EMAIL_ADDRESS, "anna@example.com")]


@pytest.mark.parametrize(
    "text",
    [
        "logo@2x.png",
        "icon@3x.webp",
        "ping @anna_smith",
        "user@localhost",
        "a..b@example.com",
        "user@example.c",
    ],
)
def test_email_lookalikes_are_not_email_addresses(text: str) -> None:
    assert_nothing(text)


@pytest.mark.parametrize(
    "value",
    [
        "+1 (415) 555-0132",
        "+1-415-555-0132",
        "+14155550132",
        "(415) 555-0132",
        "415-555-0132",
        "415.555.0132",
        "1-800-555-0199",
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "(+44) 20 7946 0958",
        "0044 20 7946 0958",
        "020 7946 0958",
        "(020) 7946 0958",
        "07700 900123",
        "+33 6 12 34 56 78",
        "01 23 45 67 89",
        "06.12.34.56.78",
        "+49 (0)30 12345678",
        "030/1234567",
        "0151 23456789",
        "+81 3-1234-5678",
        "+7 495 123-45-67",
        "+353 1 234 5678",
    ],
)
def test_phone_numbers_with_a_country_code_or_a_national_shape_are_found(value: str) -> None:
    assert_detects(PHONE_NUMBER, value, before="Reach us at ")


@pytest.mark.parametrize(
    "value", ["4155550132", "14155550132", "0612345678", "07700900123", "612 345 678", "12 34 56 78"]
)
def test_numbers_that_are_phones_only_in_context_need_a_context_word(value: str) -> None:
    assert found(f"Call me on {value} tomorrow.") == [(PHONE_NUMBER, value)]
    assert found(f"Llámame al {value}.") == [(PHONE_NUMBER, value)]
    assert_nothing(f"Reference {value} tomorrow.")


def test_a_context_word_on_the_line_above_does_not_count() -> None:
    assert_nothing("Phone: see below\n4155550132")


@pytest.mark.parametrize(
    "text",
    [
        "Order 2024-123456 shipped 2024-05-12 at 14:32:07.",
        "Due 05/12/2024 or 12.05.2024, v3.11.4, build 10.0.19045.3803.",
        "Total $1,234.56, EUR 1.234.567,89, 1 234 567 units.",
        "Trace 123e4567-e89b-12d3-a456-426614174000 took 8237461923 ms.",
        "Device 01-23-45-67-89-AB, ISBN 978-3-16-148410-0.",
        "Call the order 007-3438219-2491146 in.",
        "Room 4.12, pages 10-20, score 3:1.",
        "Meet 10:30-11:45 on 1.2.2025.",
    ],
)
def test_numbers_that_are_not_phones_are_not_found(text: str) -> None:
    assert_nothing(text)


@pytest.mark.parametrize(
    "value",
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555555555554444",
        "2223003122003222",
        "378282246310005",
        "3782 822463 10005",
        "6011111111111117",
        "3530111333300000",
        "30569309025904",
        "6200000000000005",
    ],
)
def test_card_numbers_passing_luhn_with_a_brand_are_found(value: str) -> None:
    assert_detects(CREDIT_CARD, value, before="Card ")


@pytest.mark.parametrize(
    "text",
    [
        "Card 4111111111111112 was declined.",  # Luhn fails
        "Card 4111 1111-1111 1111 was declined.",  # mixed separators
        "Card 4111 11111 111 1111 was declined.",  # not a card grouping
        "Card 1234567812345670 has no brand.",  # Luhn passes, no issuer uses prefix 1
        "IMEI 490154203237518 rebooted.",  # Luhn passes, but Visa has no 15-digit numbers
        "Number 0000000000000000.",
        "Ref x4111111111111111 and 4111111111111111-9.",
    ],
)
def test_card_lookalikes_are_not_cards(text: str) -> None:
    assert_nothing(text)


@pytest.mark.parametrize(
    "value",
    [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82 WEST 1234 5698 7654 32",
        "FR14 2004 1010 0505 0001 3M02 606",
        "NL91ABNA0417164300",
        "CH9300762011623852957",
        "BE68539007547034",
    ],
)
def test_ibans_with_their_country_length_and_check_digits_are_found(value: str) -> None:
    assert_detects(IBAN_CODE, value, before="IBAN ")


def test_an_iban_ends_at_its_country_length_even_before_a_capitalised_word() -> None:
    assert found("BE68 5390 0754 7034 SENT today") == [(IBAN_CODE, "BE68 5390 0754 7034")]


@pytest.mark.parametrize(
    "text",
    [
        "IBAN DE89 3704 0044 0532 0130 01",  # check digits wrong
        "IBAN DE88 3704 0044 0532 0130 00",
        "IBAN DE89 3704 0044 0532 0130",  # too short for DE
        "IBAN XX89370400440532013000",  # no such country
    ],
)
def test_ibans_failing_validation_are_not_found(text: str) -> None:
    assert_nothing(text)


def test_iban_validation_is_mod_97_with_country_lengths() -> None:
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("GB82WEST1234569876543")
    assert not iban_valid("GB83WEST12345698765432")


@pytest.mark.parametrize(
    "value",
    [
        "192.168.1.1",
        "8.8.8.8",
        "2001:db8::1",
        "::1",
        "fe80::1ff:fe23:4567:890a",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "::ffff:192.0.2.128",
    ],
)
def test_ip_addresses_are_found(value: str) -> None:
    assert_detects(IP_ADDRESS, value, before="from ", after=".")


def test_an_ip_address_in_a_url_or_with_a_port_is_found_without_them() -> None:
    assert found("GET http://10.0.0.7:8080/x") == [(IP_ADDRESS, "10.0.0.7")]
    assert found("listening on [2001:db8::1]:443") == [(IP_ADDRESS, "2001:db8::1")]


@pytest.mark.parametrize(
    "text",
    [
        "Address 256.1.1.1 is invalid",
        "Net 10.1.2 is partial",
        "Section 1.2.3.4.5 applies",
        "Running version 1.2.3.4 now",
        "Firmware build 2.0.1.7 ready",
        "Zero-padded 01.02.03.04",
        "At 10:30:00 sharp",
        "MAC 00:1A:2B:3C:4D:5E",
        "Use std::vector here",
    ],
)
def test_ip_lookalikes_are_not_ip_addresses(text: str) -> None:
    assert_nothing(text)


def test_dashed_ssns_are_found_and_other_forms_need_a_context_word() -> None:
    assert found("Applicant 536-22-9184 signed.") == [(US_SSN, "536-22-9184")]
    assert found("SSN: 536 22 9184") == [(US_SSN, "536 22 9184")]
    assert found("Her social security number is 536229184.") == [(US_SSN, "536229184")]
    assert_nothing("Reference 536229184 and 536 22 9184.")


@pytest.mark.parametrize(
    "value", ["000-12-3456", "666-12-3456", "912-12-3456", "123-00-4567", "123-45-0000", "078-05-1120"]
)
def test_ssns_never_issued_are_not_found(value: str) -> None:
    assert not ssn_valid(value.replace("-", ""))
    assert_nothing(f"SSN: {value}")


@pytest.mark.parametrize(
    "value",
    [
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",
        "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
        "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
    ],
)
def test_bitcoin_addresses_with_valid_checksums_are_found(value: str) -> None:
    assert_detects(CRYPTO, value, before="Send to ")


@pytest.mark.parametrize(
    "text",
    [
        "Send to 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb",
        "Send to bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5",
        "Commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    ],
)
def test_crypto_lookalikes_are_not_addresses(text: str) -> None:
    assert_nothing(text)


def test_luhn_accepts_valid_and_refuses_one_changed_digit() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


def test_findings_are_sorted_do_not_overlap_and_score_at_least_the_threshold() -> None:
    text = (
        "anna@example.com paid with 4111 1111 1111 1111 from 10.0.0.1, IBAN DE89 3704 0044 0532 0130 00,"
        " call +44 20 7946 0958, SSN 536-22-9184, BTC 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa, host 2001:db8::1"
    )
    findings = detect(text)
    assert [f.entity_type for f in findings] == [
        EMAIL_ADDRESS,
        CREDIT_CARD,
        IP_ADDRESS,
        IBAN_CODE,
        PHONE_NUMBER,
        US_SSN,
        CRYPTO,
        IP_ADDRESS,
    ]
    for before, after in itertools.pairwise(findings):
        assert before.end <= after.start
    assert all(REPORT_THRESHOLD <= f.score <= 1.0 for f in findings)
    assert detect(text) == findings


def test_a_context_word_raises_the_score() -> None:
    (plain,) = detect("Applicant 536-22-9184")
    (labelled,) = detect("SSN 536-22-9184")
    assert labelled.score > plain.score


def test_overlapping_candidates_keep_the_higher_score_then_the_longer_span() -> None:
    candidates = [
        Finding(PHONE_NUMBER, 5, 20, 0.6),
        Finding(CREDIT_CARD, 0, 19, 0.9),
        Finding(IBAN_CODE, 0, 26, 0.9),
        Finding(US_SSN, 26, 37, 0.5),
    ]
    assert _without_overlaps(candidates) == [Finding(IBAN_CODE, 0, 26, 0.9), Finding(US_SSN, 26, 37, 0.5)]


def test_entities_limit_the_search_and_unknown_names_are_refused() -> None:
    text = "anna@example.com from 10.0.0.1"
    assert found(text) == [(EMAIL_ADDRESS, "anna@example.com"), (IP_ADDRESS, "10.0.0.1")]
    assert [f.entity_type for f in detect(text, entities={IP_ADDRESS})] == [IP_ADDRESS]
    with pytest.raises(ValueError, match="PERSON"):
        detect(text, entities={"PERSON"})
    assert set(ENTITY_TYPES) >= {EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, IP_ADDRESS, US_SSN}


def test_min_score_drops_weaker_findings() -> None:
    assert detect("Applicant 536-22-9184", min_score=0.9) == []
    assert len(detect("SSN 536-22-9184", min_score=0.8)) == 1


def test_text_without_pii_gives_nothing() -> None:
    assert detect("") == []
    assert_nothing("The quick brown fox jumps over the lazy dog, twice, at 9:15.")


def test_a_number_starting_with_plus_is_found_right_after_another_number() -> None:
    assert found("Ref 12 +44 20 7946 0958") == [(PHONE_NUMBER, "+44 20 7946 0958")]
    assert found("4111 1111 1111 1111 +1 415 555 0132") == [
        (CREDIT_CARD, "4111 1111 1111 1111"),
        (PHONE_NUMBER, "+1 415 555 0132"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "1" * 20000,
        "1 " * 10000,
        "12-" * 7000,
        "1." * 10000,
        "a@" * 10000,
        "ab:" * 7000,
        "AB12" * 5000,
        "DE89 " + "3704 " * 4000,
        "a" * 20000 + "@",
        "a@" + "b." * 10000,
        "(1)" * 7000,
        "1:" * 10000 + "x",
    ],
)
def test_long_degenerate_input_is_scanned_without_findings(text: str) -> None:
    # Patterns that backtracked exponentially would hang here (and hit the test timeout).
    assert detect(text) == []
