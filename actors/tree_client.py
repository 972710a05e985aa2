"""What the web-facing actors (the web chat adapter, the dashboard) ask of the tree:
health, chat accounts, metrics and the knowledge service, by handle.

A plain mixin: the actor sets ``self.cfg`` and ``self._health`` in its constructor.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray.exceptions import RayActorError, RayTaskError

from actors.common import KNOWLEDGE, SUPERVISOR, get_actor
from astr_ray.config import Config
from astr_ray.errors import KnowledgeError

__all__ = ["TreeClient"]


class TreeClient:
    cfg: Config
    _health: tuple[float, dict[str, Any]]

    async def knowledge(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call the KnowledgeService; its refusals come back as ``KnowledgeError``."""
        if self.cfg.knowledge.embedders < 1:
            raise KnowledgeError("knowledge bases are off (knowledge.embedders is 0)")
        try:
            service = get_actor(KNOWLEDGE, self.cfg.runtime.namespace)
            return await asyncio.wait_for(getattr(service, method).remote(*args, **kwargs), 120)
        except RayTaskError as exc:
            if isinstance(exc.cause, KnowledgeError):
                raise exc.cause from None
            raise
        except (RayActorError, ValueError, TimeoutError) as exc:
            raise KnowledgeError(
                f"the knowledge service is not available ({type(exc).__name__})"
            ) from None

    async def metrics_text(self) -> bytes:
        """The whole tree's metrics in Prometheus' text format (for ``/metrics``)."""
        from astr_ray.metrics import render

        sup = get_actor(SUPERVISOR, self.cfg.runtime.namespace)
        snapshots = await asyncio.wait_for(sup.metrics.remote(), timeout=10)
        return render(snapshots)

    async def platforms(self) -> list[dict[str, Any]]:
        """Each chat account's health and counters (``Supervisor.platforms``)."""
        sup = get_actor(SUPERVISOR, self.cfg.runtime.namespace)
        result: list[dict[str, Any]] = await asyncio.wait_for(sup.platforms.remote(), timeout=5)
        return result

    async def health(self) -> dict[str, Any]:
        """The Supervisor's view of the tree, cached for a second."""
        at, info = self._health
        if time.monotonic() - at < 1.0 and info:
            return info
        try:
            sup = get_actor(SUPERVISOR, self.cfg.runtime.namespace)
            status = await asyncio.wait_for(sup.health.remote(), timeout=5)
        except Exception as exc:
            status = {"ok": False, "error": f"supervisor unreachable: {type(exc).__name__}"}
        self._health = (time.monotonic(), status)
        return status
