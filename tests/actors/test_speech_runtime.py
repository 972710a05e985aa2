"""Speech in the running tree: the TTS pool (Piper) and the STT pool (Whisper tiny.en)
are real worker actors; voice messages come in through the web chat and a platform
fake and are answered as text; spoken replies come back as audio; a speech worker
SIGKILLed mid-job has its job done again."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import random
import signal
import uuid
from typing import Any

import pytest
import ray

from actors.speech import SpeechClient
from astr_ray.media import parse_data_url
from astr_ray.speech import decode_audio, duration_of
from tests.conftest import ChatClient, PlatformPeers, Runtime, eventually
from tests.speech.hearing import sounds_like, words

pytestmark = pytest.mark.timeout(240)

SENTENCE = "The quick brown fox jumps over the lazy dog."
LONG_TEXT = (
    "Our meeting has moved to the third floor conference room at noon. "
    "The library opens at nine and closes at six on weekdays. "
    "Bring a warm coat because the evening will be cold and windy. "
    "The package should arrive within two business days of your order. "
    "Turn left at the second light and the station is on your right."
)


async def speak(rt: Runtime, text: str, fmt: str = "ogg") -> bytes:
    spoken = await SpeechClient(rt.cfg).speak(text, None, fmt)
    return spoken.data


def data_url(data: bytes, mime: str = "audio/ogg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def actor_info(rt: Runtime, name: str) -> dict[str, Any]:
    status = await rt.status()
    found: dict[str, Any] = next(a for a in status["actors"] if a["name"] == name)
    return found


async def post_voice(
    chat: ChatClient, session: str, voice: str, text: str | None = None
) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"session": session, "voice": voice, "message_id": uuid.uuid4().hex}
    if text is not None:
        body["text"] = text
    async with chat.http.post(
        f"{chat.rt.http}/api/chat",
        data=io.BytesIO(json.dumps(body).encode()),  # aiohttp warns on big raw bodies
        headers={"Authorization": f"Bearer {chat.rt.token}", "Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.json()


def voice_attachment(reply: dict[str, Any]) -> bytes | None:
    voices = [a for a in reply["attachments"] if a["type"] == "voice"]
    assert len(voices) <= 1, reply["attachments"]
    if not voices:
        return None
    parsed = parse_data_url(voices[0]["url"])
    assert parsed is not None
    return parsed[0]


async def test_the_tts_pool_speaks_and_the_stt_pool_hears_the_same_words(
    runtime: Runtime,
) -> None:
    client = SpeechClient(runtime.cfg)
    spoken = await client.speak(SENTENCE, None, "ogg")
    assert spoken.mime == "audio/ogg" and spoken.data[:4] == b"OggS"
    assert 1.5 < spoken.duration_s < 8, spoken.duration_s
    heard = await client.transcribe(spoken.data, None)
    assert sounds_like(heard.text, SENTENCE), heard.text
    assert abs(heard.duration_s - spoken.duration_s) < 0.5


async def test_a_voice_message_in_the_web_chat_gets_a_text_answer(
    runtime: Runtime, chat: ChatClient
) -> None:
    session = f"voice-{uuid.uuid4().hex[:8]}"
    audio = await speak(runtime, "Please remember to water the plants on Tuesday.")
    status, reply = await post_voice(chat, session, data_url(audio))
    assert status == 200, reply
    assert reply["error"] is None, reply
    said = "Please remember to water the plants on Tuesday."
    assert reply["text"].startswith("echo: ") and reply["text"].endswith("(turn 1)")
    assert sounds_like(reply["text"], f"echo: {said} (turn 1)"), reply["text"]
    # Spoken to, the bot speaks back (answer_voice_with_voice), beside the text.
    back = voice_attachment(reply)
    assert back is not None and len(back) > 1000
    # The transcript is what the conversation keeps (not the audio).
    stored = await runtime.stored(session)
    assert stored[0][0] == "user"
    assert reply["text"] == f"echo: {stored[0][1]} (turn 1)", "the reply answers the transcript"
    assert sounds_like(stored[0][1], said)


async def test_tts_on_makes_replies_spoken_and_off_stops_it(
    runtime: Runtime, chat: ChatClient
) -> None:
    session = f"tts-{uuid.uuid4().hex[:8]}"
    plain = await chat.ask(session, "no voice by default")
    assert voice_attachment(plain) is None, "speech.reply is on_request"

    on = await chat.ask(session, "/tts on")
    assert "on" in on["text"]
    text = "tell me something short"
    reply = await chat.ask(session, text)
    audio = voice_attachment(reply)
    assert audio is not None
    assert audio[:3] == b"ID3" or audio[0] == 0xFF, "the web chat gets MP3"
    seconds = duration_of(audio)
    # "echo: tell me something short (turn 3)": about seven words, a few seconds.
    assert 1.0 < seconds < 10, seconds
    heard = await SpeechClient(runtime.cfg).transcribe(audio, None)
    # It speaks the reply (tiny.en hears MP3 less surely than Opus: a few anchor words).
    assert {"tell", "me", "something"} <= set(words(heard.text)), heard.text

    await chat.ask(session, "/tts off")
    quiet = await chat.ask(session, "and now?")
    assert voice_attachment(quiet) is None
    # The setting is the session's: another chat is untouched.
    assert voice_attachment(await chat.ask(f"{session}-other", "hello")) is None


async def test_garbage_audio_gets_a_clear_error_and_the_chat_goes_on(
    runtime: Runtime, chat: ChatClient
) -> None:
    session = f"garbage-{uuid.uuid4().hex[:8]}"
    status, reply = await post_voice(chat, session, data_url(os.urandom(4000)))
    assert status == 200
    assert reply["error"] == "bad_audio"
    assert "could not be decoded" in reply["text"], reply["text"]
    assert await runtime.stored(session) == [], "a refused voice message commits nothing"

    status, bad = await post_voice(chat, session, "https://example.com/a.ogg")
    assert status == 400 and "data: URL" in bad["error"]
    status, bad = await post_voice(chat, session, "data:text/plain;base64,aGVsbG8=")
    assert status == 400 and "audio" in bad["error"]

    status, bad = await post_voice(chat, session, data_url(b"\0" * (7 * 1024 * 1024)))
    assert status == 413, "over the web chat's 8 MiB body limit"

    answer = await chat.ask(session, "still there?")
    assert answer["text"].startswith("echo: still there? (turn 1)")


async def test_a_killed_stt_worker_has_its_job_done_again(
    runtime: Runtime, chat: ChatClient
) -> None:
    # About 20 s of speech: seconds of transcription, long enough to kill mid-job.
    long_audio = await speak(runtime, LONG_TEXT)
    assert duration_of(long_audio) > 12
    worker = ray.get_actor("stt-0", namespace=runtime.namespace)
    before = await worker.ping.remote()
    session = f"stt-kill-{uuid.uuid4().hex[:8]}"
    turn = asyncio.create_task(post_voice(chat, session, data_url(long_audio)))

    async def transcribing() -> bool:
        return bool((await worker.ping.remote())["running"] == 1)

    await eventually(transcribing, within=30, interval=0.05)
    os.kill(int(before["pid"]), signal.SIGKILL)
    status, reply = await asyncio.wait_for(turn, 180)
    assert status == 200 and reply["error"] is None, reply
    assert sounds_like(reply["text"], f"echo: {LONG_TEXT} (turn 1)", allowed=4), reply["text"]

    after = await worker.ping.remote()
    assert after["pid"] != before["pid"], "the worker was restarted"
    assert after["jobs"] >= 1, "the restarted worker did the job again"
    stored = await runtime.stored(session)
    assert [role for role, _ in stored] == ["user", "assistant"], "answered once"


async def test_a_telegram_voice_message_is_transcribed_and_answered_with_voice(
    runtime: Runtime, platform_peers: PlatformPeers
) -> None:
    tg = platform_peers.telegram
    user = random.randrange(10**8, 10**9)
    audio = await speak(runtime, "What time does the library open?")
    file_id = f"voice-{uuid.uuid4().hex[:12]}"
    await tg.call("add_file", file_id, audio)
    await tg.call("private", user, None, voice=file_id)

    async def answered() -> list[dict[str, Any]] | None:
        texts = [c for c in await tg.call("sent", "sendMessage") if int(c["chat_id"]) == user]
        voices = [c for c in await tg.call("sent", "sendVoice") if int(c["chat_id"]) == user]
        return [*texts, *voices] if texts and voices else None

    await eventually(answered, within=60)
    await asyncio.sleep(0.5)
    texts = [c for c in await tg.call("sent", "sendMessage") if int(c["chat_id"]) == user]
    voices = [c for c in await tg.call("sent", "sendVoice") if int(c["chat_id"]) == user]
    assert len(texts) == 1 and len(voices) == 1, (texts, voices)
    said = "echo: what time does the library open (turn 1)"
    assert sounds_like(texts[0]["text"], said), texts[0]["text"]
    upload = voices[0]["voice"]
    assert upload.data[:4] == b"OggS", "Telegram voice notes are Opus in Ogg"
    assert 1.0 < decode_audio(upload.data).duration_s < 10
