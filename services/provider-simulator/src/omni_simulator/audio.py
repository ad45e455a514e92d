"""Deterministic audio for the simulator: speech stand-ins and fake transcripts.

The generated audio is a quiet triangle wave computed with integer arithmetic only, so the same text
gives byte-identical audio on every platform (no libm rounding differences), which keeps idempotency
and snapshot-style assertions honest.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

# OpenAI's audio models stream pcm16 as 24 kHz mono little-endian; the simulator uses the same
# layout so adapters that wrap pcm16 into WAV are exercised with realistic parameters.
PCM16_SAMPLE_RATE = 24_000
_MS_PER_CHAR = 45
_MIN_MS = 250
_MAX_MS = 1_500
_AMPLITUDE = 6_000

# Learner utterances, some with typical mistakes, so a transcript of arbitrary audio still gives the
# downstream analysis and feedback steps something to talk about.
_SAMPLE_UTTERANCES = (
    "I goes to the market yesterday.",
    "Hello, my name is Ana and I like learning languages.",
    "Can you help me find the train station?",
    "She don't like coffee in the morning.",
    "We are going to visit my grandmother this weekend.",
    "I have lived here since three years.",
    "What time does the museum open?",
    "Yesterday I eated a very good paella.",
)


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x00")
    return h.hexdigest()


def duration_ms_for(text: str) -> int:
    return max(_MIN_MS, min(_MAX_MS, len(text) * _MS_PER_CHAR))


def synthesize_pcm16(text: str, sample_rate: int = PCM16_SAMPLE_RATE) -> bytes:
    """Mono 16-bit little-endian samples whose pitch and length depend only on ``text``."""
    frequency = 180 + int(digest(text)[:4], 16) % 220
    n_samples = sample_rate * duration_ms_for(text) // 1000
    period = max(2, sample_rate // frequency)
    half = period // 2
    samples = []
    for i in range(n_samples):
        phase = i % period
        rising = phase if phase < half else period - phase
        samples.append((4 * _AMPLITUDE * rising) // period - _AMPLITUDE)
    return struct.pack(f"<{n_samples}h", *samples)


def wav_from_pcm16(pcm: bytes, sample_rate: int = PCM16_SAMPLE_RATE, comment: str | None = None) -> bytes:
    """A canonical RIFF/WAVE file; ``comment`` goes in a LIST/INFO/ICMT chunk after the data.

    The comment sits after the data chunk so readers that assume a 44-byte header still work, while the
    simulator's own transcription can recover the spoken text from audio it produced.
    """
    channels, bits = 1, 16
    block_align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * block_align, block_align, bits)
    chunks = _chunk(b"fmt ", fmt) + _chunk(b"data", pcm)
    if comment:
        text = comment.encode("utf-8") + b"\x00"
        chunks += _chunk(b"LIST", b"INFO" + _chunk(b"ICMT", text))
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def _chunk(tag: bytes, payload: bytes) -> bytes:
    pad = b"\x00" if len(payload) % 2 else b""
    return tag + struct.pack("<I", len(payload)) + payload + pad


@dataclass(frozen=True, slots=True)
class WavInfo:
    duration_s: float
    comment: str | None


def read_wav(data: bytes) -> WavInfo | None:
    """Duration and embedded comment of a PCM WAV file, or None when ``data`` is not one."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    byte_rate = 0
    data_len = 0
    comment: str | None = None
    offset = 12
    while offset + 8 <= len(data):
        tag = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body = data[offset + 8 : offset + 8 + size]
        if tag == b"fmt " and len(body) >= 16:
            (byte_rate,) = struct.unpack_from("<I", body, 8)
        elif tag == b"data":
            data_len = len(body)
        elif tag == b"LIST" and body[:4] == b"INFO":
            comment = _info_comment(body[4:]) or comment
        offset += 8 + size + (size % 2)
    if byte_rate <= 0:
        return None
    return WavInfo(duration_s=data_len / byte_rate, comment=comment)


def _info_comment(info: bytes) -> str | None:
    offset = 0
    while offset + 8 <= len(info):
        tag = info[offset : offset + 4]
        (size,) = struct.unpack_from("<I", info, offset + 4)
        if tag == b"ICMT":
            raw = info[offset + 8 : offset + 8 + size].split(b"\x00", 1)[0]
            return raw.decode("utf-8", errors="replace") or None
        offset += 8 + size + (size % 2)
    return None


def transcript_for(audio: bytes) -> str:
    """What the simulator "hears": the text embedded by :func:`wav_from_pcm16`, else a stable pick."""
    info = read_wav(audio)
    if info is not None and info.comment:
        return info.comment
    index = int(digest(audio)[:8], 16) % len(_SAMPLE_UTTERANCES)
    return _SAMPLE_UTTERANCES[index]


def duration_s_for(audio: bytes) -> float:
    info = read_wav(audio)
    if info is not None:
        return round(info.duration_s, 3)
    # Unknown containers: assume 16 kHz 16-bit mono, a common speech recording format.
    return round(len(audio) / 32_000, 3)
