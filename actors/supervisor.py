"""Supervisor actor: reconciles the config (desired) with the live actors (actual).

    Supervisor (named, detached, max_restarts=-1)
     ├─ ShardDirectory
     ├─ ProviderPool x providers
     ├─ SessionHost x sessions.hosts
     └─ WebChatAdapter

Ray's ``max_restarts=-1`` is the first line: a killed child comes back by itself in
about a second (with its state lost; each child rebuilds from the store). The loop here
is the second line: every ``supervise_interval_s`` it pings each child; a new pid means
Ray restarted it (recorded as ``restarted``); a child that is gone for good
(``ActorDiedError``) is created again with exponential backoff (``recreated``). Every
event goes to the store's ``actor_events`` table, so the restart log survives the
Supervisor's own restarts. Children are detached so they outlive a Supervisor crash;
a restarted Supervisor re-attaches to them by name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

from actors.common import (
    DIRECTORY,
    WEBCHAT,
    RayMetricsMirror,
    child_options,
    host_name,
    pool_name,
    setup_logging,
)
from actors.directory import ShardDirectory
from actors.provider_pool import ProviderPool
from actors.session_host import SessionHost
from actors.webchat import WebChatAdapter
from astr_ray.config import Config, parse_config
from astr_ray.lifecycle import Lifecycle
from astr_ray.metrics import Metrics, Snapshot
from astr_ray.store import Store

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    kind: str
    factory: Any  # () -> ActorHandle (creates or re-attaches)
    handle: Any = None
    pid: int | None = None
    state: str = "starting"
    restarts: int = 0
    last_info: dict[str, Any] = field(default_factory=dict)
    last_error: str | None = None
    next_attempt: float = 0.0
    backoff: float = 0.0


@ray.remote
class Supervisor:
    def __init__(self, config: dict[str, Any]) -> None:
        setup_logging("supervisor")
        self.cfg: Config = parse_config(config)
        self.transport = self.cfg.to_transport()
        self.lifecycle = Lifecycle("supervisor", self._on_start, self._on_stop)
        self.children: dict[str, Child] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self.started_at = time.time()
        self._metrics = Metrics()
        self._mirror = RayMetricsMirror("supervisor")

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        """Create (or re-attach to) the whole tree and wait until every child answers."""
        await self.lifecycle.ensure_started()
        return await self.status()

    async def _on_start(self) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = await Store.open(self.cfg.store_url)
        await self.store.migrate()
        ns = self.cfg.runtime.namespace
        cfg = self.transport
        hosts = [host_name(i) for i in range(self.cfg.sessions.hosts)]
        specs: list[tuple[str, str, Any]] = [
            (
                DIRECTORY,
                "directory",
                lambda: ShardDirectory.options(**child_options(DIRECTORY, ns)).remote(  # type: ignore[attr-defined]
                    self.cfg.sessions.shards, hosts
                ),
            )
        ]
        for p in cfg["providers"]:
            if p["enabled"]:
                name = pool_name(p["id"])
                specs.append(
                    (
                        name,
                        "provider_pool",
                        _bind(
                            lambda p, name: ProviderPool.options(**child_options(name, ns)).remote(  # type: ignore[attr-defined]
                                p
                            ),
                            p,
                            name,
                        ),
                    )
                )
        for h in hosts:
            specs.append(
                (
                    h,
                    "session_host",
                    _bind(
                        lambda h: SessionHost.options(  # type: ignore[attr-defined]
                            **child_options(h, ns, max_concurrency=100_000)
                        ).remote(h, cfg),
                        h,
                    ),
                )
            )
        if self.cfg.webchat.enabled:
            specs.append(
                (
                    WEBCHAT,
                    "adapter",
                    lambda: WebChatAdapter.options(  # type: ignore[attr-defined]
                        **child_options(WEBCHAT, ns, max_concurrency=100_000)
                    ).remote(cfg),
                )
            )
        for name, kind, factory in specs:
            self.children[name] = Child(name, kind, factory)
        # Start in order (directory and pools before the hosts that call them).
        attached = 0
        for child in self.children.values():
            child.handle = child.factory()
            info, fresh = await self._call_start(child)
            child.pid, child.state, child.last_info = info.get("pid"), "alive", info
            attached += not fresh
            await self._event(
                child,
                "started" if fresh else "attached",
                "created by the supervisor" if fresh else "re-attached to the running actor",
            )
        if attached:
            # Only a restarted supervisor finds its children running already.
            await self._record(
                "supervisor", "restarted", f"re-attached to {attached} running actors", os.getpid()
            )
        self._loop_task = asyncio.create_task(self._reconcile_forever())

    async def _call_start(self, child: Child) -> tuple[dict[str, Any], bool]:
        """Start the child; ``fresh`` is False when it was running already (re-attach)."""
        fresh = True
        if child.kind in ("session_host", "adapter"):
            try:
                await child.handle.start.remote()
            except RayActorError:
                raise
            except Exception as exc:
                if "already started" not in str(exc):
                    raise
                fresh = False
        info: dict[str, Any] = await asyncio.wait_for(child.handle.ping.remote(), 60)
        return info, fresh

    async def _on_stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        for child in reversed(list(self.children.values())):
            if child.handle is None:
                continue
            try:
                if child.kind in ("session_host", "adapter"):
                    await asyncio.wait_for(child.handle.stop.remote(), 15)
            except Exception as exc:
                log.warning("stopping %s: %s", child.name, exc)
            ray.kill(child.handle, no_restart=True)
            child.state = "stopped"
        await self.store.close()

    async def shutdown(self) -> None:
        """Stop every child in reverse start order (draining hosts first)."""
        await self.lifecycle.stop()

    # -- reconcile ----------------------------------------------------------------------
    async def _reconcile_forever(self) -> None:
        interval = self.cfg.runtime.supervise_interval_s
        while True:
            try:
                await asyncio.gather(*(self._check(c) for c in self.children.values()))
            except Exception:
                log.exception("reconcile pass failed")
            await asyncio.sleep(interval)

    async def _check(self, child: Child) -> None:
        now = time.monotonic()
        if child.state == "dead":
            if now >= child.next_attempt:
                await self._recreate(child)
            return
        try:
            info = await asyncio.wait_for(child.handle.ping.remote(), timeout=5)
        except ActorDiedError as exc:
            child.state = "dead"
            child.last_error = _first_line(exc)
            child.backoff = self.cfg.runtime.restart_backoff_s
            child.next_attempt = now
            await self._event(child, "died", child.last_error)
            return
        except (RayActorError, TimeoutError, GetTimeoutError) as exc:
            child.state = "restarting"  # Ray is bringing it back
            child.last_error = _first_line(exc)
            return
        except Exception as exc:
            child.state = "unhealthy"
            child.last_error = _first_line(exc)
            return
        pid = info.get("pid")
        if child.pid is not None and pid != child.pid:
            child.restarts += 1
            await self._event(
                child, "restarted", f"process {child.pid} exited; Ray restarted it as {pid}", pid
            )
        child.pid, child.state, child.last_info = pid, "alive", info
        child.backoff = 0.0

    async def _recreate(self, child: Child) -> None:
        try:
            child.handle = child.factory()
            info, _ = await self._call_start(child)
        except Exception as exc:
            child.last_error = _first_line(exc)
            child.backoff = min(
                max(child.backoff * 2, self.cfg.runtime.restart_backoff_s),
                self.cfg.runtime.restart_backoff_max_s,
            )
            child.next_attempt = time.monotonic() + child.backoff
            log.error(
                "recreating %s failed (next try in %.1fs): %s",
                child.name,
                child.backoff,
                child.last_error,
            )
            return
        child.restarts += 1
        child.pid, child.state, child.last_info = info.get("pid"), "alive", info
        await self._event(child, "recreated", f"was dead: {child.last_error}", child.pid)

    async def _event(self, child: Child, kind: str, reason: str, pid: int | None = None) -> None:
        if kind in ("restarted", "recreated", "died"):
            self._metrics.restarts.labels(child.name, kind).inc()
        await self._record(child.name, kind, reason, pid or child.pid)

    async def _record(self, actor: str, kind: str, reason: str, pid: int | None) -> None:
        log.info("%s %s: %s", actor, kind, reason)
        try:
            await self.store.record_actor_event(actor, kind, reason, pid)
        except Exception:
            log.exception("could not record actor event for %s", actor)

    # -- queries ------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        if self.lifecycle.state.value in ("new", "failed"):
            # Ray restarted this process: re-attach to the tree before answering.
            try:
                await self.lifecycle.ensure_started()
            except Exception as exc:
                return {"ok": False, "state": "failed", "error": _first_line(exc)}
        states = {name: c.state for name, c in self.children.items()}
        ok = self.lifecycle.state.value == "running" and all(s == "alive" for s in states.values())
        return {"ok": ok, "state": self.lifecycle.state.value, "actors": states}

    async def status(self) -> dict[str, Any]:
        """Actors with state, pid, restarts and their own figures; the restart log."""
        await self.lifecycle.ensure_started()
        events = await self.store.list_actor_events(limit=50)
        return {
            "ok": (await self.health())["ok"],
            "supervisor": {"pid": os.getpid(), "started_at": self.started_at},
            "namespace": self.cfg.runtime.namespace,
            "actors": [
                {
                    "name": c.name,
                    "kind": c.kind,
                    "state": c.state,
                    "pid": c.pid,
                    "restarts": c.restarts,
                    "last_error": c.last_error,
                    "info": c.last_info,
                }
                for c in self.children.values()
            ],
            "restart_log": [
                {
                    "actor": e.actor,
                    "kind": e.kind,
                    "reason": e.reason,
                    "pid": e.pid,
                    "time": e.created_at,
                }
                for e in events
                if e.kind != "started"
            ],
        }

    async def ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "state": self.lifecycle.state.value}

    async def metrics(self) -> dict[str, Snapshot]:
        """Every actor's metrics snapshot, by actor name (children that do not answer
        within 5 s are left out, never waited for)."""
        kinds = ("session_host", "adapter")
        children = [c for c in self.children.values() if c.kind in kinds and c.handle]

        async def one(child: Child) -> tuple[str, Snapshot | None]:
            try:
                snap = await asyncio.wait_for(child.handle.metrics_snapshot.remote(), 5)
                return child.name, snap
            except Exception:
                return child.name, None

        out: dict[str, Snapshot] = {"supervisor": self._metrics.snapshot()}
        for name, snap in await asyncio.gather(*(one(c) for c in children)):
            if snap is not None:
                out[name] = snap
        self._mirror.update(out["supervisor"])
        return out


def _bind(fn: Any, *args: Any) -> Any:
    return lambda: fn(*args)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
