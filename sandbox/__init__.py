"""Code-execution backends behind one interface.

    make_backend(cfg) ─► DockerBackend      a warm container per session   (sandbox.docker)
                      ├► BubblewrapBackend  a fresh sandbox per run        (sandbox.bwrap)
                      ├► SubprocessBackend  NOT isolated, on purpose only  (sandbox.local)
                      └► None               code execution off
    Workspace(root, session, quota)         the session's folder, host side (sandbox.workspace)

``auto`` takes Docker when its engine answers and has the image, else bubblewrap when
it can start a sandbox here, else None (the reason is logged). An explicit backend
that cannot work raises ``SandboxError`` saying why. Nothing here imports Ray.
"""

from __future__ import annotations

import logging

from astr_ray.config import SandboxConfig
from astr_ray.errors import SandboxError
from sandbox.base import Backend, Limits, RunResult
from sandbox.bwrap import BubblewrapBackend
from sandbox.docker import DockerBackend
from sandbox.local import SubprocessBackend
from sandbox.workspace import Workspace

__all__ = [
    "Backend",
    "BubblewrapBackend",
    "DockerBackend",
    "Limits",
    "RunResult",
    "SubprocessBackend",
    "Workspace",
    "make_backend",
    "probe",
]

log = logging.getLogger(__name__)


def probe(cfg: SandboxConfig | None = None) -> dict[str, str | None]:
    """Each backend -> None when usable here, else the reason. Blocking (pings the
    Docker engine, starts one bubblewrap sandbox; the latter is cached)."""
    cfg = cfg or SandboxConfig()
    return {
        "docker": DockerBackend.available(cfg),
        "bwrap": BubblewrapBackend.available(),
        "subprocess": None,
    }


def make_backend(cfg: SandboxConfig) -> Backend | None:
    """The backend ``cfg.backend`` asks for. Blocking (see ``probe``); call it once at
    start-up, from a thread when on an event loop."""
    choice = cfg.backend
    if choice == "none":
        return None
    if choice == "subprocess":
        log.warning("sandbox.backend is `subprocess`: model-written code is NOT isolated")
        return SubprocessBackend()
    if choice in ("auto", "docker"):
        why_not = DockerBackend.available(cfg)
        if why_not is None:
            return DockerBackend(cfg)
        if choice == "docker":
            raise SandboxError(f"the docker sandbox is unavailable: {why_not}")
        log.info("docker sandbox unavailable (%s); trying bubblewrap", why_not)
    why_not = BubblewrapBackend.available()
    if why_not is None:
        return BubblewrapBackend()
    if choice == "bwrap":
        raise SandboxError(f"the bwrap sandbox is unavailable: {why_not}")
    log.warning("no sandbox backend: code execution is off (bubblewrap: %s)", why_not)
    return None
