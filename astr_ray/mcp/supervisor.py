"""Keeping one MCP connection up: reconnect with exponential backoff, refresh tools.

``keep_connected`` is a loop meant to run as one task beside its ``McpConnection``
(the actor shell starts it, sets ``stop`` and awaits it on shutdown)::

    ┌─► connect() + list_tools() ─ok─► on_tools(tools)
    │        │ fail                          │
    │        ▼                               ▼
    ├── wait backoff ◄── session ended ── wait: stop | session ended | tools changed
    │   (x2 each time, up to max;            │ idle ping_interval_s   │ list_tools()
    │    reset after a long-lived session)   ▼                        ▼ on_tools(tools)
    │                                      ping() ─ no answer ─► session ended
    stop set (or the task cancelled) ─► close() ─► return
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from astr_ray.errors import McpError
from astr_ray.mcp.client import McpConnection, McpTool

__all__ = ["keep_connected"]

log = logging.getLogger(__name__)

OnTools = Callable[[list[McpTool]], Awaitable[None]]


async def _wait_any(*waits: Awaitable[object], within: float | None) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _report_tools(conn: McpConnection, on_tools: OnTools, tools: list[McpTool]) -> None:
    try:
        await on_tools(tools)
    except Exception:
        log.exception("MCP server %s: on_tools failed", conn.name)


async def keep_connected(
    conn: McpConnection,
    stop: asyncio.Event,
    *,
    backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
    ping_interval_s: float | None = 30.0,
    on_tools: OnTools | None = None,
) -> None:
    """Hold ``conn`` connected until ``stop`` is set; then close it and return.

    Contract:

    - Connects at once. After a failed attempt, or a lost session, waits ``backoff_s``,
      doubling each time up to ``max_backoff_s``; the delay resets once a session has
      lived ``max_backoff_s`` (so a server that crashes right after starting is not
      restarted in a tight loop).
    - After every successful (re)connect lists the tools (``conn.tools`` is refreshed)
      and awaits ``on_tools(tools)`` if given; a failing listing counts as a failed
      attempt (the session is closed and retried). Lists and reports them again when
      the server announces a change (``conn.tools_changed``). ``on_tools`` errors are
      logged, not raised.
    - Notices a lost session when it ends (stdio child exited, stream closed, a call
      saw the connection die) and, while idle, by a ``ping()`` every
      ``ping_interval_s`` (None: no pings), then reconnects as above. A stdio server
      is restarted as a new process.
    - A stdio command refused by the allow-list (or not found) is not retried: the
      reason stays in ``conn.last_error`` and the loop just waits for ``stop``.
    - Never raises ``McpError``; reasons go to ``conn.last_error`` and the log. On
      return (``stop`` set, or this task cancelled) the connection is closed.

    Everything runs in the caller's loop; calls on ``conn`` from other tasks may
    proceed concurrently (they fail with ``McpError`` while it is down).
    """
    delay = backoff_s
    try:
        try:
            conn.check_command()
        except McpError as exc:
            conn.last_error = exc.message
            log.error("%s", exc)
            await stop.wait()
            return
        loop = asyncio.get_running_loop()
        connected_at: float | None = None
        while not stop.is_set():
            if not conn.connected:
                if connected_at is not None:
                    # A session that lived long resets the backoff; one that died
                    # young (a crash loop) keeps climbing it.
                    if loop.time() - connected_at >= max_backoff_s:
                        delay = backoff_s
                    connected_at = None
                    await conn.close()
                    log.warning(
                        "MCP server %s: connection lost (%s); reconnecting in %.1fs",
                        conn.name,
                        conn.last_error,
                        delay,
                    )
                    await _wait_any(stop.wait(), within=delay)
                    delay = min(delay * 2, max_backoff_s)
                    continue
                try:
                    await conn.connect()
                    tools = await conn.list_tools()
                except McpError as exc:
                    log.warning("MCP server %s: %s; retrying in %.1fs", conn.name, exc, delay)
                    await conn.close()
                    await _wait_any(stop.wait(), within=delay)
                    delay = min(delay * 2, max_backoff_s)
                    continue
                connected_at = loop.time()
                log.info("MCP server %s connected (%d tools)", conn.name, len(tools))
                conn.tools_changed.clear()
                if on_tools is not None:
                    await _report_tools(conn, on_tools, tools)
            await _wait_any(
                stop.wait(), conn.wait_ended(), conn.tools_changed.wait(), within=ping_interval_s
            )
            if stop.is_set() or not conn.connected:
                continue
            if conn.tools_changed.is_set():
                conn.tools_changed.clear()
                try:
                    tools = await conn.list_tools()
                except McpError as exc:
                    log.warning("MCP server %s: refreshing tools failed: %s", conn.name, exc)
                    continue
                if on_tools is not None:
                    await _report_tools(conn, on_tools, tools)
                continue
            if ping_interval_s is None:
                continue
            try:
                await conn.ping()
            except McpError as exc:
                # An error answer still proves the link; a lost one is handled above.
                log.warning("MCP server %s: ping failed: %s", conn.name, exc)
    finally:
        await conn.close()
