"""Speech, the library part (no Ray): voice messages in, spoken replies out.

::

    voice message bytes ─ decode_audio (16 kHz mono, max_s) ─▶ SttBackend ─▶ Transcript
    reply text ─ speakable ─▶ TtsBackend ─▶ Audio ─ encode_audio ─▶ ogg | mp3 | wav bytes

``audio`` decodes and encodes (PyAV), ``tts`` holds the voices (Piper, espeak-ng,
litellm), ``stt`` the recognisers (faster-whisper, litellm). Local backends block the
calling thread on purpose: they run in single-core worker actors. Models load on
first use or in ``make_*``; heavy libraries (piper, faster-whisper, litellm) are
imported on first use.
"""

from __future__ import annotations

from astr_ray.speech.audio import FORMATS, Audio, decode_audio, duration_of, encode_audio
from astr_ray.speech.stt import LitellmStt, SttBackend, Transcript, WhisperStt, make_stt
from astr_ray.speech.tts import (
    EspeakTts,
    LitellmTts,
    PiperTts,
    TtsBackend,
    make_tts,
    speakable,
)

__all__ = [
    "FORMATS",
    "Audio",
    "EspeakTts",
    "LitellmStt",
    "LitellmTts",
    "PiperTts",
    "SttBackend",
    "Transcript",
    "TtsBackend",
    "WhisperStt",
    "decode_audio",
    "duration_of",
    "encode_audio",
    "make_stt",
    "make_tts",
    "speakable",
]
