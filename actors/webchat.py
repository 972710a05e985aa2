"""WebChatAdapter actor: serves the web chat app (uvicorn) and routes its messages.

The app runs on this actor's event loop; each message goes through the ``HostRouter``
to the SessionHost that owns its session, and the host's return value is the reply.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import ray
import uvicorn

from actors.common import (
    RayMetricsMirror,
    node_id,
    setup_logging,
)
from actors.logship import ship_logs
from actors.router import HostRouter
from actors.tree_client import TreeClient
from actors.web import serve, shut_down
from astr_ray.config import Config, parse_config
from astr_ray.lifecycle import Lifecycle
from astr_ray.message import Event, Reply, parse_session_key
from astr_ray.metrics import Metrics, Snapshot
from dashboard.webchat import Outbox, create_app

log = logging.getLogger(__name__)


@ray.remote
class WebChatAdapter(TreeClient):
    def __init__(self, config: dict[str, Any]) -> None:
        setup_logging("adapter-webchat")
        self.cfg: Config = parse_config(config)
        ship_logs("adapter-webchat", self.cfg.runtime.namespace)
        self.lifecycle = Lifecycle("adapter-webchat", self._on_start, self._on_stop)
        self._server: uvicorn.Server | None = None
        self._serve: asyncio.Task[None] | None = None
        self._health: tuple[float, dict[str, Any]] = (0.0, {})
        self.messages = 0
        self.metrics = Metrics()
        self._mirror = RayMetricsMirror("adapter-webchat")
        self._mirror_task: asyncio.Task[None] | None = None
        self.outbox = Outbox()

    async def start(self) -> dict[str, Any]:
        await self.lifecycle.start()
        return await self.ping()

    async def _on_start(self) -> None:
        self.router = HostRouter.for_config(self.cfg)
        token = self.cfg.webchat.token.get_secret_value() if self.cfg.webchat.token else ""
        app = create_app(
            self,
            token,
            max_chars=self.cfg.webchat.max_message_chars,
            max_upload=int(self.cfg.knowledge.max_document_mb * 1024 * 1024),
        )
        self._server, self._serve = await serve(app, self.cfg.webchat.host, self.cfg.webchat.port)
        self._mirror_task = asyncio.create_task(self._mirror_forever())
        log.info("web chat on http://%s:%d", self.cfg.webchat.host, self.cfg.webchat.port)

    async def _on_stop(self) -> None:
        await shut_down(self._server, self._serve)

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def ping(self) -> dict[str, Any]:
        if self.lifecycle.state.value == "new":
            # Ray restarted this process: bring the server back without the supervisor.
            await self.lifecycle.ensure_started()
        return {
            "pid": os.getpid(),
            "node_id": node_id(),
            "state": self.lifecycle.state.value,
            "port": self.cfg.webchat.port,
            "messages": self.messages,
            "batches": getattr(getattr(self, "router", None), "batches", 0),
            "retries": getattr(getattr(self, "router", None), "retries", 0),
        }

    # -- ChatBackend ------------------------------------------------------------------
    async def send(self, event: Event) -> Reply:
        self._count("in")
        reply = await self.router.send(event)
        self._count("out")
        return reply

    async def stream(self, event: Event) -> AsyncIterator[dict[str, Any]]:
        self._count("in")
        async for item in self.router.stream(event):
            if "reply" in item:
                self._count("out")
            yield item

    async def push(self, session_key: str, text: str) -> None:
        """A message the bot sends on its own (a plugin's ``ctx.send``)."""
        platform, _, chat_id = parse_session_key(session_key)
        if platform != "webchat":
            raise ValueError(f"not a web chat session: {session_key}")
        await self.outbox.push(chat_id, text)
        self._count("out")

    def _count(self, direction: str) -> None:
        if direction == "in":
            self.messages += 1
        self.metrics.messages.labels("webchat", direction).inc()

    def metrics_snapshot(self) -> Snapshot:
        return self.metrics.snapshot()

    async def _mirror_forever(self) -> None:
        while True:
            await asyncio.sleep(5)
            try:
                self._mirror.update(self.metrics.snapshot())
            except Exception:
                log.exception("mirroring metrics to Ray failed")
