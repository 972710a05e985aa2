"""Opening one MCP transport from a ``McpServerConfig``, and the stdio allow-list.

Each transport is an async context manager yielding the SDK's ``(read, write)`` stream
pair; ``McpConnection`` enters and exits it in one task (anyio scopes demand that)::

    stdio  resolve_command() ─► spawn [path, *args] (no shell, own process group)
           stdout/stdin = JSON-RPC lines, stderr ─► StderrTail (last few KiB, for errors)
    sse    GET <url> (event stream) + POST to the endpoint the server names
    http   streamable HTTP: POST <url> per message, optional GET stream, DELETE on close

Secrets (``env``, ``headers``) are revealed here and nowhere else; they never enter an
error message. A stdio child gets only ``cfg.env`` over a small safe base environment
(HOME, PATH, USER...), not the whole environment of the host.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx2
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, get_default_environment, stdio_client
from mcp.client.streamable_http import streamable_http_client

from astr_ray.config import McpServerConfig
from astr_ray.errors import McpError

__all__ = ["StderrTail", "open_transport", "resolve_command"]

# How long an HTTP connect / write / pool acquisition may take; reads on the event
# streams may idle much longer (servers ping, tool calls have their own limit).
HTTP_TIMEOUT_S = 30.0
SSE_READ_TIMEOUT_S = 300.0
# After a stdio child ends, how long to wait for the rest of its stderr.
_STDERR_EOF_WAIT_S = 1.0


class StderrTail:
    """The last ``max_bytes`` a stdio server wrote to stderr, kept in memory.

    Fed by a pipe protocol on the event loop; ``text()`` never blocks. ``eof`` is set
    once every holder of the pipe's write end (the child, its children) has closed it.
    """

    def __init__(self, max_bytes: int = 4096) -> None:
        self.max_bytes = max_bytes
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.eof = asyncio.Event()

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        while self._size - len(self._chunks[0]) >= self.max_bytes:
            self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        """The tail as text: at most ``max_bytes``, trimmed to whole lines when it was cut."""
        data = b"".join(self._chunks)
        cut = len(data) > self.max_bytes
        data = data[-self.max_bytes :]
        if cut and b"\n" in data[:-1]:
            data = data[data.index(b"\n") + 1 :]
        return data.decode("utf-8", "replace").strip()


class _TailProtocol(asyncio.Protocol):
    def __init__(self, tail: StderrTail) -> None:
        self._tail = tail

    def data_received(self, data: bytes) -> None:
        self._tail.feed(data)

    def eof_received(self) -> bool | None:
        self._tail.eof.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._tail.eof.set()


def _child_path(cfg: McpServerConfig) -> str | None:
    """The PATH the child will search: its own ``env`` PATH if given, else the host's."""
    if "PATH" in cfg.env:
        return cfg.env["PATH"].get_secret_value()
    return os.environ.get("PATH")


def _locate(command: str, cfg: McpServerConfig) -> str | None:
    """Where ``command`` would be found: an absolute path, or None when it is not there.

    A name without a slash is looked up on the child's PATH; a relative path is taken
    relative to ``cfg.cwd`` (POSIX spawn semantics with a working directory).
    """
    if os.sep in command or (os.altsep and os.altsep in command):
        base = cfg.cwd or os.getcwd()
        path = os.path.abspath(os.path.join(base, os.path.expanduser(command)))
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    found = shutil.which(command, path=_child_path(cfg))
    return os.path.abspath(found) if found else None


def resolve_command(cfg: McpServerConfig, allowed_commands: list[str]) -> str:
    """Check a stdio server's ``command`` against the allow-list; return the path to spawn.

    Allowed when the command string equals an entry, or when its resolved real path
    equals the resolved real path of an entry (so ``python3`` and ``/usr/bin/python3``
    may stand for each other). The returned absolute path is what gets spawned, so a
    PATH change between this check and the spawn cannot swap the executable.

    Raises ``McpError`` (before anything is spawned) when the command is not allowed or
    cannot be found. Touches the file system only (no process).
    """
    command = cfg.command or ""
    located = _locate(command, cfg) if command else None
    allowed = command in allowed_commands
    if not allowed and located is not None:
        real = os.path.realpath(located)
        for entry in allowed_commands:
            entry_path = _locate(entry, cfg)
            if entry_path is not None and os.path.realpath(entry_path) == real:
                allowed = True
                break
    if not allowed:
        raise McpError(
            f"MCP server {cfg.name!r}: command {command!r} is not allowed; add it "
            f"(or its absolute path) to mcp.allowed_commands to let it run",
            server=cfg.name,
        )
    if located is None:
        raise McpError(
            f"MCP server {cfg.name!r}: command {command!r} was not found "
            f"(not an executable file{'' if os.sep in command else ' on PATH'})",
            server=cfg.name,
        )
    return located


def _revealed(secrets: dict[str, Any]) -> dict[str, str]:
    return {k: v.get_secret_value() for k, v in secrets.items()}


@asynccontextmanager
async def _stdio(cfg: McpServerConfig, path: str, tail: StderrTail) -> AsyncIterator[Any]:
    # stderr goes to a pipe we read on the loop (bounded tail), not to our stderr:
    # the tail explains a server that dies on start, and our logs stay ours.
    read_fd, write_fd = os.pipe()
    loop = asyncio.get_running_loop()
    try:
        reader, _ = await loop.connect_read_pipe(
            lambda: _TailProtocol(tail), os.fdopen(read_fd, "rb", buffering=0)
        )
    except BaseException:
        os.close(write_fd)
        raise
    errlog = os.fdopen(write_fd, "w")
    try:
        params = StdioServerParameters(
            command=path,
            args=list(cfg.args),
            env=get_default_environment() | _revealed(cfg.env),
            cwd=cfg.cwd,
        )
        async with stdio_client(params, errlog=errlog) as streams:
            # The child holds its own copy of the write end; ours would keep EOF away.
            errlog.close()
            yield streams
    finally:
        errlog.close()
        # The child is gone (stdio_client reaps it); let its last words arrive.
        try:
            await asyncio.wait_for(tail.eof.wait(), _STDERR_EOF_WAIT_S)
        except TimeoutError:
            pass  # a grandchild still holds the pipe: stop reading anyway
        finally:
            reader.close()


@asynccontextmanager
async def _sse(cfg: McpServerConfig) -> AsyncIterator[Any]:
    assert cfg.url is not None
    async with sse_client(
        cfg.url,
        headers=_revealed(cfg.headers),
        timeout=HTTP_TIMEOUT_S,
        sse_read_timeout=SSE_READ_TIMEOUT_S,
    ) as streams:
        yield streams


@asynccontextmanager
async def _http(cfg: McpServerConfig) -> AsyncIterator[Any]:
    assert cfg.url is not None
    timeout = httpx2.Timeout(HTTP_TIMEOUT_S, read=SSE_READ_TIMEOUT_S)
    async with (
        httpx2.AsyncClient(headers=_revealed(cfg.headers), timeout=timeout) as client,
        streamable_http_client(cfg.url, http_client=client) as streams,
    ):
        yield streams


def open_transport(
    cfg: McpServerConfig, *, command_path: str | None = None, stderr: StderrTail | None = None
) -> AbstractAsyncContextManager[Any]:
    """The transport for ``cfg`` as an async context manager yielding ``(read, write)``.

    stdio needs ``command_path`` (from ``resolve_command``) and a ``StderrTail``.
    Entering it spawns or connects; exiting it closes the streams and, for stdio,
    ends the child (stdin closed, then SIGTERM, then SIGKILL to its process group) and
    reaps it. Enter and exit it in the same task.
    """
    if cfg.transport == "stdio":
        if command_path is None or stderr is None:
            raise ValueError("a stdio transport needs command_path and stderr")
        return _stdio(cfg, command_path, stderr)
    if cfg.transport == "sse":
        return _sse(cfg)
    return _http(cfg)
