"""Supervisor actor: reconciles the config (desired) with the live actors (actual).

    Supervisor (named, detached, max_restarts=-1)
     ├─ ShardDirectory
     ├─ ProviderPool x providers
     ├─ PluginWorker x isolated plugins ("plugin-<name>", own runtime_env)
     ├─ SandboxExecutor x sandbox.executors ("sandbox-<i>")
     ├─ McpClient x MCP servers ("mcp-<server>")
     ├─ SessionHost x sessions.hosts
     ├─ PlatformAdapter x platforms ("adapter-<id>": QQ, Telegram, Discord, Slack)
     └─ WebChatAdapter

Ray's ``max_restarts=-1`` is the first line: a killed child comes back by itself in
about a second (with its state lost; each child rebuilds from the store). The loop here
is the second line: every ``supervise_interval_s`` it pings each child; a new pid means
Ray restarted it (recorded as ``restarted``); a child that is gone for good
(``ActorDiedError``) is created again with exponential backoff (``recreated``). Every
event goes to the store's ``actor_events`` table, so the restart log survives the
Supervisor's own restarts. Children are detached so they outlive a Supervisor crash;
a restarted Supervisor re-attaches to them by name.

Plugin workers are watched a little differently: their start is not waited for
(installing a plugin's requirements can take minutes), a worker that stops answering
pings for ``plugins.ping_timeout_s`` (a plugin blocking its event loop) is killed and
so restarted by Ray, and their state does not count towards the tree's health: a
broken plugin must not make the bot look down. ``reload_plugins`` reloads plugins in
every worker and host; with ``plugins.watch`` it runs by itself on file changes.
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
    KNOWLEDGE,
    WEBCHAT,
    RayMetricsMirror,
    child_options,
    control_placement,
    host_name,
    pool_name,
    setup_logging,
)
from actors.dashboard import DASHBOARD, Dashboard
from actors.directory import ShardDirectory
from actors.embedder import EmbedderWorker, embedder_name
from actors.kb_shard import KnowledgeShard, shard_name
from actors.knowledge import KnowledgeService
from actors.logship import ship_logs
from actors.mcp_client import McpClient, mcp_name
from actors.platform_adapter import PlatformAdapter
from actors.plugin_worker import PluginWorker, worker_name
from actors.provider_pool import ProviderPool
from actors.reconfigure import config_rev, reconfigure
from actors.sandbox_executor import SandboxExecutor, executor_name
from actors.session_host import SessionHost
from actors.speech import SpeechWorker, stt_name, tts_name
from actors.webchat import WebChatAdapter
from astr_ray.config import Config, parse_config
from astr_ray.lifecycle import Lifecycle
from astr_ray.metrics import Metrics, Snapshot
from astr_ray.plugins.loader import PluginSource, discover
from astr_ray.sessions.shards import ShardTable
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
    meta: Any = None  # what the actor was made from (a plugin's requirements)


@ray.remote
class Supervisor:
    def __init__(self, config: dict[str, Any]) -> None:
        setup_logging("supervisor")
        self.cfg: Config = parse_config(config)
        ship_logs("supervisor", self.cfg.runtime.namespace)
        self.transport = self.cfg.to_transport()
        self.config_rev = config_rev(self.transport)
        self.lifecycle = Lifecycle("supervisor", self._on_start, self._on_stop)
        self.children: dict[str, Child] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self.started_at = time.time()
        self._metrics = Metrics()
        self._membership = asyncio.Lock()  # host set changes: reconcile, rolling restart
        self._mirror = RayMetricsMirror("supervisor")
        self._plugin_prints: dict[str, Any] = {}
        self._watch_task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        """Create (or re-attach to) the whole tree and wait until every child answers."""
        await self.lifecycle.ensure_started()
        return await self.status()

    async def _on_start(self) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = await Store.open(self.cfg.store_url)
        await self.store.migrate()
        # Place by custom resource where the cluster marks nodes for it (cluster.yaml);
        # a plain single node has none, and then everything may go anywhere.
        mode = self.cfg.runtime.placement
        resources = ray.cluster_resources() if mode == "auto" else {}
        use_hosts = mode == "resources" or bool(resources.get("session_hosts"))
        use_adapters = mode == "resources" or bool(resources.get("adapters"))
        self._host_placement: dict[str, Any] = {"scheduling_strategy": "SPREAD"}
        if use_hosts:
            self._host_placement["resources"] = {"session_hosts": 1}
        # A marker, not a count: every account's adapter (and the web chat) may share
        # the node that has the network route.
        self._adapter_placement: dict[str, Any] = (
            {"resources": {"adapters": 0.001}} if use_adapters else {}
        )
        # CPU pools (embedders: one cpu_pool unit each, like a core; knowledge shards:
        # a marker) go to the nodes marked cpu_pool, when the cluster has them.
        use_pool = mode == "resources" or bool(resources.get("cpu_pool"))
        self._embedder_placement: dict[str, Any] = (
            {"resources": {"cpu_pool": 1}} if use_pool else {}
        )
        self._kb_shard_placement: dict[str, Any] = (
            {"resources": {"cpu_pool": 0.001}} if use_pool else {}
        )
        # Speech workers: dedicated `speech` nodes when the cluster has them, else the
        # cpu_pool nodes, one unit each like a core.
        if mode != "any" and ray.cluster_resources().get("speech"):
            self._speech_placement: dict[str, Any] = {"resources": {"speech": 1}}
        else:
            self._speech_placement = dict(self._embedder_placement)
        self._control_placement = control_placement(self.cfg)
        initial = [host_name(i) for i in range(self._desired_hosts(ray.nodes()))]
        directory = self._directory_child(initial)
        self.children[DIRECTORY] = directory
        directory.handle = directory.factory()
        # A re-attached directory already knows the placement (hosts may have moved on).
        self.table = ShardTable.from_dict(await directory.handle.table.remote())
        self._next_host = 1 + max((int(h.rsplit("-", 1)[1]) for h in self.table.hosts), default=-1)
        for p in self.transport["providers"]:
            if p["enabled"]:
                self._add(self._pool_child(p))
        sources, _ = await asyncio.to_thread(discover, self.cfg.plugins_dir)
        for src in sources:
            self._plugin_prints[src.name] = src.fingerprint()
            if src.manifest.isolated:
                self._add(self._plugin_child(src))
        if self.cfg.sandbox.backend != "none":
            for i in range(self.cfg.sandbox.executors):
                self._add(self._sandbox_child(i))
        for server in self.cfg.mcp.servers:
            if server.enabled:
                self._add(self._mcp_child(server.name))
        if self.cfg.knowledge.embedders > 0:
            for i in range(self.cfg.knowledge.embedders):
                self._add(self._embedder_child(i))
            for j in range(self.cfg.knowledge.shards):
                self._add(self._kb_shard_child(j))
            self._add(self._knowledge_child())
        speech = self.cfg.speech
        for kind, sub in (("tts", speech.tts), ("stt", speech.stt)):
            if sub.backend != "off":
                for i in range(sub.workers):
                    self._add(self._speech_child(kind, i))
        for h in self.table.hosts:
            self._add(self._host_child(h))
        for platform in self.cfg.platforms:
            if platform.enabled:
                self._add(self._platform_child(platform.id))
        if self.cfg.webchat.enabled:
            self._add(self._adapter_child())
        if self.cfg.dashboard.enabled:
            self._add(self._dashboard_child())
        # Start in order (directory and pools before the hosts that call them).
        attached = 0
        for child in self.children.values():
            if child.handle is None:
                child.handle = child.factory()
            if child.kind == "plugin":
                child.handle.start.remote()  # not waited for: see the module docstring
                continue
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
        if self.cfg.plugins.watch:
            self._watch_task = asyncio.create_task(self._watch_plugins())

    def _add(self, child: Child) -> None:
        self.children[child.name] = child

    def _directory_child(self, hosts: list[str]) -> Child:
        opts = child_options(DIRECTORY, self.cfg.runtime.namespace, **self._control_placement)
        shards = self.cfg.sessions.shards
        actor_cls: Any = ShardDirectory
        return Child(
            DIRECTORY, "directory", lambda: actor_cls.options(**opts).remote(shards, hosts)
        )

    def _pool_child(self, provider: dict[str, Any]) -> Child:
        name = pool_name(provider["id"])
        opts = child_options(name, self.cfg.runtime.namespace, **self._control_placement)
        return Child(name, "provider_pool", lambda: ProviderPool.options(**opts).remote(provider))  # type: ignore[attr-defined]

    def _host_child(self, name: str) -> Child:
        opts = child_options(
            name, self.cfg.runtime.namespace, max_concurrency=100_000, **self._host_placement
        )
        cfg = self.transport
        return Child(name, "session_host", lambda: SessionHost.options(**opts).remote(name, cfg))  # type: ignore[attr-defined]

    def _plugin_child(self, src: PluginSource) -> Child:
        name = worker_name(src.name)
        extra: dict[str, Any] = {"max_concurrency": 1000, **self._control_placement}
        if src.manifest.requirements:
            extra["runtime_env"] = {"pip": list(src.manifest.requirements)}
        opts = child_options(name, self.cfg.runtime.namespace, **extra)
        cfg, folder, package = self.transport, str(src.folder), src.package
        return Child(
            name,
            "plugin",
            lambda: PluginWorker.options(**opts).remote(src.name, folder, cfg, package),  # type: ignore[attr-defined]
            meta=_plugin_meta(src),
        )

    def _sandbox_child(self, index: int) -> Child:
        name = executor_name(index)
        opts = child_options(name, self.cfg.runtime.namespace, max_concurrency=1000)
        cfg = self.transport
        return Child(name, "sandbox", lambda: SandboxExecutor.options(**opts).remote(name, cfg))  # type: ignore[attr-defined]

    def _embedder_child(self, index: int) -> Child:
        name = embedder_name(index)
        # One CPU each (the point of the pool), spread over the nodes that have them.
        opts = child_options(
            name,
            self.cfg.runtime.namespace,
            max_concurrency=16,
            num_cpus=1,
            scheduling_strategy="SPREAD",
            **self._embedder_placement,
        )
        cfg = self.transport
        return Child(name, "embedder", lambda: EmbedderWorker.options(**opts).remote(name, cfg))  # type: ignore[attr-defined]

    def _speech_child(self, kind: str, index: int) -> Child:
        name = tts_name(index) if kind == "tts" else stt_name(index)
        opts = child_options(
            name,
            self.cfg.runtime.namespace,
            max_concurrency=64,
            num_cpus=1,
            scheduling_strategy="SPREAD",
            **self._speech_placement,
        )
        cfg = self.transport
        return Child(name, kind, lambda: SpeechWorker.options(**opts).remote(name, kind, cfg))  # type: ignore[attr-defined]

    def _kb_shard_child(self, index: int) -> Child:
        name = shard_name(index)
        opts = child_options(
            name,
            self.cfg.runtime.namespace,
            max_concurrency=1000,
            scheduling_strategy="SPREAD",
            **self._kb_shard_placement,
        )
        cfg = self.transport
        return Child(name, "kb_shard", lambda: KnowledgeShard.options(**opts).remote(index, cfg))  # type: ignore[attr-defined]

    def _knowledge_child(self) -> Child:
        opts = child_options(
            KNOWLEDGE, self.cfg.runtime.namespace, max_concurrency=1000, **self._control_placement
        )
        cfg = self.transport
        return Child(KNOWLEDGE, "knowledge", lambda: KnowledgeService.options(**opts).remote(cfg))  # type: ignore[attr-defined]

    def _mcp_child(self, server: str) -> Child:
        name = mcp_name(server)
        opts = child_options(
            name, self.cfg.runtime.namespace, max_concurrency=1000, **self._control_placement
        )
        cfg = self.transport
        return Child(name, "mcp", lambda: McpClient.options(**opts).remote(server, cfg))  # type: ignore[attr-defined]

    def _platform_child(self, platform_id: str) -> Child:
        name = f"adapter-{platform_id}"
        opts = child_options(
            name, self.cfg.runtime.namespace, max_concurrency=100_000, **self._adapter_placement
        )
        cfg = self.transport
        return Child(
            name,
            "adapter",
            lambda: PlatformAdapter.options(**opts).remote(platform_id, cfg),  # type: ignore[attr-defined]
        )

    def _dashboard_child(self) -> Child:
        opts = child_options(
            DASHBOARD, self.cfg.runtime.namespace, max_concurrency=10_000, **self._control_placement
        )
        cfg = self.transport
        return Child(DASHBOARD, "dashboard", lambda: Dashboard.options(**opts).remote(cfg))  # type: ignore[attr-defined]

    def _adapter_child(self) -> Child:
        opts = child_options(
            WEBCHAT, self.cfg.runtime.namespace, max_concurrency=100_000, **self._adapter_placement
        )
        cfg = self.transport
        return Child(WEBCHAT, "adapter", lambda: WebChatAdapter.options(**opts).remote(cfg))  # type: ignore[attr-defined]

    def _desired_hosts(self, nodes: list[dict[str, Any]]) -> int:
        """``sessions.hosts``, or ``hosts_per_node`` for each live node marked with the
        ``session_hosts`` resource (every live node when none is marked)."""
        per = self.cfg.sessions.hosts_per_node
        if per is None:
            return self.cfg.sessions.hosts
        alive = [n for n in nodes if n.get("Alive")]
        marked = [n for n in alive if n.get("Resources", {}).get("session_hosts", 0) > 0]
        return max(1, per * len(marked or alive))

    async def _call_start(self, child: Child) -> tuple[dict[str, Any], bool]:
        """Start the child; ``fresh`` is False when it was running already (re-attach)."""
        fresh = True
        if child.kind in STARTED_KINDS:
            try:
                await asyncio.wait_for(child.handle.start.remote(), 60)
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
        if self._watch_task is not None:
            self._watch_task.cancel()
        for child in reversed(list(self.children.values())):
            if child.handle is None:
                continue
            try:
                if child.kind in STARTED_KINDS:
                    await asyncio.wait_for(child.handle.stop.remote(), 15)
            except Exception as exc:
                log.warning("stopping %s: %s", child.name, exc)
            ray.kill(child.handle, no_restart=True)
            child.state = "stopped"
        await self.store.close()

    async def shutdown(self) -> None:
        """Stop every child in reverse start order (draining hosts first). A supervisor
        that Ray restarted re-attaches to the tree first, so nothing is left running."""
        await self.lifecycle.ensure_started()
        await self.lifecycle.stop()

    # -- reconcile ----------------------------------------------------------------------
    async def _reconcile_forever(self) -> None:
        interval = self.cfg.runtime.supervise_interval_s
        while True:
            try:
                await asyncio.gather(*(self._check(c) for c in list(self.children.values())))
                await self._reconcile_hosts()
            except Exception:
                log.exception("reconcile pass failed")
            await asyncio.sleep(interval)

    async def _reconcile_hosts(self) -> None:
        """Hosts follow the nodes: drop hosts whose node is gone, add hosts up to the
        desired count, and move shards to match (prepare, publish, adopt)."""
        if self._membership.locked():
            return  # a rolling restart is changing the hosts
        async with self._membership:
            await self._reconcile_hosts_locked()

    async def _reconcile_hosts_locked(self) -> None:
        nodes = await asyncio.to_thread(ray.nodes)
        alive = {n["NodeID"] for n in nodes if n.get("Alive")}
        for child in [c for c in self.children.values() if c.kind == "session_host"]:
            node = child.last_info.get("node_id")
            if child.state != "alive" and node and node not in alive:
                await self._event(child, "lost", f"its node {node[:12]} is gone")
                ray.kill(child.handle, no_restart=True)
                del self.children[child.name]
                await self._release_permits(child.name)
        hosts = [c for c in self.children.values() if c.kind == "session_host"]
        desired = self._desired_hosts(nodes)
        while len(hosts) < desired:
            added = await self._new_host()
            if added is None:
                break  # no room yet; the next pass tries again
            hosts.append(added)
            await self._event(added, "started", "added: more nodes for session hosts")
        extra = hosts[desired:]
        target = [c.name for c in hosts[:desired]]
        if target != list(self.table.hosts):
            await self._move_shards(target)
        for child in extra:
            await self._retire(child, "removed", "fewer nodes for session hosts")

    async def _new_host(self) -> Child | None:
        child = self._host_child(host_name(self._next_host))
        self._next_host += 1
        try:
            child.handle = child.factory()
            info, _ = await self._call_start(child)
        except Exception as exc:
            log.warning("could not place %s: %s", child.name, _first_line(exc))
            if child.handle is not None:
                ray.kill(child.handle, no_restart=True)
            return None
        child.pid, child.state, child.last_info = info.get("pid"), "alive", info
        self._add(child)
        return child

    async def _retire(self, child: Child, kind: str, reason: str) -> None:
        """Stop a child for good (a host that owns no shards any more drains first),
        then remove it and free the LLM permits it held."""
        if child.kind in STARTED_KINDS:  # the others have no stop() (pools, directory)
            try:
                await asyncio.wait_for(child.handle.stop.remote(), 15)
            except Exception as exc:
                log.warning("stopping %s: %s", child.name, _first_line(exc))
        ray.kill(child.handle, no_restart=True)
        self.children.pop(child.name, None)
        await self._release_permits(child.name)
        await self._event(child, kind, reason)

    async def _release_permits(self, host: str) -> None:
        """A host that is gone for good cannot give back the LLM permits it held: tell
        every provider pool to count them free again (else capacity leaks away)."""
        pools = [c for c in self.children.values() if c.kind == "provider_pool" and c.handle]
        await asyncio.gather(*(c.handle.forget.remote(host) for c in pools), return_exceptions=True)

    async def apply_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """Bring the running tree in line with an edited config (the dashboard's), without
        restarting what did not change (``actors.reconfigure``)."""
        await self.lifecycle.ensure_started()
        async with self._membership:
            return await reconfigure(self, parse_config(config))

    async def rolling_restart(self) -> dict[str, Any]:
        """Replace every SessionHost by a fresh process, one at a time, without losing a
        session: its shards move to the other hosts first (its turns finish, sessions
        passivate), then it stops, and its replacement takes shards back. Upgrade a
        cluster by installing the new version on every node, then calling this."""
        await self.lifecycle.ensure_started()
        async with self._membership:
            for old in [c for c in self.children.values() if c.kind == "session_host"]:
                others = [
                    c.name
                    for c in self.children.values()
                    if c.kind == "session_host" and c is not old
                ]
                if others:  # hand over first: on a full cluster there is no room yet
                    await self._move_shards(others)
                    await self._retire(old, "replaced", "rolling restart")
                    new = await self._new_host()
                else:  # the only host: start its replacement before it goes
                    new = await self._new_host()
                    if new is not None:
                        await self._move_shards([new.name])
                        await self._retire(old, "replaced", "rolling restart")
                if new is None:
                    raise RuntimeError("rolling restart: no room for a new session host")
                await self._move_shards(
                    [c.name for c in self.children.values() if c.kind == "session_host"]
                )
        return await self.status()

    async def _move_shards(self, hosts: list[str]) -> None:
        """Re-place shards onto ``hosts``: every live host first hands over the shards it
        loses (their turns finish, sessions passivate), then the directory publishes the
        new epoch, then every host adopts it."""
        new = self.table.with_hosts(hosts)
        table = new.to_dict()
        live = [
            c for c in self.children.values() if c.kind == "session_host" and c.state == "alive"
        ]
        await asyncio.gather(
            *(c.handle.prepare.remote(table) for c in live), return_exceptions=True
        )
        await self.children[DIRECTORY].handle.set_table.remote(table)
        await asyncio.gather(*(c.handle.adopt.remote(table) for c in live), return_exceptions=True)
        old = {s: self.table.hosts[h] for s, h in enumerate(self.table.owner)}
        moved = sum(1 for s, h in enumerate(new.owner) if old.get(s) != new.hosts[h])
        # Logged before the new epoch shows in status(): a reader never sees the epoch
        # without its record.
        await self._record(
            DIRECTORY,
            "rebalanced",
            f"epoch {new.epoch}: {moved} shards moved; hosts {', '.join(hosts)}",
            None,
        )
        self.table = new

    async def _check(self, child: Child) -> None:
        now = time.monotonic()
        if child.state == "dead":
            if now >= child.next_attempt:
                await self._recreate(child)
            return
        limit = self.cfg.plugins.ping_timeout_s if child.kind == "plugin" else 5
        try:
            info = await asyncio.wait_for(child.handle.ping.remote(), timeout=limit)
        except ActorDiedError as exc:
            child.state = "dead"
            child.last_error = _first_line(exc)
            child.backoff = self.cfg.runtime.restart_backoff_s
            child.next_attempt = now
            await self._event(child, "died", child.last_error)
            return
        except (TimeoutError, GetTimeoutError) as exc:
            if child.kind == "plugin" and child.state == "alive":
                # It answered before and now does not: its plugin blocks the event loop.
                await self._event(
                    child, "killed", f"unresponsive for {limit:g}s (a blocked event loop)"
                )
                ray.kill(child.handle, no_restart=False)  # Ray starts it again
            child.state = "restarting" if child.pid is not None else "starting"
            child.last_error = _first_line(exc)
            return
        except RayActorError as exc:
            child.state = "restarting"  # Ray is bringing it back
            child.last_error = _first_line(exc)
            return
        except Exception as exc:
            child.state = "unhealthy"
            child.last_error = _first_line(exc)
            return
        pid = info.get("pid")
        if child.kind == "directory" and info.get("epoch") != self.table.epoch:
            # The directory restarted with its initial table: give it the current one.
            await child.handle.set_table.remote(self.table.to_dict())
        if child.pid is not None and pid != child.pid:
            child.restarts += 1
            await self._event(
                child, "restarted", f"process {child.pid} exited; Ray restarted it as {pid}", pid
            )
            if child.kind == "session_host" and info.get("config_rev") != self.config_rev:
                # Ray re-ran it with the config it was created with: send the edited one.
                await child.handle.update_config.remote(self.transport)
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
        # Plugins, sandboxes and MCP servers are shown, but a broken one must not make
        # the bot itself look down.
        core = [c.state for c in self.children.values() if c.kind not in OPTIONAL_KINDS]
        ok = self.lifecycle.state.value == "running" and all(s == "alive" for s in core)
        return {"ok": ok, "state": self.lifecycle.state.value, "actors": states}

    async def platforms(self) -> list[dict[str, Any]]:
        """Each configured chat account: its actor's state and restarts, and what its
        bridge last reported (connected, reconnects, counters). Never a secret."""
        await self.lifecycle.ensure_started()
        out: list[dict[str, Any]] = []
        for p in self.cfg.platforms:
            child = self.children.get(f"adapter-{p.id}")
            info = child.last_info if child is not None else {}
            entry: dict[str, Any] = {
                "id": p.id,
                "type": p.type,
                "mode": getattr(p, "mode", None),
                "enabled": p.enabled,
                "state": child.state if child is not None else "disabled",
                "restarts": child.restarts if child is not None else 0,
                "node_id": info.get("node_id"),
                "connected": bool(info.get("connected")),
            }
            for key in PLATFORM_FIGURES:
                entry[key] = info.get(key, 0)
            out.append(entry)
        return out

    async def status(self) -> dict[str, Any]:
        """Actors with state, pid, restarts and their own figures; the restart log."""
        await self.lifecycle.ensure_started()
        events = await self.store.list_actor_events(limit=50)
        return {
            "ok": (await self.health())["ok"],
            "supervisor": {"pid": os.getpid(), "started_at": self.started_at},
            "namespace": self.cfg.runtime.namespace,
            "epoch": self.table.epoch,
            "nodes": [
                {
                    "node_id": n["NodeID"],
                    "alive": n.get("Alive", False),
                    "address": n.get("NodeManagerAddress"),
                    "resources": {
                        k: v for k, v in n.get("Resources", {}).items() if not k.startswith("node:")
                    },
                }
                for n in await asyncio.to_thread(ray.nodes)
            ],
            "actors": [
                {
                    "name": c.name,
                    "kind": c.kind,
                    "state": c.state,
                    "pid": c.pid,
                    "node_id": c.last_info.get("node_id"),
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

    # -- plugins ------------------------------------------------------------------------
    async def reload_plugins(self, name: str | None = None) -> dict[str, Any]:
        """Reload ``name`` (or every plugin) everywhere: isolated workers first (a new
        isolated plugin gets its worker), then every session host. Returns what the
        hosts loaded and what failed, with the reasons."""
        await self.lifecycle.ensure_started()
        sources, _ = await asyncio.to_thread(discover, self.cfg.plugins_dir)
        isolated = {s.name: s for s in sources if s.manifest.isolated}
        for old in [c for c in self.children.values() if c.kind == "plugin"]:
            plugin = old.name.removeprefix("plugin-")
            src = isolated.get(plugin)
            gone = src is None and name in (None, plugin)
            # New requirements need a new environment, hence a new process.
            moved = src is not None and name in (None, plugin) and old.meta != _plugin_meta(src)
            if gone or moved:
                await self._retire(
                    old,
                    "removed" if gone else "replaced",
                    "its plugin was removed" if gone else "its requirements changed",
                )
        for src in sources:
            self._plugin_prints[src.name] = src.fingerprint()
            if not src.manifest.isolated or name not in (None, src.name):
                continue
            child = self.children.get(worker_name(src.name))
            if child is None:
                child = self._plugin_child(src)
                child.handle = child.factory()
                self._add(child)
                await self._event(child, "started", "a new isolated plugin")
                try:
                    await asyncio.wait_for(child.handle.start.remote(), 120)
                except Exception as exc:
                    log.warning("starting %s: %s", child.name, _first_line(exc))
            else:
                try:
                    await asyncio.wait_for(child.handle.reload.remote(), 60)
                except Exception as exc:
                    log.warning("reloading %s: %s", child.name, _first_line(exc))
        hosts = [c for c in self.children.values() if c.kind == "session_host" and c.handle]
        results = await asyncio.gather(
            *(asyncio.wait_for(h.handle.reload_plugins.remote(name), 120) for h in hosts),
            return_exceptions=True,
        )
        answers = [r for r in results if isinstance(r, dict)]
        for h, r in zip(hosts, results, strict=True):
            if not isinstance(r, dict):
                log.warning("%s could not reload plugins: %s", h.name, _first_line(r))
        first = answers[0] if answers else {"reloaded": [], "failures": [], "pending": []}
        await self._record("plugins", "reloaded", ", ".join(first["reloaded"]) or "none", None)
        return first

    async def _watch_plugins(self) -> None:
        """Dev mode: reload a plugin when its files change (polled every second)."""
        while True:
            await asyncio.sleep(1.0)
            try:
                sources, _ = await asyncio.to_thread(discover, self.cfg.plugins_dir)
                now = {s.name: s.fingerprint() for s in sources}
                changed = [n for n in now if self._plugin_prints.get(n) != now[n]]
                changed += [n for n in self._plugin_prints if n not in now]
                for n in changed:
                    log.info("plugin %s changed on disk: reloading", n)
                    await self.reload_plugins(n)
                    self._plugin_prints = now
            except Exception:
                log.exception("watching plugins failed")

    async def metrics(self) -> dict[str, Snapshot]:
        """Every actor's metrics snapshot, by actor name (children that do not answer
        within 5 s are left out, never waited for)."""
        kinds = ("session_host", "adapter", "dashboard")
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


OPTIONAL_KINDS = frozenset(
    {"plugin", "sandbox", "mcp", "embedder", "kb_shard", "knowledge", "tts", "stt", "dashboard"}
)
STARTED_KINDS = frozenset(
    {
        "session_host",
        "adapter",
        "plugin",
        "sandbox",
        "mcp",
        "embedder",
        "kb_shard",
        "knowledge",
        "tts",
        "stt",
        "dashboard",
    }
)
"""Children with ``start``/``stop`` methods (the others start in their constructor)."""
PLATFORM_FIGURES = (
    "reconnects",
    "events",
    "replies",
    "ignored",
    "malformed",
    "duplicates",
    "send_failures",
    "rate_limited",
)
"""The counters each bridge reports (``astr_ray.platforms.base.Bridge``)."""


def _plugin_meta(src: PluginSource) -> tuple[str, ...]:
    return tuple(src.manifest.requirements)


def _bind(fn: Any, *args: Any) -> Any:
    return lambda: fn(*args)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
