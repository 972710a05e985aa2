"""Voice in the turn pipeline, without Ray: the speech backends run in this process
(``LocalSpeech``), here the litellm ones against the fake OpenAI-compatible server's
audio endpoints, so every request the pipeline makes can be checked."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from astr_ray.media import make_data_url, parse_data_url
from astr_ray.message import ChatType, Event, Reply, Sender, Text, Voice
from astr_ray.speech import Audio, duration_of, encode_audio
from astr_ray.speech.local import LocalSpeech
from tests.core.test_plugins import Bot, make_bot
from tests.peers.openai_server import FakeLLM


def tone(seconds: float = 1.0) -> bytes:
    t = np.arange(int(16_000 * seconds), dtype=np.float32) / 16_000
    return encode_audio(
        Audio((0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 16_000), "wav"
    )


def speech_cfg(fake: FakeLLM, **extra: Any) -> dict[str, Any]:
    api = {"backend": "litellm", "api_base": fake.base_url, "api_key": "sk-audio"}
    return {
        "tts": {**api, "model": "openai/tts-1", "voice": "alloy"},
        "stt": {**api, "model": "openai/whisper-1"},
        **extra,
    }


async def voice_bot(tmp: Path, fake: FakeLLM, **overrides: Any) -> Bot:
    overrides.setdefault("speech", speech_cfg(fake))
    b = await make_bot(tmp, fake, [], **overrides)
    b.processor.speech = LocalSpeech(b.cfg.speech)
    return b


@pytest.fixture
async def bot(tmp_path: Path, fake_llm: FakeLLM) -> AsyncIterator[Bot]:
    fake_llm.reset()
    b = await voice_bot(tmp_path, fake_llm)
    yield b
    await b.processor.chain.close()
    await b.store.close()


def voice_event(chat: str, audio: bytes | None = None, **voice: Any) -> Event:
    url = make_data_url(audio if audio is not None else tone(), "audio/wav")
    return Event(
        platform_id="webchat",
        chat_type=ChatType.PRIVATE,
        chat_id=chat,
        sender=Sender(id=chat),
        message_id=uuid.uuid4().hex,
        components=(Voice(**({"url": url} | voice)),),
    )


def spoken(reply: Reply) -> bytes | None:
    voices = [c for c in reply.components if isinstance(c, Voice)]
    if not voices:
        return None
    assert voices[0].url is not None
    parsed = parse_data_url(voices[0].url)
    assert parsed is not None
    return parsed[0]


def speech_requests(fake: FakeLLM) -> list[dict[str, Any]]:
    return [r for r in fake.audio_requests if r["endpoint"] == "speech"]


def test_event_text_holds_transcripts_after_the_typed_text() -> None:
    event = Event(
        platform_id="tg",
        chat_type=ChatType.PRIVATE,
        chat_id="1",
        sender=Sender(id="1"),
        message_id="m",
        components=(Text(text="look:"), Voice(file_id="f", transcript="water the plants")),
    )
    assert event.text == "look: water the plants"
    assert event.voice is not None and event.voice.file_id == "f"
    untranscribed = event.model_copy(update={"components": (Voice(file_id="f"),)})
    assert untranscribed.text == ""


async def test_a_voice_message_is_transcribed_answered_and_kept_as_its_transcript(
    bot: Bot, fake_llm: FakeLLM
) -> None:
    fake_llm.transcript = "please water the plants"
    reply = await bot.manager.submit(voice_event("v1"))
    assert reply.error is None
    assert reply.text == "echo: please water the plants (turn 1)"
    (stt,) = [r for r in fake_llm.audio_requests if r["endpoint"] == "transcriptions"]
    assert stt["model"] == "whisper-1" and len(stt["file"]) > 1000
    # Spoken to, the bot answers with voice too (answer_voice_with_voice), in MP3 for
    # the web chat, with the text alongside.
    audio = spoken(reply)
    assert audio is not None and duration_of(audio) > 1.0
    state = await bot.store.ensure_session("webchat:private:v1")
    user, _assistant = await bot.store.load_history(state.conversation_id)
    assert user.content == "please water the plants"
    assert user.extra["voice"]["transcript"] is True
    assert abs(user.extra["voice"]["duration_s"] - 1.0) < 0.1


async def test_replies_are_spoken_per_the_config_and_tts_command(
    bot: Bot, fake_llm: FakeLLM
) -> None:
    assert spoken(await bot.say("c1", "hello")) is None, "on_request: not until /tts on"
    assert "default (on_request)" in (await bot.say("c1", "/tts")).text
    assert (await bot.say("c1", "/tts on")).text == "Spoken replies are on here."
    reply = await bot.say("c1", "speak to me")
    audio = spoken(reply)
    assert audio is not None
    # The fake speaks 0.06 s per character of what it was given: the reply's words.
    (request,) = speech_requests(fake_llm)
    assert request["input"] == reply.text and request["voice"] == "alloy"
    assert abs(duration_of(audio) - 0.06 * len(reply.text)) < 0.3
    assert (await bot.say("c1", "/tts off")).text == "Spoken replies are off here."
    assert spoken(await bot.say("c1", "quiet now")) is None
    assert spoken(await bot.say("c2", "/tts on")) is None, "a command reply is not spoken"


async def test_the_persona_picks_the_voice(tmp_path: Path, fake_llm: FakeLLM) -> None:
    fake_llm.reset()
    b = await voice_bot(
        tmp_path,
        fake_llm,
        speech=speech_cfg(fake_llm, reply="always"),
        personas=[{"name": "narrator", "system_prompt": "You narrate.", "voice": "onyx"}],
        agent={"default_persona": "narrator"},
    )
    try:
        assert spoken(await b.say("p1", "once upon a time")) is not None
        assert [r["voice"] for r in speech_requests(fake_llm)] == ["onyx"]
    finally:
        await b.processor.chain.close()
        await b.store.close()


async def test_never_and_long_replies_stay_text(tmp_path: Path, fake_llm: FakeLLM) -> None:
    fake_llm.reset()
    b = await voice_bot(tmp_path, fake_llm, speech=speech_cfg(fake_llm, reply="never"))
    try:
        refused = await b.say("n1", "/tts on")
        assert "turned off for this bot" in refused.text
        fake_llm.transcript = "hello there"
        reply = await b.manager.submit(voice_event("n1"))
        assert reply.text == "echo: hello there (turn 1)" and spoken(reply) is None
    finally:
        await b.processor.chain.close()
        await b.store.close()
    fake_llm.reset()
    b = await voice_bot(
        tmp_path / "long", fake_llm, speech=speech_cfg(fake_llm, reply="always", max_chars=20)
    )
    try:
        assert spoken(await b.say("n2", "a reply longer than twenty characters")) is None
        assert speech_requests(fake_llm) == []
    finally:
        await b.processor.chain.close()
        await b.store.close()


async def test_a_failing_tts_sends_the_text_alone(tmp_path: Path, fake_llm: FakeLLM) -> None:
    fake_llm.reset()
    cfg = speech_cfg(fake_llm, reply="always")
    cfg["tts"]["api_base"] = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
    b = await voice_bot(tmp_path, fake_llm, speech=cfg)
    try:
        reply = await b.say("f1", "still answered")
        assert reply.error is None and reply.text == "echo: still answered (turn 1)"
        assert spoken(reply) is None
    finally:
        await b.processor.chain.close()
        await b.store.close()


async def test_unusable_voice_messages_are_refused_and_commit_nothing(
    bot: Bot, fake_llm: FakeLLM
) -> None:
    garbage = await bot.manager.submit(voice_event("g1", b"\x00\x01not audio at all" * 50))
    assert garbage.error == "bad_audio" and "could not be decoded" in garbage.text
    assert not fake_llm.audio_requests, "garbage never reaches the speech API"

    too_long = await bot.manager.submit(voice_event("g1", duration_s=4000.0))
    assert too_long.error == "bad_audio" and "120 s limit" in too_long.text

    fake_llm.transcript = "   "
    silent = await bot.manager.submit(voice_event("g1"))
    assert silent.error == "no_speech"

    fake_llm.transcript = None
    state = await bot.store.ensure_session("webchat:private:g1")
    assert await bot.store.load_history(state.conversation_id) == []
    assert (await bot.say("g1", "typed instead")).text == "echo: typed instead (turn 1)"


async def test_blocked_words_are_checked_in_the_transcript(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    fake_llm.reset()
    b = await voice_bot(tmp_path, fake_llm, access={"blocked_words": ["forbidden"]})
    try:
        fake_llm.transcript = "say the forbidden word"
        reply = await b.manager.submit(voice_event("b1"))
        assert reply.error == "blocked"
    finally:
        fake_llm.transcript = None
        await b.processor.chain.close()
        await b.store.close()


async def test_without_stt_a_voice_message_gets_a_clear_answer(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    fake_llm.reset()
    cfg = speech_cfg(fake_llm)
    cfg["stt"] = {"backend": "off"}
    b = await voice_bot(tmp_path, fake_llm, speech=cfg)
    try:
        reply = await b.manager.submit(voice_event("o1"))
        assert reply.error == "stt_off" and "speech-to-text is off" in reply.text
    finally:
        await b.processor.chain.close()
        await b.store.close()
