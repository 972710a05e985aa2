from __future__ import annotations

import subprocess
import sys

from astr_ray.sessions.shards import ShardTable, shard_of


def test_shard_of_is_the_same_in_another_process() -> None:
    keys = [f"telegram:private:{i}" for i in range(50)]
    here = [shard_of(k, 1024) for k in keys]
    code = (
        "import sys; from astr_ray.sessions.shards import shard_of; "
        f"print([shard_of(k, 1024) for k in {keys!r}])"
    )
    # PYTHONHASHSEED differs per process: a salted hash would disagree here.
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    ).stdout
    assert out.strip() == str(here)
    assert len(set(here)) > 30, "keys spread over shards"


def test_round_robin_and_rebalance_move_few_shards() -> None:
    t = ShardTable.round_robin(1024, ["h0", "h1"])
    assert len(t.shards_of("h0")) == 512 and t.epoch == 1
    t2 = t.with_hosts(["h0", "h1", "h2"])
    assert t2.epoch == 2
    sizes = sorted(len(t2.shards_of(h)) for h in ("h0", "h1", "h2"))
    assert sizes[-1] - sizes[0] <= 1
    moved = sum(1 for s in range(1024) if t.hosts[t.owner[s]] != t2.hosts[t2.owner[s]])
    assert moved <= 1024 // 3 + 2, "only the new host's share moves"
    t3 = t2.with_hosts(["h0", "h2"])  # h1 lost
    assert not t3.shards_of("h1")
    assert all(
        t3.hosts[t3.owner[s]] == t2.hosts[t2.owner[s]]
        for s in range(1024)
        if t2.hosts[t2.owner[s]] != "h1"
    )
    assert ShardTable.from_dict(t3.to_dict()) == t3
