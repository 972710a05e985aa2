"""A fake OpenAI-compatible chat-completions server for tests and benchmarks.

It answers ``POST /v1/chat/completions`` (plain JSON or SSE streaming) with a reply that
is a pure function of the request, so a test can check that history reached the model:

    "echo: <last user text> (turn <number of user messages>)"

or, when the last message is a tool result (``role: "tool"``),

    "tool results: <content of each trailing tool message, joined by ' | '>"

Behaviour can be scripted per request (``script``: status codes, headers, delays, or a
200 answer with given content and/or tool calls) or switched as a whole (``mode``:
"ok", "down" answering 503, "hang"). Requests are recorded (bounded) for assertions
(the ``tools`` and tool messages a client sent included).

It also speaks the two audio endpoints (requests recorded in ``audio_requests``):

- ``POST /v1/audio/speech`` (JSON ``model``, ``input``, ``voice``, ``response_format``,
  ``speed``): a 440 Hz tone lasting 0.06 s per input character, 16-bit mono 24 kHz WAV
  (``audio/wav``), or MP3 when ``response_format`` is "mp3" or absent (OpenAI's default).
- ``POST /v1/audio/transcriptions`` (multipart ``file``, ``model``, ``language``,
  ``response_format``): ``{"text": FakeLLM.transcript or "heard <n> bytes"}`` (plain
  text for ``response_format=text``); an empty file is a 400 with an OpenAI error body.

Run it in a thread of the test process (``FakeLLM.start()``) or as its own process for
benchmarks::

    python -m tests.peers.openai_server --port 18080 --latency 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import threading
import time
import wave
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web


@dataclass
class Scripted:
    """One scripted answer: an HTTP status with optional headers and body.

    A 200 step answers with ``content`` and/or ``tool_calls`` (each ``{"name": str,
    "arguments": str | dict}``, an optional ``"id"``; a dict is sent as JSON text, a
    missing name is left out, for garbage), plain or streamed as the request asks. A
    200 step with neither gives the default answer. ``delay`` seconds pass first.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    delay: float = 0.0


class FakeLLM:
    def __init__(
        self,
        *,
        latency: float = 0.0,
        model_tag: str = "fake",
        record: int = 1000,
        stream_delay: float = 0.0,
    ):
        self.latency = latency
        self.stream_delay = stream_delay
        self.model_tag = model_tag
        self.mode = "ok"
        self.script: deque[Scripted] = deque()
        self.requests: deque[dict[str, Any]] = deque(maxlen=record or None)
        self.record = record > 0
        self.calls = 0
        self._call_ids = 0
        self.audio_requests: deque[dict[str, Any]] = deque(maxlen=record or None)
        self.transcript: str | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        self.mode = "ok"
        self.stream_delay = 0.0
        self.script.clear()
        self.requests.clear()
        self.calls = 0
        self._call_ids = 0
        self.audio_requests.clear()
        self.transcript = None

    def user_turns(self) -> list[list[str]]:
        """For each recorded request, the user texts it carried (oldest first)."""
        return [
            [m["content"] for m in r["messages"] if m.get("role") == "user"] for r in self.requests
        ]

    # -- server --------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model_tag}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls += 1
        if self.record:
            self.requests.append(body)
        step = self.script.popleft() if self.script else None
        if step is not None:
            if step.delay:
                await asyncio.sleep(step.delay)
            if step.status != 200:
                return web.json_response(
                    step.body or {"error": {"message": f"scripted {step.status}"}},
                    status=step.status,
                    headers=step.headers,
                )
            if step.content is not None or step.tool_calls:
                calls = [self._tool_call(c) for c in step.tool_calls or ()]
                if body.get("stream"):
                    return await self._stream(request, body, step.content or "", calls)
                return web.json_response(_completion(body, step.content, calls))
        if self.mode == "down":
            return web.json_response({"error": {"message": "service down"}}, status=503)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "garbage":  # 200 OK, but not a chat completion
            return web.Response(
                text='{"choices": "none of your business"}', content_type="application/json"
            )
        if self.mode == "not-json":
            return web.Response(text="<html>502 gateway</html>", content_type="text/html")
        if self.latency:
            await asyncio.sleep(self.latency)
        content = self.answer(body)
        if body.get("stream"):
            return await self._stream(request, body, content)
        return web.json_response(_completion(body, content))

    async def _speech(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.record:
            self.audio_requests.append({"endpoint": "speech", **body})
        text = str(body.get("input") or "")
        if not text:
            return _bad_request("input is required")
        fmt = body.get("response_format") or "mp3"
        pcm = _tone(0.06 * len(text), 24_000)
        if fmt == "mp3":
            return web.Response(body=_mp3(pcm, 24_000), content_type="audio/mpeg")
        return web.Response(body=_wav(pcm, 24_000), content_type="audio/wav")

    async def _transcriptions(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        data = upload.file.read() if isinstance(upload, web.FileField) else b""
        if self.record:
            self.audio_requests.append(
                {
                    "endpoint": "transcriptions",
                    "filename": upload.filename if isinstance(upload, web.FileField) else None,
                    "file": data,
                    **{k: str(v) for k, v in form.items() if k != "file"},
                }
            )
        if not data:
            return _bad_request("the audio file is empty")
        text = self.transcript if self.transcript is not None else f"heard {len(data)} bytes"
        if form.get("response_format") == "text":
            return web.Response(text=text)
        return web.json_response({"text": text})

    def _tool_call(self, spec: dict[str, Any]) -> dict[str, Any]:
        self._call_ids += 1
        args = spec.get("arguments", "")
        function: dict[str, Any] = {
            "arguments": args if isinstance(args, str) else json.dumps(args)
        }
        if "name" in spec:
            function["name"] = spec["name"]
        return {
            "id": spec.get("id", f"call_{self._call_ids}"),
            "type": "function",
            "function": function,
        }

    def answer(self, body: dict[str, Any]) -> str:
        messages = body.get("messages", [])
        results: list[str] = []
        for m in reversed(messages):
            if m.get("role") != "tool":
                break
            results.insert(0, str(m.get("content") or ""))
        if results:
            return "tool results: " + " | ".join(results)
        users = [m for m in messages if m.get("role") == "user"]
        last = users[-1]["content"] if users else ""
        if isinstance(last, list):  # content parts
            last = " ".join(p.get("text", "") for p in last if isinstance(p, dict))
        return f"echo: {last} (turn {len(users)})"

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        content: str,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model", self.model_tag),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return f"data: {json.dumps(data)}\n\n".encode()

        words = content.split(" ") if content or not tool_calls else []
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            await resp.write(chunk({"role": "assistant", "content": piece}))
            if self.stream_delay:
                await asyncio.sleep(self.stream_delay)
        # As OpenAI streams them: id and name in a call's first piece, the arguments in
        # pieces (two here) that the client must concatenate.
        for index, call in enumerate(tool_calls or ()):
            args = call["function"]["arguments"]
            half = len(args) // 2
            first = {
                **call,
                "index": index,
                "function": {**call["function"], "arguments": args[:half]},
            }
            rest = {"index": index, "function": {"arguments": args[half:]}}
            await resp.write(chunk({"role": "assistant", "tool_calls": [first]}))
            await resp.write(chunk({"tool_calls": [rest]}))
        await resp.write(chunk({}, "tool_calls" if tool_calls else "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = _completion(body, content)["usage"]
            final = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model", self.model_tag),
                "choices": [],
                "usage": usage,
            }
            await resp.write(f"data: {json.dumps(final)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # -- lifecycle in a background thread -----------------------------------------------
    def start(self, port: int = 0) -> FakeLLM:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._runner = web.AppRunner(self.app(), access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", port)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-llm", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake LLM did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None


def _completion(
    body: dict[str, Any], content: str | None, tool_calls: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A chat completion; ``content`` is null beside tool calls when None, as OpenAI does."""
    messages = body.get("messages", [])
    prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
    completion_tokens = len((content or "").split())
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls" if tool_calls else "stop",
                "message": message,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _bad_request(message: str) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return web.json_response({"error": error}, status=400)


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")


def _wav(pcm: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buf.getvalue()


def _mp3(pcm: np.ndarray, rate: int) -> bytes:
    import av  # only this answer needs it

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    fake = FakeLLM(latency=args.latency, record=0)
    web.run_app(
        fake.app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=lambda *_: print(f"fake LLM on {args.port}", flush=True),
    )


if __name__ == "__main__":
    main()
