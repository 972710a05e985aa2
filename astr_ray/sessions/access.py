"""Who may talk to the bot, and how fast: admins, allow-list, switches, rate limits,
a keyword filter.

Settings come from two places: the config (``access``), and the store (``settings``
rows that admins change with /op, /wl, /plugin off...). ``GlobalSettings`` caches the
store's global rows for ``ttl`` seconds, so a change made on one host reaches every
host within that time without a query per message; a change made here is seen at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from astr_ray.config import AccessConfig, RateLimitConfig

__all__ = ["GlobalSettings", "TokenBucket", "allowed", "blocked_word", "censor"]

GLOBAL = "global"


class GlobalSettings:
    """The store's global settings, cached for ``ttl`` seconds."""

    def __init__(
        self,
        load: Callable[[], Awaitable[dict[str, Any]]],
        save: Callable[[str, Any], Awaitable[None]],
        ttl: float = 2.0,
    ) -> None:
        self._load = load
        self._save = save
        self.ttl = ttl
        self._values: dict[str, Any] = {}
        self._at = -1e9
        self._lock = asyncio.Lock()

    async def get(self) -> dict[str, Any]:
        if time.monotonic() - self._at > self.ttl:
            async with self._lock:
                if time.monotonic() - self._at > self.ttl:
                    self._values = await self._load()
                    self._at = time.monotonic()
        return self._values

    async def set(self, key: str, value: Any) -> None:
        await self._save(key, value)
        self._values = (
            {**self._values, key: value}
            if value is not None
            else {k: v for k, v in self._values.items() if k != key}
        )

    async def list_value(self, key: str) -> list[str]:
        return list((await self.get()).get(key) or [])


def _match(key: str, patterns: list[str]) -> bool:
    return any(key == p or (p.endswith("*") and key.startswith(p[:-1])) for p in patterns)


def allowed(session_key: str, cfg: AccessConfig, extra: list[str]) -> bool:
    """Empty allow-lists (config and store) mean everyone is allowed."""
    patterns = [*cfg.allow, *extra]
    return not patterns or _match(session_key, patterns)


def blocked_word(text: str, words: list[str]) -> str | None:
    low = text.lower()
    for w in words:
        if w and w.lower() in low:
            return w
    return None


def censor(text: str, words: list[str]) -> str:
    """Replace blocked words (case-insensitive) with asterisks."""
    import re

    for w in words:
        if w:
            text = re.sub(re.escape(w), "*" * len(w), text, flags=re.IGNORECASE)
    return text


@dataclass
class TokenBucket:
    """``per_minute`` tokens a minute, at most ``burst`` saved up."""

    cfg: RateLimitConfig
    tokens: float = field(default=-1.0)
    at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = float(self.cfg.burst)

    def _refill(self, now: float) -> None:
        rate = (self.cfg.per_minute or 0) / 60
        self.tokens = min(float(self.cfg.burst), self.tokens + (now - self.at) * rate)
        self.at = now

    def take(self, now: float | None = None) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there is one."""
        now = time.monotonic() if now is None else now
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        rate = (self.cfg.per_minute or 0) / 60
        return (1 - self.tokens) / rate if rate > 0 else float("inf")
