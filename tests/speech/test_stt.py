"""Speech to text (astr_ray/speech/stt.py): Piper speaks, the packaged Whisper tiny.en
hears it back word for word; litellm against the fake OpenAI-compatible server's
``/v1/audio/transcriptions``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from astr_ray.config import SttConfig
from astr_ray.errors import BadAudioError, SpeechError
from astr_ray.speech import (
    Audio,
    LitellmStt,
    PiperTts,
    SttBackend,
    Transcript,
    WhisperStt,
    encode_audio,
    make_stt,
)
from tests.conftest import free_port
from tests.peers.openai_server import FakeLLM
from tests.speech.hearing import sounds_like

SECRET = "sk-test-very-secret-key"
GARBAGE = np.random.default_rng(3).bytes(40_000)


@pytest.fixture(scope="module")
def whisper() -> WhisperStt:
    return WhisperStt()


@pytest.fixture(scope="module")
def piper() -> PiperTts:
    return PiperTts()


@pytest.fixture(scope="module")
def voice_note(piper: PiperTts) -> bytes:
    """A short spoken Ogg/Opus voice message, as Telegram sends them."""
    return encode_audio(piper.synthesize_sync("Hello, can you hear me?"), "ogg")


# -- whisper ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sentence",
    [
        "The quick brown fox jumps over the lazy dog.",
        "Please remember to water the plants on Tuesday morning.",
    ],
)
async def test_round_trip_piper_to_whisper(
    whisper: WhisperStt, piper: PiperTts, sentence: str
) -> None:
    spoken = await piper.synthesize(sentence)
    heard = await whisper.transcribe(encode_audio(spoken, "ogg"))
    assert sounds_like(heard.text, sentence), heard.text
    assert heard.language == "en"
    assert heard.duration_s == pytest.approx(spoken.duration_s, rel=0.05)


def test_whisper_reads_wav_too(whisper: WhisperStt, piper: PiperTts) -> None:
    sentence = "Good morning, everyone."
    heard = whisper.transcribe_sync(encode_audio(piper.synthesize_sync(sentence), "wav"))
    assert sounds_like(heard.text, sentence), heard.text


@pytest.mark.parametrize("data", [GARBAGE, b"", b"hello, I am a text file\n" * 50])
def test_whisper_refuses_what_is_not_audio(whisper: WhisperStt, data: bytes) -> None:
    with pytest.raises(BadAudioError):
        whisper.transcribe_sync(data)


def test_silence_gives_an_empty_transcript(whisper: WhisperStt) -> None:
    silence = encode_audio(Audio(np.zeros(3 * 16_000, dtype=np.float32), 16_000), "ogg")
    heard = whisper.transcribe_sync(silence)
    assert (heard.text, heard.language) == ("", "en")
    assert heard.duration_s == pytest.approx(3.0, rel=0.05)
    assert isinstance(heard, Transcript)


def test_whisper_refuses_audio_over_the_limit(voice_note: bytes) -> None:
    short = WhisperStt(max_audio_s=0.5)  # the model itself is loaded once per process
    with pytest.raises(BadAudioError, match=r"longer than the 0\.5 s limit"):
        short.transcribe_sync(voice_note)


def test_whisper_needs_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(SpeechError, match="not a CTranslate2 Whisper model folder"):
        WhisperStt(str(tmp_path))
    with pytest.raises(SpeechError, match="not a CTranslate2 Whisper model folder"):
        WhisperStt("small")  # a size name would mean a download


def test_make_stt_by_backend(whisper: WhisperStt) -> None:
    stt = make_stt(SttConfig(backend="whisper"), max_audio_s=30)
    assert isinstance(stt, WhisperStt)
    assert isinstance(stt, SttBackend)
    assert stt.local
    assert stt.max_audio_s == 30
    with pytest.raises(SpeechError, match="speech to text is off"):
        make_stt(SttConfig(backend="off"))


# -- litellm ------------------------------------------------------------------------------


def litellm_stt(fake: FakeLLM, **overrides: object) -> LitellmStt:
    cfg = SttConfig(
        backend="litellm",
        model="openai/whisper-1",
        api_base=fake.base_url,
        api_key=SecretStr(SECRET),
        **overrides,  # type: ignore[arg-type]
    )
    stt = make_stt(cfg, max_audio_s=60)
    assert isinstance(stt, LitellmStt)
    return stt


async def test_litellm_transcribes_through_the_api(fake_llm: FakeLLM, voice_note: bytes) -> None:
    fake_llm.transcript = "can you hear me"
    stt = litellm_stt(fake_llm)
    heard = await stt.transcribe(voice_note, language="fr")
    assert heard.text == "can you hear me"
    assert heard.language == "fr"
    assert 0.5 < heard.duration_s < 5
    assert not stt.local
    (request,) = fake_llm.audio_requests
    assert request["endpoint"] == "transcriptions"
    assert request["file"] == voice_note  # the bytes as they came, not re-encoded
    assert request["filename"] == "voice.ogg"
    assert request["model"] == "whisper-1"
    assert request["language"] == "fr"


async def test_litellm_names_the_file_after_its_container(
    fake_llm: FakeLLM, piper: PiperTts
) -> None:
    stt = litellm_stt(fake_llm, language="en")
    spoken = piper.synthesize_sync("Testing.")
    for fmt in ("mp3", "wav"):
        data = encode_audio(spoken, fmt)
        heard = await stt.transcribe(data)
        assert heard.text == f"heard {len(data)} bytes"
        assert fake_llm.audio_requests[-1]["filename"] == f"voice.{fmt}"
        assert fake_llm.audio_requests[-1]["language"] == "en"


@pytest.mark.parametrize("data", [GARBAGE, b""])
async def test_litellm_refuses_garbage_before_calling_the_api(
    fake_llm: FakeLLM, data: bytes
) -> None:
    with pytest.raises(BadAudioError):
        await litellm_stt(fake_llm).transcribe(data)
    assert list(fake_llm.audio_requests) == []


async def test_litellm_refuses_long_audio_before_calling_the_api(
    fake_llm: FakeLLM, piper: PiperTts
) -> None:
    stt = LitellmStt(
        "openai/whisper-1", api_base=fake_llm.base_url, api_key=SECRET, max_audio_s=0.5
    )
    with pytest.raises(BadAudioError, match=r"0\.5 s limit"):
        await stt.transcribe(encode_audio(piper.synthesize_sync("Too long to send."), "ogg"))
    assert list(fake_llm.audio_requests) == []


async def test_litellm_errors_hide_the_key(voice_note: bytes) -> None:
    stt = LitellmStt(
        "openai/whisper-1", api_base=f"http://127.0.0.1:{free_port()}/v1", api_key=SECRET
    )
    with pytest.raises(SpeechError, match="transcription API failed") as info:
        await stt.transcribe(voice_note)
    assert SECRET not in str(info.value)
