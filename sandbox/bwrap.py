"""Bubblewrap: the default isolation, one short-lived sandbox per run.

What the code sees and may do::

    /usr, /bin, /lib*, /sbin    the host's, read-only (symlinks kept as on the host)
    <python prefix>             the runtime's own interpreter, read-only, same path
                                (pyenv, /opt...; nothing extra when it is under /usr)
    /etc                        a few read-only files (ld.so, ssl, alternatives...) and
                                private passwd/group/hosts; never the host's /etc
    /workspace                  the session's folder, read-write, the working dir
    /tmp, /dev/shm              private tmpfs, sized to the memory limit
    /proc, /dev                 its own (new pid namespace, minimal devices)

Nothing else of the host (not /root, /home, /work, the data dir). When root runs
bwrap, the sandbox uid maps to the host's root, so it passes owner checks on the
read-only binds (a root-only file under /usr would be readable): the binds are limited
to what holds no secrets for that reason (``/etc/ssl/private`` is left out). Namespaces: user
(uid/gid 65534, all capabilities dropped, no nested user namespaces), pid, ipc, uts,
cgroup, and net: no network at all, not even the host's loopback, unless
``limits.network`` (then ``--share-net``).

Limits: ``prlimit`` inside sets RLIMIT_AS (memory_mb), RLIMIT_CPU (cpu_s; SIGXCPU,
then SIGKILL a second later), RLIMIT_FSIZE, RLIMIT_NPROC and no core files. Because
RLIMIT_NPROC does not hold for the host's root (bwrap run by root maps the sandbox uid
to root), each run also gets a pids + memory cgroup where this process may create one
(``sandbox.cgroups``). The wall clock kills the process group; ``--die-with-parent``
and the pid namespace take every descendant down with it, also when the command simply
ends. Afterwards ``workspace.scrub`` clears any setuid/setgid bit the code set (the
files belong to the host's root when root runs bwrap).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from astr_ray.errors import SandboxError
from sandbox._process import run_process
from sandbox.base import Limits, RunResult
from sandbox.cgroups import CgroupLimiter, RunCgroup
from sandbox.workspace import scrub

__all__ = ["BubblewrapBackend"]

log = logging.getLogger(__name__)

SANDBOX_UID = 65534
_SYSTEM = ("/usr",)
_TOP_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "timezone",
    "nsswitch.conf",
    "mime.types",
    "protocols",
    "services",
    "ssl/certs",  # not ssl/private: keys live there
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
    "os-release",
    "debian_version",
)
_ETC_NETWORK = ("resolv.conf", "host.conf", "gai.conf")
_PRIVATE_ETC = {
    "passwd": f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/workspace:/bin/sh\n",
    "group": f"sandbox:x:{SANDBOX_UID}:\n",
    "hosts": "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost\n",
}
# The sh step (cgroups) and bwrap's own two processes count against pids.max.
_OVERHEAD_PIDS = 2


def _python_prefix() -> Path | None:
    """Where the runtime's interpreter is installed, when /usr does not already hold it.

    ``sys.base_prefix`` is the real installation behind a venv (pyenv's
    ``~/.pyenv/versions/X``, a /opt build...). Its ``bin/python3`` has an absolute
    RUNPATH to its ``lib``, so it is bound at the same path rather than moved."""
    prefix = Path(sys.base_prefix).resolve()
    if any(prefix.is_relative_to(s) for s in _SYSTEM):
        return None
    return prefix if (prefix / "bin").is_dir() else None


class BubblewrapBackend:
    """Runs each command in a fresh bubblewrap sandbox (see the module docstring)."""

    name = "bwrap"
    safe = True

    def __init__(self, bwrap: str | None = None) -> None:
        found = bwrap or shutil.which("bwrap")
        if found is None:
            raise SandboxError("bubblewrap is not installed (Debian: apt-get install bubblewrap)")
        self.bwrap = found
        prlimit = shutil.which("prlimit", path="/usr/bin:/bin")
        if prlimit is None:
            raise SandboxError("prlimit (util-linux) is missing from /usr/bin")
        self.prlimit = prlimit
        self.python = _python_prefix()
        self.cgroups = CgroupLimiter()
        if self.cgroups.reason and os.geteuid() == 0:
            log.warning(
                "bwrap as root without cgroups (%s): the process limit is not enforced, "
                "only the time limit stops a fork bomb",
                self.cgroups.reason,
            )
        self._etc = Path(tempfile.mkdtemp(prefix="astr-sandbox-etc-"))
        for name, text in _PRIVATE_ETC.items():
            (self._etc / name).write_text(text)
            (self._etc / name).chmod(0o644)
        self._etc.chmod(0o755)

    @staticmethod
    def available(bwrap: str | None = None) -> str | None:
        """None when bubblewrap runs ``true`` in a sandbox here, else why not.

        Blocking (starts one sandbox, ~50 ms); the answer is cached per process."""
        return _probe(bwrap or shutil.which("bwrap") or "")

    def argv(self, workspace: Path, command: list[str], limits: Limits) -> list[str]:
        """The full bwrap command line for one run (public for tests and ``describe``)."""
        a = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns"]
        a += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL"]
        a += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
        if limits.network:
            a += ["--share-net"]
        for path in _SYSTEM:
            a += ["--ro-bind", path, path]
        for top in _TOP_LINKS:
            if os.path.islink(top):
                a += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                a += ["--ro-bind", top, top]
        if self.python is not None:
            a += ["--ro-bind", str(self.python), str(self.python)]
        a += ["--dir", "/etc"]
        for name in _ETC + (_ETC_NETWORK if limits.network else ()):
            if os.path.exists(f"/etc/{name}"):
                a += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        for name in _PRIVATE_ETC:
            a += ["--ro-bind", str(self._etc / name), f"/etc/{name}"]
        size = str(limits.memory_mb << 20)
        a += ["--proc", "/proc", "--dev", "/dev"]
        a += ["--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", "/dev/shm"]
        a += ["--bind", str(workspace), "/workspace", "--chdir", "/workspace"]
        a += ["--remount-ro", "/"]  # bwrap's own root tmpfs (and so /etc) read-only too
        path = "/usr/local/bin:/usr/bin:/bin"
        if self.python is not None:
            path = f"{self.python}/bin:{path}"
        env = {
            "PATH": path,
            "HOME": "/workspace",
            "TMPDIR": "/tmp",
            "USER": "sandbox",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        a += ["--clearenv"]
        for key, value in env.items():
            a += ["--setenv", key, value]
        mib = 1 << 20
        a += [
            "--",
            self.prlimit,
            f"--as={limits.memory_mb * mib}",
            f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
            f"--nproc={limits.max_processes}",
            f"--fsize={limits.file_size_mb * mib}",
            "--core=0",
            "--",
            *command,
        ]
        return a

    def _prepare(
        self, workspace: Path, argv: list[str], limits: Limits
    ) -> tuple[list[str], RunCgroup | None]:
        """The workspace made, the run's cgroup made, the command line (blocking)."""
        workspace.mkdir(parents=True, exist_ok=True)
        cgroup = self.cgroups.create(
            pids_max=limits.max_processes + _OVERHEAD_PIDS, memory_mb=limits.memory_mb
        )
        full = self.argv(workspace.resolve(), argv, limits)
        if cgroup is not None:
            full = cgroup.enter_argv() + full
        return full, cgroup

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
        full, cgroup = await asyncio.to_thread(self._prepare, workspace, argv, limits)
        try:
            result = await run_process(
                full,
                cwd=workspace,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                stdin=stdin,
                limits=limits,
                kill_extra=cgroup.kill if cgroup is not None else None,
                oom_check=cgroup.oom_killed if cgroup is not None else None,
            )
        finally:
            if cgroup is not None:
                await cgroup.remove()
            await asyncio.to_thread(scrub, workspace)
        if cgroup is not None and result.exit_code == 125 and "cgroup.procs" in result.stderr:
            raise SandboxError(f"could not enter the run's cgroup: {result.stderr.strip()}")
        if result.exit_code == 1 and result.stderr.startswith("bwrap:"):
            raise SandboxError(f"bubblewrap refused the run: {result.stderr.strip()}")
        log.debug(
            "bwrap run session=%s exit=%s in %.3fs", session, result.exit_code, result.duration_s
        )
        return result

    async def close_session(self, session: str) -> None:
        """Nothing is kept between runs: each run's sandbox dies with it."""

    async def close(self) -> None:
        shutil.rmtree(self._etc, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        return {
            "isolation": "bubblewrap: own user/pid/net/ipc/uts namespaces, uid 65534 without "
            "capabilities, read-only system dirs, only the session workspace writable",
            "network": "none (own network namespace) unless sandbox.network",
            "process_limit": "RLIMIT_NPROC + " + self.cgroups.describe()
            if os.geteuid() != 0
            else self.cgroups.describe(),
            "python": str(self.python) if self.python else "/usr/bin/python3",
            "bwrap": self.bwrap,
        }


@functools.cache
def _probe(bwrap: str) -> str | None:
    if not bwrap:
        return "bubblewrap is not installed (Debian: apt-get install bubblewrap)"
    try:
        backend = BubblewrapBackend(bwrap)
    except SandboxError as exc:
        return exc.message
    try:
        with tempfile.TemporaryDirectory(prefix="astr-sandbox-probe-") as ws:
            limits = Limits(10.0, 256, 5, 16, 4096, False)
            argv = backend.argv(Path(ws), ["true"], limits)
            done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap did not run: {exc}"
    finally:
        shutil.rmtree(backend._etc, ignore_errors=True)
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        return f"bubblewrap cannot create a sandbox here: {err or done.returncode}"
    return None
