"""Run one host process under a wall clock and an output cap; shared by bwrap and local.

The process starts in a new session (its own process group). It ends when its main
process exits, when the wall clock runs out, or when it prints far past the cap
("runaway", see ``runaway_bytes``); then its whole process group is killed, plus
whatever ``kill_extra`` reaches (a cgroup, a pid namespace's init).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from astr_ray.errors import SandboxError
from sandbox.base import KillReason, Limits, RunResult

__all__ = ["OutputCap", "classify", "kill_note", "run_process", "runaway_bytes"]

_CHUNK = 64 * 1024
# After the main process is gone, how long its pipes may stay open (a background child
# still writing) before the group is killed and reading stops.
_DRAIN_S = 1.0
_MEMORY_HINT = re.compile(
    rb"MemoryError|Cannot allocate memory|std::bad_alloc|out of memory", re.IGNORECASE
)


def runaway_bytes(limit: int) -> int:
    """Output beyond which a run is killed rather than merely truncated."""
    return max(8 * limit, 1 << 20)


class OutputCap:
    """Keeps the first ``limit`` bytes of stdout and stderr together; counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = {"stdout": bytearray(), "stderr": bytearray()}
        self.seen = 0
        self.truncated = False

    def feed(self, stream: str, data: bytes) -> bool:
        """Record ``data``; True when the total is past the runaway threshold."""
        room = self.limit - sum(len(b) for b in self.kept.values())
        if len(data) > room:
            self.truncated = True
        if room > 0:
            self.kept[stream] += data[:room]
        self.seen += len(data)
        return self.seen > runaway_bytes(self.limit)

    def text(self, stream: str) -> str:
        return self.kept[stream].decode("utf-8", errors="replace")


def kill_note(reason: KillReason | None, limits: Limits) -> str:
    """Why the backend itself killed a run (wall clock, runaway output), for the LLM."""
    if reason == "timeout":
        return f"it ran past its wall-clock limit of {limits.timeout_s:g} s"
    if reason == "output":
        return (
            f"it printed more than {runaway_bytes(limits.max_output_bytes)} bytes "
            f"(limit {limits.max_output_bytes} bytes kept)"
        )
    return ""


def classify(
    returncode: int, stderr: bytes, limits: Limits, *, oom: bool = False
) -> tuple[KillReason | None, str]:
    """Why a process that ended on its own died, judged from its status: (reason, note)."""
    if oom or (returncode != 0 and _MEMORY_HINT.search(stderr[-4096:])):
        return "memory", f"it ran out of memory (limit {limits.memory_mb} MiB)"
    if returncode == 128 + signal.SIGXCPU:
        return "timeout", f"it used up its CPU time ({limits.cpu_s} CPU seconds)"
    return None, ""


async def _pump(
    reader: asyncio.StreamReader | None, stream: str, cap: OutputCap, runaway: asyncio.Event
) -> None:
    if reader is None:
        return
    while data := await reader.read(_CHUNK):
        if cap.feed(stream, data):
            runaway.set()


async def _feed(writer: asyncio.StreamWriter | None, data: bytes) -> None:
    if writer is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The stream protocol, plus a future resolved as soon as the process exits."""

    def __init__(self, exited: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=_CHUNK, loop=loop)
        self._exited = exited

    def process_exited(self) -> None:
        super().process_exited()
        if not self._exited.done():
            self._exited.set_result(None)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    stdin: bytes,
    limits: Limits,
    kill_extra: Callable[[], None] | None = None,
    oom_check: Callable[[], bool] | None = None,
) -> RunResult:
    """Run ``argv`` to its end or its limits and report it. ``kill_extra`` is called
    (from the event loop, it must not block for long) whenever the group is killed, and
    once more at the end; ``oom_check`` tells whether the kernel's OOM killer struck."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    main_exited = loop.create_future()
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: _Protocol(main_exited, loop),
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        proc = asyncio.subprocess.Process(transport, protocol, loop)
    except OSError as exc:
        raise SandboxError(f"could not start {argv[0]}: {exc}") from exc

    def kill() -> None:
        _kill_group(proc.pid)
        if kill_extra is not None:
            kill_extra()

    cap = OutputCap(limits.max_output_bytes)
    runaway = asyncio.Event()
    readers = [
        asyncio.create_task(_pump(proc.stdout, "stdout", cap, runaway)),
        asyncio.create_task(_pump(proc.stderr, "stderr", cap, runaway)),
    ]
    feeder = asyncio.create_task(_feed(proc.stdin, stdin))
    # Not ``proc.wait()``: that also waits for the pipes, which a background child
    # may hold open long after the main process is gone.
    exited = asyncio.ensure_future(main_exited)
    flooded = asyncio.create_task(runaway.wait())
    killed: KillReason | None = None
    try:
        done, _ = await asyncio.wait(
            {exited, flooded}, timeout=limits.timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if exited not in done:
            killed = "output" if runaway.is_set() else "timeout"
            kill()
        await exited
        _, pending = await asyncio.wait(readers, timeout=_DRAIN_S)
        if pending:  # a leftover child keeps the pipes open: end it, stop reading
            kill()
            await asyncio.wait(pending, timeout=_DRAIN_S)
    finally:
        kill()  # whatever is left of the group; idempotent
        for task in (*readers, feeder, exited, flooded):
            task.cancel()
        await asyncio.gather(*readers, feeder, flooded, return_exceptions=True)
        if proc.returncode is None:  # cancelled before it ended
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), _DRAIN_S)
        transport.close()
    duration = time.monotonic() - started

    rc = proc.returncode
    assert rc is not None
    code = 128 - rc if rc < 0 else rc
    oom = oom_check() if killed is None and oom_check is not None else False
    return make_result(code, killed, cap, limits, duration, oom=oom)


def make_result(
    code: int | None,
    killed: KillReason | None,
    cap: OutputCap,
    limits: Limits,
    duration: float,
    *,
    oom: bool = False,
) -> RunResult:
    """The result of a run: killed by us (time-out, output), else the exit code read
    for a kill we did not do ourselves (memory, CPU time), with its note."""
    we_killed = killed is not None
    note = kill_note(killed, limits)
    if not we_killed and code is not None:
        killed, note = classify(code, bytes(cap.kept["stderr"]), limits, oom=oom)
    return RunResult(
        exit_code=None if we_killed else code,
        stdout=cap.text("stdout"),
        stderr=cap.text("stderr"),
        timed_out=killed == "timeout",
        killed=killed,
        duration_s=duration,
        truncated=cap.truncated,
        note=note,
    )
