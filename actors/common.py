"""Names, placement options and logging shared by every actor.

Every actor is named and detached in the runtime's namespace, so Ray's dashboard shows
the tree by name and a restarted Supervisor (or a second driver) re-attaches to the
same children instead of starting a second tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import Any

import ray
from ray.exceptions import RayActorError


def _uvloop_in_ray_workers() -> None:
    """Ray creates an async actor's event loop after importing the actor's module,
    through the current policy: with uvloop the hosts' and adapters' loops cost less per
    callback (~+16% msg/s, ARCHITECTURE.md). Only in Ray worker processes: a driver (the
    CLI, tests) keeps its own policy. uvloop ships with uvicorn[standard]."""
    from ray._private import worker as ray_worker

    if getattr(ray_worker.global_worker, "mode", None) != ray_worker.WORKER_MODE:
        return
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


_uvloop_in_ray_workers()

SUPERVISOR = "supervisor"
DIRECTORY = "shard-directory"
WEBCHAT = "adapter-webchat"
KNOWLEDGE = "knowledge"

try:  # Ray >= 2.30 raises ActorUnavailableError while an actor is restarting
    from ray.exceptions import ActorUnavailableError

    ACTOR_UNAVAILABLE: tuple[type[BaseException], ...] = (RayActorError, ActorUnavailableError)
except ImportError:  # pragma: no cover
    ACTOR_UNAVAILABLE = (RayActorError,)
ACTOR_GONE: tuple[type[BaseException], ...] = (*ACTOR_UNAVAILABLE, ValueError)
"""What a call to a named child raises while it restarts or is being created again
(``ValueError``: no actor by that name right now): worth retrying."""


def host_name(index: int) -> str:
    return f"session-host-{index}"


def pool_name(provider_id: str) -> str:
    return f"provider-pool-{provider_id}"


def child_options(name: str, namespace: str, **extra: Any) -> dict[str, Any]:
    """Options for a supervised child: named, detached, restarted by Ray forever.

    ``max_task_retries=0``: callers retry themselves, with idempotency keys, because
    only they know which of a batch's items already came back.
    """
    opts: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": 0,
        "num_cpus": 0,
    }
    opts.update(extra)
    return opts


def control_placement(cfg: Any) -> dict[str, Any]:
    """Where the control actors go (Supervisor, ShardDirectory, provider pools): the
    node marked ``control`` (the head in cluster.yaml, which holds Ray's GCS and so is
    the cluster's single point of failure anyway), when placement uses resources."""
    mode = cfg.runtime.placement
    if mode == "resources" or (mode == "auto" and ray.cluster_resources().get("control")):
        return {"resources": {"control": 0.001}}
    return {}


def setup_logging(component: str) -> None:
    """Log lines name the component; Ray keeps each worker's output in its log files."""
    root = logging.getLogger()
    if getattr(root, "_astr_ray_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s [{component} pid={os.getpid()}] %(name)s: %(message)s"
        )
    )
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("ASTR_RAY_LOG_LEVEL", "INFO"))
    # One INFO line per HTTP request (a Telegram long poll every 30 s) is noise.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    root._astr_ray_configured = True  # type: ignore[attr-defined]


def node_id() -> str:
    """The Ray node this process runs on."""
    return str(ray.get_runtime_context().get_node_id())


def get_actor(name: str, namespace: str) -> Any:
    return ray.get_actor(name, namespace=namespace)


class RayMetricsMirror:
    """Copies a ``Metrics`` snapshot into ``ray.util.metrics`` gauges so the same
    figures show on Ray's dashboard (exported as ``ray_<name>``). Counters become gauges
    of their running totals; histograms export their ``_sum`` and ``_count``."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        self._gauges: dict[tuple[str, tuple[str, ...]], Any] = {}

    def update(self, snapshot: Any) -> None:
        from ray.util.metrics import Gauge

        from astr_ray.metrics import flatten

        for name, labels, value in flatten(snapshot):
            if name.endswith("_bucket") or name.endswith("_created"):
                continue
            keys = (*sorted(labels), "actor")
            gauge = self._gauges.get((name, keys))
            if gauge is None:
                gauge = self._gauges[(name, keys)] = Gauge(name, tag_keys=keys)
            gauge.set(value, tags={**labels, "actor": self.actor})
