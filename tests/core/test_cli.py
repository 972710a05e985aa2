"""The `astr-ray` command line, run as a user would: real subprocesses."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from astr_ray.auth import Auth, AuthError
from astr_ray.store import Store
from tests.conftest import Runtime, free_port, new_session
from tests.peers.openai_server import FakeLLM

CLI = [sys.executable, "-m", "astr_ray.cli"]


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def test_init_writes_a_config_with_a_token(tmp_path: Path) -> None:
    cfg = tmp_path / "data" / "config.yaml"
    out = subprocess.run(
        [*CLI, "-c", str(cfg), "init"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    data = yaml.safe_load(cfg.read_text())
    assert data["webchat"]["token"] in out
    again = subprocess.run(
        [*CLI, "-c", str(cfg), "init"], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 2 and "exists already" in again.stderr


def test_password_prints_a_new_password_once_and_the_old_one_stops_working(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))

    def new_password() -> str:
        out = subprocess.run(
            [*CLI, "-c", str(cfg), "password"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
        )
        assert out.returncode == 0, out.stderr
        found = re.findall(r"admin / (\S+)", out.stdout)
        assert len(found) == 1, out.stdout
        assert out.stdout.count(found[0]) == 1  # printed once, nowhere else
        return str(found[0])

    async def can_log_in(password: str) -> bool:
        async with await Store.open(str(tmp_path / "data" / "astr_ray.db")) as store:
            try:
                await Auth(store).login("admin", password, "cli-test")
            except AuthError:
                return False
            return True

    first = new_password()
    assert asyncio.run(can_log_in(first))
    second = new_password()
    assert second != first and len(second) >= 10
    assert asyncio.run(can_log_in(second))
    assert not asyncio.run(can_log_in(first))


def test_chat_and_status_against_a_running_tree(runtime: Runtime, tmp_path: Path) -> None:
    s = new_session()
    out = subprocess.run(
        [
            *CLI,
            "chat",
            "--url",
            runtime.ws,
            "--token",
            runtime.token,
            "--session",
            s,
            "-m",
            "hello from the terminal",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert out.returncode == 0, out.stderr
    assert "echo: hello from the terminal (turn 1)" in out.stdout
    bad = subprocess.run(
        [*CLI, "chat", "--url", runtime.ws, "--token", "nope", "-m", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert bad.returncode == 1 and "cannot reach the bot" in bad.stderr

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"runtime": {"namespace": runtime.namespace}}))
    status = subprocess.run(
        [*CLI, "-c", str(cfg), "status", "--address", runtime.gcs_address],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert status.returncode == 0, status.stdout + status.stderr
    for name in (
        "shard-directory",
        "session-host-0",
        "session-host-1",
        "adapter-webchat",
        "provider-pool-primary",
    ):
        assert name in status.stdout
    assert "tree: ok" in status.stdout
    assert "node-0" in status.stdout and "shards=" in status.stdout


def test_dev_runs_chats_and_stops_cleanly_on_ctrl_c(tmp_path: Path, fake_llm: FakeLLM) -> None:
    """`astr-ray dev` as the README runs it: a fresh config, its own Ray, Ctrl-C."""
    cfg_path = tmp_path / "data" / "config.yaml"
    subprocess.run([*CLI, "-c", str(cfg_path), "init"], check=True, capture_output=True, timeout=60)
    data = yaml.safe_load(cfg_path.read_text())
    port = free_port()
    data.update(
        {
            "data_dir": str(tmp_path / "data"),
            "providers": [{"id": "local", "model": "openai/m", "api_base": fake_llm.base_url}],
            "webchat": {**data["webchat"], "port": port},
            "dashboard": {"port": free_port()},
            "runtime": {**data["runtime"], "namespace": "dev-test"},
            "sessions": {**data["sessions"], "hosts": 1},
        }
    )
    cfg_path.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen(
        [*CLI, "-c", str(cfg_path), "dev", "--no-ray-dashboard"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(lines)
        assert "astr-ray is up" in text, text
        assert data["webchat"]["token"] in text and f":{port}/ws/chat" in text
        chat = subprocess.run(
            [*CLI, "-c", str(cfg_path), "chat", "-m", "hi dev"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
        )
        assert "echo: hi dev (turn 1)" in chat.stdout, chat.stdout + chat.stderr
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped." in rest
    assert (tmp_path / "data" / "astr_ray.db").exists()


def test_run_joins_a_cluster_and_a_second_run_reattaches(
    ray_cluster: dict[str, str], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    import ray

    ns = "run-test-" + str(os.getpid())
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "providers": [{"id": "p", "model": "openai/m", "api_base": fake_llm.base_url}],
                "sessions": {"hosts": 1},
                "webchat": {"port": free_port(), "token": "run-token"},
                # The shared test Ray's CPUs are the shared tree's: no CPU pools here.
                "knowledge": {"embedders": 0},
                "speech": {"tts": {"workers": 0}, "stt": {"workers": 0}},
                "sandbox": {"executors": 0},
                "dashboard": {"enabled": False},
                "runtime": {"namespace": ns, "placement": "any"},
            }
        )
    )
    args = [*CLI, "-c", str(cfg), "run", "--address", ray_cluster["gcs_address"]]
    first = subprocess.run(args, capture_output=True, text=True, timeout=180, env=_env())
    assert first.returncode == 0, first.stdout + first.stderr
    assert "astr-ray is up" in first.stdout and "tree: ok" in first.stdout
    sup = ray.get_actor("supervisor", namespace=ns)
    pids = {a["name"]: a["pid"] for a in ray.get(sup.status.remote(), timeout=30)["actors"]}
    second = subprocess.run(args, capture_output=True, text=True, timeout=180, env=_env())
    assert second.returncode == 0, second.stdout + second.stderr
    status = ray.get(sup.status.remote(), timeout=30)
    assert {a["name"]: a["pid"] for a in status["actors"]} == pids, "no second tree"
    stop = subprocess.run(
        [*CLI, "-c", str(cfg), "stop", "--address", ray_cluster["gcs_address"]],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert stop.returncode == 0 and "stopped." in stop.stdout, stop.stderr
