"""Offline PII detection by rules: every finding is a pattern that also passed a validity check.

Invariants:
- **Offline and deterministic.** No model, no download, no network, no clock, no randomness:
  ``detect(text)`` depends on its arguments only. Context words near a candidate raise its score by
  a fixed amount; they never depend on anything outside the text.
- **Validated, not merely matched.** A credit card passes Luhn and fits a card brand's prefix and
  length; an IBAN has its country's length and passes mod-97; an IP address is accepted by
  ``ipaddress``; an SSN avoids the never-issued areas, groups and serials; a crypto address passes
  its Base58Check or bech32/bech32m checksum; an e-mail's top-level domain is a country code or a
  known generic one; a phone number has a known country calling code or a national shape.
- **Weak shapes need context.** A candidate scores its entity's base score, plus ``CONTEXT_BOOST``
  when one of the entity's context words appears within ``CONTEXT_WINDOW`` characters before it on
  the same line, and is reported only when that reaches ``REPORT_THRESHOLD``. Shapes that are too
  common to mean PII alone (a bare run of digits as a phone number or SSN, an SSN written with
  spaces, "612 345 678") start below the threshold, so they are reported only next to a word such
  as "phone" or "SSN".
- **Whole tokens only.** A match never starts or ends inside a longer word or number (``x4111…``,
  ``…1111-9``), so part of an order number or UUID is never reported.
- **No overlaps.** Candidates are chosen by score, then length, then position, then entity type;
  a candidate overlapping a chosen one is dropped. The result is sorted by position.
- Offsets are ``str`` indices (code points), ``end`` exclusive.

Entity names are Presidio's: EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, IP_ADDRESS,
US_SSN, CRYPTO (Bitcoin addresses).
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

EMAIL_ADDRESS = "EMAIL_ADDRESS"
PHONE_NUMBER = "PHONE_NUMBER"
CREDIT_CARD = "CREDIT_CARD"
IBAN_CODE = "IBAN_CODE"
IP_ADDRESS = "IP_ADDRESS"
US_SSN = "US_SSN"
CRYPTO = "CRYPTO"

ENTITY_TYPES: tuple[str, ...] = (
    EMAIL_ADDRESS,
    PHONE_NUMBER,
    CREDIT_CARD,
    IBAN_CODE,
    IP_ADDRESS,
    US_SSN,
    CRYPTO,
)

REPORT_THRESHOLD = 0.5
CONTEXT_BOOST = 0.3
CONTEXT_WINDOW = 32


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected entity: ``text[start:end]`` is the PII."""

    entity_type: str
    start: int
    end: int
    score: float


# Context words (regular expressions), matched case-insensitively as whole words in the window
# before a candidate.
_CONTEXT_WORDS: dict[str, tuple[str, ...]] = {
    EMAIL_ADDRESS: _words(r"e-?mails? mail courriel contact reply cc"),
    PHONE_NUMBER: _words(
        r"(?:tele)?phones? tel\.? tele(?:fon|fono)\w* teléfono tél\.? téléphone mobile? móvil movil"
        r" cell(?:phone|ulare)? call(?:s|ed|ing)? ring ll[aá]m\w+ chiam\w+ tlf fax whats-?app sms"
        r" dial(?:led)? hotline handy anruf\w* rufen ruf appel\w* portable reach(?:ed|able)? erreichbar"
    ),
    CREDIT_CARD: _words(
        r"cards? credit debit visa mastercard amex carte (?:kredit)?karte payment paid charged"
    ),
    IBAN_CODE: _words(r"iban bank account konto compte rib transfer wire virement überweisen"),
    IP_ADDRESS: _words(r"ip ipv4 ipv6 address host server client from peer login blocked"),
    US_SSN: (r"ssns?", r"social\s+security", r"social\s+sec\.?", r"ss#", r"ss\s+no\.?", r"taxpayer"),
    CRYPTO: _words(r"btc bitcoin wallet crypto address send donations?"),
}
_CONTEXT_RE: dict[str, re.Pattern[str]] = {
    entity: re.compile(r"(?<!\w)(?:" + "|".join(words) + r")(?!\w)", re.IGNORECASE)
    for entity, words in _CONTEXT_WORDS.items()
}


def _context_score(entity: str, text: str, start: int, base: float) -> float:
    # The window stays on the candidate's line: a label on the line above belongs to another value.
    window_start = max(start - CONTEXT_WINDOW, text.rfind("\n", 0, start) + 1)
    if _CONTEXT_RE[entity].search(text, window_start, start):
        return min(1.0, round(base + CONTEXT_BOOST, 2))
    return base


# --- EMAIL_ADDRESS --------------------------------------------------------------------------------

_EMAIL_BASE = 0.8
_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_DOMAIN_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24})(?![A-Za-z0-9_@-])"
)
# Two letters are a country code (any pair is accepted); longer top-level domains must be known
# ones, which keeps ``logo@2x.png`` and ``icon@3x.webp`` out.
_GENERIC_TLDS = frozenset(
    _words(
        """
        com org net edu gov mil int info biz name pro aero coop museum mobi jobs travel tel asia cat app
        dev page io cloud tech online site store shop blog xyz top club live email company global group
        team work world agency digital solutions services systems network media news academy center
        centre health care life support today consulting studio design art social
        """
    )
)


def _emails(text: str) -> Iterator[Finding]:
    at = text.find("@")
    while at != -1:
        found = _email_at(text, at)
        if found is not None:
            yield found
        at = text.find("@", at + 1)


def _email_at(text: str, at: int) -> Finding | None:
    start = at
    lowest = max(0, at - 64)
    while start > lowest and text[start - 1] in _LOCAL_CHARS:
        start -= 1
    if start == lowest and start > 0 and text[start - 1] in _LOCAL_CHARS:
        return None  # a local part longer than RFC 5321 allows: not an address
    while start < at and not text[start].isalnum():
        start += 1  # a leading dot, plus or percent is punctuation around the address
    local = text[start:at]
    if not local or local.endswith(".") or ".." in local:
        return None
    m = _DOMAIN_RE.match(text, at + 1)
    if m is None:
        return None
    tld = m.group(1).lower()
    if len(tld) > 2 and tld not in _GENERIC_TLDS:
        return None
    return Finding(EMAIL_ADDRESS, start, m.end(), _context_score(EMAIL_ADDRESS, text, start, _EMAIL_BASE))


# --- PHONE_NUMBER ---------------------------------------------------------------------------------

# Digit groups joined by one separator each; a group in parentheses may touch its neighbours.
_PHONE_RE = re.compile(
    r"(?=[\d(+])(?<![\w@+.\-/])"
    # A "+" always starts a number; a digit does not when a digit and a separator precede it.
    r"(?:(\+ ?|\(\+\d{1,3}\) ?)|(?<!\d[ .\-/]))"
    r"(?:\(\d{1,5}\)|\d+)"
    r"(?:[ .\-/]\d+|[ .\-/]?\(\d{1,5}\)|(?<=\))\d+)*"
    r"(?![\w@]|[ .\-/]?\(?\d|[.\-/]\w)"
)
_PHONE_PART_RE = re.compile(r"\((\d+)\)|(\d+)|([ .\-/])")

# E.164 country calling codes (a prefix-free set: no code begins another).
_CALLING_CODES = frozenset(
    _words(
        """
        1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 62 63
        64 65 66 81 82 84 86 90 91 92 93 94 95 98 211 212 213 216 218 290 291 297 298 299 350 351 352
        353 354 355 356 357 358 359 370 371 372 373 374 375 376 377 378 380 381 382 383 385 386 387 389
        420 421 423 500 501 502 503 504 505 506 507 508 509 590 591 592 593 594 595 596 597 598 599 670
        672 673 674 675 676 677 678 679 680 681 682 683 685 686 687 688 689 690 691 692 850 852 853 855
        856 880 886 960 961 962 963 964 965 966 967 968 970 971 972 973 974 975 976 977 992 993 994 995
        996 998
        """
    )
    + tuple(str(code) for code in range(220, 259))
    + tuple(str(code) for code in range(260, 270))
)

_PHONE_INTERNATIONAL = 0.7  # "+44 20 7946 0958", "+14155550132"
_PHONE_INTERNATIONAL_00 = 0.6  # "0044 20 7946 0958"
_PHONE_NATIONAL = 0.5  # "(415) 555-0132", "020 7946 0958", "01 23 45 67 89"
# "4155550132", "0612345678", "612 345 678": a phone number only next to a context word
_PHONE_BARE = 0.3
# Groupings of national numbers without a trunk zero (Spain, Denmark, Norway, Singapore, China...).
# Not 3-2-4: that is how an SSN is written.
_PLAIN_SHAPES = frozenset({(3, 3, 3), (3, 2, 2, 2), (2, 2, 2, 2), (4, 4), (3, 4, 4)})


def _phones(text: str) -> Iterator[Finding]:
    for m in _PHONE_RE.finditer(text):
        if m.end() - m.start() < 8:
            continue  # every accepted form has at least 8 digits: skip times, years, counts early
        base = _phone_score(m.group(0), plus=m.group(1) is not None)
        if base is None:
            continue
        score = _context_score(PHONE_NUMBER, text, m.start(), base)
        if score >= REPORT_THRESHOLD:
            yield Finding(PHONE_NUMBER, m.start(), m.end(), score)


def _phone_score(candidate: str, *, plus: bool) -> float | None:
    groups: list[str] = []
    in_parens: list[bool] = []
    seps: list[str] = []  # seps[i] is what precedes groups[i + 1] ("" when a parenthesis touches it)
    pending = ""
    for part in _PHONE_PART_RE.finditer(candidate.replace("(+", "(", 1).lstrip("+ ")):
        paren, digits, sep = part.groups()
        if sep is not None:
            pending = sep
            continue
        if groups:
            seps.append(pending)
        pending = ""
        groups.append(paren if paren is not None else digits)
        in_parens.append(paren is not None)
    if len(groups) > 8:
        return None
    if plus:
        return _international(groups, in_parens, _PHONE_INTERNATIONAL)
    if groups[0].startswith("00") and len(groups) > 1 and not in_parens[0]:
        # "0044 20 7946 0958": the first group must be exactly the international prefix and a code.
        if groups[0][2:] not in _CALLING_CODES:
            return None
        return _international([groups[0][2:], *groups[1:]], in_parens, _PHONE_INTERNATIONAL_00)
    if len(groups) == 1:
        digits = groups[0]
        if (
            _nanp(digits)
            or (len(digits) == 11 and digits[0] == "1" and _nanp(digits[1:]))
            or (10 <= len(digits) <= 12 and digits[0] == "0" and digits[1] != "0")
        ):
            return _PHONE_BARE
        return None
    if _nanp_grouped(groups, in_parens, seps) or _trunk_grouped(groups, in_parens, seps):
        return _PHONE_NATIONAL
    if _plain_grouped(groups, in_parens, seps):
        return _PHONE_BARE
    return None


def _international(groups: list[str], in_parens: list[bool], base: float) -> float | None:
    # "(0)" is the national trunk prefix some write after the country code: not dialled from abroad.
    digits = "".join(g for g, paren in zip(groups, in_parens, strict=True) if not (paren and g == "0"))
    code = next((digits[:n] for n in (1, 2, 3) if digits[:n] in _CALLING_CODES), None)
    if code is None or len(groups[0]) < len(code) or not 8 <= len(digits) <= 15:
        return None
    national = digits[len(code) :]
    if code == "1":
        return base if _nanp(national) else None
    # No numbering plan goes past 12 national digits; an order number "007-3438219-2491146" does.
    return base if 6 <= len(national) <= 12 else None


def _nanp(digits: str) -> bool:
    """A ten-digit North American number: area and exchange codes start with 2-9."""
    return len(digits) == 10 and digits[0] in "23456789" and digits[3] in "23456789" and digits[1:3] != "11"


def _nanp_grouped(groups: list[str], in_parens: list[bool], seps: list[str]) -> bool:
    if len(groups) == 4 and groups[0] == "1" and not in_parens[0]:
        groups, in_parens, seps = groups[1:], in_parens[1:], seps[1:]
    if [len(g) for g in groups] != [3, 3, 4] or any(in_parens[1:]) or not _nanp("".join(groups)):
        return False
    if in_parens[0]:
        return seps[0] in ("", " ", "-") and seps[1] in (" ", "-", ".")
    return seps[0] == seps[1] and seps[0] in (" ", "-", ".")


def _trunk_grouped(groups: list[str], in_parens: list[bool], seps: list[str]) -> bool:
    """A national number with its trunk zero: "020 7946 0958", "(030) 1234567", "01 23 45 67 89"."""
    digits = "".join(groups)
    if not (10 <= len(digits) <= 12 and digits[0] == "0" and digits[1] != "0") or any(in_parens[1:]):
        return False
    first = 1 if in_parens[0] else 0
    if in_parens[0] and seps[0] not in ("", " "):
        return False
    rest_seps = seps[first:]
    if len(set(rest_seps)) > 1 or (rest_seps and rest_seps[0] == ""):
        return False
    sizes = [len(g) for g in groups]
    if sizes == [2, 2, 2, 2, 2]:
        return True
    return len(groups) <= 4 and 2 <= sizes[0] <= 5 and all(size >= 3 for size in sizes[1:])


def _plain_grouped(groups: list[str], in_parens: list[bool], seps: list[str]) -> bool:
    """A national number without a trunk zero ("612 345 678", "12 34 56 78"): amounts look alike."""
    return (
        tuple(len(g) for g in groups) in _PLAIN_SHAPES
        and not any(in_parens)
        and len(set(seps)) == 1
        and seps[0] in (" ", "-")
    )


# --- CREDIT_CARD ----------------------------------------------------------------------------------

_CARD_RE = re.compile(r"(?=\d)(?<![\w+.\-/])(?<!\d[ \-])\d{4}(?:[ \-]?\d){9,15}(?![\w]|[ \-.,]\d|[\-/]\w)")
_CARD_BASE = 0.8
# How card numbers are printed: contiguous, or in these groupings with one kind of separator.
_CARD_SHAPES = frozenset({(4, 4, 4, 4), (4, 6, 5), (4, 6, 4), (4, 4, 4, 4, 3)})
# (lowest prefix, highest prefix, lengths) per brand; prefixes compared on as many digits as given.
_CARD_BRANDS: tuple[tuple[str, str, frozenset[int]], ...] = (
    ("4", "4", frozenset({13, 16, 19})),  # Visa
    ("51", "55", frozenset({16})),  # Mastercard
    ("2221", "2720", frozenset({16})),  # Mastercard 2-series
    ("34", "34", frozenset({15})),  # American Express
    ("37", "37", frozenset({15})),
    ("6011", "6011", frozenset({16, 17, 18, 19})),  # Discover
    ("644", "649", frozenset({16, 17, 18, 19})),
    ("65", "65", frozenset({16, 17, 18, 19})),
    ("300", "305", frozenset({14, 16, 17, 18, 19})),  # Diners Club
    ("3095", "3095", frozenset({14, 16, 17, 18, 19})),
    ("36", "36", frozenset({14, 16, 17, 18, 19})),
    ("38", "39", frozenset({14, 16, 17, 18, 19})),
    ("3528", "3589", frozenset({16, 17, 18, 19})),  # JCB
    ("62", "62", frozenset({16, 17, 18, 19})),  # UnionPay
    ("2200", "2204", frozenset({16, 17, 18, 19})),  # Mir
    ("5018", "5018", frozenset({16, 17, 18, 19})),  # Maestro
    ("5020", "5020", frozenset({16, 17, 18, 19})),
    ("5038", "5038", frozenset({16, 17, 18, 19})),
    ("5893", "5893", frozenset({16, 17, 18, 19})),
    ("6304", "6304", frozenset({16, 17, 18, 19})),
    ("6759", "6759", frozenset({16, 17, 18, 19})),
    ("6761", "6763", frozenset({16, 17, 18, 19})),
)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number passes."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_brand_known(digits: str) -> bool:
    """Whether some card brand issues numbers with this prefix and length."""
    for low, high, lengths in _CARD_BRANDS:
        if len(digits) in lengths and low <= digits[: len(low)] <= high:
            return True
    return False


def _cards(text: str) -> Iterator[Finding]:
    for m in _CARD_RE.finditer(text):
        candidate = m.group(0)
        parts = re.split(r"([ \-])", candidate)
        groups, seps = parts[0::2], set(parts[1::2])
        digits = "".join(groups)
        if len(groups) > 1 and (len(seps) > 1 or tuple(len(g) for g in groups) not in _CARD_SHAPES):
            continue
        if len(set(digits)) == 1 or not card_brand_known(digits) or not luhn_valid(digits):
            continue
        yield Finding(
            CREDIT_CARD, m.start(), m.end(), _context_score(CREDIT_CARD, text, m.start(), _CARD_BASE)
        )


# --- IBAN_CODE ------------------------------------------------------------------------------------

# Groups of four after the check digits, with or without single spaces; the country's length decides
# where the IBAN ends.
_IBAN_RE = re.compile(
    r"(?=[A-Z])(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4})*(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
)
_IBAN_BASE = 0.9
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(compact: str) -> bool:
    """An IBAN without spaces: its country's length, check digits 02-98, and mod-97 equal to 1."""
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is None or len(compact) != expected or not 2 <= int(compact[2:4]) <= 98:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _ibans(text: str) -> Iterator[Finding]:
    for m in _IBAN_RE.finditer(text):
        expected = IBAN_LENGTHS.get(m.group(0)[:2])
        if expected is None:
            continue
        # Take the country's number of characters; the match may have run on into a following word.
        taken, end = 0, m.start()
        while end < m.end() and taken < expected:
            if text[end] != " ":
                taken += 1
            end += 1
        if taken < expected or (end < m.end() and text[end] != " "):
            continue
        if iban_valid(text[m.start() : end].replace(" ", "")):
            yield Finding(IBAN_CODE, m.start(), end, _context_score(IBAN_CODE, text, m.start(), _IBAN_BASE))


# --- IP_ADDRESS -----------------------------------------------------------------------------------

_IPV4_RE = re.compile(r"(?=\d)(?<![\w.:])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6_RE = re.compile(r"(?=[0-9A-Fa-f:])(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,8}[0-9A-Fa-f.]*")
# A dotted quad right after one of these words is a version number, not an address.
_VERSION_BEFORE_RE = re.compile(
    r"(?<!\w)(?:v|version|ver\.?|build|release|firmware|rev\.?)\s*$", re.IGNORECASE
)
_IP_BASE = 0.8


def _ipv4s(text: str) -> Iterator[Finding]:
    for m in _IPV4_RE.finditer(text):
        try:
            ipaddress.IPv4Address(m.group(0))
        except ValueError:
            continue
        if _VERSION_BEFORE_RE.search(text, max(0, m.start() - 12), m.start()):
            continue
        yield Finding(IP_ADDRESS, m.start(), m.end(), _context_score(IP_ADDRESS, text, m.start(), _IP_BASE))


def _ipv6s(text: str) -> Iterator[Finding]:
    for m in _IPV6_RE.finditer(text):
        candidate = m.group(0)
        end = m.end()
        if end < len(text) and (text[end].isalnum() or text[end] == "_"):
            continue
        # A sentence may end right after the address ("… from 2001:db8::1.") or a colon may follow it.
        for _ in range(2):
            if _ipv6_valid(candidate):
                yield Finding(
                    IP_ADDRESS, m.start(), end, _context_score(IP_ADDRESS, text, m.start(), _IP_BASE)
                )
                break
            if not candidate or candidate[-1] not in ".:":
                break
            candidate, end = candidate[:-1], end - 1


def _ipv6_valid(candidate: str) -> bool:
    if not any(ch not in ":." for ch in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


# --- US_SSN ---------------------------------------------------------------------------------------

_SSN_RE = re.compile(
    r"(?=\d)(?<![\w.\-])(?<!\d[ \-])(\d{3})([ \-]?)(\d{2})\2(\d{4})(?![\w]|[ \-.]\d|[\-/]\w)"
)
_SSN_DASHED = 0.5  # "123-45-6789"
_SSN_SPACED = 0.3  # "123 45 6789": an SSN only next to a context word
_SSN_BARE = 0.2  # "123456789": likewise
# Numbers published as examples (on a wallet insert, in an advertisement, in textbooks).
_SSN_PUBLISHED = frozenset({"078051120", "219099999", "457555462", "123456789"})


def ssn_valid(digits: str) -> bool:
    """Nine digits the SSA could have issued: no area 000, 666 or 900-999, group 00 or serial 0000."""
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return (
        len(digits) == 9
        and area not in ("000", "666")
        and area[0] != "9"
        and group != "00"
        and serial != "0000"
        and len(set(digits)) > 1
        and digits not in _SSN_PUBLISHED
    )


def _ssns(text: str) -> Iterator[Finding]:
    for m in _SSN_RE.finditer(text):
        area, sep, group, serial = m.groups()
        if not ssn_valid(area + group + serial):
            continue
        base = {"-": _SSN_DASHED, " ": _SSN_SPACED, "": _SSN_BARE}[sep]
        score = _context_score(US_SSN, text, m.start(), base)
        if score >= REPORT_THRESHOLD:
            yield Finding(US_SSN, m.start(), m.end(), score)


# --- CRYPTO ---------------------------------------------------------------------------------------

BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_INDEX = {ch: i for i, ch in enumerate(BASE58_ALPHABET)}
_BASE58_RE = re.compile(r"(?=[13])(?<!\w)[13][1-9A-HJ-NP-Za-km-z]{25,34}(?!\w)")
BECH32_ALPHABET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_RE = re.compile(r"(?=[bB])(?<!\w)(?:bc1[02-9ac-hj-np-z]{11,71}|BC1[02-9AC-HJ-NP-Z]{11,71})(?!\w)")
BECH32_CONST = 1
BECH32M_CONST = 0x2BC830A3
_CRYPTO_BASE = 0.9


def base58check_valid(address: str) -> bool:
    """A Bitcoin P2PKH/P2SH address: 25 bytes, version 0 or 5, double-SHA-256 checksum."""
    number = 0
    for ch in address:
        index = _BASE58_INDEX.get(ch)
        if index is None:
            return False
        number = number * 58 + index
    leading_zeros = len(address) - len(address.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    raw = b"\x00" * leading_zeros + body
    if len(raw) != 25 or raw[0] not in (0, 5):
        return False
    return hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()[:4] == raw[21:]


def bech32_polymod(values: list[int]) -> int:
    generators = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate(generators):
            if (top >> i) & 1:
                check ^= generator
    return check


def bech32_hrp_expand(hrp: str) -> list[int]:
    return [ord(ch) >> 5 for ch in hrp] + [0] + [ord(ch) & 31 for ch in hrp]


def segwit_valid(address: str) -> bool:
    """A Bitcoin segwit address (BIP 173/350): bech32 for version 0, bech32m above, sane program."""
    address = address.lower()
    hrp, _, data_part = address.rpartition("1")
    if hrp != "bc" or len(data_part) < 7:
        return False
    data = [BECH32_ALPHABET.index(ch) for ch in data_part]
    constant = bech32_polymod(bech32_hrp_expand(hrp) + data)
    version = data[0]
    if version > 16 or constant != (BECH32_CONST if version == 0 else BECH32M_CONST):
        return False
    bits = len(data[1:-6]) * 5
    if bits % 8 >= 5:  # more padding than one 5-bit group can hold
        return False
    program_len = bits // 8
    if version == 0:
        return program_len in (20, 32)
    return 2 <= program_len <= 40


def _cryptos(text: str) -> Iterator[Finding]:
    for m in _BASE58_RE.finditer(text):
        if base58check_valid(m.group(0)):
            yield Finding(CRYPTO, m.start(), m.end(), _context_score(CRYPTO, text, m.start(), _CRYPTO_BASE))
    for m in _BECH32_RE.finditer(text):
        if segwit_valid(m.group(0)):
            yield Finding(CRYPTO, m.start(), m.end(), _context_score(CRYPTO, text, m.start(), _CRYPTO_BASE))


# Every pattern starts with a one-character lookahead: the engine rejects most positions on it
# before trying the lookbehinds, which roughly halves the time of a scan.

# --- detect ---------------------------------------------------------------------------------------

_HAS_DIGIT_RE = re.compile(r"\d")

# (entity, detector, cheap precondition on the text)
_DETECTORS: tuple[tuple[str, Callable[[str], Iterator[Finding]], Callable[[str], bool]], ...] = (
    (EMAIL_ADDRESS, _emails, lambda t: "@" in t),
    (PHONE_NUMBER, _phones, lambda t: _HAS_DIGIT_RE.search(t) is not None),
    (CREDIT_CARD, _cards, lambda t: _HAS_DIGIT_RE.search(t) is not None),
    (IBAN_CODE, _ibans, lambda t: _HAS_DIGIT_RE.search(t) is not None),
    (IP_ADDRESS, _ipv4s, lambda t: "." in t),
    (IP_ADDRESS, _ipv6s, lambda t: t.count(":") >= 2),
    (US_SSN, _ssns, lambda t: _HAS_DIGIT_RE.search(t) is not None),
    (CRYPTO, _cryptos, lambda t: True),
)


def detect(text: str, *, entities: Collection[str] | None = None, min_score: float = 0.0) -> list[Finding]:
    """The PII in ``text``: non-overlapping findings sorted by position.

    ``entities`` limits the search to these entity types (all of ``ENTITY_TYPES`` by default);
    ``min_score`` drops findings scoring below it (every finding already scores at least
    ``REPORT_THRESHOLD``).
    """
    if entities is not None:
        unknown = set(entities) - set(ENTITY_TYPES)
        if unknown:
            raise ValueError(f"unknown entity types {sorted(unknown)}; known: {', '.join(ENTITY_TYPES)}")
    candidates: list[Finding] = []
    for entity, detector, applies in _DETECTORS:
        if (entities is None or entity in entities) and applies(text):
            candidates.extend(f for f in detector(text) if f.score >= min_score)
    return _without_overlaps(candidates)


def _without_overlaps(candidates: list[Finding]) -> list[Finding]:
    if len(candidates) < 2:
        return candidates
    starts: list[int] = []  # chosen spans, sorted by start; they never overlap each other
    chosen: list[Finding] = []
    for f in sorted(candidates, key=lambda f: (-f.score, f.start - f.end, f.start, f.entity_type)):
        i = bisect.bisect_right(starts, f.start)
        if i > 0 and chosen[i - 1].end > f.start:
            continue
        if i < len(chosen) and chosen[i].start < f.end:
            continue
        starts.insert(i, f.start)
        chosen.insert(i, f)
    return chosen
