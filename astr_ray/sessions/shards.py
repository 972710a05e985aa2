"""Session keys hash into a fixed number of shards; shards are assigned to hosts.

The hash must agree across processes and restarts, so it is CRC-32 of the UTF-8 key,
never Python's salted ``hash()``. A ``ShardTable`` is one placement: which host owns
each shard, stamped with an epoch that grows on every change so a host can tell a
stale router (lower epoch) from a newer placement it has not heard of (higher epoch).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

__all__ = ["ShardTable", "shard_of"]


def shard_of(session_key: str, shards: int) -> int:
    """The shard of a session key: stable across processes, machines and versions."""
    return zlib.crc32(session_key.encode("utf-8")) % shards


@dataclass(frozen=True)
class ShardTable:
    epoch: int
    hosts: tuple[str, ...]
    owner: tuple[int, ...]  # shard -> index into hosts

    @classmethod
    def round_robin(
        cls, shards: int, hosts: list[str] | tuple[str, ...], epoch: int = 1
    ) -> ShardTable:
        if not hosts:
            raise ValueError("a shard table needs at least one host")
        return cls(epoch, tuple(hosts), tuple(i % len(hosts) for i in range(shards)))

    @property
    def shards(self) -> int:
        return len(self.owner)

    def host_of(self, session_key: str) -> str:
        return self.hosts[self.owner[shard_of(session_key, self.shards)]]

    def shards_of(self, host: str) -> frozenset[int]:
        if host not in self.hosts:
            return frozenset()
        idx = self.hosts.index(host)
        return frozenset(s for s, h in enumerate(self.owner) if h == idx)

    def with_hosts(self, hosts: list[str] | tuple[str, ...]) -> ShardTable:
        """Rebalance onto ``hosts``, moving as few shards as possible; bumps the epoch."""
        if not hosts:
            raise ValueError("a shard table needs at least one host")
        new_hosts = tuple(hosts)
        target = self.shards // len(new_hosts)  # each host keeps at most its fair share
        counts = dict.fromkeys(new_hosts, 0)
        owner: list[str | None] = []
        for h in self.owner:
            name = self.hosts[h]
            if name in counts and counts[name] < target:
                counts[name] += 1
                owner.append(name)
            else:
                owner.append(None)
        placed: list[str] = []
        for kept in owner:
            if kept is None:
                kept = min(new_hosts, key=lambda n: counts[n])
                counts[kept] += 1
            placed.append(kept)
        index = {n: i for i, n in enumerate(new_hosts)}
        return ShardTable(self.epoch + 1, new_hosts, tuple(index[n] for n in placed))

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "hosts": list(self.hosts), "owner": list(self.owner)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardTable:
        return cls(int(data["epoch"]), tuple(data["hosts"]), tuple(data["owner"]))
