"""HostRouter against real SessionHost actors, driven from the test process."""

from __future__ import annotations

import asyncio
import os
import signal

from actors.router import HostRouter
from astr_ray.sessions.shards import ShardTable
from tests.conftest import Runtime, new_session, webchat_event
from tests.peers.openai_server import FakeLLM


async def test_no_message_is_dropped_when_a_host_dies_between_fence_and_collect(
    runtime: Runtime, fake_llm: FakeLLM
) -> None:
    """One batch: a message for a shard the host is handing over (answered
    ``wrong_shard`` at once) and a slow turn (parked for ``collect``). The host dies
    before the collect. Both messages must still be answered: the re-routed one used to
    be dropped, its caller waiting forever."""
    import ray

    from actors.common import DIRECTORY

    name, host = await runtime.host_of(f"webchat:private:{new_session()}")
    fenced, slow = new_session(), new_session()
    while (await runtime.host_of(f"webchat:private:{fenced}"))[0] != name:
        fenced = new_session()
    while (await runtime.host_of(f"webchat:private:{slow}"))[0] != name:
        slow = new_session()
    directory = ray.get_actor(DIRECTORY, namespace=runtime.namespace)
    table = ShardTable.from_dict(await directory.table.remote())
    other = next(h for h in table.hosts if h != name)
    # Phase 1 of a move that hands the fenced session's shard to the other host
    # (never published: after the host restarts the directory's table still holds).
    from astr_ray.sessions.shards import shard_of

    moved = list(table.owner)
    moved[shard_of(f"webchat:private:{fenced}", table.shards)] = table.hosts.index(other)
    await host.prepare.remote(ShardTable(table.epoch + 1, table.hosts, tuple(moved)).to_dict())

    router = HostRouter(runtime.namespace, window_ms=2.0, hold_ms=10.0, deadline_s=60)
    await router.refresh()
    fake_llm.latency = 1.5
    pid = (await host.ping.remote())["pid"]
    sends = asyncio.gather(
        router.send(webchat_event(fenced, "fenced")), router.send(webchat_event(slow, "slow"))
    )
    await asyncio.sleep(0.5)  # the first answer is back, the collect is waiting
    os.kill(pid, signal.SIGKILL)
    fenced_reply, slow_reply = await asyncio.wait_for(sends, 60)  # a hang detector
    assert fenced_reply.text == "echo: fenced (turn 1)"
    assert slow_reply.text == "echo: slow (turn 1)"
