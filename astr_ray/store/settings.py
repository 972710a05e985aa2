"""``SettingsMixin``: settings, the plugins' key-value store, and personas.

Settings are JSON values per ``(scope, key)``, the scope being ``"global"`` or a session
key. Each plugin has its own key space of JSON values, each at most ``KV_VALUE_LIMIT``
bytes encoded. Personas are named system prompts with opening dialogs and a tool list.
All writes are idempotent upserts or deletes.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from astr_ray.errors import StoreError
from astr_ray.store.base import StoreBase, check_length, clock
from astr_ray.store.records import Persona
from astr_ray.store.tables import personas, plugin_kv, settings

__all__ = ["KV_VALUE_LIMIT", "SettingsMixin"]

# The most a plugin may store under one key, JSON-encoded (plugins must not fill the database).
KV_VALUE_LIMIT = 64 * 1024

_PERSONA_COLUMNS = (
    personas.c.name,
    personas.c.system_prompt,
    personas.c.begin_dialogs,
    personas.c.tools,
)


class SettingsMixin(StoreBase):
    """``Store`` methods for settings, plugin key-value pairs and personas."""

    # -- settings ----------------------------------------------------------------------

    async def get_settings(self, scope: str) -> dict[str, Any]:
        """Every setting of ``scope`` (``"global"`` or a session key): ``key -> value``."""
        stmt = select(settings.c.key, settings.c.value).where(settings.c.scope == scope)
        with self._errors("get_settings", scope=scope):
            async with self._engine.connect() as conn:
                return {key: value for key, value in await conn.execute(stmt)}

    async def get_setting(self, scope: str, key: str, default: Any = None) -> Any:
        """The value of one setting, or ``default`` if it is not set."""
        stmt = select(settings.c.value).where(settings.c.scope == scope, settings.c.key == key)
        with self._errors("get_setting", scope=scope, key=key):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return default if row is None else row[0]

    async def set_setting(self, scope: str, key: str, value: Any) -> None:
        """Set one setting to a JSON-able ``value`` (insert or replace); ``None`` unsets it.

        Idempotent. ``StoreError`` if ``value`` is not JSON-able, or ``scope`` is longer than
        255 or ``key`` than 128 characters.
        """
        context = {"scope": scope, "key": key}
        check_length("settings scope", scope, 255, **context)
        check_length("settings key", key, 128, **context)
        if value is not None:
            _json_size(value, **context)
        with self._errors("set_setting", **context):
            async with self._write() as conn:
                if value is None:
                    await conn.execute(
                        settings.delete().where(settings.c.scope == scope, settings.c.key == key)
                    )
                    return
                row = {"scope": scope, "key": key, "value": value, "updated_at": clock()}
                await conn.execute(self._upsert(settings, ("scope", "key"), row), row)

    # -- plugin key-value store ----------------------------------------------------------

    async def kv_get(self, plugin: str, key: str, default: Any = None) -> Any:
        """The value the plugin stored under ``key``, or ``default`` if there is none."""
        stmt = select(plugin_kv.c.value).where(plugin_kv.c.plugin == plugin, plugin_kv.c.key == key)
        with self._errors("kv_get", plugin=plugin, key=key):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return default if row is None else row[0]

    async def kv_set(self, plugin: str, key: str, value: Any) -> None:
        """Store a JSON-able ``value`` under ``key`` (insert or replace). Idempotent.

        ``None`` is stored as JSON ``null`` (``kv_delete`` removes a key). ``StoreError`` if
        the value is not JSON-able or its JSON encoding exceeds ``KV_VALUE_LIMIT`` (64 KiB),
        or ``plugin`` is longer than 128 or ``key`` than 255 characters; nothing is written.
        """
        context = {"plugin": plugin, "key": key}
        check_length("plugin name", plugin, 128, **context)
        check_length("key", key, 255, **context)
        size = _json_size(value, **context)
        if size > KV_VALUE_LIMIT:
            raise StoreError(
                f"value too large: its JSON encoding exceeds the limit of {KV_VALUE_LIMIT} "
                "bytes (64 KiB)",
                size=size,
                **context,
            )
        row = {"plugin": plugin, "key": key, "value": value, "updated_at": clock()}
        with self._errors("kv_set", **context):
            async with self._write() as conn:
                await conn.execute(self._upsert(plugin_kv, ("plugin", "key"), row), row)

    async def kv_delete(self, plugin: str, key: str) -> bool:
        """Remove ``key``; ``True`` if it was there. Idempotent (a second call is ``False``)."""
        stmt = plugin_kv.delete().where(plugin_kv.c.plugin == plugin, plugin_kv.c.key == key)
        with self._errors("kv_delete", plugin=plugin, key=key):
            async with self._write() as conn:
                return (await conn.execute(stmt)).rowcount > 0

    async def kv_keys(self, plugin: str, prefix: str = "") -> list[str]:
        """The plugin's keys that start with ``prefix`` (case-sensitive), sorted by code point."""
        stmt = select(plugin_kv.c.key).where(plugin_kv.c.plugin == plugin)
        if prefix:
            # Not LIKE: SQLite's LIKE ignores ASCII case, and ``%``/``_`` would need escaping.
            stmt = stmt.where(func.substr(plugin_kv.c.key, 1, len(prefix)) == prefix)
        with self._errors("kv_keys", plugin=plugin, prefix=prefix):
            async with self._engine.connect() as conn:
                keys = (await conn.scalars(stmt)).all()
        # Sorted here: PostgreSQL's ORDER BY follows the database's collation.
        return sorted(keys)

    # -- personas ------------------------------------------------------------------------

    async def upsert_persona(self, persona: Persona) -> None:
        """Create the persona or replace the one of that name (keeping its ``created_at``).

        Idempotent. ``StoreError`` if the name is longer than 128 characters.
        """
        check_length("persona name", persona.name, 128, persona=persona.name)
        now = clock()
        row = {
            "name": persona.name,
            "system_prompt": persona.system_prompt,
            "begin_dialogs": [[user, assistant] for user, assistant in persona.begin_dialogs],
            "tools": None if persona.tools is None else list(persona.tools),
            "created_at": now,
            "updated_at": now,
        }
        stmt = self._upsert(personas, ("name",), row, keep=("created_at",))
        with self._errors("upsert_persona", persona=persona.name):
            async with self._write() as conn:
                await conn.execute(stmt, row)

    async def get_persona(self, name: str) -> Persona | None:
        """The persona of that name, or ``None``."""
        stmt = select(*_PERSONA_COLUMNS).where(personas.c.name == name)
        with self._errors("get_persona", persona=name):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return None if row is None else _persona(row)

    async def list_personas(self) -> list[Persona]:
        """Every persona, sorted by name (by code point, the same on every backend)."""
        with self._errors("list_personas"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(*_PERSONA_COLUMNS))).all()
        return sorted((_persona(r) for r in rows), key=lambda p: p.name)

    async def delete_persona(self, name: str) -> bool:
        """Delete the persona; ``True`` if it existed. Conversations naming it keep the name."""
        with self._errors("delete_persona", persona=name):
            async with self._write() as conn:
                result = await conn.execute(personas.delete().where(personas.c.name == name))
                return result.rowcount > 0


def _persona(row: Any) -> Persona:
    name, system_prompt, dialogs, tools = row
    return Persona(
        name=name,
        system_prompt=system_prompt,
        begin_dialogs=[(user, assistant) for user, assistant in dialogs],
        tools=tools,
    )


def _json_size(value: Any, **context: Any) -> int:
    """The size in bytes of ``value``'s compact UTF-8 JSON; ``StoreError`` if not JSON-able."""
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return len(encoded.encode())
    except (TypeError, ValueError) as exc:
        raise StoreError(f"value is not JSON-serializable: {exc}", **context) from exc
