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
    "Transport",
    "make_transport",
    "parse_retry_after",
]

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


@dataclass
class ChatResult:
    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Transport(Protocol):
    """One provider's wire. ``stream`` yields text pieces; its last item may be a
    ``ChatResult`` carrying usage. Implementations own their connections."""

    async def complete(self, messages: list[dict[str, Any]]) -> ChatResult: ...

    def stream(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ChatResult]: ...

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


def _body_params(cfg: ProviderConfig) -> dict[str, Any]:
    params: dict[str, Any] = {}
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
        self.model = cfg.model.split("/", 1)[1] if cfg.model.startswith("openai/") else cfg.model
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

    def _payload(self, messages: list[dict[str, Any]], stream: bool) -> bytes:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": stream}
        body.update(_body_params(self.cfg))
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

    async def complete(self, messages: list[dict[str, Any]]) -> ChatResult:
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        try:
            async with self._http().post(
                self.url, data=self._payload(messages, False), timeout=timeout
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

    async def stream(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ChatResult]:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_read=self.cfg.timeout_s, sock_connect=self.cfg.timeout_s
        )
        usage: dict[str, Any] = {}
        try:
            async with self._http().post(
                self.url, data=self._payload(messages, True), timeout=timeout
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
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            yield piece
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderRetryableError(
                f"connection failed: {type(exc).__name__}: {exc}", provider=self.cfg.id
            ) from None
        yield ChatResult("", usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))


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
        content, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
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

    def _kwargs(self, messages: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "model": self.cfg.model,
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
        kw.update(_body_params(self.cfg))
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

    async def complete(self, messages: list[dict[str, Any]]) -> ChatResult:
        litellm = await asyncio.to_thread(_import_litellm)
        try:
            resp = await litellm.acompletion(**self._kwargs(messages, False))
        except Exception as exc:  # litellm raises its own tree; map it at the seam
            raise self._map(exc) from None
        return _result_from_json(resp.model_dump(), self.cfg.id)

    async def stream(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ChatResult]:
        litellm = await asyncio.to_thread(_import_litellm)
        try:
            resp = await litellm.acompletion(**self._kwargs(messages, True))
            async for chunk in resp:
                for choice in chunk.choices or ():
                    piece = getattr(choice.delta, "content", None)
                    if piece:
                        yield piece
        except Exception as exc:
            raise self._map(exc) from None
        yield ChatResult("")


def make_transport(cfg: ProviderConfig) -> Transport:
    """Pick the transport: ``auto`` uses native for ``openai/*`` with an ``api_base``."""
    kind = cfg.transport
    if kind == "auto":
        kind = "native" if cfg.model.startswith("openai/") and cfg.api_base else "litellm"
    if kind == "native":
        return NativeOpenAITransport(cfg)
    return LiteLLMTransport(cfg)
