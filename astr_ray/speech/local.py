"""Speech in this process: the backends called directly, no workers.

For tests of the turn pipeline without Ray, and as the baseline the speech bench
compares the worker pools with. Implements ``astr_ray.sessions.voice.Speech``.
"""

from __future__ import annotations

import asyncio

from astr_ray.config import SpeechConfig
from astr_ray.sessions.voice import Heard, Spoken
from astr_ray.speech.audio import FORMATS, encode_audio
from astr_ray.speech.stt import SttBackend, make_stt
from astr_ray.speech.tts import TtsBackend, make_tts

__all__ = ["LocalSpeech"]


class LocalSpeech:
    def __init__(self, cfg: SpeechConfig) -> None:
        self.cfg = cfg
        off = cfg.tts.backend == "off"
        self.tts: TtsBackend | None = None if off else make_tts(cfg.tts, timeout_s=cfg.timeout_s)
        self.stt: SttBackend | None = (
            make_stt(cfg.stt, cfg.max_audio_s, timeout_s=cfg.timeout_s)
            if cfg.stt.backend != "off"
            else None
        )

    @property
    def can_listen(self) -> bool:
        return self.stt is not None

    @property
    def can_speak(self) -> bool:
        return self.tts is not None

    async def transcribe(self, data: bytes, language: str | None) -> Heard:
        assert self.stt is not None
        t = await self.stt.transcribe(data, language)
        return Heard(t.text, t.language, t.duration_s)

    async def speak(self, text: str, voice: str | None, fmt: str) -> Spoken:
        assert self.tts is not None
        audio = await self.tts.synthesize(text, voice, self.cfg.tts.speed)
        data = await asyncio.to_thread(encode_audio, audio, fmt)
        return Spoken(data, FORMATS[fmt], audio.duration_s)
