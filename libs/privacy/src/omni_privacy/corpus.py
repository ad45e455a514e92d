"""A synthetic, labelled PII corpus and a per-entity precision/recall scorer.

Invariants:
- **Reproducible.** ``generate(n, seed=s)`` depends on ``n`` and ``s`` only: every random choice
  comes from one ``random.Random(seed)``.
- **Labels are exact.** Each ``Span`` is the character range the generator wrote for a PII value,
  and nothing else in the text is PII: the hard negatives (order numbers, dates, versions, times,
  amounts, card-shaped numbers failing Luhn, IBANs with wrong check digits, invalid SSNs and IP
  addresses, random digit strings, UUIDs, hashes, MAC addresses, ISBNs, ``logo@2x.png``) are
  values no reader would call personal data. A random digit string is redrawn if it happens to be
  a valid card number, so "random" never means "accidentally PII".
- **Context words only where real text has them.** Shapes that are PII only in context (a bare
  ten-digit phone number, an SSN written with spaces or without separators) appear only right
  after a context word ("Call me on", "SSN"); formatted values appear with and without one.
- **Strict scoring.** A finding counts as a true positive only when a labelled span has exactly
  its type, start and end; any other finding is a false positive of the finding's type, and every
  labelled span not matched exactly is a false negative of its type.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import re
import string
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from omni_privacy.detect import (
    BASE58_ALPHABET,
    BECH32_ALPHABET,
    BECH32_CONST,
    BECH32M_CONST,
    CREDIT_CARD,
    CRYPTO,
    EMAIL_ADDRESS,
    ENTITY_TYPES,
    IBAN_CODE,
    IP_ADDRESS,
    PHONE_NUMBER,
    US_SSN,
    Finding,
    bech32_hrp_expand,
    bech32_polymod,
    card_brand_known,
    detect,
    luhn_valid,
    ssn_valid,
)


@dataclass(frozen=True, slots=True)
class Span:
    entity_type: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    spans: tuple[Span, ...]


@dataclass(frozen=True, slots=True)
class EntityScore:
    entity_type: str
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        """Share of reported findings that are right (1.0 when nothing was reported)."""
        reported = self.true_positives + self.false_positives
        return self.true_positives / reported if reported else 1.0

    @property
    def recall(self) -> float:
        """Share of labelled values found exactly (1.0 when there were none)."""
        labelled = self.true_positives + self.false_negatives
        return self.true_positives / labelled if labelled else 1.0


def evaluate(
    samples: Iterable[Sample], detector: Callable[[str], Sequence[Finding]] = detect
) -> dict[str, EntityScore]:
    """Precision and recall per entity type (every type in ``ENTITY_TYPES`` has an entry)."""
    tp = dict.fromkeys(ENTITY_TYPES, 0)
    fp = dict.fromkeys(ENTITY_TYPES, 0)
    fn = dict.fromkeys(ENTITY_TYPES, 0)
    for sample in samples:
        truth = {(s.entity_type, s.start, s.end) for s in sample.spans}
        found = {(f.entity_type, f.start, f.end) for f in detector(sample.text)}
        for entity, _, _ in found & truth:
            tp[entity] = tp.get(entity, 0) + 1
        for entity, _, _ in found - truth:
            fp[entity] = fp.get(entity, 0) + 1
        for entity, _, _ in truth - found:
            fn[entity] = fn.get(entity, 0) + 1
    return {e: EntityScore(e, tp[e], fp.get(e, 0), fn[e]) for e in tp}


def misses(
    samples: Iterable[Sample], detector: Callable[[str], Sequence[Finding]] = detect
) -> list[tuple[str, str, str]]:
    """Every scoring error as (kind, entity type, offending text): "fp" or "fn". For diagnosis."""
    errors: list[tuple[str, str, str]] = []
    for sample in samples:
        truth = {(s.entity_type, s.start, s.end) for s in sample.spans}
        found = {(f.entity_type, f.start, f.end) for f in detector(sample.text)}
        errors += [("fp", e, sample.text[s:t]) for e, s, t in sorted(found - truth)]
        errors += [("fn", e, sample.text[s:t]) for e, s, t in sorted(truth - found)]
    return errors


# --- values ---------------------------------------------------------------------------------------
#
# Each generator takes the corpus's ``random.Random`` and returns the text of one value.


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST = _words(
    "anna ben carla david emma felix grace hugo ines jonas karin liam maria noah olga paul rosa sven"
)
_LAST = _words("smith mueller dubois rossi garcia novak jensen silva kowalski martin weber bianchi lopez ito")
_DOMAINS = _words(
    "example.com example.org mail.example.net company.co.uk uni-berlin.de startup.io post.example.fr"
    " web.de acme-corp.com health.example.ch gmail.com outlook.com proton.me firma.at bank.example.lu"
    " mail2.example.com students.example.edu city.example.gov shop.example.store"
)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def email(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    local = rng.choice(
        [
            f"{first}.{last}",
            f"{first[0]}{last}",
            f"{first}_{last}",
            f"{first}+{rng.choice(['news', 'shop', 'work'])}",
            f"{first}.{last}{rng.randint(1, 99)}",
            f"{last}-{first}",
            f"{first}{rng.randint(1950, 2005)}",
            f"{first[0]}.{last}%{rng.randint(1, 9)}",
        ]
    )
    address = f"{local}@{rng.choice(_DOMAINS)}"
    case = rng.random()
    return address.upper() if case < 0.05 else address.title() if case < 0.1 else address


def _nanp(rng: random.Random) -> tuple[str, str, str]:
    area = str(rng.randint(2, 9)) + rng.choice([f"{i:02d}" for i in range(100) if i != 11])
    exchange = str(rng.randint(2, 9)) + _digits(rng, 2)
    return area, exchange, _digits(rng, 4)


def phone(rng: random.Random) -> str:
    """A phone number in one of many written forms, always with a country code or a national shape."""
    a, e, n = _nanp(rng)
    uk = "20", _digits(rng, 4), _digits(rng, 4)
    uk_mobile = "7" + _digits(rng, 3), _digits(rng, 6)
    fr = [str(rng.randint(1, 9)), *(_digits(rng, 2) for _ in range(4))]
    de_area, de_number = rng.choice(["30", "40", "89", "69", "221"]), _digits(rng, rng.randint(7, 8))
    de_mobile = "15" + str(rng.randint(1, 9)), _digits(rng, 8)
    forms = [
        f"+1 {a} {e} {n}",
        f"+1-{a}-{e}-{n}",
        f"+1 ({a}) {e}-{n}",
        f"+1.{a}.{e}.{n}",
        f"+1{a}{e}{n}",
        f"({a}) {e}-{n}",
        f"({a}){e}-{n}",
        f"{a}-{e}-{n}",
        f"{a}.{e}.{n}",
        f"{a} {e} {n}",
        f"1-{a}-{e}-{n}",
        f"1 ({a}) {e}-{n}",
        f"+44 {uk[0]} {uk[1]} {uk[2]}",
        f"+44 (0){uk[0]} {uk[1]} {uk[2]}",
        f"+44 (0) {uk[0]} {uk[1]} {uk[2]}",
        f"(+44) {uk[0]} {uk[1]} {uk[2]}",
        f"+44 {uk_mobile[0]} {uk_mobile[1]}",
        f"0044 {uk[0]} {uk[1]} {uk[2]}",
        f"0{uk[0]} {uk[1]} {uk[2]}",
        f"(0{uk[0]}) {uk[1]} {uk[2]}",
        f"0{uk_mobile[0]} {uk_mobile[1]}",
        "+33 " + " ".join(fr),
        "+33 (0)" + " ".join(fr),
        "+33" + "".join(fr),
        "0033 " + " ".join(fr),
        "0" + " ".join(fr),
        "0" + ".".join(fr),
        "0" + "-".join(fr),
        f"+49 {de_area} {de_number}",
        f"+49-{de_area}-{de_number}",
        f"+49 (0){de_area} {de_number}",
        f"+49 {de_mobile[0]} {de_mobile[1]}",
        f"0{de_area} {de_number}",
        f"0{de_area}/{de_number}",
        f"(0{de_area}) {de_number}",
        f"0{de_mobile[0]} {de_mobile[1]}",
        f"+34 6{_digits(rng, 2)} {_digits(rng, 3)} {_digits(rng, 3)}",
        f"+34 91 {_digits(rng, 3)} {_digits(rng, 2)} {_digits(rng, 2)}",
        f"+39 06 {_digits(rng, 4)} {_digits(rng, 4)}",
        f"+39 3{_digits(rng, 2)} {_digits(rng, 3)} {_digits(rng, 4)}",
        f"+31 20 {_digits(rng, 3)} {_digits(rng, 4)}",
        f"+31 6 {_digits(rng, 8)}",
        f"+81 3-{_digits(rng, 4)}-{_digits(rng, 4)}",
        f"+61 2 {_digits(rng, 4)} {_digits(rng, 4)}",
        f"+61 4{_digits(rng, 2)} {_digits(rng, 3)} {_digits(rng, 3)}",
        f"+91 9{_digits(rng, 4)} {_digits(rng, 5)}",
        f"+55 11 9{_digits(rng, 4)}-{_digits(rng, 4)}",
        f"+41 44 {_digits(rng, 3)} {_digits(rng, 2)} {_digits(rng, 2)}",
        f"+353 1 {_digits(rng, 3)} {_digits(rng, 4)}",
        f"+7 495 {_digits(rng, 3)}-{_digits(rng, 2)}-{_digits(rng, 2)}",
        f"+86 13{_digits(rng, 1)} {_digits(rng, 4)} {_digits(rng, 4)}",
        f"+65 {rng.choice('689')}{_digits(rng, 3)} {_digits(rng, 4)}",
        f"+852 {_digits(rng, 4)} {_digits(rng, 4)}",
        f"+27 {rng.randint(10, 89)} {_digits(rng, 3)} {_digits(rng, 4)}",
        f"+971 4 {_digits(rng, 3)} {_digits(rng, 4)}",
    ]
    return rng.choice(forms)


def phone_needing_context(rng: random.Random) -> str:
    """A phone number that looks like any number: without separators, or grouped without a trunk 0."""
    a, e, n = _nanp(rng)
    return rng.choice(
        [
            f"{a}{e}{n}",
            f"1{a}{e}{n}",
            "06" + _digits(rng, 8),
            "07" + _digits(rng, 9),
            f"6{_digits(rng, 2)} {_digits(rng, 3)} {_digits(rng, 3)}",
            f"6{_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)}",
            f"{rng.randint(20, 99)} {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)}",
        ]
    )


_CARD_PREFIXES: tuple[tuple[str, int], ...] = (
    ("4", 16),
    ("4", 13),
    ("4", 19),
    ("51", 16),
    ("55", 16),
    ("2221", 16),
    ("2720", 16),
    ("34", 15),
    ("37", 15),
    ("6011", 16),
    ("65", 16),
    ("36", 14),
    ("3056", 14),
    ("3530", 16),
    ("62", 16),
    ("62", 19),
    ("6759", 16),
    ("2201", 16),
)
_CARD_SHAPES = {16: (4, 4, 4, 4), 15: (4, 6, 5), 14: (4, 6, 4), 19: (4, 4, 4, 4, 3)}


def _luhn_complete(body: str) -> str:
    return next(body + d for d in string.digits if luhn_valid(body + d))


def _card_digits(rng: random.Random) -> str:
    prefix, length = rng.choice(_CARD_PREFIXES)
    return _luhn_complete(prefix + _digits(rng, length - len(prefix) - 1))


def _format_card(rng: random.Random, digits: str) -> str:
    sep = rng.choice([" ", "-", ""])
    if not sep or len(digits) not in _CARD_SHAPES:
        return digits
    parts, i = [], 0
    for size in _CARD_SHAPES[len(digits)]:
        parts.append(digits[i : i + size])
        i += size
    return sep.join(parts)


def card(rng: random.Random) -> str:
    return _format_card(rng, _card_digits(rng))


def bad_card(rng: random.Random) -> str:
    """Card-shaped, with a brand's prefix and length, but the last digit breaks Luhn."""
    digits = _card_digits(rng)
    wrong = str((int(digits[-1]) + rng.randint(1, 9)) % 10)
    return _format_card(rng, digits[:-1] + wrong)


def imei(rng: random.Random) -> str:
    """A device IMEI: 15 digits passing Luhn, but no card brand issues 15 digits with its prefix."""
    return _luhn_complete(rng.choice(["35", "49", "86", "01"]) + _digits(rng, 12))


# Country -> the BBAN: "n" a digit, "a" an upper-case letter, "c" either.
_BBAN_SHAPES = {
    "DE": "n" * 18,
    "FR": "n" * 10 + "c" * 11 + "n" * 2,
    "GB": "aaaa" + "n" * 14,
    "NL": "aaaa" + "n" * 10,
    "ES": "n" * 20,
    "IT": "a" + "n" * 10 + "c" * 12,
    "BE": "n" * 12,
    "CH": "n" * 5 + "c" * 12,
    "AT": "n" * 16,
    "PL": "n" * 24,
    "SE": "n" * 20,
    "NO": "n" * 11,
    "IE": "aaaa" + "n" * 14,
    "PT": "n" * 21,
    "LU": "nnn" + "c" * 13,
    "DK": "n" * 14,
    "MT": "aaaa" + "n" * 5 + "c" * 18,
    "SA": "nn" + "c" * 18,
}


def _iban_checked(country: str, bban: str) -> str:
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def _bban(rng: random.Random, country: str) -> str:
    pools = {"n": string.digits, "a": string.ascii_uppercase, "c": string.digits + string.ascii_uppercase}
    return "".join(rng.choice(pools[kind]) for kind in _BBAN_SHAPES[country])


def _format_iban(rng: random.Random, compact: str) -> str:
    if rng.random() < 0.4:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def iban(rng: random.Random) -> str:
    country = rng.choice(sorted(_BBAN_SHAPES))
    return _format_iban(rng, _iban_checked(country, _bban(rng, country)))


def bad_iban(rng: random.Random) -> str:
    """An IBAN whose check digits are wrong (still 02-98, so only mod-97 can tell)."""
    country = rng.choice(sorted(_BBAN_SHAPES))
    compact = _iban_checked(country, _bban(rng, country))
    wrong = (int(compact[2:4]) - 2 + rng.randint(1, 96)) % 97 + 2
    return _format_iban(rng, f"{compact[:2]}{wrong:02d}{compact[4:]}")


def ipv4(rng: random.Random) -> str:
    first = rng.choice([10, 172, 192, 203, 198, 81, 145, 1, 8, rng.randint(1, 223)])
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}"


def _hex16(rng: random.Random) -> str:
    return f"{rng.getrandbits(16):x}"


def ipv6(rng: random.Random) -> str:
    form = rng.randrange(7)
    if form == 0:
        return ipaddress.IPv6Address(rng.getrandbits(128)).exploded
    if form == 1:
        return ":".join(_hex16(rng) for _ in range(8))
    if form == 2:
        return f"2001:db8:{_hex16(rng)}::{_hex16(rng)}"
    if form == 3:
        return "fe80::" + ":".join(_hex16(rng) for _ in range(4))
    if form == 4:
        return f"::ffff:{ipv4(rng)}"
    if form == 5:
        return str(ipaddress.IPv6Address(rng.getrandbits(64) << 64))  # compressed: "2a01:…::"
    return ipaddress.IPv6Address(rng.getrandbits(128)).exploded.upper()


def _ssn_digits(rng: random.Random) -> str:
    while True:
        digits = f"{rng.randint(1, 899):03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
        if ssn_valid(digits):
            return digits


def ssn(rng: random.Random) -> str:
    d = _ssn_digits(rng)
    return f"{d[:3]}-{d[3:5]}-{d[5:]}"


def ssn_needing_context(rng: random.Random) -> str:
    """An SSN as written after the word SSN: with dashes, spaces or nothing between the groups."""
    d = _ssn_digits(rng)
    sep = rng.choice(["-", " ", ""])
    return f"{d[:3]}{sep}{d[3:5]}{sep}{d[5:]}"


def bad_ssn(rng: random.Random) -> str:
    """SSN-shaped, but an area, group or serial the SSA never issues."""
    area, group = f"{rng.randint(1, 899):03d}", f"{rng.randint(1, 99):02d}"
    serial = f"{rng.randint(1, 9999):04d}"
    broken = rng.randrange(5)
    if broken == 0:
        area = "000"
    elif broken == 1:
        area = "666"
    elif broken == 2:
        area = str(rng.randint(900, 999))
    elif broken == 3:
        group = "00"
    else:
        serial = "0000"
    return f"{area}-{group}-{serial}"


def _base58check(payload: bytes) -> str:
    raw = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    number = int.from_bytes(raw, "big")
    encoded = ""
    while number:
        number, rem = divmod(number, 58)
        encoded = BASE58_ALPHABET[rem] + encoded
    return "1" * (len(raw) - len(raw.lstrip(b"\x00"))) + encoded


def _segwit(version: int, program: bytes) -> str:
    data, acc, bits = [version], 0, 0
    for byte in program:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            data.append((acc >> bits) & 31)
    if bits:
        data.append((acc << (5 - bits)) & 31)
    constant = BECH32_CONST if version == 0 else BECH32M_CONST
    polymod = bech32_polymod([*bech32_hrp_expand("bc"), *data, 0, 0, 0, 0, 0, 0]) ^ constant
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return "bc1" + "".join(BECH32_ALPHABET[d] for d in data + checksum)


def crypto(rng: random.Random) -> str:
    form = rng.randrange(4)
    if form == 0:
        return _base58check(b"\x00" + rng.randbytes(20))
    if form == 1:
        return _base58check(b"\x05" + rng.randbytes(20))
    if form == 2:
        return _segwit(0, rng.randbytes(rng.choice([20, 32])))
    return _segwit(1, rng.randbytes(32))


def bad_crypto(rng: random.Random) -> str:
    """A Bitcoin address with one character changed: its checksum fails."""
    address = crypto(rng)
    alphabet = BECH32_ALPHABET if address.startswith("bc1") else BASE58_ALPHABET
    i = rng.randrange(4, len(address))
    replacement = rng.choice([ch for ch in alphabet if ch != address[i]])
    return address[:i] + replacement + address[i + 1 :]


# --- hard negatives -------------------------------------------------------------------------------


def order_number(rng: random.Random) -> str:
    return rng.choice(
        [
            f"#{rng.randint(1000, 99999999)}",
            f"ORD-{rng.randint(2019, 2026)}-{_digits(rng, 6)}",
            f"{rng.randint(2019, 2026)}-{_digits(rng, 6)}",
            f"INV{_digits(rng, 8)}",
            f"PO {_digits(rng, 4)}/{_digits(rng, 2)}",
            f"{rng.choice(string.ascii_uppercase)}{_digits(rng, 3)}-{_digits(rng, 4)}-{_digits(rng, 2)}",
            f"1Z{_digits(rng, 3)}{rng.choice(['AA', 'X0', 'E2'])}{_digits(rng, 10)}",
            f"{_digits(rng, 3)}-{_digits(rng, 7)}-{_digits(rng, 7)}",
        ]
    )


def date(rng: random.Random) -> str:
    y, m, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    month = _words("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec")[m - 1]
    return rng.choice(
        [
            f"{y}-{m:02d}-{d:02d}",
            f"{m:02d}/{d:02d}/{y}",
            f"{d:02d}.{m:02d}.{y}",
            f"{d} {month} {y}",
            f"{d}/{m}/{y}",
            f"{y}{m:02d}{d:02d}",
            f"{y}-{m:02d}-{d:02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
        ]
    )


def version(rng: random.Random) -> str:
    a, b, c = rng.randint(0, 12), rng.randint(0, 30), rng.randint(0, 200)
    return rng.choice(
        [
            f"v{a}.{b}.{c}",
            f"{a}.{b}.{c}",
            f"{a}.{b}",
            f"version {a}.{b}.{c}.{rng.randint(0, 99)}",
            f"build {a}.{b}.{c}.{rng.randint(0, 99)}",
            f"{a}.{b}.{c}-rc.{rng.randint(1, 5)}",
            f"10.0.{rng.randint(10000, 22631)}.{rng.randint(100, 4000)}",
        ]
    )


def time(rng: random.Random) -> str:
    h, m, s = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
    return rng.choice(
        [
            f"{h:02d}:{m:02d}",
            f"{h:02d}:{m:02d}:{s:02d}",
            f"{h}:{m:02d}-{(h + 1) % 24}:{m:02d}",
            f"{h}h{m:02d}",
        ]
    )


def amount(rng: random.Random) -> str:
    value = rng.randint(1, 99_999_999)
    cents = rng.randint(0, 99)
    return rng.choice(
        [
            f"${value:,}.{cents:02d}",
            f"EUR {value:,}".replace(",", ".") + f",{cents:02d}",
            f"{value:,}".replace(",", " ") + " €",
            f"£{value}",
            f"CHF {value:,}".replace(",", "'"),
            f"{value / 100:.2f} USD",
            f"{value:,}".replace(",", " ") + " units",
        ]
    )


def digit_string(rng: random.Random) -> str:
    """Digits that are no PII: a run that happens to be a valid card number is drawn again."""
    while True:
        digits = str(rng.randint(1, 9)) + _digits(rng, rng.randint(3, 18))
        if not (luhn_valid(digits) and card_brand_known(digits)):
            return digits


def a_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def git_hash(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040x}"[: rng.choice([7, 12, 40])]


def mac_address(rng: random.Random) -> str:
    return rng.choice([":", "-"]).join(f"{rng.getrandbits(8):02X}" for _ in range(6))


def bad_ip(rng: random.Random) -> str:
    octet = rng.randint
    return rng.choice(
        [
            f"{octet(256, 999)}.{octet(0, 255)}.{octet(0, 255)}.{octet(0, 255)}",
            f"{octet(1, 223)}.{octet(0, 255)}.{octet(0, 255)}",
            f"{octet(1, 223)}.{octet(0, 255)}.{octet(0, 255)}.{octet(0, 255)}.{octet(0, 9)}",
            f"{_hex16(rng)}:{_hex16(rng)}:{_hex16(rng)}",
            f"{_hex16(rng)}::{_hex16(rng)}::{_hex16(rng)}",
        ]
    )


def isbn(rng: random.Random) -> str:
    return f"978-{rng.randint(0, 9)}-{_digits(rng, 2)}-{_digits(rng, 6)}-{rng.randint(0, 9)}"


def asset_name(rng: random.Random) -> str:
    name, ext = rng.choice(["logo", "icon", "banner", "avatar"]), rng.choice(["png", "jpg", "webp", "svg"])
    return f"{name}@{rng.randint(2, 3)}x.{ext}"


def handle(rng: random.Random) -> str:
    return f"@{rng.choice(_FIRST)}_{rng.choice(_LAST)}"


def measurement(rng: random.Random) -> str:
    return rng.choice(
        [
            f"{rng.uniform(-90, 90):.4f}, {rng.uniform(-180, 180):.4f}",
            f"{rng.randint(1, 99)}.{rng.randint(0, 9)}%",
            f"{rng.randint(1, 999)}.{rng.randint(0, 99)} GB",
            f"{rng.randint(1, 40)}-{rng.randint(41, 99)}",
            f"{rng.randint(1, 9)}:{rng.randint(1, 9)}",
            f"ISO {rng.choice(['8601', '3166-1', '27001', '9001:2015'])}",
            f"RFC {rng.randint(791, 9999)}",
        ]
    )


# Slot name -> (generator, entity type, or None for a hard negative).
_SLOTS: dict[str, tuple[Callable[[random.Random], str], str | None]] = {
    "EMAIL": (email, EMAIL_ADDRESS),
    "PHONE": (phone, PHONE_NUMBER),
    "PHONE_CTX": (phone_needing_context, PHONE_NUMBER),
    "CARD": (card, CREDIT_CARD),
    "IBAN": (iban, IBAN_CODE),
    "IPV4": (ipv4, IP_ADDRESS),
    "IPV6": (ipv6, IP_ADDRESS),
    "SSN": (ssn, US_SSN),
    "SSN_CTX": (ssn_needing_context, US_SSN),
    "CRYPTO": (crypto, CRYPTO),
    "ORDER": (order_number, None),
    "DATE": (date, None),
    "VERSION": (version, None),
    "TIME": (time, None),
    "AMOUNT": (amount, None),
    "BADCARD": (bad_card, None),
    "IMEI": (imei, None),
    "BADIBAN": (bad_iban, None),
    "BADSSN": (bad_ssn, None),
    "BADIP": (bad_ip, None),
    "BADCRYPTO": (bad_crypto, None),
    "DIGITS": (digit_string, None),
    "UUID": (a_uuid, None),
    "HASH": (git_hash, None),
    "MAC": (mac_address, None),
    "ISBN": (isbn, None),
    "ASSET": (asset_name, None),
    "HANDLE": (handle, None),
    "MEASURE": (measurement, None),
}

# Sentences as they occur in tickets, chats, logs and forms. Slots needing context (_CTX) always
# follow a context word.
_TEMPLATES: tuple[str, ...] = (
    # e-mail
    "Please contact {EMAIL} about order {ORDER} placed on {DATE}.",
    "Forwarded by {EMAIL} at {TIME}; see ticket {ORDER}.",
    "cc: {EMAIL}, {EMAIL}",
    "Reply to <{EMAIL}> before {DATE}.",
    "The header image is {ASSET} and the sender was {EMAIL}.",
    "Ping {HANDLE} or write to mailto:{EMAIL} (subject {UUID}).",
    "Schreiben Sie an {EMAIL} oder rufen Sie {PHONE} an.",
    "Écrivez à {EMAIL} avant le {DATE}.",
    '{"user": "{EMAIL}", "ts": "{DATE}", "id": "{UUID}"}',
    # phone
    "You can reach me at {PHONE} after {TIME}.",
    "Call me on {PHONE_CTX} tomorrow.",
    "Phone: {PHONE_CTX}",
    "mobile {PHONE_CTX}, office {PHONE}",
    "Tel. {PHONE} (office), fax {PHONE}.",
    "Our hotline {PHONE} is open until {TIME}.",
    "The customer left {PHONE} as a callback number for case {ORDER}.",
    "Dial tel:{PHONE} from the app.",
    "Appelez-moi au {PHONE} ou au {PHONE}.",
    "Llámame al {PHONE_CTX} después de las {TIME}.",
    "Erreichbar unter {PHONE}, Bestellung {ORDER} vom {DATE}.",
    "Ticket {ORDER} opened {DATE}, contact {PHONE}.",
    "{PHONE} ext. {DIGITS} ({TIME})",
    # cards
    "My card {CARD} was charged {AMOUNT} on {DATE}.",
    "Card {BADCARD} was declined by the checksum, card {CARD} was accepted.",
    "Please refund {AMOUNT} to {CARD}.",
    "Payment with {CARD} (exp {DATE}) for invoice {ORDER}.",
    "Kreditkarte {CARD}, Betrag {AMOUNT}.",
    "{CARD}",
    # IBAN
    "Transfer {AMOUNT} to IBAN {IBAN} by {DATE}.",
    "Wire to {IBAN}, reference {DIGITS}.",
    "Bitte überweisen Sie {AMOUNT} auf {IBAN}.",
    "Old account {BADIBAN} failed validation; new one is {IBAN}.",
    "Virement vers {IBAN} le {DATE}.",
    "IBAN: {IBAN} BIC: {ORDER}",
    # IP
    "Login from {IPV4} at {TIME} using client {VERSION}.",
    "The server {IPV6} responded with request id {UUID}.",
    "Blocked {IPV4} and {IPV6} after {DIGITS} failed attempts.",
    "Peer {IPV6}, build {HASH}, {DATE}.",
    "Connected to {IPV4}:{DIGITS} from {IPV4}.",
    "GET http://{IPV4}:8080/api/v{DIGITS} took {MEASURE}",
    "Listening on [{IPV6}]:443 since {DATE}",
    "Route {IPV4}/24 via {IPV4}.",
    "Address {BADIP} is not valid, {IPV4} is.",
    # SSN
    "SSN: {SSN_CTX}",
    "Her social security number is {SSN_CTX}.",
    "Applicant {SSN} submitted form {ORDER} on {DATE}.",
    "The SSN field contained {BADSSN}, which was rejected.",
    "Employee {SSN}, start date {DATE}, salary {AMOUNT}.",
    # crypto
    "Send BTC to {CRYPTO}.",
    "Donations: {CRYPTO} (tx fee {AMOUNT}).",
    "Wallet {CRYPTO} received {DIGITS} sats at {TIME}.",
    "Address {BADCRYPTO} has a bad checksum.",
    # mixed
    "{EMAIL} paid {AMOUNT} with {CARD} from {IPV4}.",
    "User {EMAIL} (phone {PHONE}) changed IBAN to {IBAN} on {DATE} at {TIME}.",
    # hard negatives only
    "Build {VERSION} shipped on {DATE} at {TIME}.",
    "Invoice {ORDER} totals {AMOUNT}, due {DATE}.",
    "Trace {UUID} took {DIGITS} ms.",
    "Commit {HASH} fixed issue #{DIGITS} in release {VERSION}.",
    "Device {MAC} (IMEI {IMEI}) rebooted at {TIME} on {DATE}.",
    "Reference {DIGITS}, order {ORDER}, tracking {DIGITS}.",
    "ISBN {ISBN}, {AMOUNT}.",
    "Test card {BADCARD} must be declined.",
    "Meeting {TIME} on {DATE}; agenda id {UUID}.",
    "Upgrade from {VERSION} to {VERSION} took {DIGITS} s.",
    "Measured {MEASURE} and {MEASURE} on {DATE}, see {MEASURE}.",
    "Shipped {AMOUNT} in {DIGITS} parcels ({ORDER}).",
)
_SLOT_RE = re.compile(r"\{([A-Z0-9_]+)\}")


def sentence(rng: random.Random, template: str) -> Sample:
    """Fill one template: each slot's text and, for PII slots, its span."""
    parts: list[str] = []
    spans: list[Span] = []
    length = last = 0
    for m in _SLOT_RE.finditer(template):
        parts.append(template[last : m.start()])
        length += m.start() - last
        make, entity = _SLOTS[m.group(1)]
        value = make(rng)
        if entity is not None:
            spans.append(Span(entity, length, length + len(value)))
        parts.append(value)
        length += len(value)
        last = m.end()
    parts.append(template[last:])
    return Sample("".join(parts), tuple(spans))


def generate(n: int, *, seed: int = 0) -> list[Sample]:
    """``n`` samples of one to three sentences each, the templates drawn uniformly."""
    rng = random.Random(seed)
    samples: list[Sample] = []
    for _ in range(n):
        text = ""
        spans: list[Span] = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            if text:
                # A sentence ending in a value is a line of a form or log: the next starts a new line.
                text += " " if text[-1] in ".;)" else "\n"
            one = sentence(rng, rng.choice(_TEMPLATES))
            spans += [Span(s.entity_type, s.start + len(text), s.end + len(text)) for s in one.spans]
            text += one.text
        samples.append(Sample(text, tuple(spans)))
    return samples
