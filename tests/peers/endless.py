"""A download that never ends, for the fakes that serve files: it proves a client
stops reading at its size cap (and hangs up) instead of buffering whatever comes."""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import web

__all__ = ["CHUNK", "ENDLESS_LIMIT", "stream_endless"]

CHUNK = 64 * 1024
ENDLESS_LIMIT = 256 * 1024 * 1024  # an endless body stops here if nobody hangs up


class Counted(Protocol):
    sent: int
    hung_up: bool


async def stream_endless(
    request: web.Request, headers: dict[str, str], down: Counted
) -> web.StreamResponse:
    """Write zeros until the client hangs up (``down.hung_up``) or the limit is reached;
    ``down.sent`` counts what went out."""
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    try:
        while down.sent < ENDLESS_LIMIT:
            await resp.write(b"\0" * CHUNK)
            down.sent += CHUNK
    except ConnectionError:
        down.hung_up = True
    except asyncio.CancelledError:
        down.hung_up = True
        raise
    return resp
