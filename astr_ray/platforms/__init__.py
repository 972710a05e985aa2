"""Platform bridges: each turns one chat platform's protocol into ``Event``s for the
turn pipeline and sends its ``Reply``s back.

    OneBotBridge     QQ through a OneBot v11 implementation (NapCat, Lagrange...)
    TelegramBridge   Telegram, long polling or webhook (python-telegram-bot)
    DiscordBridge    Discord over the gateway (discord.py)
    SlackBridge      Slack, Socket Mode or the Events API (slack-sdk)

``make_bridge`` builds the one a platform config names; each platform's SDK is
imported only when an account of that type is configured.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from astr_ray.config import PlatformConfig
from astr_ray.platforms.base import Bridge, OnMessage, OnStream

__all__ = ["BRIDGES", "Bridge", "make_bridge"]

BRIDGES: dict[str, str] = {
    "onebot": "astr_ray.platforms.onebot:OneBotBridge",
    "telegram": "astr_ray.platforms.telegram:TelegramBridge",
    "discord": "astr_ray.platforms.discord:DiscordBridge",
    "slack": "astr_ray.platforms.slack:SlackBridge",
}


def make_bridge(
    cfg: PlatformConfig,
    on_message: OnMessage,
    *,
    on_stream: OnStream | None = None,
    metrics_hook: Callable[[str], None] | None = None,
) -> Bridge:
    """The bridge for ``cfg.type``, not started. ``on_stream`` is used by bridges that
    stream answers by editing (when ``cfg.stream``); the others call ``on_message``."""
    module, _, name = BRIDGES[cfg.type].partition(":")
    cls: Any = getattr(import_module(module), name)
    kwargs: dict[str, Any] = {"metrics_hook": metrics_hook}
    if cfg.type != "onebot":
        kwargs["on_stream"] = on_stream
    bridge: Bridge = cls(cfg, on_message, **kwargs)
    return bridge
