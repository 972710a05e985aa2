"""PlatformAdapter actor: one chat account (QQ, Telegram, Discord, Slack) bridged to
the session hosts.

    platform ══► Bridge (astr_ray.platforms.<type>) ─► HostRouter ─► session hosts
                   ◄── send / edit (the reply) ───────────┘

The bridge holds the platform connection, turns traffic into ``Event``s under the
group wake rules, and sends each reply back (streamed by edits where the platform and
``stream`` allow). This shell only routes: each woken message goes to the session host
that owns it. The platform's message id is the idempotency key, so a message delivered
again after a reconnect is answered once. Placed with the ``adapters`` resource (the
node with the network route); Ray restarts it elsewhere if that node goes, and the
bridge reconnects. Hosts that need the bytes of an incoming voice message (to
transcribe it) ask the account's adapter: ``fetch_media`` (the bridge holds the
credentials and knows the platform's file ids).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import ray

from actors.common import RayMetricsMirror, node_id, setup_logging
from actors.logship import ship_logs
from actors.router import HostRouter
from astr_ray.config import Config, PlatformConfig, parse_config
from astr_ray.errors import PlatformError
from astr_ray.lifecycle import Lifecycle
from astr_ray.message import Event, Reply
from astr_ray.metrics import Metrics, Snapshot
from astr_ray.platforms import make_bridge
from astr_ray.platforms.base import media_component

log = logging.getLogger(__name__)


@ray.remote
class PlatformAdapter:
    def __init__(self, platform_id: str, config: dict[str, Any]) -> None:
        self.name = f"adapter-{platform_id}"
        setup_logging(self.name)
        self.cfg: Config = parse_config(config)
        ship_logs(self.name, self.cfg.runtime.namespace)
        found = [p for p in self.cfg.platforms if p.id == platform_id]
        if not found:
            raise PlatformError(f"no platform {platform_id!r} in the config")
        self.platform: PlatformConfig = found[0]
        self.lifecycle = Lifecycle(self.name, self._on_start, self._on_stop)
        self.metrics = Metrics()
        self._mirror = RayMetricsMirror(self.name)
        self.started_at = time.time()

    async def start(self) -> dict[str, Any]:
        await self.lifecycle.start()
        return await self.ping()

    async def _on_start(self) -> None:
        self.router = HostRouter.for_config(self.cfg)
        self.bridge = make_bridge(
            self.platform,
            self._on_message,
            on_stream=self._on_stream,
            metrics_hook=self._on_happening,
        )
        await self.bridge.start()
        log.info("%s account %s up", self.platform.type, self.platform.id)

    async def _on_message(self, event: Event) -> Reply | None:
        self.metrics.messages.labels(self.platform.id, "in").inc()
        reply = await self.router.send(event)
        if reply.text or len(reply.components) > 1:
            self.metrics.messages.labels(self.platform.id, "out").inc()
        return reply

    async def _on_stream(self, event: Event) -> AsyncIterator[dict[str, Any]]:
        self.metrics.messages.labels(self.platform.id, "in").inc()
        async for item in self.router.stream(event):
            if "reply" in item:
                reply = item["reply"]
                if reply.text or len(reply.components) > 1:
                    self.metrics.messages.labels(self.platform.id, "out").inc()
            yield item

    def _on_happening(self, what: str) -> None:
        if what in ("malformed", "send_failure", "rate_limited", "reconnect"):
            self.metrics.errors.labels(self.name, what).inc()

    async def _on_stop(self) -> None:
        await self.bridge.stop()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def push(self, session_key: str, text: str) -> None:
        """A message the bot sends on its own (a plugin's ``ctx.send``)."""
        await self.lifecycle.ensure_started()
        await self.bridge.push(session_key, text)
        self.metrics.messages.labels(self.platform.id, "out").inc()

    async def fetch_media(self, component: dict[str, Any], max_bytes: int) -> dict[str, Any]:
        """The bytes of an incoming media component (a ``Voice``, ``Image`` or ``File``
        as its dict) of this account: ``{"data": bytes, "mime": str | None}``. At most
        ``max_bytes`` are read. Raises ``MessageFormatError`` for a dict that is no
        media component and ``PlatformError`` when the bytes cannot be had (see
        ``Bridge.fetch_media``)."""
        await self.lifecycle.ensure_started()
        comp = media_component(component)
        data, mime = await self.bridge.fetch_media(comp, max_bytes)
        return {"data": data, "mime": mime}

    async def ping(self) -> dict[str, Any]:
        if self.lifecycle.state.value == "new":
            await self.lifecycle.ensure_started()  # Ray restarted this process
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "node_id": node_id(),
            "state": self.lifecycle.state.value,
            "platform": self.platform.type,
            "mode": getattr(self.platform, "mode", None),
            "started_at": self.started_at,
        }
        if hasattr(self, "bridge"):
            info.update(self.bridge.stats())
            info["port"] = getattr(self.bridge, "port", None)
        return info

    def metrics_snapshot(self) -> Snapshot:
        self._mirror.update(self.metrics.snapshot())
        return self.metrics.snapshot()
