"""Audio bytes in and out: decode anything a chat platform sends, encode what it plays.

``decode_audio`` turns a voice message (Ogg/Opus from Telegram and Discord, MP3, WAV,
WebM from browsers, M4A/AAC from phones, FLAC, ...) into float32 mono samples at the
rate a model wants. It is the gate for untrusted bytes, so its contract is strict:

- only a fixed set of container formats is opened (``format_whitelist``), so that
  playlist or concat demuxers can never make FFmpeg open other files or URLs;
- every failure is a ``BadAudioError`` with a message fit for the user (no FFmpeg
  text); no ``av`` exception escapes;
- ``max_s`` is checked while decoding: it stops at the first frame past the limit,
  so a long (or lying) file costs no more than the limit;
- garbage cannot hang it: the input is a finite buffer and demuxing ends at its end.

``encode_audio`` writes the three formats replies are sent in (``FORMATS``): Ogg/Opus
at 48 kHz mono (a Telegram/Discord voice message; browsers play it), MP3, and 16-bit
PCM WAV.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import wave
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from astr_ray.errors import BadAudioError, SpeechError

__all__ = ["FORMATS", "Audio", "decode_audio", "duration_of", "encode_audio"]

#: Reply formats and their media types.
FORMATS: dict[str, str] = {"ogg": "audio/ogg", "mp3": "audio/mpeg", "wav": "audio/wav"}

#: Demuxers a voice message may use (FFmpeg names; one entry of a multi-name demuxer
#: such as ``mov,mp4,m4a,3gp,3g2,mj2`` admits it).
_DEMUXERS = "ogg,mp3,wav,w64,matroska,webm,mov,mp4,m4a,flac,aac,aiff,amr,caf"

#: What FFmpeg raises, and what PyAV raises around it (a changed frame layout, a
#: closed buffer): all of it means "these bytes are not audio we can read".
_AV_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, IndexError, RuntimeError)

_OPUS_RATE = 48_000
_MP3_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples in [-1, 1] at ``rate`` Hz."""

    samples: np.ndarray
    rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.rate


def decode_audio(data: bytes, rate: int = 16_000, *, max_s: float | None = None) -> Audio:
    """Decode ``data`` (any whitelisted container and codec) to mono at ``rate`` Hz.

    Raises ``BadAudioError`` when the bytes cannot be decoded, hold no audio stream,
    decode to nothing, or run longer than ``max_s`` seconds (the message names the
    limit). Blocking, CPU-bound: call it in a worker thread.
    """
    limit = None if max_s is None else int(max_s * rate)
    pieces: list[np.ndarray] = []
    total = 0
    with _reading(data) as frames:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in itertools.chain(frames, [None]):  # None flushes the resampler
            for out in resampler.resample(frame):
                pieces.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=True))
                total += len(pieces[-1])
            if limit is not None and total > limit:
                raise BadAudioError(f"the audio is longer than the {max_s:g} s limit")
    if total == 0:
        raise BadAudioError("the audio is empty")
    samples = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    # Float decoders (Opus, AAC) may overshoot full scale a little.
    np.clip(samples, -1.0, 1.0, out=samples)
    return Audio(samples=samples, rate=rate)


def duration_of(data: bytes) -> float:
    """Seconds of audio in ``data``, decoded and counted (container headers can lie)
    without keeping the samples, so memory stays flat however long it is. Raises
    ``BadAudioError`` like ``decode_audio``."""
    seconds = 0.0
    with _reading(data) as frames:
        for frame in frames:
            seconds += frame.samples / (frame.sample_rate or 1)
    if seconds == 0:
        raise BadAudioError("the audio is empty")
    return seconds


@contextlib.contextmanager
def _reading(data: bytes) -> Iterator[Iterator[av.AudioFrame]]:
    """The decoded frames of the first audio stream of ``data``, lazily; every error
    inside the block (FFmpeg's and PyAV's included) comes out as ``BadAudioError``."""
    if not data:
        raise BadAudioError("the audio is empty")
    try:
        with av.open(
            io.BytesIO(data), mode="r", options={"format_whitelist": _DEMUXERS}
        ) as container:
            if not container.streams.audio:
                raise BadAudioError("the file has no audio in it")
            yield container.decode(container.streams.audio[0])
    except BadAudioError:
        raise
    except _AV_ERRORS:
        raise BadAudioError("the audio could not be decoded") from None


def encode_audio(audio: Audio, fmt: str) -> bytes:
    """``audio`` as a file of format ``fmt`` (a key of ``FORMATS``).

    ``ogg``: Opus in Ogg, 48 kHz mono. ``mp3``: MP3 mono (at ``audio.rate`` when MP3
    allows it, else 48 kHz). ``wav``: 16-bit PCM mono at ``audio.rate``. Raises
    ``SpeechError`` for an unknown format or empty audio.
    """
    if fmt not in FORMATS:
        raise SpeechError(f"unknown audio format {fmt!r} (known: {', '.join(FORMATS)})")
    if len(audio.samples) == 0:
        raise SpeechError("there is no audio to encode")
    samples = np.clip(np.asarray(audio.samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    if fmt == "wav":
        return _wav(samples, audio.rate)
    if fmt == "ogg":
        return _encode(samples, audio.rate, "ogg", "libopus", _OPUS_RATE, 32_000)
    rate = audio.rate if audio.rate in _MP3_RATES else 48_000
    return _encode(samples, audio.rate, "mp3", "libmp3lame", rate, 64_000)


def _wav(samples: np.ndarray, rate: int) -> bytes:
    pcm = np.round(samples * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buf.getvalue()


def _encode(
    samples: np.ndarray, rate: int, container_fmt: str, codec: str, out_rate: int, bit_rate: int
) -> bytes:
    buf = io.BytesIO()
    try:
        with av.open(buf, mode="w", format=container_fmt) as container:
            stream = container.add_stream(codec, rate=out_rate, layout="mono")
            assert isinstance(stream, av.AudioStream)  # an audio codec gives one
            stream.bit_rate = bit_rate
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = rate
            # PyAV resamples to the encoder's format and rate and cuts its frame size.
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
    except _AV_ERRORS as exc:
        raise SpeechError(f"encoding {container_fmt} failed: {type(exc).__name__}") from None
    return buf.getvalue()
