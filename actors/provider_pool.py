"""ProviderPool actor: one per LLM provider, holding its ``PermitLedger``.

Hosts lease permits in batches and report outcomes on the same call (see
``astr_ray.providers.permits``), so this actor is not a hop per message. After a
restart the ledger starts empty; hosts still holding permits release them later and the
ledger clamps at zero, so at worst the cap is briefly exceeded, never deadlocked.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from actors.common import node_id, setup_logging
from astr_ray.config import ProviderConfig
from astr_ray.providers.permits import Grant, Outcomes, PermitLedger


@ray.remote
class ProviderPool:
    def __init__(self, provider: dict[str, Any]) -> None:
        cfg = ProviderConfig.model_validate(provider)
        setup_logging(f"provider-pool-{cfg.id}")
        self.provider_id = cfg.id
        self.ledger = PermitLedger(
            cfg.max_concurrency, cfg.requests_per_minute, cfg.failure_threshold, cfg.cooldown_s
        )

    def acquire(self, holder: str, want: int, release: int, outcomes: Outcomes) -> Grant:
        return self.ledger.acquire(holder, want, release, outcomes)

    def forget(self, holder: str) -> None:
        self.ledger.forget(holder)

    def ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "node_id": node_id(), **self.ledger.snapshot()}
