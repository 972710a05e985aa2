"""The Dashboard actor ("dashboard"): serves the web console (``dashboard.app``) on
``dashboard.host:port`` and answers it from the tree, by handle.

    browser ══ HTTPS/WS ══► Dashboard (uvicorn on this actor's loop)
                               ├─ chat ──────────► HostRouter ─► session hosts
                               ├─ status, plugins ► Supervisor / a session host
                               ├─ config edits ──► the YAML file, then Supervisor.apply_config
                               ├─ knowledge ─────► KnowledgeService
                               └─ logs ◄───────── every actor's LogShipper (actors/logship.py)

The login state lives in the store (``astr_ray.auth``), so a restarted dashboard keeps
its users logged in. It samples the tree's metrics every few seconds into short
series for the metrics page. Placed with the control actors (the head node).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ray
import uvicorn

from actors.common import SUPERVISOR, get_actor, node_id, setup_logging
from actors.logship import DASHBOARD, ship_logs
from actors.router import HostRouter
from actors.tree_client import TreeClient
from actors.web import serve, shut_down
from astr_ray.auth import Auth
from astr_ray.config import Config, parse_config
from astr_ray.config_edit import ConfigFile
from astr_ray.lifecycle import Lifecycle
from astr_ray.logbook import LogBook
from astr_ray.message import Event, Reply
from astr_ray.metrics import Metrics, Snapshot
from astr_ray.store import Store

__all__ = ["DASHBOARD", "Dashboard"]

log = logging.getLogger(__name__)

SERIES_KEEP = 120  # points per series: 10 minutes at the 5 s sampling interval


@ray.remote
class Dashboard(TreeClient):
    def __init__(self, config: dict[str, Any]) -> None:
        setup_logging(DASHBOARD)
        self.cfg: Config = parse_config(config)
        ship_logs(DASHBOARD, self.cfg.runtime.namespace)
        self.lifecycle = Lifecycle(DASHBOARD, self._on_start, self._on_stop)
        self._health: tuple[float, dict[str, Any]] = (0.0, {})
        self.logbook = LogBook()
        self.metrics = Metrics()
        self.series: dict[str, deque[tuple[float, float]]] = {}
        self.sample_interval_s = 5.0
        self._server: uvicorn.Server | None = None
        self._serve: asyncio.Task[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._last_counts: dict[str, float] = {}
        self.started_at = time.time()

    async def start(self) -> dict[str, Any]:
        await self.lifecycle.start()
        return await self.ping()

    async def _on_start(self) -> None:
        from dashboard.app import create_app

        self.store = await Store.open(self.cfg.store_url)
        self.auth = Auth(self.store)
        path = self.cfg.runtime.config_file
        self.config_file: ConfigFile | None = ConfigFile(Path(path)) if path else None
        self.router = HostRouter.for_config(self.cfg)
        cfg = self.cfg.dashboard
        self._server, self._serve = await serve(create_app(self), cfg.host, cfg.port)
        self._sampler = asyncio.create_task(self._sample_forever())
        log.info("dashboard on http://%s:%d", self.cfg.dashboard.host, self.cfg.dashboard.port)

    async def _on_stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        await shut_down(self._server, self._serve)
        await self.store.close()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def ping(self) -> dict[str, Any]:
        if self.lifecycle.state.value == "new":
            await self.lifecycle.ensure_started()  # Ray restarted this process
        return {
            "pid": os.getpid(),
            "node_id": node_id(),
            "state": self.lifecycle.state.value,
            "port": self.cfg.dashboard.port,
            "started_at": self.started_at,
        }

    # -- logs (from every actor's LogShipper) ---------------------------------------------
    def logs(self, batch: list[dict[str, Any]]) -> None:
        self.logbook.add(batch)

    # -- chat --------------------------------------------------------------------------
    async def send(self, event: Event) -> Reply:
        self.metrics.messages.labels("dashboard", "in").inc()
        reply = await self.router.send(event)
        self.metrics.messages.labels("dashboard", "out").inc()
        return reply

    async def stream(self, event: Event) -> AsyncIterator[dict[str, Any]]:
        self.metrics.messages.labels("dashboard", "in").inc()
        async for item in self.router.stream(event):
            if "reply" in item:
                self.metrics.messages.labels("dashboard", "out").inc()
            yield item

    def metrics_snapshot(self) -> Snapshot:
        return self.metrics.snapshot()

    # -- the tree ------------------------------------------------------------------------
    async def supervisor(self, method: str, *args: Any, within: float = 30) -> Any:
        sup = get_actor(SUPERVISOR, self.cfg.runtime.namespace)
        return await asyncio.wait_for(getattr(sup, method).remote(*args), within)

    async def any_host(self, method: str, *args: Any, within: float = 15) -> Any:
        """Ask one session host (they all load the same plugins and config)."""
        status = await self.supervisor("status")
        for actor in status["actors"]:
            if actor["kind"] == "session_host" and actor["state"] == "alive":
                host = get_actor(actor["name"], self.cfg.runtime.namespace)
                return await asyncio.wait_for(getattr(host, method).remote(*args), within)
        raise RuntimeError("no session host is running")

    async def every_host(self, method: str, *args: Any, within: float = 30) -> list[Any]:
        """``method`` on every live session host; failures come back as exceptions."""
        status = await self.supervisor("status")
        hosts = [
            get_actor(a["name"], self.cfg.runtime.namespace)
            for a in status["actors"]
            if a["kind"] == "session_host" and a["state"] == "alive"
        ]
        return await asyncio.gather(
            *(asyncio.wait_for(getattr(h, method).remote(*args), within) for h in hosts),
            return_exceptions=True,
        )

    async def apply(self, cfg: Config) -> dict[str, Any]:
        """The Supervisor brings the tree in line with an edited config; the dashboard
        itself takes the new config for what it reads (providers to test, personas)."""
        self.cfg = cfg.model_copy(
            update={"runtime": cfg.runtime.model_copy(update=self._runtime_kept())}
        )
        result: dict[str, Any] = await self.supervisor(
            "apply_config", self.cfg.to_transport(), within=120
        )
        return result

    def _runtime_kept(self) -> dict[str, Any]:
        return {"config_file": self.cfg.runtime.config_file}

    # -- metrics series ------------------------------------------------------------------
    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sample_interval_s)
            try:
                snapshots = await self.supervisor("metrics", within=10)
                self._record(time.time(), snapshots)
            except Exception as exc:
                log.debug("metrics sample failed: %s", exc)

    def _record(self, now: float, snapshots: dict[str, Any]) -> None:
        from dashboard.metrics import summarize

        points, self._last_counts = summarize(snapshots, self._last_counts, self.sample_interval_s)
        for name, value in points.items():
            self.series.setdefault(name, deque(maxlen=SERIES_KEEP)).append((now, value))
