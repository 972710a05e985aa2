"""Slash commands: parsing and the registry the turn pipeline dispatches to.

A command is ``/name args`` at the start of a message (``/`` then a letter, so a path
like "/usr is full" is still a message for the LLM). Built-ins register here; the
plugin system adds its own commands to the same registry.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
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
    admin: bool = False


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
        self,
        name: str,
        usage: str,
        help: str,
        aliases: tuple[str, ...] = (),
        *,
        admin: bool = False,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add(Command(name, handler, usage, help, aliases, admin))
            return handler

        return register

    def get(self, name: str) -> Command | None:
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands)

    def names(self) -> set[str]:
        return set(self._by_name)

    def help_text(self, extra: Sequence[tuple[str, str]] = (), *, admin: bool = False) -> str:
        """Every command with its usage: built-ins (admin ones for admins), then
        ``extra`` (plugins' commands)."""
        rows = [
            (c.usage, c.help + (" (admin)" if c.admin else ""))
            for c in self._commands
            if admin or not c.admin
        ]
        plugin_rows = list(extra)
        width = max((len(u) for u, _ in rows + plugin_rows), default=0)
        lines = ["Commands:"] + [f"  {u.ljust(width)}  {h}" for u, h in rows]
        if plugin_rows:
            lines += ["Plugin commands:"] + [f"  {u.ljust(width)}  {h}" for u, h in plugin_rows]
        return "\n".join(lines)

    def unknown(self, name: str, extra: Sequence[str] = ()) -> str:
        names = [c.name for c in self._commands if not c.admin] + list(extra)
        close = [n for n in names if n.startswith(name[:2])]
        hint = f" Did you mean /{close[0]}?" if close else ""
        return f"Unknown command /{name}.{hint} Send /help for the list."
