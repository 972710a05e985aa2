"""The speech part of a turn (a mixin of ``TurnProcessor``): voice in, voice out.

    voice message ─► bytes (data: URL here, else its adapter's ``fetch_media``)
                  ─► STT pool ─► transcript on the Voice component ─► handled as text
    reply text ─► spoken? (speech.reply, /tts, a voice message in) ─► TTS pool
               ─► audio in the platform's format ─► Voice component beside the text

Hearing runs after the gate (allow-list, switches, rate limit), so a chat that may not
talk to the bot cannot make it spend CPU on transcription. A voice message that cannot
be used (speech off, undecodable, too long, no words, download failed) gets a clear
answer and commits nothing, like any refusal: sent again later, it is heard then.
Speaking never fails a turn: when TTS fails, the text goes alone.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from astr_ray.config import Config
from astr_ray.errors import AstrRayError, BadAudioError, SpeechError
from astr_ray.media import make_data_url, parse_data_url
from astr_ray.message import Event, Reply, Voice

if TYPE_CHECKING:
    from astr_ray.sessions.personas import Personas
    from astr_ray.sessions.turn import LiveSession

__all__ = ["FORMAT_BY_PLATFORM", "Heard", "MediaFetcher", "Speech", "Spoken", "VoicePath"]

log = logging.getLogger(__name__)

# The audio each platform takes for a voice message: Telegram and Discord voice notes
# are Opus in Ogg; QQ (NapCat converts to SILK itself), Slack and browsers play MP3.
FORMAT_BY_PLATFORM = {
    "telegram": "ogg",
    "discord": "ogg",
    "slack": "mp3",
    "onebot": "mp3",
    "webchat": "mp3",
}


@dataclass(frozen=True)
class Heard:
    text: str
    language: str | None
    duration_s: float


@dataclass(frozen=True)
class Spoken:
    data: bytes
    mime: str
    duration_s: float


class Speech(Protocol):
    """What a session host gives the turn processor (``actors.speech.SpeechClient``)."""

    @property
    def can_listen(self) -> bool: ...

    @property
    def can_speak(self) -> bool: ...

    async def transcribe(self, data: bytes, language: str | None) -> Heard: ...

    async def speak(self, text: str, voice: str | None, fmt: str) -> Spoken: ...


MediaFetcher = Callable[[str, Voice, int], Awaitable[bytes]]
"""The bytes of a component that only its platform can read: (platform id, component,
max bytes) -> bytes; raises an ``AstrRayError`` saying why not."""


def _refuse(live: LiveSession, event: Event, text: str, error: str) -> Reply:
    return Reply.of_text(live.key, event.message_id, text, error=error)


class VoicePath:
    """Mixed into ``TurnProcessor``; uses its ``cfg`` and ``personas``."""

    cfg: Config
    personas: Personas
    speech: Speech | None
    fetch_media: MediaFetcher | None

    # -- voice in -------------------------------------------------------------------------
    async def hear(self, live: LiveSession, event: Event) -> Event | Reply:
        """The event with each voice message transcribed (``Voice.transcript``), or a
        refusal saying why it could not be."""
        if not any(isinstance(c, Voice) and c.transcript is None for c in event.components):
            return event
        if self.speech is None or not self.speech.can_listen:
            return _refuse(
                live,
                event,
                "I can't listen to voice messages here: speech-to-text is off.",
                "stt_off",
            )
        components: list[Any] = []
        for comp in event.components:
            if isinstance(comp, Voice) and comp.transcript is None:
                try:
                    heard = await self._transcribe(event, comp)
                except BadAudioError as exc:
                    return _refuse(
                        live,
                        event,
                        f"I couldn't use that voice message: {exc.message}",
                        "bad_audio",
                    )
                except SpeechError as exc:
                    log.warning("transcription failed session=%s: %s", live.key, exc)
                    return _refuse(
                        live,
                        event,
                        "I can't transcribe voice messages right now; please try again "
                        "later or type it.",
                        "stt_unavailable",
                    )
                except AstrRayError as exc:  # the download: platform or media errors
                    return _refuse(
                        live,
                        event,
                        f"I couldn't download that voice message: {exc.message}",
                        "media_unavailable",
                    )
                if not heard.text.strip():
                    return _refuse(
                        live, event, "I couldn't hear any words in that voice message.", "no_speech"
                    )
                comp = Voice(
                    # a data: URL is the audio itself: the transcript is what is kept
                    url=None if (comp.url or "").startswith("data:") else comp.url,
                    file_id=comp.file_id,
                    duration_s=round(heard.duration_s, 2),
                    transcript=heard.text.strip(),
                )
            components.append(comp)
        return event.model_copy(update={"components": tuple(components)})

    async def _transcribe(self, event: Event, comp: Voice) -> Heard:
        assert self.speech is not None
        limit = int(self.cfg.speech.max_audio_mb * 1024 * 1024)
        if comp.duration_s is not None and comp.duration_s > self.cfg.speech.max_audio_s:
            raise BadAudioError(
                f"it is longer than the {self.cfg.speech.max_audio_s:g} s limit",
                duration_s=comp.duration_s,
            )
        if comp.url and comp.url.startswith("data:"):
            parsed = parse_data_url(comp.url)
            if parsed is None:
                raise BadAudioError("the audio data is not a valid data: URL")
            data = parsed[0]
            if len(data) > limit:
                raise BadAudioError(f"it is larger than {self.cfg.speech.max_audio_mb:g} MB")
        elif self.fetch_media is not None:
            data = await self.fetch_media(event.platform_id, comp, limit)
        else:
            raise SpeechError("no way to fetch media in this runtime")
        if not data:
            raise BadAudioError("it is empty")
        return await self.speech.transcribe(data, self.cfg.speech.stt.language)

    # -- voice out ------------------------------------------------------------------------
    def wants_voice(self, live: LiveSession, event: Event, text: str) -> bool:
        """Whether this reply is spoken: see ``speech.reply`` and ``/tts``."""
        sc = self.cfg.speech
        if self.speech is None or not self.speech.can_speak or sc.reply == "never":
            return False
        if not text.strip() or len(text) > sc.max_chars:
            return False
        flag = live.settings.get("tts")
        if flag is not None:
            return bool(flag)
        if sc.answer_voice_with_voice and any(isinstance(c, Voice) for c in event.components):
            return True
        if sc.reply == "always":
            return True
        if sc.reply == "probability":
            return random.random() < sc.probability
        return False  # on_request: after /tts on

    async def voice_for(self, live: LiveSession, event: Event, text: str) -> Voice | None:
        """The spoken reply, or None (not wanted, nothing to say, or TTS failed)."""
        if not self.wants_voice(live, event, text):
            return None
        assert self.speech is not None
        from astr_ray.speech import speakable

        words = speakable(text)
        if not words.strip():
            return None
        persona = await self.personas.resolve(live.persona)
        fmt = FORMAT_BY_PLATFORM.get(self.platform_type(event.platform_id), "mp3")
        try:
            spoken = await self.speech.speak(words, persona.voice, fmt)
        except AstrRayError as exc:
            log.warning("speaking the reply failed session=%s: %s", live.key, exc)
            return None
        return Voice(url=make_data_url(spoken.data, spoken.mime), duration_s=spoken.duration_s)

    def platform_type(self, platform_id: str) -> str:
        for p in self.cfg.platforms:
            if p.id == platform_id:
                return p.type
        return platform_id  # the web chat
