"""Docker specifics: one warm container per session, reused, reaped, removed."""

from __future__ import annotations

import asyncio

import pytest

from sandbox import DockerBackend, Workspace
from tests.sandbox.conftest import docker_config, limits


async def test_one_warm_container_per_session(
    docker_backend: DockerBackend, workspace: Workspace, session: str
):
    lim = limits()
    r1 = await docker_backend.run(workspace.path, ["hostname"], limits=lim, session=session)
    first = docker_backend._warm[session].container_id
    r2 = await docker_backend.run(
        workspace.path, ["sh", "-c", "echo $HOME"], limits=lim, session=session
    )
    assert (r1.stdout, r2.stdout) == ("sandbox\n", "/workspace\n")
    assert docker_backend._warm[session].container_id == first
    await docker_backend.close_session(session)
    assert session not in docker_backend._warm


async def test_container_settings(
    docker_backend: DockerBackend, workspace: Workspace, session: str
):
    await docker_backend.run(workspace.path, ["true"], limits=limits(), session=session)
    cid = docker_backend._warm[session].container_id
    attrs = await asyncio.to_thread(docker_backend._api().inspect_container, cid)
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == 256 << 20 and host["PidsLimit"] == 32 + 2
    assert attrs["Config"]["User"] != "" and not attrs["Config"]["User"].startswith("0")
    r = await docker_backend.run(
        workspace.path, ["sh", "-c", "touch /usr/x; id -u"], limits=limits(), session=session
    )
    assert "Read-only file system" in r.stderr and r.stdout.strip() != "0"
    await docker_backend.close_session(session)


async def test_idle_containers_are_reaped(
    docker_backend: DockerBackend, workspace: Workspace, session: str
):
    backend = DockerBackend(docker_config().model_copy(update={"idle_s": 0.2}))
    try:
        await backend.run(workspace.path, ["true"], limits=limits(), session=session)
        cid = backend._warm[session].container_id
        assert await backend.reap_idle() == 0
        await asyncio.sleep(0.3)
        assert await backend.reap_idle() == 1
        with pytest.raises(Exception, match="No such container"):
            await asyncio.to_thread(backend._api().inspect_container, cid)
    finally:
        await backend.close()


async def test_new_limits_recreate_the_container(
    docker_backend: DockerBackend, workspace: Workspace, session: str
):
    await docker_backend.run(workspace.path, ["true"], limits=limits(), session=session)
    first = docker_backend._warm[session].container_id
    await docker_backend.run(
        workspace.path, ["true"], limits=limits(memory_mb=200), session=session
    )
    assert docker_backend._warm[session].container_id != first
    await docker_backend.close_session(session)


async def test_a_vanished_container_is_replaced(
    docker_backend: DockerBackend, workspace: Workspace, session: str
):
    await docker_backend.run(workspace.path, ["true"], limits=limits(), session=session)
    gone = docker_backend._warm[session].container_id
    await asyncio.to_thread(docker_backend._api().remove_container, gone, force=True)
    r = await docker_backend.run(workspace.path, ["echo", "back"], limits=limits(), session=session)
    assert r.stdout == "back\n"
    assert docker_backend._warm[session].container_id != gone
    await docker_backend.close_session(session)
