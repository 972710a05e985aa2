"""Speech workers: the TTS pool ("tts-<i>") and the STT pool ("stt-<i>"), ``num_cpus=1``
each, and the client a session host uses to reach them.

    SessionHost (turn: voice in)  ── SpeechClient.transcribe ─► stt-0 | stt-1 ─► text
    SessionHost (turn: reply)     ── SpeechClient.speak ──────► tts-0 | tts-1 ─► audio
    bench, dashboard              ── the same calls

Each worker loads its backend once (``speech.tts`` / ``speech.stt``: the packaged Piper
voice and Whisper tiny.en by default; ``astr_ray.speech``) and runs one job at a time in
a worker thread, so that one actor is one core and its pings stay answered. A local
backend's job includes the encoding to the platform's format, so the host never does
CPU work for speech. Jobs are pure, so a job whose worker died is sent again to the
next one (``actors.pool.WorkerPool``). Placed by the ``speech`` resource where the
cluster has one (dedicated speech nodes), else by ``cpu_pool``, else anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Literal

import ray
from ray.exceptions import RayTaskError

from actors.common import node_id, setup_logging
from actors.logship import ship_logs
from actors.pool import WorkerPool
from astr_ray.config import Config, parse_config
from astr_ray.errors import AstrRayError, SpeechError
from astr_ray.lifecycle import Lifecycle
from astr_ray.sessions.voice import Heard, Spoken

__all__ = ["SpeechClient", "SpeechWorker", "stt_name", "tts_name"]

log = logging.getLogger(__name__)

Kind = Literal["tts", "stt"]


def tts_name(index: int) -> str:
    return f"tts-{index}"


def stt_name(index: int) -> str:
    return f"stt-{index}"


@ray.remote
class SpeechWorker:
    def __init__(self, name: str, kind: Kind, config: dict[str, Any]) -> None:
        setup_logging(name)
        self.name = name
        self.kind = kind
        self.cfg: Config = parse_config(config)
        ship_logs(name, self.cfg.runtime.namespace)
        self._one_at_a_time = asyncio.Lock()
        self.lifecycle = Lifecycle(name, self._on_start, self._on_stop)
        self.backend: Any = None
        self.jobs = 0  # finished (or failed)
        self.running = 0
        self.failures = 0
        self.audio_s = 0.0  # seconds of audio made or heard
        self.busy_s = 0.0
        self.started_at = time.time()

    async def start(self) -> dict[str, Any]:
        await self.lifecycle.start()
        return await self.ping()

    async def _on_start(self) -> None:
        from astr_ray.speech import make_stt, make_tts

        speech = self.cfg.speech
        if self.kind == "tts":
            self.backend = await asyncio.to_thread(make_tts, speech.tts, timeout_s=speech.timeout_s)
            if self.backend.local:  # load the voice now, not on the first reply
                await asyncio.to_thread(self.backend.synthesize_sync, "Ready.", None, 1.0)
        else:
            self.backend = await asyncio.to_thread(
                make_stt, speech.stt, speech.max_audio_s, timeout_s=speech.timeout_s
            )
        log.info("%s backend %s up", self.kind, self.backend.name)

    async def _on_stop(self) -> None:
        self.backend = None

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def _run(self, local: Any, remote: Any) -> Any:
        """A local backend's job: one at a time, in a thread; an API's: as it comes."""
        began = time.perf_counter()
        self.running += 1
        try:
            if self.backend.local:
                async with self._one_at_a_time:
                    began = time.perf_counter()
                    return await asyncio.to_thread(local)
            return await remote()
        except Exception:
            self.failures += 1
            raise
        finally:
            self.running -= 1
            self.busy_s += time.perf_counter() - began
            self.jobs += 1

    async def speak(self, text: str, voice: str | None, fmt: str) -> dict[str, Any]:
        """``text`` spoken: ``{"data": bytes in fmt, "mime", "duration_s"}``."""
        await self.lifecycle.ensure_started()
        if self.kind != "tts":
            raise SpeechError("this worker transcribes; it does not speak", actor=self.name)
        from astr_ray.speech import FORMATS, encode_audio

        if fmt not in FORMATS:
            raise SpeechError(f"unknown audio format {fmt!r}", actor=self.name)
        speed = self.cfg.speech.tts.speed

        def local() -> dict[str, Any]:
            audio = self.backend.synthesize_sync(text, voice, speed)
            return {"data": encode_audio(audio, fmt), "duration_s": audio.duration_s}

        async def remote() -> dict[str, Any]:
            audio = await self.backend.synthesize(text, voice, speed)
            data = await asyncio.to_thread(encode_audio, audio, fmt)
            return {"data": data, "duration_s": audio.duration_s}

        out: dict[str, Any] = await self._run(local, remote)
        self.audio_s += out["duration_s"]
        out["mime"] = FORMATS[fmt]
        return out

    async def transcribe(self, data: bytes, language: str | None) -> dict[str, Any]:
        """The words in ``data`` (any common audio format): ``{"text", "language",
        "duration_s"}``. Raises ``BadAudioError`` for audio that cannot be used."""
        await self.lifecycle.ensure_started()
        if self.kind != "stt":
            raise SpeechError("this worker speaks; it does not transcribe", actor=self.name)
        heard = await self._run(
            lambda: self.backend.transcribe_sync(data, language),
            lambda: self.backend.transcribe(data, language),
        )
        self.audio_s += heard.duration_s
        return {"text": heard.text, "language": heard.language, "duration_s": heard.duration_s}

    async def ping(self) -> dict[str, Any]:
        if self.lifecycle.state.value == "new":
            await self.lifecycle.ensure_started()  # Ray restarted this process
        return {
            "pid": os.getpid(),
            "node_id": node_id(),
            "state": self.lifecycle.state.value,
            "started_at": self.started_at,
            "kind": self.kind,
            "backend": self.backend.name if self.backend else None,
            "jobs": self.jobs,
            "running": self.running,
            "failures": self.failures,
            "audio_s": round(self.audio_s, 2),
            "busy_s": round(self.busy_s, 3),
        }


def _cause(exc: RayTaskError) -> BaseException:
    """The error a worker raised on purpose, as itself (not Ray's wrapper)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, AstrRayError) else exc


class SpeechClient:
    """The host's side (``astr_ray.sessions.voice.Speech``): both pools, each job
    time-limited by ``speech.timeout_s`` (queueing included)."""

    def __init__(self, cfg: Config) -> None:
        sc = cfg.speech
        ns = cfg.runtime.namespace
        self.timeout_s = sc.timeout_s
        tts_workers = sc.tts.workers if sc.tts.backend != "off" else 0
        stt_workers = sc.stt.workers if sc.stt.backend != "off" else 0
        self.tts = WorkerPool(
            ns,
            tts_workers,
            tts_name,
            error=SpeechError,
            what="TTS worker",
            off_hint="speech.tts is off",
            deadline_s=sc.timeout_s,
        )
        self.stt = WorkerPool(
            ns,
            stt_workers,
            stt_name,
            error=SpeechError,
            what="STT worker",
            off_hint="speech.stt is off",
            deadline_s=sc.timeout_s,
        )

    @property
    def can_listen(self) -> bool:
        return self.stt.size > 0

    @property
    def can_speak(self) -> bool:
        return self.tts.size > 0

    async def _call(self, pool: WorkerPool, method: str, *args: Any) -> dict[str, Any]:
        try:
            out: dict[str, Any] = await asyncio.wait_for(
                pool.call(method, *args), timeout=self.timeout_s
            )
        except TimeoutError:
            raise SpeechError(f"the {pool.what} took longer than {self.timeout_s:g} s") from None
        except RayTaskError as exc:
            raise _cause(exc) from None
        return out

    async def transcribe(self, data: bytes, language: str | None) -> Heard:
        out = await self._call(self.stt, "transcribe", data, language)
        return Heard(out["text"], out["language"], float(out["duration_s"]))

    async def speak(self, text: str, voice: str | None, fmt: str) -> Spoken:
        out = await self._call(self.tts, "speak", text, voice, fmt)
        return Spoken(out["data"], out["mime"], float(out["duration_s"]))
