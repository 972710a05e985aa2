"""Speech: TTS throughput and STT real-time factor, worker actors against one process.

(a) TTS (the packaged Piper voice, one ONNX thread per worker): seconds of audio made
    per wall-clock second for a batch of sentences, encoded to Ogg/Opus as a platform
    reply would be, through 1 and 2 SpeechWorker actors (num_cpus=1 each, two jobs in
    flight per worker) against the same backend called in this one process (the
    baseline, same run). Target (issue 8): 2 workers >= 1.8x one on this 2-core machine.
(b) STT (faster-whisper, the packaged tiny.en, int8, one thread per worker): the
    real-time factor (processing seconds per second of audio; lower is better) of
    transcribing the clips from (a) in this process, and the throughput in seconds of
    audio per second through 1 and 2 workers. Also the word error count of the round
    trip (TTS then STT), which should be zero or nearly.

    python -m bench.speech [--only tts,stt] [--sentences 24]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.webchat_throughput import start_ray

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

NAMESPACE = "astr-bench"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to water the plants on Tuesday and Friday mornings.",
    "Our meeting has moved to the third floor conference room at noon.",
    "The library opens at nine and closes at six on weekdays.",
    "Seven white swans swam slowly south across the quiet lake.",
    "Bring a warm coat because the evening will be cold and windy.",
    "The package should arrive within two business days of your order.",
    "Turn left at the second light and the station is on your right.",
]


def config(tmp: Path) -> dict[str, Any]:
    from astr_ray.config import parse_config

    return parse_config(
        {
            "data_dir": str(tmp),
            "runtime": {"namespace": NAMESPACE},
            "speech": {"tts": {"backend": "piper"}, "stt": {"backend": "whisper"}},
        }
    ).to_transport()


NUMBERS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]


def words(text: str) -> list[str]:
    """Lower-case words, numerals spelled out (Whisper writes "9" for "nine")."""
    found = re.findall(r"[a-z0-9']+", text.lower())
    return [NUMBERS[int(w)] if w.isdigit() and int(w) < len(NUMBERS) else w for w in found]


def word_errors(want: list[str], got: list[str]) -> int:
    """Substitutions + insertions + deletions (the numerator of the word error rate)."""
    row = list(range(len(got) + 1))
    for i, w in enumerate(want, 1):
        prev, row[0] = row[0], i
        for j, g in enumerate(got, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (w != g))
    return row[-1]


async def workers_of(kind: str, count: int, cfg: dict[str, Any]) -> list[Any]:
    from actors.speech import SpeechWorker, stt_name, tts_name

    name_of = tts_name if kind == "tts" else stt_name
    actors = [
        SpeechWorker.options(  # type: ignore[attr-defined]
            name=name_of(i), namespace=NAMESPACE, num_cpus=1, max_concurrency=8
        ).remote(name_of(i), kind, cfg)
        for i in range(count)
    ]
    await asyncio.gather(*(a.start.remote() for a in actors))
    return actors


async def through_pool(pool: Any, method: str, jobs: list[tuple[Any, ...]], flight: int) -> None:
    sem = asyncio.Semaphore(flight)

    async def one(args: tuple[Any, ...]) -> None:
        async with sem:
            await pool.call(method, *args)

    await asyncio.gather(*(one(a) for a in jobs))


async def tts_bench(tmp: Path, texts: list[str]) -> list[bytes]:
    import ray

    from actors.pool import WorkerPool
    from actors.speech import tts_name
    from astr_ray.config import TtsConfig
    from astr_ray.errors import SpeechError
    from astr_ray.speech import encode_audio, make_tts

    print(f"\n(a) TTS: {len(texts)} sentences, Piper en_US-joe-medium, encoded to Ogg/Opus")
    local = make_tts(TtsConfig(backend="piper"))
    encode_audio(local.synthesize_sync(texts[0]), "ogg")  # warm
    clips: list[bytes] = []
    audio_s = 0.0
    began = time.perf_counter()
    for text in texts:
        audio = local.synthesize_sync(text)
        clips.append(encode_audio(audio, "ogg"))
        audio_s += audio.duration_s
    base = audio_s / (time.perf_counter() - began)
    print(f"  {audio_s:.1f} s of audio in all")
    print(f"  {'in this process (baseline)':28} {base:6.1f} s audio/s  1.00x")
    cfg = config(tmp)
    for count in (1, 2):
        actors = await workers_of("tts", count, cfg)
        pool = WorkerPool(NAMESPACE, count, tts_name, error=SpeechError, what="TTS worker")
        await through_pool(pool, "speak", [(texts[0], None, "ogg")] * count, count)  # warm
        began = time.perf_counter()
        await through_pool(pool, "speak", [(t, None, "ogg") for t in texts], 2 * count)
        rate = audio_s / (time.perf_counter() - began)
        print(f"  {f'{count} TTS worker(s)':28} {rate:6.1f} s audio/s  {rate / base:.2f}x")
        for a in actors:
            ray.kill(a)
        await asyncio.sleep(1)
    return clips


async def stt_bench(tmp: Path, texts: list[str], clips: list[bytes], verbose: bool = False) -> None:
    import ray

    from actors.pool import WorkerPool
    from actors.speech import stt_name
    from astr_ray.config import SttConfig
    from astr_ray.errors import SpeechError
    from astr_ray.speech import duration_of, make_stt

    audio_s = sum(duration_of(c) for c in clips)
    print(f"\n(b) STT: the same {len(clips)} clips ({audio_s:.1f} s), Whisper tiny.en int8")
    local = make_stt(SttConfig(backend="whisper"))
    local.transcribe_sync(clips[0])  # warm
    errors = 0
    began = time.perf_counter()
    for text, clip in zip(texts, clips, strict=True):
        heard = local.transcribe_sync(clip)
        errors += word_errors(words(text), words(heard.text))
        if words(text) != words(heard.text) and verbose:
            print(f"    said {text!r}\n    heard {heard.text!r}")
    took = time.perf_counter() - began
    total = sum(len(words(t)) for t in texts)
    print(f"  real-time factor in this process: {took / audio_s:.3f} (lower is better)")
    print(
        f"  round trip TTS -> STT: {errors} word errors in {total} words (WER {errors / total:.1%})"
    )
    base = audio_s / took
    print(f"  {'in this process (baseline)':28} {base:6.1f} s audio/s  1.00x")
    cfg = config(tmp)
    for count in (1, 2):
        actors = await workers_of("stt", count, cfg)
        pool = WorkerPool(NAMESPACE, count, stt_name, error=SpeechError, what="STT worker")
        await through_pool(pool, "transcribe", [(clips[0], None)] * count, count)  # warm
        began = time.perf_counter()
        await through_pool(pool, "transcribe", [(c, None) for c in clips], 2 * count)
        rate = audio_s / (time.perf_counter() - began)
        print(f"  {f'{count} STT worker(s)':28} {rate:6.1f} s audio/s  {rate / base:.2f}x")
        for a in actors:
            ray.kill(a)
        await asyncio.sleep(1)


async def amain(args: argparse.Namespace) -> None:
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="astr-bench-"))
    start_ray()
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(args.sentences)]
    try:
        await asyncio.sleep(5)  # let Ray's start-up work settle before the baselines
        clips = await tts_bench(tmp, texts)
        if "stt" in args.only:
            await stt_bench(tmp, texts, clips, args.verbose)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="tts,stt")
    parser.add_argument("--sentences", type=int, default=24)
    parser.add_argument("--verbose", action="store_true", help="print misheard sentences")
    args = parser.parse_args()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
