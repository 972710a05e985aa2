"""Slash commands: parsing and the registry the turn pipeline dispatches to.

A command is ``/name args`` at the start of a message (``/`` then a letter, so a path
like "/usr is full" is still a message for the LLM). Built-ins register here; the
plugin system adds its own commands to the same registry.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from astr_ray.sessions.turn import CommandContext

__all__ = ["Command", "CommandRegistry", "parse_command"]

_COMMAND = re.compile(r"^/([A-Za-z][\w-]{0,63})(?:\s+(.*))?$", re.DOTALL)

Handler = Callable[["CommandContext", str], Awaitable[str]]


def parse_command(text: str) -> tuple[str, str] | None:
    """``("name", "args")`` when ``text`` is a command, else None. Names are lower-cased."""
    m = _COMMAND.match(text.strip())
    if m is None:
        return None
    return m.group(1).lower(), (m.group(2) or "").strip()


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    usage: str
    help: str
    aliases: tuple[str, ...] = ()


class CommandRegistry:
    def __init__(self) -> None:
        self._by_name: dict[str, Command] = {}
        self._commands: list[Command] = []

    def add(self, command: Command) -> None:
        for name in (command.name, *command.aliases):
            if name in self._by_name:
                raise ValueError(f"command /{name} is registered twice")
        for name in (command.name, *command.aliases):
            self._by_name[name] = command
        self._commands.append(command)

    def command(
        self, name: str, usage: str, help: str, aliases: tuple[str, ...] = ()
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add(Command(name, handler, usage, help, aliases))
            return handler

        return register

    def get(self, name: str) -> Command | None:
        return self._by_name.get(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._commands)

    def help_text(self) -> str:
        width = max((len(c.usage) for c in self._commands), default=0)
        lines = ["Commands:"]
        lines += [f"  {c.usage.ljust(width)}  {c.help}" for c in self._commands]
        return "\n".join(lines)

    def unknown(self, name: str) -> str:
        close = [c.name for c in self._commands if c.name.startswith(name[:2])]
        hint = f" Did you mean /{close[0]}?" if close else ""
        names = ", ".join(f"/{c.name}" for c in self._commands)
        return f"Unknown command /{name}.{hint} Available: {names}. Send /help for usage."
