"""Audio decode and encode (astr_ray/speech/audio.py): round trips through the three
reply formats, what phones and browsers send, resampling and down-mixing, and the
refusals a user sees for bytes that are not audio."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from astr_ray.errors import BadAudioError, SpeechError
from astr_ray.speech import FORMATS, Audio, decode_audio, duration_of, encode_audio


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> Audio:
    t = np.arange(round(seconds * rate)) / rate
    return Audio((amp * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def peak_freqs(audio: Audio, n: int = 1) -> list[float]:
    """The ``n`` strongest frequencies (Hz), strongest first."""
    spectrum = np.abs(np.fft.rfft(audio.samples))
    freqs = np.fft.rfftfreq(len(audio.samples), 1 / audio.rate)
    order = np.argsort(spectrum)[::-1]
    found: list[float] = []
    for i in order:  # skip the bins next to a peak already found
        if all(abs(freqs[i] - f) > 20 for f in found):
            found.append(float(freqs[i]))
        if len(found) == n:
            break
    return found


def wav_bytes(channels: list[np.ndarray], rate: int) -> bytes:
    """A 16-bit WAV written with the standard library (independent of the code under test)."""
    pcm = np.stack(channels, axis=1) if len(channels) > 1 else channels[0][:, None]
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(len(channels))
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((pcm * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def pyav_file(container_fmt: str, codec: str, audio: Audio) -> bytes:
    """A file as another program would make it, written with PyAV directly."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container_fmt) as out:
        rate = 48_000 if codec == "libopus" else audio.rate
        stream = out.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(
            audio.samples.reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = audio.rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def is_container(data: bytes, fmt: str) -> bool:
    if fmt == "ogg":
        return data[:4] == b"OggS" and b"OpusHead" in data[:100]
    if fmt == "mp3":
        return data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    return data[:4] == b"RIFF" and data[8:12] == b"WAVE"


@pytest.mark.parametrize("fmt", ["ogg", "mp3", "wav"])
def test_round_trip_keeps_duration_and_pitch(fmt: str) -> None:
    original = tone(2.0, 22_050)
    data = encode_audio(original, fmt)
    assert is_container(data, fmt)
    back = decode_audio(data, 16_000)
    assert back.rate == 16_000
    assert back.samples.dtype == np.float32
    assert back.duration_s == pytest.approx(2.0, rel=0.05)
    assert peak_freqs(back) == [pytest.approx(440, abs=5)]
    assert float(np.max(np.abs(back.samples))) == pytest.approx(0.5, abs=0.1)
    assert duration_of(data) == pytest.approx(2.0, rel=0.05)
    assert fmt in FORMATS


def test_wav_is_16_bit_mono_at_the_audio_rate() -> None:
    with wave.open(io.BytesIO(encode_audio(tone(0.5, 22_050), "wav"))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22_050)
        assert w.getnframes() == 11_025


def test_ogg_is_mono_opus_at_48k() -> None:
    with av.open(io.BytesIO(encode_audio(tone(1.0, 22_050), "ogg"))) as c:
        (stream,) = c.streams.audio
        assert stream.codec_context.name == "opus"
        assert stream.codec_context.sample_rate == 48_000
        assert stream.codec_context.channels == 1


@pytest.mark.parametrize("rate", [8_000, 16_000, 24_000, 48_000])
def test_resampling(rate: int) -> None:
    data = wav_bytes([tone(1.0, 44_100).samples], 44_100)
    audio = decode_audio(data, rate)
    assert audio.rate == rate
    assert abs(len(audio.samples) - rate) <= rate // 100
    assert peak_freqs(audio) == [pytest.approx(440, abs=3)]


def test_stereo_is_mixed_to_mono() -> None:
    left, right = tone(1.0, 44_100, 440.0, 0.4), tone(1.0, 44_100, 1_000.0, 0.4)
    audio = decode_audio(wav_bytes([left.samples, right.samples], 44_100), 16_000)
    assert audio.samples.ndim == 1
    assert len(audio.samples) == pytest.approx(16_000, abs=20)
    assert sorted(peak_freqs(audio, 2)) == [pytest.approx(440, abs=3), pytest.approx(1000, abs=3)]
    assert float(np.max(np.abs(audio.samples))) <= 1.0


@pytest.mark.parametrize(
    ("container_fmt", "codec"),
    [("webm", "libopus"), ("ipod", "aac"), ("flac", "flac"), ("adts", "aac")],
    ids=["browser-webm-opus", "phone-m4a-aac", "flac", "aac"],
)
def test_decodes_what_browsers_and_phones_send(container_fmt: str, codec: str) -> None:
    data = pyav_file(container_fmt, codec, tone(3.0, 24_000))
    audio = decode_audio(data)
    assert audio.duration_s == pytest.approx(3.0, rel=0.05)  # AAC adds ~0.09 s of priming
    assert peak_freqs(audio) == [pytest.approx(440, abs=5)]


def ogg_sample() -> bytes:
    return encode_audio(tone(2.0, 22_050), "ogg")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the audio is empty"),
        (np.random.default_rng(7).bytes(50_000), "the audio could not be decoded"),
        (b"\x00" * 10_000, "the audio could not be decoded"),
        (b"Dear diary,\nthis is a plain text file, not audio.\n" * 40, "could not be decoded"),
        (b"%PDF-1.7\n" + b"x" * 2_000, "the audio could not be decoded"),
        (ogg_sample()[:100], "the audio could not be decoded"),
        (wav_bytes([np.zeros(0)], 16_000), "the audio is empty"),
    ],
    ids=["empty", "random", "zeros", "text", "pdf", "truncated-ogg", "wav-without-samples"],
)
def test_bytes_that_are_not_audio_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(BadAudioError) as info:
        decode_audio(data)
    assert message in str(info.value)
    assert "Errno" not in str(info.value)
    with pytest.raises(BadAudioError):
        duration_of(data)


def test_a_cut_ogg_decodes_up_to_the_cut() -> None:
    data = ogg_sample()
    audio = decode_audio(data[: len(data) // 2])
    assert 0.5 < audio.duration_s < 1.5


def test_a_file_without_audio_is_refused() -> None:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="matroska") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(
                np.full((64, 64, 3), i * 40, dtype=np.uint8), format="rgb24"
            )
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(BadAudioError, match="the file has no audio in it"):
        decode_audio(buf.getvalue())


def test_playlists_cannot_reach_other_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret.wav"
    secret.write_bytes(wav_bytes([tone(1.0, 16_000).samples], 16_000))
    for data in (
        f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\n{secret}\n#EXT-X-ENDLIST\n".encode(),
        f"ffconcat version 1.0\nfile '{secret}'\n".encode(),
    ):
        with pytest.raises(BadAudioError, match="could not be decoded"):
            decode_audio(data)


def test_longer_than_max_s_is_refused_naming_the_limit() -> None:
    data = encode_audio(tone(3.0, 16_000), "ogg")
    with pytest.raises(BadAudioError, match=r"longer than the 1\.5 s limit"):
        decode_audio(data, max_s=1.5)
    assert decode_audio(data, max_s=5).duration_s == pytest.approx(3.0, rel=0.05)


def test_a_small_file_of_long_audio_stops_at_the_limit() -> None:
    silence = Audio(np.zeros(16_000 * 120, dtype=np.float32), 16_000)
    data = pyav_file("flac", "flac", silence)  # two minutes in a few kilobytes
    assert len(data) < 100_000
    with pytest.raises(BadAudioError, match="longer than the 5 s limit"):
        decode_audio(data, max_s=5)
    assert duration_of(data) == pytest.approx(120.0, rel=0.01)


def test_unknown_format_and_empty_audio_are_not_encoded() -> None:
    with pytest.raises(SpeechError, match="unknown audio format 'flac'"):
        encode_audio(tone(1.0, 16_000), "flac")
    with pytest.raises(SpeechError, match="no audio to encode"):
        encode_audio(Audio(np.zeros(0, dtype=np.float32), 16_000), "ogg")


def test_loud_input_is_clipped_not_wrapped() -> None:
    loud = tone(0.5, 16_000, amp=3.0)
    back = decode_audio(encode_audio(loud, "wav"))
    assert float(np.max(back.samples)) == pytest.approx(1.0, abs=0.01)
    assert float(np.min(back.samples)) == pytest.approx(-1.0, abs=0.01)
