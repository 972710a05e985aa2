"""Real sandboxes, no mocks: bubblewrap always (CI fails rather than skips without it),
Docker when an engine with the sandbox image answers (else a visible skip)."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from astr_ray.config import SandboxConfig
from sandbox import Backend, BubblewrapBackend, DockerBackend, Limits, Workspace


def need(reason: str | None, what: str, *, required_in_ci: bool) -> None:
    """Skip with ``reason`` (FAIL instead when CI is set and the thing is required)."""
    if reason is None:
        return
    message = f"{what} unavailable: {reason}"
    if required_in_ci and os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def limits(**overrides: Any) -> Limits:
    base: dict[str, Any] = {
        "timeout_s": 20.0,
        "memory_mb": 256,
        "cpu_s": 10,
        "max_processes": 32,
        "max_output_bytes": 64 * 1024,
        "network": False,
        "file_size_mb": 16,
    }
    base.update(overrides)
    return Limits(**base)


def docker_config() -> SandboxConfig:
    url = os.environ.get("ASTR_TEST_DOCKER_URL")
    return SandboxConfig(backend="docker", docker_url=url, idle_s=600)


@pytest.fixture(scope="session")
async def bwrap_backend() -> AsyncIterator[BubblewrapBackend]:
    if shutil.which("bwrap") is None:
        need(
            "`bwrap` is not installed (apt-get install bubblewrap)",
            "bubblewrap",
            required_in_ci=True,
        )
    need(BubblewrapBackend.available(), "bubblewrap", required_in_ci=True)
    backend = BubblewrapBackend()
    yield backend
    await backend.close()


@pytest.fixture(scope="session")
async def docker_backend() -> AsyncIterator[DockerBackend]:
    cfg = docker_config()
    need(DockerBackend.available(cfg), "Docker", required_in_ci=False)
    backend = DockerBackend(cfg)
    yield backend
    await backend.close()


@pytest.fixture(params=["bwrap", "docker"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every isolated backend, each test once per backend."""
    b: Backend = request.getfixturevalue(f"{request.param}_backend")
    return b


@pytest.fixture
def session() -> str:
    return f"test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def workspace(tmp_path: Path, session: str) -> Workspace:
    return Workspace(tmp_path / "workspaces", session, quota_mb=8)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A real TCP server on the host's loopback that sandboxed code must not reach."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        srv.setblocking(False)
        yield srv


def host_pids_matching(marker: str) -> list[int]:
    """Host processes whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and int(entry) != os.getpid():
            found.append(int(entry))
    return found
