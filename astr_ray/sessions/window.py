"""Token counting and the context window: keep every request inside what the model
accepts.

Counting is exact where it matters and cheap where it does not: a byte-based estimate
(UTF-8 bytes / 3, which over-counts English and stays close for CJK) decides whether a
request could be near the limit at all; only then are tokens counted with the model's
tokenizer through litellm (tiktoken for OpenAI models, litellm's bundled tokenizers
for others; both offline). The window is the provider's ``context_window``, else what
litellm's bundled model map says (read as JSON, without importing litellm), else 8192.
litellm itself is imported lazily, in a thread, the first time a conversation gets
long enough to count exactly (~3 s of CPU once per process; short requests never pay
it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astr_ray.config import AgentConfig, ProviderConfig
from astr_ray.providers.transport import _import_litellm

__all__ = ["Budget", "TokenCounter", "estimate"]

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 8192
MODEL_MAP = "model_prices_and_context_window_backup.json"
ASSUMED_MIN_WINDOW = 4096  # no chat model worth configuring has a smaller one


def estimate(messages: list[dict[str, Any]]) -> int:
    """A cheap token estimate of a request, on the high side for most text."""
    total = 0
    for m in messages:
        content = m.get("content") or ""
        if not isinstance(content, str):
            content = json.dumps(content)
        total += len(content.encode()) // 3 + 4
        if m.get("tool_calls"):
            total += len(json.dumps(m["tool_calls"]).encode()) // 3
    return total + 3


@dataclass(frozen=True)
class Budget:
    window: int
    limit: int  # what a request may use: min(window * compress_at, window - reserve)


class TokenCounter:
    """Counts a request's tokens for a provider's model; caches model windows."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self._windows: dict[str, int] = {}

    async def budget(self, provider: ProviderConfig, estimated: int) -> Budget:
        """The window and limit for ``provider``'s model. A request ``estimated`` far
        below any chat model's window (``ASSUMED_MIN_WINDOW``) does not need the real
        figure, so litellm is not even imported for it."""
        window = provider.context_window
        if window is None:
            known = self._windows.get(provider.model)
            if known is None and estimated < ASSUMED_MIN_WINDOW // 4:
                window = ASSUMED_MIN_WINDOW
            else:
                window = known or await self._known_window(provider.model)
        limit = min(int(window * self.cfg.compress_at), window - self.cfg.reply_reserve_tokens)
        return Budget(window, max(limit, window // 4))

    async def _known_window(self, model: str) -> int:
        if model not in self._windows:
            self._windows[model] = await asyncio.to_thread(_lookup_window, model)
        return self._windows[model]

    async def count(self, model: str, messages: list[dict[str, Any]], limit: int) -> int:
        """Tokens of ``messages``; exact when the estimate is within reach of ``limit``."""
        est = estimate(messages)
        if est < limit // 2:
            return est
        try:
            return await asyncio.to_thread(_exact, model, messages)
        except Exception as exc:  # an unknown tokenizer: the estimate is all we have
            log.warning("token counting for %s failed (%s); using the estimate", model, exc)
            return est


_WINDOWS: dict[str, Any] | None = None


def _lookup_window(model: str) -> int:
    """The model's input window from litellm's bundled model map, read as JSON: the
    window is known without importing litellm (~3 s of CPU)."""
    global _WINDOWS
    if _WINDOWS is None:
        _WINDOWS = _read_model_map()
    for name in (model, model.split("/", 1)[-1]):
        info = _WINDOWS.get(name)
        if isinstance(info, dict):
            return int(info.get("max_input_tokens") or info.get("max_tokens") or DEFAULT_WINDOW)
    return DEFAULT_WINDOW


def _read_model_map() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")  # finds the package, does not import it
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations)), MODEL_MAP)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("cannot read litellm's model map %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _exact(model: str, messages: list[dict[str, Any]]) -> int:
    litellm = _import_litellm()
    return int(litellm.token_counter(model=model, messages=messages))
