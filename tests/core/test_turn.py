"""The turn pipeline on a real SQLite store, without Ray."""

from __future__ import annotations

from pathlib import Path

from astr_ray.config import parse_config
from astr_ray.providers import ProviderChain
from astr_ray.sessions.turn import TurnProcessor
from astr_ray.store import Store
from tests.conftest import webchat_event


async def test_without_providers_the_user_is_told_how_to_add_one(tmp_path: Path) -> None:
    cfg = parse_config({"data_dir": str(tmp_path)})
    store = await Store.open(cfg.store_url)
    try:
        await store.migrate()
        processor = TurnProcessor(store, ProviderChain([]), cfg)
        live = await processor.load("webchat:private:new-user")
        reply = await processor.process(live, webchat_event("new-user", "hello?"))
        assert reply.error == "no_provider" and "providers:" in reply.text
        assert await store.count_messages(live.conversation_id) == 0, "nothing stored"
        help_reply = await processor.process(live, webchat_event("new-user", "/help"))
        assert "/history" in help_reply.text and help_reply.error is None
    finally:
        await store.close()
