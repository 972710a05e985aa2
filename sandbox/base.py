"""The vocabulary every backend shares: the limits of a run, its result, the interface.

A backend runs one command in one session's workspace and always returns a
``RunResult`` (a run that failed, timed out or was killed is a result, not an error);
``SandboxError`` means the backend itself could not run it (engine down, bad argv).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from astr_ray.config import SandboxConfig

__all__ = ["Backend", "KillReason", "Limits", "RunResult"]

KillReason = Literal["timeout", "memory", "output"]


@dataclass(frozen=True)
class Limits:
    """What one run may use. ``max_output_bytes`` counts stdout and stderr together.

    ``file_size_mb`` caps any single file the run writes (RLIMIT_FSIZE); it defaults to
    the session's workspace quota, which bounds what one run can leave behind.
    """

    timeout_s: float
    memory_mb: int
    cpu_s: int
    max_processes: int
    max_output_bytes: int
    network: bool
    file_size_mb: int = 200

    @classmethod
    def from_config(cls, cfg: SandboxConfig) -> Limits:
        return cls(
            timeout_s=cfg.timeout_s,
            memory_mb=cfg.memory_mb,
            cpu_s=cfg.cpu_s,
            max_processes=cfg.max_processes,
            max_output_bytes=cfg.max_output_kb * 1024,
            network=cfg.network,
            file_size_mb=cfg.workspace_mb,
        )


@dataclass
class RunResult:
    """The outcome of one run.

    ``exit_code`` is the command's status (a signal ``n`` reads ``128 + n``, as in a
    shell), or None when the backend killed it (``killed`` says why). ``timed_out`` is
    true when the wall-clock or CPU-time limit ended the run. ``truncated`` means output
    beyond ``max_output_bytes`` was discarded. ``note`` is a human explanation of a
    kill (which limit, its value), empty otherwise.
    """

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    killed: KillReason | None
    duration_s: float
    truncated: bool
    note: str = ""

    def summary(self) -> str:
        """A compact text for an LLM: the exit status, both outputs, and a clear line
        when the run was killed (and why) or its output cut."""
        lines: list[str] = []
        if self.killed is not None:
            why = (
                self.note
                or {
                    "timeout": "it ran past its time limit",
                    "memory": "it ran out of memory (memory limit)",
                    "output": "it printed far more than the output limit",
                }[self.killed]
            )
            lines.append(f"KILLED ({self.killed}): {why}")
        status = "none (killed)" if self.exit_code is None else str(self.exit_code)
        lines.append(f"exit code: {status}   time: {self.duration_s:.2f}s")
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text:
                lines.append(f"--- {name} ---")
                lines.append(text.rstrip("\n"))
        if not self.stdout and not self.stderr:
            lines.append("(no output)")
        if self.truncated:
            lines.append("[output truncated: the rest was discarded; write big results to a file]")
        return "\n".join(lines)


@runtime_checkable
class Backend(Protocol):
    """One way to run code. Implementations: docker, bwrap (isolated), subprocess (not).

    ``safe`` is False for a backend that does not isolate the code from the host.
    ``run`` never raises for what the code does (exit status, time-outs, kills are in
    the result); it raises ``SandboxError`` when it could not start the run at all.
    ``close_session`` and ``close`` are idempotent.
    """

    name: str
    safe: bool

    async def run(
        self,
        workspace: Path,
        argv: list[str],
        *,
        stdin: bytes = b"",
        limits: Limits,
        session: str,
    ) -> RunResult: ...

    async def close_session(self, session: str) -> None: ...

    async def close(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...
