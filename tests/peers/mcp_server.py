"""A real MCP server for tests, written with the pinned SDK (``mcp`` 2.x, ``MCPServer``).

It speaks each transport the client supports::

    python -m tests.peers.mcp_server --transport stdio
    python -m tests.peers.mcp_server --transport http --port 18301   # POST/GET /mcp
    python -m tests.peers.mcp_server --transport sse  --port 18302   # GET /sse, POST /messages/

Tools (their JSON schemas come from the signatures):

    add(a: int, b: int) -> int        a + b
    echo(text: str) -> str            the text back
    slow(seconds: float) -> str       sleeps, then "slept <seconds>"
    fail(message: str)                raises: the call answers ``isError`` with the message
    crash()                           exits the process at once (``os._exit``), mid-call
    pid() -> int                      the server's process id (to check for leftovers)
    picture() -> [text, image]        a caption and a tiny PNG (non-text content)
    env(name: str) -> str             the value of an environment variable ("" if unset)
    grow(name: str) -> str            adds a tool ``name``; sends tools/list_changed
    header(name: str) -> str          a header of the HTTP request carrying the call ("")

HTTP and SSE print ``mcp server ready on <port>`` once listening is requested; tests
still poll the port until it answers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from typing import Any

from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

# A 1x1 transparent PNG.
_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


def build_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("astr-test-tools", log_level="WARNING")

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(description="Return the text unchanged.")
    def echo(text: str) -> str:
        return text

    @server.tool(description="Sleep for the given number of seconds.")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool(description="Always fails with the given message.")
    def fail(message: str) -> str:
        # ToolError: the SDK sends its message; any other exception reads only
        # "Error executing tool fail" on the wire.
        raise ToolError(message)

    @server.tool(description="Exit the server process immediately.")
    def crash() -> str:
        sys.stderr.write("crashing on request\n")
        sys.stderr.flush()
        os._exit(3)

    @server.tool(description="The server's process id.")
    def pid() -> int:
        return os.getpid()

    @server.tool(description="A caption and a 1x1 PNG.")
    def picture() -> list[str | Image]:
        return ["a tiny picture", Image(data=_PNG, format="png")]

    @server.tool(description="Add a tool that returns its name; announce the new list.")
    async def grow(name: str, ctx: Context) -> str:
        server.add_tool(lambda: name, name=name, description=f"added by grow({name!r})")
        await ctx.session.send_tool_list_changed()
        return f"added {name}"

    @server.tool(description="A header of the HTTP request that carried this call.")
    def header(name: str, ctx: Context) -> str:
        return (ctx.headers or {}).get(name.lower(), "")

    @server.tool(description="Read an environment variable of the server process.")
    def env(name: str) -> str:
        return os.environ.get(name, "")

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=["stdio", "sse", "http"], default="stdio")
    parser.add_argument("--port", type=int, default=18301)
    args = parser.parse_args()
    server = build_server()
    if args.transport == "stdio":
        server.run("stdio")
        return
    print(f"mcp server ready on {args.port}", flush=True)
    if args.transport == "sse":
        server.run("sse", host="127.0.0.1", port=args.port)
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
