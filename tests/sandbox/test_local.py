"""The subprocess backend runs code but says loudly that it isolates nothing."""

from __future__ import annotations

import socket

import sandbox.local
from sandbox import SubprocessBackend, Workspace
from tests.sandbox.conftest import limits


async def test_labelled_unsafe_and_not_isolated(
    workspace: Workspace, session: str, listener: socket.socket
):
    backend = SubprocessBackend()
    assert backend.safe is False and backend.name == "subprocess"
    assert "NOT isolated" in backend.describe()["isolation"]
    assert "NOT" in (sandbox.local.__doc__ or "") and "NOT" in (SubprocessBackend.__doc__ or "")
    # it runs code, and that code really does reach the host (which is the point made)
    port = listener.getsockname()[1]
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2); print('reached')"
    r = await backend.run(workspace.path, ["python3", "-c", code], limits=limits(), session=session)
    assert (r.exit_code, r.stdout) == (0, "reached\n"), r.summary()
    await backend.close()


async def test_limits_still_apply(workspace: Workspace, session: str):
    backend = SubprocessBackend()
    r = await backend.run(
        workspace.path, ["sleep", "30"], limits=limits(timeout_s=0.5), session=session
    )
    assert r.killed == "timeout" and r.exit_code is None
    r = await backend.run(
        workspace.path,
        ["python3", "-c", "bytearray(1 << 30)"],
        limits=limits(memory_mb=128),
        session=session,
    )
    assert r.killed == "memory"
