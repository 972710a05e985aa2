"""Personas: a system prompt, an opening dialog and the tools it may use.

Personas come from the config (``personas``) and from the store (made with
``/persona new`` or the dashboard); a stored persona of the same name wins. Each
conversation may choose one (``/persona <name>``); otherwise ``agent.default_persona``
applies, and without one the config's ``system_prompt``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from astr_ray.config import Config
from astr_ray.store import Persona

__all__ = ["Personas"]


class Personas:
    def __init__(
        self, cfg: Config, load: Callable[[], Awaitable[list[Persona]]], ttl: float = 5.0
    ) -> None:
        self.cfg = cfg
        self._load = load
        self.ttl = ttl
        self._stored: dict[str, Persona] = {}
        self._at = -1e9

    def invalidate(self) -> None:
        self._at = -1e9

    async def all(self) -> dict[str, Persona]:
        if time.monotonic() - self._at > self.ttl:
            self._stored = {p.name: p for p in await self._load()}
            self._at = time.monotonic()
        out = {
            p.name: Persona(
                p.name, p.system_prompt, list(p.begin_dialogs), p.tools, p.knowledge, p.voice
            )
            for p in self.cfg.personas
        }
        out.update(self._stored)
        return out

    async def resolve(self, name: str | None) -> Persona:
        """The persona a conversation uses (see module docstring); never None."""
        known = await self.all()
        for candidate in (name, self.cfg.agent.default_persona):
            if candidate and candidate in known:
                return known[candidate]
        return Persona("default", self.cfg.system_prompt)
