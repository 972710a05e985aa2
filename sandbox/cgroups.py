"""Per-run cgroups (pids, memory) for the bubblewrap and subprocess backends.

Why: RLIMIT_NPROC is not enforced for processes whose real uid is the host's root,
and bubblewrap run by root maps the sandbox's uid to root (measured: a fork loop under
``prlimit --nproc=10`` inside bwrap-as-root forks freely). A pids cgroup bounds the
whole tree whoever runs it; a memory cgroup bounds the tree's total memory (and its
tmpfs) where RLIMIT_AS only bounds each process, and tells an OOM kill apart.

Where this process may create cgroups (root with cgroup v1, or a v2 subtree with the
controllers delegated) each run gets ``<own cgroup>/astr-sandbox/run-…`` per
controller; the command enters it through a tiny ``/bin/sh`` step before exec, so
nothing runs outside it. Elsewhere ``CgroupLimiter.reason`` says why not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
from pathlib import Path

__all__ = ["CgroupLimiter", "RunCgroup"]

_ROOT = Path("/sys/fs/cgroup")
_GROUP = "astr-sandbox"
_CONTROLLERS = ("pids", "memory")
_counter = itertools.count()
# Writes the shell's own pid into each cgroup given, then becomes the command.
_ENTER = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs" || exit 125; '
    'shift; n=$((n - 1)); done; exec "$@"'
)


def _own_paths() -> dict[str, str]:
    """controller ("" for the v2 hierarchy) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    return paths


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
    except OSError:
        return False
    return True


def _sweep(group: Path) -> None:
    """Remove run cgroups left by processes that died without cleaning up."""
    with contextlib.suppress(OSError):
        for d in group.iterdir():
            m = re.fullmatch(r"run-(\d+)-\d+", d.name)
            if m and d.is_dir() and not Path(f"/proc/{m.group(1)}").exists():
                with contextlib.suppress(OSError):
                    d.rmdir()


class RunCgroup:
    """The cgroups of one run: enter them, kill everything in them, remove them."""

    def __init__(self, dirs: dict[str, Path], version: int) -> None:
        self.dirs = dirs
        self.version = version

    def enter_argv(self) -> list[str]:
        """Prefix for argv: the command starts already inside the cgroups."""
        dirs = sorted({str(d) for d in self.dirs.values()})
        return ["/bin/sh", "-c", _ENTER, "sh", str(len(dirs)), *dirs]

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return sorted(found)

    def kill(self) -> None:
        """SIGKILL every process in the run's cgroups (non-blocking, idempotent)."""
        for d in self.dirs.values():
            if (d / "cgroup.kill").exists() and _write(d / "cgroup.kill", "1"):
                return
        for _ in range(8):  # a fork loop may add processes while we kill
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def oom_killed(self) -> bool:
        """True when the kernel's OOM killer struck inside the run's memory cgroup."""
        d = self.dirs.get("memory")
        if d is None:
            return False
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        with contextlib.suppress(OSError, ValueError):
            for line in (d / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value) > 0
        return False

    async def remove(self) -> None:
        """Kill what is left and remove the cgroups (waits up to ~2 s for the dead)."""
        left = set(self.dirs.values())
        for _ in range(100):
            self.kill()
            for d in list(left):
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:  # EBUSY: processes still being reaped
                    continue
                left.discard(d)
            if not left:
                return
            await asyncio.sleep(0.02)


class CgroupLimiter:
    """Finds where this process may create per-run cgroups and creates them."""

    def __init__(self) -> None:
        self.version = 0
        self.bases: dict[str, Path] = {}
        self.reason: str | None = None
        try:
            self._detect()
        except OSError as exc:
            self.reason = f"cgroups unusable: {exc}"
        if not self.bases and self.reason is None:
            self.reason = "no writable pids or memory cgroup controller"

    def _detect(self) -> None:
        own = _own_paths()
        v1 = {c: _ROOT / c / own[c].lstrip("/") for c in _CONTROLLERS if c in own}
        if v1:
            self.version = 1
            for c, base in v1.items():
                group = base / _GROUP
                with contextlib.suppress(OSError):
                    group.mkdir(exist_ok=True)
                if os.access(group, os.W_OK):
                    self.bases[c] = group
                    _sweep(group)
            if not self.bases:
                self.reason = "cgroup v1: cannot create cgroups (not root?)"
            return
        if "" in own and (_ROOT / "cgroup.controllers").exists():
            self.version = 2
            base = _ROOT / own[""].lstrip("/")
            group = base / _GROUP
            with contextlib.suppress(OSError):
                group.mkdir(exist_ok=True)
            wanted = " ".join(f"+{c}" for c in _CONTROLLERS)
            _write(base / "cgroup.subtree_control", wanted)
            _write(group / "cgroup.subtree_control", wanted)
            try:
                enabled = (group / "cgroup.subtree_control").read_text().split()
            except OSError as exc:
                self.reason = f"cgroup v2: cannot create cgroups here ({exc.strerror})"
                return
            for c in _CONTROLLERS:
                if c in enabled:
                    self.bases[c] = group
            _sweep(group)
            if not self.bases:
                self.reason = "cgroup v2: the pids/memory controllers are not delegated here"
            return
        self.reason = "no cgroup hierarchy found"

    def describe(self) -> str:
        if not self.bases:
            return f"none ({self.reason})"
        return f"cgroup v{self.version}: {', '.join(sorted(self.bases))}"

    def create(self, *, pids_max: int, memory_mb: int) -> RunCgroup | None:
        """A fresh cgroup per controller with its limits set; None if none could be made."""
        if not self.bases:
            return None
        name = f"run-{os.getpid()}-{next(_counter)}"
        dirs: dict[str, Path] = {}
        for c, base in self.bases.items():
            d = base / name
            if d not in dirs.values():  # v2: one cgroup holds both controllers
                try:
                    d.mkdir()
                except OSError:
                    continue
            ok = True
            if c == "pids":
                ok = _write(d / "pids.max", str(pids_max))
            elif self.version == 1:
                ok = _write(d / "memory.limit_in_bytes", str(memory_mb << 20))
                _write(d / "memory.memsw.limit_in_bytes", str(memory_mb << 20))  # if swap
            else:
                ok = _write(d / "memory.max", str(memory_mb << 20))
                _write(d / "memory.swap.max", "0")
            if ok:
                dirs[c] = d
            elif d not in dirs.values():
                with contextlib.suppress(OSError):
                    d.rmdir()
        return RunCgroup(dirs, self.version) if dirs else None
