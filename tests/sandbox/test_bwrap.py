"""Bubblewrap specifics: what the sandbox is made of, and its process limit."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from sandbox import BubblewrapBackend, Workspace
from tests.sandbox.conftest import limits


def test_command_line_isolates(bwrap_backend: BubblewrapBackend, tmp_path: Path):
    argv = bwrap_backend.argv(tmp_path, ["true"], limits())
    for flag in (
        "--unshare-all",
        "--unshare-user",
        "--cap-drop",
        "--die-with-parent",
        "--new-session",
        "--disable-userns",
        "--clearenv",
    ):
        assert flag in argv
    assert argv[argv.index("--uid") + 1] == "65534"
    assert "--share-net" not in argv
    assert "--share-net" in bwrap_backend.argv(tmp_path, ["true"], limits(network=True))
    binds = {argv[i + 1] for i, a in enumerate(argv) if a in ("--bind", "--ro-bind")}
    for forbidden in ("/", "/root", "/home", "/work", "/etc", str(Path.home())):
        assert forbidden not in binds
    assert argv[argv.index("--bind") + 1 : argv.index("--bind") + 3] == [
        str(tmp_path),
        "/workspace",
    ]


async def test_python_is_the_runtimes_interpreter(
    bwrap_backend: BubblewrapBackend, workspace: Workspace, session: str
):
    code = "import sys; print(sys.version_info[:2], sys.base_prefix)"
    r = await bwrap_backend.run(
        workspace.path, ["python3", "-c", code], limits=limits(), session=session
    )
    assert r.exit_code == 0, r.summary()
    assert r.stdout.strip() == f"{tuple(sys.version_info[:2])} {sys.base_prefix}"
    # the interpreter's folder is read-only, and nothing else of its parents shows
    r = await bwrap_backend.run(
        workspace.path,
        ["sh", "-c", f"touch {sys.base_prefix}/x; ls -A /root | wc -l"],
        limits=limits(),
        session=session,
    )
    assert "Read-only file system" in r.stderr
    assert r.stdout.strip() in ("0", "1")


async def test_runs_as_unprivileged_uid_without_capabilities(
    bwrap_backend: BubblewrapBackend, workspace: Workspace, session: str
):
    r = await bwrap_backend.run(
        workspace.path,
        ["sh", "-c", "id -u; grep CapEff /proc/self/status; hostname"],
        limits=limits(),
        session=session,
    )
    assert r.stdout.split() == ["65534", "CapEff:", "0000000000000000", "sandbox"]


async def test_system_is_read_only_and_tmp_private(
    bwrap_backend: BubblewrapBackend, workspace: Workspace, session: str
):
    marker = f"/tmp/astr-bwrap-{os.getpid()}"
    r = await bwrap_backend.run(
        workspace.path,
        ["sh", "-c", f"echo x > {marker} && cat {marker}; touch /usr/x /etc/x 2>&1 | wc -l"],
        limits=limits(),
        session=session,
    )
    assert r.stdout.split() == ["x", "2"], r.summary()
    assert not await asyncio.to_thread(os.path.exists, marker)  # its /tmp was its own


def test_describe_says_what_it_is(bwrap_backend: BubblewrapBackend):
    d = bwrap_backend.describe()
    assert bwrap_backend.safe and bwrap_backend.name == "bwrap"
    assert "bubblewrap" in d["isolation"] and "process_limit" in d
    if os.geteuid() == 0:  # RLIMIT_NPROC does not hold for root: a cgroup must
        assert d["process_limit"].startswith("cgroup"), d


async def test_network_only_when_asked(
    bwrap_backend: BubblewrapBackend, workspace: Workspace, session: str, listener: socket.socket
):
    port = listener.getsockname()[1]
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2); print('reached')"
    argv = ["python3", "-c", code]
    r = await bwrap_backend.run(workspace.path, argv, limits=limits(), session=session)
    assert r.exit_code == 1 and "ConnectionRefusedError" in r.stderr
    r = await bwrap_backend.run(workspace.path, argv, limits=limits(network=True), session=session)
    assert (r.exit_code, r.stdout) == (0, "reached\n"), r.summary()
