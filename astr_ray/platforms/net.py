"""Listening for platforms that connect to us (OneBot reverse WebSocket, Telegram
webhooks, the Slack Events API): one aiohttp app on one bound socket."""

from __future__ import annotations

import socket

from aiohttp import web

from astr_ray.errors import PlatformError

__all__ = ["bound_socket", "listen"]


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one); raises ``OSError``."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


async def listen(
    app: web.Application, host: str, port: int, platform_id: str
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: a free port); returns the runner (``cleanup()``
    stops it) and the bound port. Raises ``PlatformError`` when the port is taken."""
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        sock = bound_socket(host, port)
    except OSError as exc:
        await runner.cleanup()
        raise PlatformError(f"cannot listen: {exc}", platform=platform_id, port=port) from None
    await web.SockSite(runner, sock).start()
    return runner, int(sock.getsockname()[1])
