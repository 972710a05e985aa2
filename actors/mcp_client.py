"""McpClient actors: one per configured MCP server, holding its connection.

    Supervisor ─► McpClient "mcp-<server>" ─ McpConnection (stdio | sse | http) ─► server
    SessionHost ─McpTools─► tools() / call()

The connection is kept up with exponential backoff (a crashed stdio server is started
again, an HTTP server is reconnected); its tool list is refreshed after each
reconnect. A stdio server is started only if its command is in
``mcp.allowed_commands``, and never through a shell. Tool calls are time-limited.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import ray

from actors.common import node_id, setup_logging
from actors.logship import ship_logs
from astr_ray.config import Config, McpServerConfig, parse_config
from astr_ray.errors import McpError
from astr_ray.lifecycle import Lifecycle
from astr_ray.mcp import McpConnection, keep_connected

log = logging.getLogger(__name__)


def mcp_name(server: str) -> str:
    return f"mcp-{server}"


@ray.remote
class McpClient:
    def __init__(self, server: str, config: dict[str, Any]) -> None:
        setup_logging(mcp_name(server))
        self.cfg: Config = parse_config(config)
        ship_logs(mcp_name(server), self.cfg.runtime.namespace)
        found = [s for s in self.cfg.mcp.servers if s.name == server]
        if not found:
            raise McpError(f"no MCP server named {server!r} in the config")
        self.server: McpServerConfig = found[0]
        self.lifecycle = Lifecycle(mcp_name(server), self._on_start, self._on_stop)
        self.started_at = time.time()
        self.calls = 0
        self._stop = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, Any]:
        await self.lifecycle.start()
        return await self.ping()

    async def _on_start(self) -> None:
        self.conn = McpConnection(self.server, list(self.cfg.mcp.allowed_commands))
        self._stop.clear()
        self._keeper = asyncio.create_task(keep_connected(self.conn, self._stop))

    async def _on_stop(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            await asyncio.wait({self._keeper}, timeout=10)
        await self.conn.close()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def tools(self) -> list[dict[str, Any]]:
        """The server's tools (name, description, input_schema); empty while down."""
        await self.lifecycle.ensure_started()
        if not self.conn.connected:
            return []
        return [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema}
            for t in await self.conn.list_tools()
        ]

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Call a tool (time-limited by the server's ``tool_timeout_s``); ``McpError``
        says what went wrong."""
        await self.lifecycle.ensure_started()
        if not self.conn.connected:
            reason = self.conn.last_error or "connecting"
            raise McpError(f"MCP server {self.server.name} is not connected ({reason})")
        self.calls += 1
        return await self.conn.call_tool(name, arguments)

    async def ping(self) -> dict[str, Any]:
        if self.lifecycle.state.value == "new":
            await self.lifecycle.ensure_started()  # Ray restarted this process
        return {
            "pid": os.getpid(),
            "node_id": node_id(),
            "state": self.lifecycle.state.value,
            "server": self.server.name,
            "transport": self.server.transport,
            "connected": self.conn.connected,
            "last_error": self.conn.last_error,
            "calls": self.calls,
            "started_at": self.started_at,
        }
