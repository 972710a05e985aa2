"""The MCP servers' tools, as a ``ToolSource`` for the turn's ``ToolBox``.

A tool ``search`` of server ``docs`` is offered to the model as ``docs__search`` (names
of different servers never clash with each other or with plugin tools). The host
refreshes the lists in the background (``refresh``), so listing tools in a turn costs
no call.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from actors.common import get_actor
from actors.mcp_client import mcp_name
from astr_ray.config import Config
from astr_ray.errors import McpError
from astr_ray.tools import Tool, ToolContext, ToolFailure

log = logging.getLogger(__name__)


def tool_name(server: str, tool: str) -> str:
    """``<server>__<tool>``, made to fit OpenAI's tool-name rule (64 of [A-Za-z0-9_-])."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{server}__{tool}")[:64]


class McpTools:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.servers = [s for s in cfg.mcp.servers if s.enabled]
        self._tools: dict[str, list[Tool]] = {}

    async def refresh(self) -> None:
        """Fetch every server's tool list (a server that does not answer keeps its last
        list for now; a disconnected one has none)."""

        async def one(server: str) -> None:
            try:
                actor = get_actor(mcp_name(server), self.cfg.runtime.namespace)
                listed = await asyncio.wait_for(actor.tools.remote(), 10)
            except Exception as exc:
                log.debug("MCP server %s: no tool list (%s)", server, exc)
                return
            self._tools[server] = [
                Tool(
                    tool_name(server, t["name"]),
                    t["description"] or f"{t['name']} (MCP server {server})",
                    t["input_schema"] or {"type": "object", "properties": {}},
                    f"mcp:{server}",
                    t["name"],
                )
                for t in listed
            ]

        await asyncio.gather(*(one(s.name) for s in self.servers))

    def tools(self, ctx: ToolContext) -> list[Tool]:
        return [t for s in self.servers for t in self._tools.get(s.name, [])]

    async def call(self, tool: Tool, arguments: dict[str, Any], ctx: ToolContext) -> str:
        server = tool.source.removeprefix("mcp:")
        limit = next((s.tool_timeout_s for s in self.servers if s.name == server), 30.0)
        try:
            actor = get_actor(mcp_name(server), self.cfg.runtime.namespace)
            return str(await asyncio.wait_for(actor.call.remote(tool.ref, arguments), limit + 5))
        except McpError as exc:
            raise ToolFailure(exc.message) from None
        except TimeoutError:
            raise ToolFailure(f"the MCP server {server} did not answer in time") from None
        except Exception as exc:  # the actor is restarting or gone
            raise ToolFailure(
                f"the MCP server {server} is unavailable ({type(exc).__name__})"
            ) from None
