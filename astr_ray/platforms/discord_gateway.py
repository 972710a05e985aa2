"""discord.py's client as the Discord bridge uses it: one seam, its events as callbacks.

    GatewayClient ── READY / RESUMED ──► hooks.session_up(resumed)
                  ── disconnect ───────► hooks.session_lost()
                  ── MESSAGE_CREATE ───► hooks.message(discord.Message)
                  ── REST answered 429 ► hooks.rate_limited(retry_after)   (aiohttp trace)
                  ── a dispatch its parser cannot read ► hooks.malformed(why, payload)

discord.py's dispatch parsers are wrapped: one that raises on a payload (a
MESSAGE_CREATE without its fields...) would otherwise end the client's gateway loop.

``use_server(api_base)`` points discord.py's REST at another server (``Route.BASE``),
and ``follow_server_gateway()`` its gateway at the URL that server's ``GET
/gateway/bot`` gives. Both set class attributes of discord.py: process-wide, which is
fine as each account runs in its own adapter actor process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
import yarl

with warnings.catch_warnings():
    # discord.py imports audioop for voice (deprecated since 3.11); voice is not used.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import discord
    from discord.gateway import DiscordWebSocket

__all__ = ["GatewayClient", "GatewayHooks", "discord", "use_server"]


@dataclass(frozen=True)
class GatewayHooks:
    session_up: Callable[[bool], None]  # argument: resumed
    session_lost: Callable[[], None]
    message: Callable[[discord.Message], None]
    rate_limited: Callable[[str | None], None]  # argument: the Retry-After header
    malformed: Callable[[str, Any], None]


def use_server(api_base: str) -> None:
    """Send discord.py's REST calls to ``api_base`` (e.g. ``http://host:port/api/v10``)."""
    discord.http.Route.BASE = api_base.rstrip("/")


def _intents() -> discord.Intents:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = True
    intents.message_content = True
    return intents


class GatewayClient(discord.Client):
    """A ``discord.Client`` with the intents the bridge needs (guilds, guild and DM
    messages, message content), no message cache, and outgoing mentions that can never
    ping @everyone or roles (the LLM's words go out as they are)."""

    def __init__(self, hooks: GatewayHooks) -> None:
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._on_request_end)
        super().__init__(
            intents=_intents(),
            http_trace=trace,
            max_messages=None,
            chunk_guilds_at_startup=False,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False),
        )
        self.hooks = hooks
        parsers: dict[str, Callable[[Any], None]] = self._connection.parsers
        for name, parse in list(parsers.items()):
            parsers[name] = self._guarded(name, parse)

    async def follow_server_gateway(self) -> None:
        """Use the gateway URL the REST server names (``GET /gateway/bot``)."""
        _, url, _ = await self.http.get_bot_gateway()
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)

    def _guarded(self, name: str, parse: Callable[[Any], None]) -> Callable[[Any], None]:
        def guarded(data: Any) -> None:
            try:
                parse(data)
            except Exception as exc:
                self.hooks.malformed(f"{name}: {type(exc).__name__}: {exc}", data)

        return guarded

    async def _on_request_end(
        self,
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        if params.response.status == 429:
            self.hooks.rate_limited(params.response.headers.get("Retry-After"))

    async def on_connect(self) -> None:
        self.hooks.session_up(False)

    async def on_resumed(self) -> None:
        self.hooks.session_up(True)

    async def on_disconnect(self) -> None:
        self.hooks.session_lost()

    async def on_message(self, message: discord.Message) -> None:
        self.hooks.message(message)
