"""MCP (Model Context Protocol) client: tools served by external MCP servers.

No Ray here: an actor shell owns one ``McpConnection`` per configured server and runs
``keep_connected`` beside it, all in one asyncio loop::

    McpConnection ── transport (stdio child | SSE | streamable HTTP) ──► MCP server
        connect() / list_tools() / call_tool() / ping() / close()
    keep_connected(conn, stop)   reconnect with backoff, refresh tools, close on stop

Built on the ``mcp`` SDK 2.x client (``ClientSession`` + its transports).
"""

from astr_ray.mcp.client import McpConnection, McpTool, render_content
from astr_ray.mcp.supervisor import keep_connected
from astr_ray.mcp.transport import resolve_command

__all__ = ["McpConnection", "McpTool", "keep_connected", "render_content", "resolve_command"]
