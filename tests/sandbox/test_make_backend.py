"""Choosing a backend: auto, explicit, none; probe."""

from __future__ import annotations

import subprocess
import sys

import pytest

from astr_ray.config import SandboxConfig
from astr_ray.errors import SandboxError
from sandbox import (
    BubblewrapBackend,
    DockerBackend,
    SubprocessBackend,
    make_backend,
    probe,
)

NO_ENGINE = "unix:///nonexistent/docker.sock"


async def test_none_and_explicit_choices(bwrap_backend: BubblewrapBackend):
    assert make_backend(SandboxConfig(backend="none")) is None
    b = make_backend(SandboxConfig(backend="bwrap"))
    assert isinstance(b, BubblewrapBackend)
    await b.close()
    s = make_backend(SandboxConfig(backend="subprocess"))
    assert isinstance(s, SubprocessBackend) and not s.safe


async def test_auto_falls_back_to_bwrap_without_docker(bwrap_backend: BubblewrapBackend):
    b = make_backend(SandboxConfig(backend="auto", docker_url=NO_ENGINE))
    assert isinstance(b, BubblewrapBackend)
    await b.close()


def test_explicit_docker_unavailable_says_why():
    with pytest.raises(SandboxError, match=r"docker sandbox is unavailable.*no Docker engine"):
        make_backend(SandboxConfig(backend="docker", docker_url=NO_ENGINE))
    reason = DockerBackend.available(SandboxConfig(docker_url=NO_ENGINE))
    assert reason is not None and NO_ENGINE in reason


def test_missing_image_is_a_reason(docker_backend: DockerBackend):
    cfg = SandboxConfig(docker_url=docker_backend.url, docker_image="astr-ray-no-such:0")
    reason = DockerBackend.available(cfg)
    assert reason is not None and "astr-ray-no-such:0" in reason


def test_probe_lists_every_backend(bwrap_backend: BubblewrapBackend):
    found = probe(SandboxConfig(docker_url=NO_ENGINE))
    assert set(found) == {"docker", "bwrap", "subprocess"}
    assert found["bwrap"] is None and found["docker"] is not None


def test_importing_the_package_starts_nothing_heavy():
    code = "import sys, sandbox; print(sorted(m for m in ('ray', 'docker') if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"  # no Ray; the Docker SDK only when used
