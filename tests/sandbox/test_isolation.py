"""What every isolated backend guarantees, checked for real against bubblewrap and
Docker: the code runs, sees its workspace and nothing else of the host, has no
network, and dies at its limits."""

from __future__ import annotations

import asyncio
import socket
import stat
import textwrap
from pathlib import Path

import pytest

from sandbox import Backend, BubblewrapBackend, RunResult, Workspace
from tests.sandbox.conftest import host_pids_matching, limits

PY = "python3"
REPO = Path(__file__).resolve().parents[2]


async def run_py(
    backend: Backend, ws: Workspace, code: str, session: str, **lim: object
) -> RunResult:
    return await backend.run(
        ws.path, [PY, "-c", textwrap.dedent(code)], limits=limits(**lim), session=session
    )


async def test_runs_python_and_shell(backend: Backend, workspace: Workspace, session: str):
    r = await run_py(backend, workspace, "print(6 * 7)", session)
    assert (r.exit_code, r.stdout, r.killed, r.timed_out) == (0, "42\n", None, False)
    r = await backend.run(
        workspace.path,
        ["sh", "-c", "echo out; echo err >&2; exit 3"],
        limits=limits(),
        session=session,
    )
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert "exit code: 3" in r.summary() and "err" in r.summary()


async def test_stdin(backend: Backend, workspace: Workspace, session: str):
    code = "import sys; data = sys.stdin.read(); print(len(data), data.upper())"
    r = await backend.run(
        workspace.path, [PY, "-c", code], stdin=b"hello sandbox", limits=limits(), session=session
    )
    assert r.stdout == "13 HELLO SANDBOX\n"
    r = await backend.run(workspace.path, ["cat"], limits=limits(), session=session)
    assert (r.exit_code, r.stdout) == (0, "")  # no stdin: EOF at once, no hang


async def test_workspace_is_shared_both_ways(backend: Backend, workspace: Workspace, session: str):
    workspace.write_text("in/question.txt", "six times seven")
    code = """
        import os
        print(os.getcwd())
        q = open("in/question.txt").read()
        os.makedirs("out", exist_ok=True)
        open("/workspace/out/answer.txt", "w").write(q + " = 42")
    """
    r = await run_py(backend, workspace, code, session)
    assert (r.exit_code, r.stdout) == (0, "/workspace\n"), r.summary()
    assert workspace.read_text("out/answer.txt", 100) == "six times seven = 42"
    # and a second run of the same session sees what the first left
    r = await run_py(backend, workspace, "print(open('out/answer.txt').read())", session)
    assert r.stdout == "six times seven = 42\n"


async def test_no_network_not_even_host_loopback(
    backend: Backend, workspace: Workspace, session: str, listener: socket.socket
):
    port = listener.getsockname()[1]
    code = f"""
        import socket
        for host, port in (("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)):
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect((host, port))
                print("CONNECTED", host)
            except OSError as exc:
                print("blocked", host, type(exc).__name__)
        try:
            socket.getaddrinfo("example.com", 80)
            print("RESOLVED")
        except OSError:
            print("no dns")
    """
    r = await run_py(backend, workspace, code, session)
    assert r.exit_code == 0, r.summary()
    assert "CONNECTED" not in r.stdout and "RESOLVED" not in r.stdout
    assert r.stdout.count("blocked") == 3
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        conn = None
    assert conn is None, "the sandbox reached a socket on the host's loopback"


async def test_cannot_read_outside_its_workspace(
    backend: Backend, tmp_path: Path, workspace: Workspace, session: str
):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    repo_file = REPO / "pyproject.toml"
    targets = [
        str(secret),
        str(repo_file),
        "/etc/shadow",
        "/root/.bashrc",
        "/root/.ssh",
        str(tmp_path),
    ]
    code = f"""
        import os
        for path in {targets!r}:
            try:
                if os.path.isdir(path):
                    print("LISTED", path, os.listdir(path))
                else:
                    print("READ", path, open(path).read(20))
            except OSError as exc:
                print("denied", path, type(exc).__name__)
    """
    r = await run_py(backend, workspace, code, session)
    assert r.exit_code == 0, r.summary()
    assert "READ" not in r.stdout and "LISTED" not in r.stdout, r.stdout
    assert "TOP-SECRET" not in r.stdout


async def test_killed_at_time_limit_with_its_whole_tree(
    backend: Backend, workspace: Workspace, session: str
):
    marker = f"271828.{abs(hash(session)) % 10**6}"
    code = f"""
        import os, subprocess, time
        subprocess.Popen(["sleep", "{marker}"])                      # a background child
        subprocess.Popen(["sleep", "{marker}"], start_new_session=True)  # one that left
        print("started", flush=True)
        time.sleep(60)
    """
    r = await run_py(backend, workspace, code, session, timeout_s=1.5)
    assert r.killed == "timeout" and r.timed_out and r.exit_code is None
    assert r.stdout == "started\n"
    assert 1.5 <= r.duration_s < 10
    assert "KILLED (timeout)" in r.summary() and "1.5 s" in r.summary()
    for _ in range(50):
        if not host_pids_matching(marker):
            break
        await asyncio.sleep(0.1)
    assert host_pids_matching(marker) == [], "a sandboxed child survived the time-out"
    r = await run_py(backend, workspace, "print('next')", session)  # still usable
    assert r.stdout == "next\n"


async def test_cpu_time_limit(backend: Backend, workspace: Workspace, session: str):
    r = await run_py(backend, workspace, "while True: pass", session, cpu_s=1, timeout_s=15)
    assert r.killed == "timeout" and r.timed_out
    assert "CPU" in r.summary()


async def test_killed_at_memory_limit(backend: Backend, workspace: Workspace, session: str):
    code = """
        chunks = []
        for _ in range(64):
            chunks.append(bytearray(16 * 1024 * 1024))  # 1 GiB in all
        print("SURVIVED")
    """
    r = await run_py(backend, workspace, code, session, memory_mb=128)
    assert r.killed == "memory", r.summary()
    assert "SURVIVED" not in r.stdout and r.exit_code != 0
    assert "memory" in r.summary()


async def test_fork_bomb_is_contained(backend: Backend, workspace: Workspace, session: str):
    # Count how many processes it can make: far fewer than asked for.
    code = """
        import os, time
        n = 0
        for _ in range(200):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(3)
                os._exit(0)
            n += 1
        print(n)
    """
    r = await run_py(backend, workspace, code, session, max_processes=12, timeout_s=8)
    assert r.exit_code == 0, r.summary()
    assert int(r.stdout) < 12
    # The classic shell bomb: contained, killed at the time limit, the host unharmed.
    r = await backend.run(
        workspace.path,
        ["bash", "-c", ":(){ :|:& };:; sleep 5"],
        limits=limits(max_processes=12, timeout_s=2),
        session=session,
    )
    assert r.killed in ("timeout", None)
    r = await run_py(backend, workspace, "print('alive')", session)
    assert r.stdout == "alive\n", r.summary()


async def test_output_is_capped(backend: Backend, workspace: Workspace, session: str):
    r = await run_py(
        backend, workspace, "print('x' * 5000); print('done')", session, max_output_bytes=1000
    )
    assert r.exit_code == 0 and r.truncated and r.killed is None
    assert len(r.stdout) + len(r.stderr) == 1000
    assert "truncated" in r.summary()
    r = await backend.run(
        workspace.path, ["yes"], limits=limits(max_output_bytes=1000), session=session
    )
    assert r.killed == "output" and r.truncated and r.exit_code is None
    assert len(r.stdout) == 1000


async def test_sessions_do_not_see_each_other(backend: Backend, tmp_path: Path):
    root = tmp_path / "workspaces"
    a, b = Workspace(root, "chat:a", 8), Workspace(root, "chat:b", 8)
    a.write_text("a-private.txt", "only for A")
    code = """
        import os
        print(sorted(os.listdir("/workspace")))
        found = [os.path.join(d, f) for top in ("/tmp", "/workspace", "/home", "/mnt")
                 for d, _, fs in os.walk(top) for f in fs if f == "a-private.txt"]
        print(found)
    """
    r = await run_py(backend, b, code, "chat:b")
    assert r.stdout == "[]\n[]\n", r.summary()
    r = await run_py(backend, a, code, "chat:a")
    assert r.stdout.splitlines()[0] == "['a-private.txt']"
    await backend.close_session("chat:a")
    await backend.close_session("chat:b")


async def test_memory_limit_covers_the_whole_tree(
    backend: Backend, workspace: Workspace, session: str
):
    """Four processes of 60 MiB each stay under a 128 MiB per-process cap, not the total:
    the container's (or the run's) memory cgroup kills them, and the result says so."""
    if isinstance(backend, BubblewrapBackend) and "memory" not in backend.cgroups.bases:
        pytest.skip(f"no memory cgroup for bwrap here: {backend.cgroups.reason}")
    code = """
        import os, time
        kids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                block = bytearray(60 * 1024 * 1024)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(0.5)
                os._exit(0)
            kids.append(pid)
        statuses = [os.waitpid(p, 0)[1] for p in kids]
        print(statuses)
        raise SystemExit(1 if any(statuses) else 0)
    """
    r = await run_py(backend, workspace, code, session, memory_mb=128)
    assert r.killed == "memory" and r.exit_code == 1, r.summary()
    assert "9" in r.stdout  # some children died of SIGKILL


async def test_no_setuid_file_is_left_on_the_host(
    backend: Backend, workspace: Workspace, session: str
):
    r = await backend.run(
        workspace.path,
        ["sh", "-c", "cp /bin/true t && chmod 6755 t && ls -l t"],
        limits=limits(),
        session=session,
    )
    assert r.stdout.startswith("-rwsr-s"), r.summary()  # it could set the bits inside...
    mode = (workspace.path / "t").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID), oct(mode)  # ...they are gone after
