"""PluginWorker actor: one ``isolated: true`` plugin in its own supervised process.

    Supervisor ─► PluginWorker "plugin-<name>"   (runtime_env: the plugin's requirements)
    SessionHost.PluginManager ─RemoteHandle─► invoke / resume / cancel

If the plugin crashes the process (``os._exit``, a segfault in a C extension), Ray
restarts it and it loads the plugin again; calls in flight fail with a clear message.
If the plugin blocks the event loop, the Supervisor's ping times out after
``plugins.ping_timeout_s`` and it kills the process, which Ray restarts. Either way
only this plugin is affected. Its requirements are installed by Ray's ``pip``
runtime_env into an environment of its own, so they never clash with the core's or
another plugin's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError

from actors.common import get_actor, node_id, setup_logging
from actors.logship import ship_logs
from actors.services import RuntimeServices, build_chain
from astr_ray.config import Config, parse_config
from astr_ray.errors import PluginError
from astr_ray.lifecycle import Lifecycle
from astr_ray.plugins.api import PluginSpec
from astr_ray.plugins.loader import PluginSource
from astr_ray.plugins.manager import make_runner
from astr_ray.plugins.manifest import PluginManifest, load_manifest
from astr_ray.plugins.runner import PluginRunner
from astr_ray.store import Store

log = logging.getLogger(__name__)


def worker_name(plugin: str) -> str:
    return f"plugin-{plugin}"


@ray.remote
class PluginWorker:
    def __init__(
        self, plugin: str, folder: str, config: dict[str, Any], package: str | None = None
    ) -> None:
        setup_logging(worker_name(plugin))
        self.plugin = plugin
        self.folder = Path(folder)
        self.package = package  # an installed package (entry point), else a folder
        self.cfg: Config = parse_config(config)
        ship_logs(worker_name(plugin), self.cfg.runtime.namespace)
        self.started_at = time.time()
        self.lifecycle = Lifecycle(worker_name(plugin), self._on_start, self._on_stop)
        self.runner: PluginRunner | None = None
        self.error: str | None = None
        self.loads = 0

    async def start(self) -> dict[str, Any]:
        await self.lifecycle.start()
        return await self.ping()

    async def _on_start(self) -> None:
        self.store = await Store.open(self.cfg.store_url)
        self.chain = await build_chain(self.cfg, worker_name(self.plugin))
        self.services = RuntimeServices(self.cfg, self.store, self.chain)
        await self._load()

    async def _load(self) -> None:
        if self.runner is not None:
            await self.runner.notify("unloaded", self.cfg.plugins.handler_timeout_s)
            self.runner.close()
            self.runner = None
        try:
            manifest = load_manifest(self.folder)
            source = PluginSource(manifest, self.folder, package=self.package)
            runner = make_runner(source, self.cfg, self.services)
            await runner.notify("loaded", self.cfg.plugins.handler_timeout_s)
        except PluginError as exc:
            self.error = exc.message
            log.error("plugin %s failed to load: %s", self.plugin, exc.message)
            return
        self.runner, self.error = runner, None
        self.loads += 1
        log.info("plugin %s loaded in its own process (pid %d)", self.plugin, os.getpid())

    async def _on_stop(self) -> None:
        if self.runner is not None:
            await self.runner.notify("unloaded", self.cfg.plugins.handler_timeout_s)
            self.runner.close()
        await self.chain.close()
        await self.store.close()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def describe(self) -> dict[str, Any]:
        """``{"spec": ...}`` once loaded, ``{"error": reason}`` when loading failed."""
        await self.lifecycle.ensure_started()
        if self.runner is None:
            return {"error": self.error or "not loaded"}
        return {"spec": self.runner.loaded.spec.to_dict(), "pid": os.getpid()}

    async def reload(self) -> dict[str, Any]:
        await self.lifecycle.ensure_started()
        await self._load()
        return await self.describe()

    async def invoke(self, call: dict[str, Any]) -> dict[str, Any]:
        await self.lifecycle.ensure_started()
        if self.runner is None:
            return {"error": "unknown", "message": f"{self.plugin} is not loaded: {self.error}"}
        return await self.runner.invoke(call)

    async def resume(self, dialog: str, event: dict[str, Any], limit: float) -> dict[str, Any]:
        await self.lifecycle.ensure_started()
        if self.runner is None:
            return {"error": "unknown", "message": f"{self.plugin} is not loaded"}
        return await self.runner.resume(dialog, event, limit)

    async def cancel(self, dialog: str) -> bool:
        return self.runner.cancel(dialog) if self.runner is not None else False

    async def ping(self) -> dict[str, Any]:
        if self.lifecycle.state.value == "new":
            await self.lifecycle.ensure_started()  # Ray restarted this process
        return {
            "pid": os.getpid(),
            "node_id": node_id(),
            "state": self.lifecycle.state.value,
            "plugin": self.plugin,
            "loaded": self.runner is not None,
            "error": self.error,
            "started_at": self.started_at,
        }


class RemoteHandle:
    """A ``PluginHandle`` for an isolated plugin: calls go to its worker actor."""

    isolated = True

    def __init__(self, manifest: PluginManifest, spec: PluginSpec, namespace: str) -> None:
        self.name = manifest.name
        self.manifest = manifest
        self.spec = spec
        self.namespace = namespace

    def _actor(self) -> Any:
        try:
            return get_actor(worker_name(self.name), self.namespace)
        except ValueError:
            raise PluginError(f"{self.name}'s process is not running", plugin=self.name) from None

    async def _call(self, method: str, *args: Any) -> Any:
        ref = getattr(self._actor(), method).remote(*args)
        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)  # the turn was stopped: stop the handler in the worker too
            raise
        except RayActorError:
            raise PluginError(
                f"{self.name} crashed and is being restarted; try again in a moment",
                plugin=self.name,
            ) from None

    async def invoke(self, call: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = await self._call("invoke", call)
        return out

    async def resume(self, dialog: str, event: dict[str, Any], limit: float) -> dict[str, Any]:
        out: dict[str, Any] = await self._call("resume", dialog, event, limit)
        return out

    async def cancel(self, dialog: str) -> None:
        await self._call("cancel", dialog)

    async def close(self) -> None:
        return None


async def remote_handle(source: PluginSource, namespace: str) -> RemoteHandle:
    """The handle of an isolated plugin whose worker the Supervisor runs. Raises
    ``PluginError(pending=True)`` while the worker is still starting (installing its
    requirements can take minutes), ``PluginError`` when the plugin failed to load."""
    try:
        actor = get_actor(worker_name(source.name), namespace)
        info = await asyncio.wait_for(actor.describe.remote(), 10)
    except (ValueError, TimeoutError, RayActorError) as exc:
        raise PluginError(
            f"{source.name}'s process is starting ({type(exc).__name__})",
            plugin=source.name,
            pending=True,
        ) from None
    if "error" in info:
        raise PluginError(info["error"], plugin=source.name)
    return RemoteHandle(source.manifest, PluginSpec.from_dict(info["spec"]), namespace)
