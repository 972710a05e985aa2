"""The agent's tool registry: where tools come from and how a call reaches them.

    ToolBox (one turn) ─┬─ PluginTools    plugins' @plugin.tool() functions
                        ├─ SandboxTools   run_python, run_shell, files (actors/sandbox_tools.py)
                        └─ McpTools       each MCP server's tools (actors/mcp_tools.py)

A ``ToolSource`` lists the tools one turn may use (after its own filters: disabled
plugins, admin-only tools) and runs a call; a failure is a ``ToolFailure`` whose text
goes back to the model. The ``ToolBox`` merges the sources (first one wins a name),
applies the persona's allow-list and collects what tools hand back for the chat
(attachments: images and files).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from astr_ray.message import Event, File, Image

__all__ = ["Tool", "ToolBox", "ToolContext", "ToolFailure", "ToolSource"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    source: str  # "plugin:<name>", "sandbox", "mcp:<server>"
    ref: str = ""  # what the source needs to find it again (handler id, remote name)

    def openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass
class ToolContext:
    """What a tool call knows of its turn."""

    event: Event
    is_admin: bool
    disabled: set[str] = field(default_factory=set)  # plugins off for this session
    attachments: list[Image | File] = field(default_factory=list)
    knowledge: tuple[str, ...] = ()  # the knowledge bases this turn reads

    @property
    def session_key(self) -> str:
        return self.event.session_key


class ToolSource(Protocol):
    def tools(self, ctx: ToolContext) -> list[Tool]: ...

    async def call(self, tool: Tool, arguments: dict[str, Any], ctx: ToolContext) -> str:
        """The result as text for the model; ``ToolFailure`` with a message for it."""
        ...


class ToolBox:
    """The tools of one turn (an ``agent.ToolBox``)."""

    def __init__(
        self, sources: Iterable[ToolSource], ctx: ToolContext, allowed: list[str] | None
    ) -> None:
        self.ctx = ctx
        self._by_name: dict[str, tuple[ToolSource, Tool]] = {}
        for source in sources:
            for tool in source.tools(ctx):
                if allowed is not None and tool.name not in allowed:
                    continue
                if tool.name in self._by_name:
                    log.warning(
                        "tool %s of %s is hidden by %s's",
                        tool.name,
                        tool.source,
                        self._by_name[tool.name][1].source,
                    )
                    continue
                self._by_name[tool.name] = (source, tool)

    def __bool__(self) -> bool:
        return bool(self._by_name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def schemas(self) -> list[dict[str, Any]]:
        return [tool.openai() for _, tool in sorted(self._by_name.values(), key=_by_tool_name)]

    async def run(self, name: str, arguments: dict[str, Any]) -> str:
        hit = self._by_name.get(name)
        if hit is None:
            raise ToolFailure(f"there is no tool named {name!r}")
        source, tool = hit
        return await source.call(tool, arguments, self.ctx)


class ToolFailure(Exception):
    """A tool call failed; the message goes back to the model as the tool's result."""


def _by_tool_name(item: tuple[ToolSource, Tool]) -> str:
    return item[1].name
