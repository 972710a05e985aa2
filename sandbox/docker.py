"""Docker: one warm container per session, one ``exec`` per run.

    container "astr-sbx-<hash>"   pid 1: docker-init (tini) + `sleep infinity`, uid 65533
      ├ no network (``network_mode="none"``) unless limits.network (then the bridge)
      ├ read-only root fs, tmpfs /tmp, the session workspace bind-mounted rw at /workspace
      ├ mem_limit (= memswap), pids_limit, nano_cpus, cap_drop ALL, no-new-privileges
      └ exec per run, as the run uid (65534; the runtime's own uid when it is not root):
          sh -c 'ulimit (cpu, file size, address space); argv; kill -9 -1'

Runs of one session are serialized. A run ends with its command: the wrapper then
kills every other process of the run uid in the container (background ones included,
as bubblewrap's pid namespace does). On time-out (or runaway output) the backend runs
that same ``kill -9 -1`` as the run uid; pid 1 belongs to another uid and survives, so
the container stays warm.
Containers idle for ``idle_s`` go (``reap_idle``), and all go on ``close``.

The engine must be local: the workspace path is the engine host's. The image needs
``/bin/sh``, ``sleep`` and ``python3`` (``python -m sandbox.image`` builds one without a
registry). The Docker SDK is blocking, so every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astr_ray.config import SandboxConfig
from astr_ray.errors import SandboxError
from sandbox._process import OutputCap, make_result
from sandbox.base import KillReason, Limits, RunResult
from sandbox.workspace import scrub

__all__ = ["DockerBackend", "default_url"]

log = logging.getLogger(__name__)

RUN_UID = 65534
KEEPER_UID = 65533
_LABEL = "astr-ray.sandbox"
# The limits, then the command; when it ends, whatever it left running goes too (every
# process of the run uid but this shell; pid 1 belongs to another uid).
_WRAPPER = (
    'ulimit -H -t $(($1 + 1)) 2>/dev/null; ulimit -S -t "$1" 2>/dev/null; '
    'ulimit -f "$2" 2>/dev/null; ulimit -v "$3" 2>/dev/null; shift 3; '
    '"$@"; rc=$?; kill -9 -1 2>/dev/null; exit $rc'
)
_KILL_GRACE_S = 5.0


def default_url(cfg: SandboxConfig) -> str:
    return cfg.docker_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _client(url: str, timeout: int = 60) -> Any:
    try:
        import docker
    except ImportError as exc:
        raise SandboxError("the `docker` Python package is not installed") from exc
    return docker.DockerClient(base_url=url, timeout=timeout)


def _run_user() -> tuple[int, int]:
    """Who runs the code: the runtime's own uid (so the bind mount is writable), or
    65534 when the runtime is root (the workspace is then handed over by chown)."""
    uid = os.getuid()
    return (RUN_UID, RUN_UID) if uid == 0 else (uid, os.getgid())


def _hand_over(workspace: Path, uid: int, gid: int) -> None:
    """chown the workspace tree to the run uid (root only); links are not followed."""
    for dirpath, dirs, files in os.walk(workspace):
        for name in (dirpath, *(os.path.join(dirpath, n) for n in dirs + files)):
            with contextlib.suppress(OSError):
                st = os.lstat(name)
                if st.st_uid != uid or st.st_gid != gid:
                    os.chown(name, uid, gid, follow_symlinks=False)


def _prepare(workspace: Path) -> Path:
    workspace.mkdir(parents=True, exist_ok=True)
    return workspace.resolve()


@dataclass
class _Warm:
    container_id: str
    spec: tuple[Any, ...]
    last_used: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DockerBackend:
    """Runs code in per-session Docker containers (see the module docstring)."""

    name = "docker"
    safe = True

    def __init__(self, cfg: SandboxConfig) -> None:
        self.cfg = cfg
        self.url = default_url(cfg)
        self.image = cfg.docker_image
        self.idle_s = cfg.idle_s
        self.user = _run_user()
        self._user_spec = f"{self.user[0]}:{self.user[1]}"
        self._client: Any = None
        self._warm: dict[str, _Warm] = {}

    @staticmethod
    def available(cfg: SandboxConfig) -> str | None:
        """None when the engine answers and has the image, else why not. Blocking."""
        url = default_url(cfg)
        if url.startswith("unix://") and not os.path.exists(url.removeprefix("unix://")):
            return f"no Docker engine reachable at {url} (no such socket)"
        try:
            client = _client(url, timeout=5)
        except SandboxError as exc:
            return exc.message
        except Exception as exc:
            return f"no Docker engine reachable at {url}: {exc}"
        try:
            client.ping()
        except Exception as exc:
            return f"no Docker engine reachable at {url}: {exc}"
        try:
            client.images.get(cfg.docker_image)
        except Exception as exc:
            return (
                f"Docker image {cfg.docker_image} is missing ({type(exc).__name__}); "
                "build it with `python -m sandbox.image`"
            )
        finally:
            client.close()
        return None

    # -- containers (blocking helpers, run in threads) ---------------------------------

    def _api(self) -> Any:
        if self._client is None:
            self._client = _client(self.url)
        return self._client.api

    def _create(self, session: str, workspace: Path, limits: Limits) -> str:
        api = self._api()
        digest = hashlib.sha256(session.encode()).hexdigest()[:16]
        name = f"astr-sbx-{digest}"
        with contextlib.suppress(Exception):  # a leftover of an earlier executor
            api.remove_container(name, force=True)
        mem = f"{limits.memory_mb}m"
        host_config = api.create_host_config(
            binds={str(workspace): {"bind": "/workspace", "mode": "rw"}},
            network_mode="bridge" if limits.network else "none",
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={mem},mode=1777"},
            mem_limit=mem,
            memswap_limit=mem,
            pids_limit=limits.max_processes + 2,  # + tini and sleep
            nano_cpus=1_000_000_000,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            init=True,
            ipc_mode="private",
        )
        created = api.create_container(
            self.image,
            command=["sleep", "infinity"],
            name=name,
            user=f"{KEEPER_UID}:{KEEPER_UID}",
            working_dir="/workspace",
            hostname="sandbox",
            environment={"HOME": "/workspace"},
            labels={_LABEL: "1", f"{_LABEL}.session": digest},
            host_config=host_config,
            network_disabled=not limits.network,
        )
        cid: str = created["Id"]
        api.start(cid)
        return cid

    def _remove(self, container_id: str) -> None:
        with contextlib.suppress(Exception):
            self._api().remove_container(container_id, force=True)

    def _kill_runs(self, container_id: str) -> None:
        """SIGKILL every process of the run uid in the container (not pid 1)."""
        api = self._api()
        with contextlib.suppress(Exception):
            ex = api.exec_create(
                container_id, ["/bin/sh", "-c", "kill -9 -1"], user=self._user_spec
            )
            api.exec_start(ex["Id"], detach=True)

    def _oom_since(self, container_id: str, since: float) -> bool:
        """Whether the container's memory cgroup OOM-killed anything since ``since``."""
        try:
            events = self._api().events(
                since=f"{since:.9f}",
                until=f"{time.time():.9f}",
                filters={"container": container_id, "event": "oom"},
                decode=True,
            )
            return any(True for _ in events)
        except Exception:
            return False

    def _exec(
        self, container_id: str, argv: list[str], stdin: bytes, limits: Limits
    ) -> tuple[int | None, OutputCap, KillReason | None, bool]:
        """Run one exec to its end or its limits: (exit code, output, kill, OOM seen)."""
        api = self._api()
        wall_start = time.time()
        cmd = [
            "/bin/sh",
            "-c",
            _WRAPPER,
            "sh",
            str(limits.cpu_s),
            str(limits.file_size_mb * 2048),  # 512-byte blocks
            str(limits.memory_mb * 1024),  # KiB
            *argv,
        ]
        ex = api.exec_create(
            container_id,
            cmd,
            stdin=True,
            user=self._user_spec,
            workdir="/workspace",
            environment={
                "HOME": "/workspace",
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
            },
        )
        exec_id = ex["Id"]
        raw = api.exec_start(exec_id, socket=True)
        sock: socket.socket = getattr(raw, "_sock", raw)
        cap = OutputCap(limits.max_output_bytes)
        killed: KillReason | None = None
        deadline = time.monotonic() + limits.timeout_s
        killed_at = 0.0

        def send() -> None:
            with contextlib.suppress(OSError):
                if stdin:
                    sock.sendall(stdin)
                sock.shutdown(socket.SHUT_WR)

        threading.Thread(target=send, daemon=True, name="sandbox-stdin").start()
        buf = bytearray()
        try:
            while True:
                now = time.monotonic()
                if killed is None and now > deadline:
                    killed, killed_at = "timeout", now
                    self._kill_runs(container_id)
                if killed is not None and now - killed_at > _KILL_GRACE_S:
                    break  # the stream did not end after the kill: stop waiting
                ready, _, _ = select.select([sock], [], [], 0.1)
                if not ready:
                    continue
                data = sock.recv(65536)
                if not data:
                    break
                buf += data
                while len(buf) >= 8:
                    kind, size = struct.unpack(">BxxxL", buf[:8])
                    if len(buf) < 8 + size:
                        break
                    chunk = bytes(buf[8 : 8 + size])
                    del buf[: 8 + size]
                    runaway = cap.feed("stderr" if kind == 2 else "stdout", chunk)
                    if runaway and killed is None:
                        killed, killed_at = "output", time.monotonic()
                        self._kill_runs(container_id)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with contextlib.suppress(Exception):
                raw.close()
        code: int | None = None
        for _ in range(50):
            info = api.exec_inspect(exec_id)
            if not info.get("Running"):
                code = info.get("ExitCode")
                break
            time.sleep(0.05)
        oom = code not in (0, None) and killed is None and self._oom_since(container_id, wall_start)
        return code, cap, killed, oom

    # -- the Backend interface -----------------------------------------------------------

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
        workspace = await asyncio.to_thread(_prepare, workspace)
        spec = (str(workspace), limits.network, limits.memory_mb, limits.max_processes)
        warm = self._warm.get(session)
        if warm is None:
            warm = self._warm[session] = _Warm("", spec, time.monotonic())
        async with warm.lock:
            if os.getuid() == 0:
                await asyncio.to_thread(_hand_over, workspace, *self.user)
            started = time.monotonic()
            try:
                if warm.container_id and warm.spec != spec:
                    await asyncio.to_thread(self._remove, warm.container_id)
                    warm.container_id = ""
                if not warm.container_id:
                    warm.container_id = await asyncio.to_thread(
                        self._create, session, workspace, limits
                    )
                    warm.spec = spec
                try:
                    code, cap, killed, oom = await asyncio.to_thread(
                        self._exec, warm.container_id, argv, stdin, limits
                    )
                except Exception as exc:
                    if getattr(exc, "status_code", None) not in (404, 409):  # gone, stopped
                        raise
                    log.info("warm container of %s is gone; starting a new one", session)
                    warm.container_id = await asyncio.to_thread(
                        self._create, session, workspace, limits
                    )
                    code, cap, killed, oom = await asyncio.to_thread(
                        self._exec, warm.container_id, argv, stdin, limits
                    )
            except SandboxError:
                raise
            except Exception as exc:
                raise SandboxError(f"docker run failed: {exc}", session=session) from exc
            finally:
                warm.last_used = time.monotonic()
                await asyncio.to_thread(scrub, workspace)
        return make_result(code, killed, cap, limits, time.monotonic() - started, oom=oom)

    async def reap_idle(self) -> int:
        """Remove the warm containers unused for ``idle_s``; returns how many."""
        now = time.monotonic()
        idle = [
            s
            for s, w in self._warm.items()
            if now - w.last_used > self.idle_s and not w.lock.locked()
        ]
        for session in idle:
            await self.close_session(session)
        return len(idle)

    async def close_session(self, session: str) -> None:
        warm = self._warm.pop(session, None)
        if warm is not None and warm.container_id:
            await asyncio.to_thread(self._remove, warm.container_id)

    async def close(self) -> None:
        for session in list(self._warm):
            await self.close_session(session)
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)

    def describe(self) -> dict[str, Any]:
        return {
            "isolation": "docker: a container per session, read-only root, no capabilities, "
            "no-new-privileges, non-root user, only the session workspace writable",
            "network": "none (network_mode=none) unless sandbox.network",
            "image": self.image,
            "engine": self.url,
            "warm_containers": sum(1 for w in self._warm.values() if w.container_id),
        }
