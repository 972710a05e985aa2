"""ShardDirectory actor: the session-key → shard → SessionHost map and its epoch.

The directory holds the ``ShardTable``; routers cache it and refresh when a host says
their epoch is stale. The Supervisor is the only writer (``set_hosts``). After a restart
the directory rebuilds the table from the host list it is given again by the
Supervisor's reconcile loop; until then it answers with the initial round-robin table,
which is what the Supervisor wrote last on a single node.
"""

from __future__ import annotations

from typing import Any

import ray

from actors.common import node_id, setup_logging
from astr_ray.sessions.shards import ShardTable


@ray.remote
class ShardDirectory:
    def __init__(self, shards: int, hosts: list[str]) -> None:
        setup_logging("shard-directory")
        self._table = ShardTable.round_robin(shards, hosts)

    def table(self) -> dict[str, Any]:
        return self._table.to_dict()

    def set_hosts(self, hosts: list[str]) -> dict[str, Any]:
        """Rebalance onto ``hosts`` (moving as few shards as possible); bumps the epoch."""
        if list(self._table.hosts) != list(hosts):
            self._table = self._table.with_hosts(hosts)
        return self._table.to_dict()

    def set_table(self, table: dict[str, Any]) -> dict[str, Any]:
        """Publish a placement the Supervisor computed (phase 2 of a shard move).
        An older epoch never replaces a newer one."""
        new = ShardTable.from_dict(table)
        if new.epoch >= self._table.epoch:
            self._table = new
        return self._table.to_dict()

    def ping(self) -> dict[str, Any]:
        import os

        return {"pid": os.getpid(), "node_id": node_id(), "epoch": self._table.epoch}
