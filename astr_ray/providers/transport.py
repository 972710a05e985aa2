"""LLM transports: the one seam between a session and an LLM provider.

A transport sends one chat request and returns the answer (or streams its text). Two
implementations:

- ``NativeOpenAITransport``: the OpenAI chat-completions wire protocol over aiohttp, for
  ``openai/<model>`` at an ``api_base`` (any OpenAI-compatible server). ~0.4 ms of CPU
  a call on this box.
- ``LiteLLMTransport``: litellm's ``acompletion`` for every other model string (Anthropic,
  Gemini, Bedrock, ...). ~7 ms of CPU a call (14 ms streamed) on this box, spent in the
  OpenAI SDK's request transforms, cost calculation and logging; hence the native path
  for OpenAI-compatible servers (``bench/`` prints both).

Both map failures onto ``ProviderRetryableError`` (429, 5xx, time-outs, connection
errors; with the server's Retry-After) or ``ProviderError`` (everything else).

Tool calling follows the OpenAI wire format on both: ``tools`` goes out as the
``tools`` array; the model's ``message.tool_calls`` come back as ``ToolCall`` items
(arguments left as the raw JSON text). Streamed, the calls arrive as
``delta.tool_calls`` pieces keyed by ``index`` and are merged before the final
``ChatResult``::

    {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{\"a\""}}
    {"index": 0, "function": {"arguments": ": 1}"}}   ->  ToolCall("call_1", "f", '{"a": 1}')
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from astr_ray.config import ProviderConfig
from astr_ray.errors import ProviderError, ProviderRetryableError

__all__ = [
    "ChatResult",
    "LiteLLMTransport",
    "NativeOpenAITransport",
    "ToolCall",
    "Transport",
    "make_transport",
    "parse_retry_after",
]

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


@dataclass
class ToolCall:
    """One function call the model asked for.

    ``arguments`` is the JSON text exactly as the model sent it, possibly invalid: the
    caller parses it and can tell the model its arguments were garbage. ``id`` pairs
    the call with the ``role: "tool"`` message that answers it.
    """

    id: str
    name: str
    arguments: str


@dataclass
class ChatResult:
    """One answer. ``content`` is ``""`` when the model only called tools."""

    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None


class Transport(Protocol):
    """One provider's wire. Implementations own their connections.

    ``messages`` are OpenAI chat messages, passed through untouched (assistant
    messages with ``tool_calls`` and ``role: "tool"`` messages included). ``tools`` is
    the OpenAI ``tools`` array, sent only when non-empty. ``model`` replaces the
    configured model for this call. ``stream`` yields text pieces as ``str`` and ends
    with one ``ChatResult`` carrying tool calls, finish reason and usage (its
    ``content`` is empty: the text is the pieces).
    """

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        model: str | None = None,
    ) -> ChatResult: ...

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        model: str | None = None,
    ) -> AsyncIterator[str | ChatResult]: ...

    async def close(self) -> None: ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _body_params(cfg: ProviderConfig, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if tools:  # an empty array is rejected by some servers: leave it out
        params["tools"] = tools
    if cfg.temperature is not None:
        params["temperature"] = cfg.temperature
    if cfg.max_tokens is not None:
        params["max_tokens"] = cfg.max_tokens
    return params


class NativeOpenAITransport:
    """OpenAI chat completions over aiohttp. Create and use inside one event loop."""

    def __init__(self, cfg: ProviderConfig) -> None:
        if not cfg.api_base:
            raise ProviderError("native transport needs api_base", provider=cfg.id)
        self.cfg = cfg
        self.url = cfg.api_base.rstrip("/") + "/chat/completions"
        self.model = _wire_model(cfg.model)
        key = cfg.api_key.get_secret_value() if cfg.api_key else ""
        self._headers = {"Content-Type": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No more connections than calls the provider may have in flight: the pool
            # (and each connection's buffers) is bounded by max_concurrency.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.cfg.max_concurrency, ttl_dns_cache=300),
                headers=self._headers,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _payload(
        self,
        messages: list[dict[str, Any]],
        stream: bool,
        tools: list[dict[str, Any]] | None,
        model: str | None,
    ) -> bytes:
        body: dict[str, Any] = {
            "model": _wire_model(model) if model else self.model,
            "messages": messages,
            "stream": stream,
        }
        body.update(_body_params(self.cfg, tools))
        if stream:
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body).encode()

    async def _fail(self, resp: aiohttp.ClientResponse) -> ProviderError:
        text = (await resp.text(errors="replace"))[:300]
        try:
            detail = json.loads(text).get("error", {}).get("message", text)
        except (ValueError, AttributeError):
            detail = text
        msg = f"HTTP {resp.status}: {detail}"
        if resp.status in RETRYABLE_STATUS:
            return ProviderRetryableError(
                msg, parse_retry_after(resp.headers.get("Retry-After")), provider=self.cfg.id
            )
        return ProviderError(msg, provider=self.cfg.id)

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        model: str | None = None,
    ) -> ChatResult:
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        try:
            async with self._http().post(
                self.url, data=self._payload(messages, False, tools, model), timeout=timeout
            ) as resp:
                if resp.status != 200:
                    raise await self._fail(resp)
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderRetryableError(
                f"connection failed: {type(exc).__name__}: {exc}", provider=self.cfg.id
            ) from None
        except ValueError as exc:
            raise ProviderError(
                f"invalid JSON from provider: {exc}", provider=self.cfg.id
            ) from None
        return _result_from_json(data, self.cfg.id)

    async def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        model: str | None = None,
    ) -> AsyncIterator[str | ChatResult]:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_read=self.cfg.timeout_s, sock_connect=self.cfg.timeout_s
        )
        usage: dict[str, Any] = {}
        calls = _ToolCallParts(self.cfg.id)
        finish_reason: str | None = None
        try:
            async with self._http().post(
                self.url, data=self._payload(messages, True, tools, model), timeout=timeout
            ) as resp:
                if resp.status != 200:
                    raise await self._fail(resp)
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise ProviderError(
                            "invalid JSON in stream", provider=self.cfg.id
                        ) from None
                    if not isinstance(chunk, dict):
                        raise ProviderError("stream chunk is not an object", provider=self.cfg.id)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        if delta.get("tool_calls"):
                            calls.add(delta["tool_calls"])
                        finish_reason = choice.get("finish_reason") or finish_reason
                        piece = delta.get("content")
                        if piece:
                            yield piece
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderRetryableError(
                f"connection failed: {type(exc).__name__}: {exc}", provider=self.cfg.id
            ) from None
        yield ChatResult(
            "",
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            tool_calls=calls.result(),
            finish_reason=finish_reason,
        )


def _wire_model(model: str) -> str:
    """The model name an OpenAI-compatible server expects: litellm's prefix removed."""
    return model.split("/", 1)[1] if model.startswith("openai/") else model


def _field(obj: Any, key: str) -> Any:
    """``obj[key]`` for JSON dicts, ``obj.key`` for litellm's objects; None if absent."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _arguments(raw: Any) -> str:
    # Some servers (Ollama's OpenAI layer, for one) send an object, not JSON text.
    if raw is None:
        return ""
    return raw if isinstance(raw, str) else json.dumps(raw)


def _tool_call(index: int, call_id: Any, name: Any, arguments: str, provider: str) -> ToolCall:
    if not isinstance(name, str) or not name:
        raise ProviderError("provider sent a tool call without a name", provider=provider)
    # A call without an id (some servers omit it) still needs one to pair its result.
    return ToolCall(
        call_id if isinstance(call_id, str) and call_id else f"call_{index}", name, arguments
    )


def _tool_calls(raw: Any, provider: str) -> list[ToolCall]:
    """``message.tool_calls`` of a plain answer (JSON dicts or litellm objects)."""
    if not raw:
        return []
    if not isinstance(raw, list):
        raise ProviderError("provider sent tool_calls that are not a list", provider=provider)
    calls = []
    for i, item in enumerate(raw):
        fn = _field(item, "function")
        calls.append(
            _tool_call(
                i,
                _field(item, "id"),
                _field(fn, "name"),
                _arguments(_field(fn, "arguments")),
                provider,
            )
        )
    return calls


class _ToolCallParts:
    """Merges streamed ``delta.tool_calls`` pieces by ``index``: id and name come with
    a call's first piece (a repeat is ignored), ``arguments`` pieces are concatenated."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: Any) -> None:
        if not isinstance(deltas, list):
            raise ProviderError(
                "provider streamed tool_calls that are not a list", provider=self.provider
            )
        for delta in deltas:
            index = _field(delta, "index")
            if not isinstance(index, int):
                # No index (some servers): a new id starts a call, anything else continues
                # the last one.
                call_id = _field(delta, "id")
                known = {c["id"] for c in self._calls.values()}
                last = max(self._calls, default=-1)
                index = last + 1 if last < 0 or (call_id and call_id not in known) else last
            call = self._calls.setdefault(index, {"id": None, "name": None, "arguments": []})
            call["id"] = call["id"] or _field(delta, "id")
            fn = _field(delta, "function")
            call["name"] = call["name"] or _field(fn, "name")
            piece = _field(fn, "arguments")
            if piece:
                call["arguments"].append(_arguments(piece))

    def result(self) -> list[ToolCall]:
        """The merged calls in index order; ProviderError for a call without a name."""
        return [
            _tool_call(i, c["id"], c["name"], "".join(c["arguments"]), self.provider)
            for i, c in sorted(self._calls.items())
        ]


def _result_from_json(data: Any, provider: str) -> ChatResult:
    try:
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ProviderError(
            "provider answered without choices[0].message", provider=provider
        ) from None
    if not isinstance(content, str):
        raise ProviderError("provider answered with non-text content", provider=provider)
    usage = data.get("usage") or {}
    return ChatResult(
        content,
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        tool_calls=_tool_calls(choice["message"].get("tool_calls"), provider),
        finish_reason=choice.get("finish_reason"),
    )


_litellm: Any = None


def _import_litellm() -> Any:
    """Import litellm once, offline (FIELD_NOTES: it fetches a cost map at import)."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        _litellm = litellm
    return _litellm


class LiteLLMTransport:
    """Any litellm model string. Import of litellm is deferred to the first call (~3 s)."""

    def __init__(self, cfg: ProviderConfig) -> None:
        self.cfg = cfg

    async def close(self) -> None:
        return None

    def _kwargs(
        self,
        messages: list[dict[str, Any]],
        stream: bool,
        tools: list[dict[str, Any]] | None,
        model: str | None,
    ) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "model": model or self.cfg.model,
            "messages": messages,
            "stream": stream,
            "timeout": self.cfg.timeout_s,
            "max_retries": 0,
            "num_retries": 0,
        }
        if self.cfg.api_base:
            kw["api_base"] = self.cfg.api_base
        if self.cfg.api_key:
            kw["api_key"] = self.cfg.api_key.get_secret_value()
        kw.update(_body_params(self.cfg, tools))
        if tools:
            # litellm (1.106) checks any tools for its MCP-gateway kind, importing the
            # optional `mcp` package it lacks here; ours are plain functions, so skip it.
            kw["_skip_mcp_handler"] = True
        return kw

    def _map(self, exc: Exception) -> ProviderError:
        litellm = _import_litellm()
        status = getattr(exc, "status_code", None)
        retry_after = None
        for headers in (
            getattr(exc, "litellm_response_headers", None),
            getattr(getattr(exc, "response", None), "headers", None),
        ):
            if headers is not None and headers.get("retry-after") is not None:
                retry_after = parse_retry_after(headers.get("retry-after"))
                break
        msg = f"{type(exc).__name__}: {str(exc)[:300]}"
        if isinstance(status, int):
            msg = f"HTTP {status}: {msg}"
        retryable_types = (
            litellm.RateLimitError,
            litellm.InternalServerError,
            litellm.ServiceUnavailableError,
            litellm.APIConnectionError,
            litellm.Timeout,
            litellm.BadGatewayError,
        )
        if isinstance(exc, retryable_types) or status in RETRYABLE_STATUS:
            return ProviderRetryableError(msg, retry_after, provider=self.cfg.id)
        return ProviderError(msg, provider=self.cfg.id)

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        model: str | None = None,
    ) -> ChatResult:
        litellm = await asyncio.to_thread(_import_litellm)
        try:
            resp = await litellm.acompletion(**self._kwargs(messages, False, tools, model))
        except Exception as exc:  # litellm raises its own tree; map it at the seam
            raise self._map(exc) from None
        return _result_from_json(resp.model_dump(), self.cfg.id)

    async def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        model: str | None = None,
    ) -> AsyncIterator[str | ChatResult]:
        litellm = await asyncio.to_thread(_import_litellm)
        calls = _ToolCallParts(self.cfg.id)
        finish_reason: str | None = None
        usage: Any = None
        try:
            resp = await litellm.acompletion(**self._kwargs(messages, True, tools, model))
            async for chunk in resp:
                usage = getattr(chunk, "usage", None) or usage
                for choice in chunk.choices or ():
                    delta = choice.delta
                    if getattr(delta, "tool_calls", None):
                        calls.add(list(delta.tool_calls))
                    finish_reason = getattr(choice, "finish_reason", None) or finish_reason
                    piece = getattr(delta, "content", None)
                    if piece:
                        yield piece
        except ProviderError:
            raise
        except Exception as exc:
            raise self._map(exc) from None
        yield ChatResult(
            "",
            int(_field(usage, "prompt_tokens") or 0),
            int(_field(usage, "completion_tokens") or 0),
            tool_calls=calls.result(),
            finish_reason=finish_reason,
        )


def make_transport(cfg: ProviderConfig) -> Transport:
    """Pick the transport: ``auto`` uses native for ``openai/*`` with an ``api_base``."""
    kind = cfg.transport
    if kind == "auto":
        kind = "native" if cfg.model.startswith("openai/") and cfg.api_base else "litellm"
    if kind == "native":
        return NativeOpenAITransport(cfg)
    return LiteLLMTransport(cfg)
