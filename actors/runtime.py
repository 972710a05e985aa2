"""Driver-side glue: start Ray (or join a cluster) and start, find or stop the tree."""

from __future__ import annotations

import os
from typing import Any

import ray

from actors.common import SUPERVISOR, control_placement
from actors.supervisor import Supervisor
from astr_ray.config import Config


def init_local(cfg: Config, *, dashboard: bool = True) -> dict[str, Any]:
    """Start a single-node Ray for dev mode; returns Ray's address info.

    Token auth is turned off deliberately: everything binds to 127.0.0.1 and lives only
    as long as this process (FIELD_NOTES: Ray 2.60 turns token auth on by default).
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ctx = ray.init(
        address="local",  # always a new instance: never attach to another cluster here
        # Every CPU-pool worker (num_cpus=1) needs a logical CPU to be placed at all; on
        # a machine with fewer cores they share them (slower, never stuck).
        num_cpus=max(os.cpu_count() or 1, cpu_workers(cfg)),
        namespace=cfg.runtime.namespace,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        dashboard_port=cfg.runtime.ray_dashboard_port,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    return dict(ctx.address_info) | {"dashboard_url": ctx.dashboard_url}  # type: ignore[attr-defined]


def cpu_workers(cfg: Config) -> int:
    """How many actors of the tree ask for a whole CPU (embedders, TTS, STT)."""
    speech = cfg.speech
    return (
        cfg.knowledge.embedders
        + (speech.tts.workers if speech.tts.backend != "off" else 0)
        + (speech.stt.workers if speech.stt.backend != "off" else 0)
    )


def connect(address: str, namespace: str) -> None:
    """Join an existing cluster (``auto`` finds the one started on this machine)."""
    ray.init(address=address, namespace=namespace, log_to_driver=False)


def start_tree(cfg: Config, *, timeout: float = 300) -> tuple[Any, dict[str, Any]]:
    """Create the Supervisor, or re-attach to the running one, and wait for the tree.

    A second call with a running tree returns that tree: it never starts a second one.
    """
    sup = Supervisor.options(  # type: ignore[attr-defined]
        name=SUPERVISOR,
        namespace=cfg.runtime.namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=0,
        num_cpus=0,
        max_concurrency=1000,
        **control_placement(cfg),
    ).remote(cfg.to_transport())
    status: dict[str, Any] = ray.get(sup.start.remote(), timeout=timeout)
    return sup, status


def find_supervisor(namespace: str) -> Any:
    return ray.get_actor(SUPERVISOR, namespace=namespace)


def tree_status(namespace: str, *, timeout: float = 30) -> dict[str, Any]:
    status: dict[str, Any] = ray.get(find_supervisor(namespace).status.remote(), timeout=timeout)
    return status


def stop_tree(namespace: str, *, timeout: float = 60, handle: Any = None) -> None:
    """Drain and stop every child, then the Supervisor itself."""
    sup = handle if handle is not None else find_supervisor(namespace)
    try:
        ray.get(sup.shutdown.remote(), timeout=timeout)
    finally:
        ray.kill(sup, no_restart=True)


def rolling_restart(namespace: str, *, timeout: float = 600) -> dict[str, Any]:
    """Replace every session host with a fresh process, one at a time (see
    ``Supervisor.rolling_restart``)."""
    status: dict[str, Any] = ray.get(
        find_supervisor(namespace).rolling_restart.remote(), timeout=timeout
    )
    return status
