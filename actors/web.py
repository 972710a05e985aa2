"""Serving a Starlette app from inside an actor: uvicorn on the actor's own event loop.

Used by the web chat adapter and the dashboard. Start returns once the socket is bound
(or raises the bind error, so a taken port fails the actor's start with the reason).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

__all__ = ["WS_MAX_SIZE", "serve", "shut_down"]

WS_MAX_SIZE = 16 << 20  # a WebSocket frame may carry a voice recording (8 MiB, base64)


async def serve(app: Any, host: str, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws_max_size=WS_MAX_SIZE,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.025)
    if task.done():
        task.result()  # raises the bind error
    return server, task


async def shut_down(server: uvicorn.Server | None, task: asyncio.Task[None] | None) -> None:
    if server is not None:
        server.should_exit = True
        if task is not None:
            await asyncio.wait({task}, timeout=5)
