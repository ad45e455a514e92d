"""Audio handling shared by adapters: reading base64 input, naming its format, wrapping raw PCM."""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass

# Audio-output chat models (OpenAI's gpt-audio family) stream pcm16 as 24 kHz mono little-endian.
PCM16_SAMPLE_RATE = 24_000

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w=.-]+)*;base64,", re.IGNORECASE)
_MIME_FORMATS = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/ogg": "ogg",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/webm": "webm",
    "audio/mp4": "m4a",
    "audio/x-m4a": "m4a",
    "audio/aac": "aac",
    "audio/aiff": "aiff",
    "audio/x-aiff": "aiff",
}
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class EncodedAudio:
    """Audio ready for an ``input_audio`` content part: raw base64 (no data URI) and its format."""

    base64: str
    format: str
    size: int


def read_base64_audio(value: str, declared_format: str | None = None) -> EncodedAudio:
    """Validate base64 audio as callers send it (plain or a data URI) and work out its format.

    Raises ValueError for anything that is not decodable audio bytes, so callers can reject the input
    before spending a provider call on it.
    """
    text = _WHITESPACE.sub("", value)
    mime_format: str | None = None
    match = _DATA_URI.match(text)
    if match:
        mime_format = _MIME_FORMATS.get((match.group("mime") or "").lower())
        text = text[match.end() :]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("audioData is not valid base64") from exc
    if not raw:
        raise ValueError("audioData is empty")
    fmt = (declared_format or mime_format or sniff_format(raw) or "wav").lower()
    return EncodedAudio(base64=text, format=fmt, size=len(raw))


def sniff_format(raw: bytes) -> str | None:
    if raw[:4] == b"RIFF" and raw[8:12] == b"WAVE":
        return "wav"
    if raw[:3] == b"ID3" or (len(raw) > 1 and raw[0] == 0xFF and raw[1] & 0xE0 == 0xE0):
        return "mp3"
    if raw[:4] == b"OggS":
        return "ogg"
    if raw[:4] == b"fLaC":
        return "flac"
    if raw[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if raw[4:8] == b"ftyp":
        return "m4a"
    if raw[:4] == b"FORM" and raw[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    return None


def wav_from_pcm16(pcm: bytes, sample_rate: int = PCM16_SAMPLE_RATE, channels: int = 1) -> bytes:
    """Wrap raw 16-bit little-endian PCM in a canonical 44-byte-header WAV container."""
    block_align = channels * 2
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * block_align, block_align, 16)
    data = pcm if len(pcm) % 2 == 0 else pcm + b"\x00"
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body
