"""What plugins reach through ``ctx`` when they run inside our actors.

``RuntimeServices`` implements ``astr_ray.plugins.context.Services`` over the actor
tree: ``send`` goes to the platform's adapter actor (``adapter-<platform>``),
``ask_llm`` through a ``ProviderChain`` whose permits come from the provider pools, and
the key-value store is the shared store. ``build_chain`` is how a session host and an
isolated plugin's worker both get their chain.
"""

from __future__ import annotations

import asyncio
from typing import Any

from actors.common import get_actor, pool_name
from astr_ray.config import Config
from astr_ray.errors import PluginError
from astr_ray.message import parse_session_key
from astr_ray.metrics import Metrics
from astr_ray.providers import PermitCache, ProviderChain, ProviderSlot, make_transport
from astr_ray.providers.permits import Grant, Outcomes
from astr_ray.store import Store


def adapter_name(platform: str) -> str:
    return f"adapter-{platform}"


async def build_chain(cfg: Config, owner: str, metrics: Metrics | None = None) -> ProviderChain:
    """A fallback chain for the actor ``owner``; permits it held in an earlier life
    are given back first."""
    slots = []
    for p in cfg.provider_chain():
        pool = get_actor(pool_name(p.id), cfg.runtime.namespace)
        await pool.forget.remote(owner)
        slots.append(
            ProviderSlot(
                p,
                make_transport(p),
                PermitCache(p.id, _fetcher(pool, owner), reuse=p.requests_per_minute is None),
            )
        )
    return ProviderChain(slots, metrics=metrics)


def _fetcher(pool: Any, owner: str) -> Any:
    async def fetch(want: int, release: int, outcomes: Outcomes) -> Grant:
        grant: Grant = await pool.acquire.remote(owner, want, release, outcomes)
        return grant

    return fetch


class RuntimeServices:
    def __init__(self, cfg: Config, store: Store, chain: ProviderChain) -> None:
        self.cfg = cfg
        self.store = store
        self.chain = chain

    async def send(self, session_key: str, text: str) -> None:
        platform, _, _ = parse_session_key(session_key)
        try:
            adapter = get_actor(adapter_name(platform), self.cfg.runtime.namespace)
        except ValueError:
            raise PluginError(f"no adapter runs for platform {platform!r}") from None
        await asyncio.wait_for(adapter.push.remote(session_key, text), 30)

    async def ask_llm(self, messages: list[dict[str, Any]]) -> str:
        result = await self.chain.complete(messages, context={"purpose": "plugin"})
        return result.content

    async def kv_get(self, plugin: str, key: str, default: Any = None) -> Any:
        return await self.store.kv_get(plugin, key, default)

    async def kv_set(self, plugin: str, key: str, value: Any) -> None:
        await self.store.kv_set(plugin, key, value)

    async def kv_delete(self, plugin: str, key: str) -> bool:
        return await self.store.kv_delete(plugin, key)

    async def kv_keys(self, plugin: str, prefix: str = "") -> list[str]:
        return await self.store.kv_keys(plugin, prefix)
