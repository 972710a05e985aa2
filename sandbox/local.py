"""A plain subprocess: NOT a sandbox. Only for trusted use, chosen on purpose.

The code runs as the runtime's own user, in the session's workspace as working dir,
with rlimits (memory, CPU seconds, file size, no core), a pids/memory cgroup where
possible, and the wall clock killing its process group. It can still read and write
everything that user can (the whole filesystem: config, secrets, other sessions'
workspaces) and reach the network, loopback services included.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from astr_ray.errors import SandboxError
from sandbox._process import run_process
from sandbox.base import Limits, RunResult
from sandbox.cgroups import CgroupLimiter

__all__ = ["SubprocessBackend"]

NOT_ISOLATED = (
    "NOT isolated: code runs as the runtime's user with the whole filesystem and the "
    "network reachable; only resource limits apply"
)


class SubprocessBackend:
    """Runs commands as plain child processes: NOT isolated, ``safe`` is False (see the
    module docstring). Use only where every user who can run code is trusted."""

    name = "subprocess"
    safe = False

    def __init__(self) -> None:
        prlimit = shutil.which("prlimit", path="/usr/bin:/bin")
        if prlimit is None:
            raise SandboxError("prlimit (util-linux) is missing from /usr/bin")
        self.prlimit = prlimit
        self.cgroups = CgroupLimiter()

    async def run(
        self,
        workspace: Path,
        argv: list[str],
        *,
        stdin: bytes = b"",
        limits: Limits,
        session: str,
    ) -> RunResult:
        if not argv:
            raise SandboxError("nothing to run (empty argv)", session=session)
        await asyncio.to_thread(workspace.mkdir, parents=True, exist_ok=True)
        mib = 1 << 20
        full = [
            self.prlimit,
            f"--as={limits.memory_mb * mib}",
            f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
            f"--fsize={limits.file_size_mb * mib}",
            "--core=0",
            "--",
            *argv,
        ]
        cgroup = await asyncio.to_thread(
            self.cgroups.create, pids_max=limits.max_processes + 1, memory_mb=limits.memory_mb
        )
        if cgroup is not None:
            full = cgroup.enter_argv() + full
        # ``python3`` is the runtime's own interpreter (its base install, not the venv),
        # as in the bwrap sandbox; then the host's PATH.
        path = os.pathsep.join([f"{sys.base_prefix}/bin", os.environ.get("PATH", "/usr/bin:/bin")])
        env = {
            "PATH": path,
            "HOME": str(workspace),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        try:
            return await run_process(
                full,
                cwd=workspace,
                env=env,
                stdin=stdin,
                limits=limits,
                kill_extra=cgroup.kill if cgroup is not None else None,
                oom_check=cgroup.oom_killed if cgroup is not None else None,
            )
        finally:
            if cgroup is not None:
                await cgroup.remove()

    async def close_session(self, session: str) -> None:
        """Nothing is kept between runs."""

    async def close(self) -> None:
        """Nothing to release."""

    def describe(self) -> dict[str, Any]:
        return {
            "isolation": NOT_ISOLATED,
            "network": "the host's (not isolated)",
            "process_limit": self.cgroups.describe(),
        }
