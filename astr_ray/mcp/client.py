"""One connection to one MCP server: connect, list tools, call tools, close.

The SDK's transports and ``ClientSession`` are anyio context managers whose scopes
must be entered and exited in the same task. A ``McpConnection`` therefore owns a
*runner* task that holds them open; callers in any task of the same loop send
requests through the session, and ``close()`` asks the runner to unwind::

    connect() ──spawn──► runner task
                           enter transport ─► enter ClientSession ─► initialize
                           ready ──────────────────────────────────► connect() returns
                           wait until: close() | read stream ends | a call saw the
                                       connection die
                           exit ClientSession ─► exit transport (stdio child reaped)
                           ended (last_error says why, unless close() asked)

    call_tool() / list_tools() / ping()  ─► session (from the caller's task)

Failures surface as ``McpError``: refused or missing command, a server that does
not start or answer ``initialize`` (with the stdio child's stderr tail), a time-out,
a tool's ``isError`` answer, a lost connection (``connected`` turns False at once and
the runner tears the session down; ``keep_connected`` reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Self

import anyio
import mcp_types as types
from mcp.client.session import ClientSession, IncomingMessage
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

from astr_ray.config import McpServerConfig
from astr_ray.errors import McpError
from astr_ray.mcp.transport import StderrTail, open_transport, resolve_command

__all__ = ["McpConnection", "McpTool", "render_content"]

log = logging.getLogger(__name__)

# How long connect() waits for the transport and ``initialize`` together.
CONNECT_TIMEOUT_S = 30.0
# How long close() waits for the runner to unwind (stdio: stdin close, TERM, KILL
# take up to ~6 s in the SDK) before cancelling it.
CLOSE_TIMEOUT_S = 10.0
# The SDK times a call out itself (and tells the server to cancel it); this backstop
# only fires if the SDK's own time-out could not (e.g. a write that never completes).
_BACKSTOP_S = 5.0
# After a call saw the connection die: how long to wait for the teardown's reason.
_SETTLE_S = 3.0
_CLIENT_INFO = types.Implementation(name="astr-ray", version="0.1.0")


@dataclass(frozen=True)
class McpTool:
    """A tool an MCP server offers: its name, description and JSON schema of arguments."""

    name: str
    description: str
    input_schema: dict[str, Any]


def _b64_size(data: str) -> int:
    data = data.strip()
    return max(0, len(data) * 3 // 4 - data[-2:].count("="))


def render_content(result: types.CallToolResult) -> str:
    """A tool result as text: text blocks joined by newlines, other blocks summarized.

    ``[image: image/png, 1234 bytes]``, ``[audio: ...]``, ``[resource link: name <uri>]``;
    an embedded text resource contributes its text, a binary one a summary. A result
    with no content but structured content renders that as JSON.
    """
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.ImageContent | types.AudioContent):
            parts.append(f"[{block.type}: {block.mime_type}, {_b64_size(block.data)} bytes]")
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource link: {block.name} <{block.uri}>]")
        elif isinstance(block, types.EmbeddedResource):
            res = block.resource
            if isinstance(res, types.TextResourceContents):
                parts.append(res.text)
            else:
                mime = res.mime_type or "application/octet-stream"
                parts.append(f"[resource: {res.uri}, {mime}, {_b64_size(res.blob)} bytes]")
        else:  # a block type newer than this code
            parts.append(f"[{getattr(block, 'type', 'content')}]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


class _WatchedReadStream:
    """The transport's read stream, passed through; reports its end to ``on_end``.

    The session's dispatcher simply stops when the server's side ends (stdio child
    exited, SSE stream closed); this is how the connection learns of it while idle.
    """

    def __init__(self, inner: Any, on_end: Any) -> None:
        self._inner = inner
        self._on_end = on_end

    @property
    def last_context(self) -> Any:  # the SDK reads it duck-typed (contextvars relay)
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        try:
            item: SessionMessage | Exception = await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise
        return item

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _leaf_errors(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaf_errors(sub)]
    return [exc]


def _describe(exc: BaseException) -> str:
    leaves = [e for e in _leaf_errors(exc) if not isinstance(e, asyncio.CancelledError)]
    first = leaves[0] if leaves else exc
    if isinstance(first, MCPError):
        if first.code == types.CONNECTION_CLOSED:
            return "the server closed the connection"
        return f"the server answered with error {first.code}: {first.message}"
    if isinstance(first, TimeoutError):
        return "timed out"
    if isinstance(first, OSError) and first.strerror:
        return f"{first.strerror}" + (f": {first.filename}" if first.filename else "")
    text = str(first)
    return f"{type(first).__name__}: {text}" if text else type(first).__name__


class McpConnection:
    """One session with one MCP server, used from one asyncio loop.

    ``connect()`` opens the transport and initializes; ``list_tools()`` and
    ``call_tool()`` may run concurrently from any task of that loop; ``close()`` ends
    the session (and a stdio child). After the session is lost or closed, ``connect()``
    starts a fresh one (a new process for stdio). Not thread-safe.

    ``connected`` is True between a successful ``connect()`` and the end of that
    session. ``last_error`` is the latest reason a connect failed or a session was
    lost (kept after a successful reconnect, for status pages); ``close()`` does not
    set it. ``tools`` is the last list ``list_tools()`` returned; ``tools_changed`` is
    set when the server announces a new list (``notifications/tools/list_changed``),
    and whoever refreshes clears it.
    """

    def __init__(
        self,
        cfg: McpServerConfig,
        allowed_commands: list[str],
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.cfg = cfg
        self.allowed_commands = list(allowed_commands)
        self.connect_timeout_s = connect_timeout_s
        self.last_error: str | None = None
        self.tools: list[McpTool] = []
        self._session: ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()  # the runner should unwind
        self._ended = asyncio.Event()  # the runner has unwound
        self._ended.set()
        self._lost: str | None = None  # why the current session is dying, if it is
        self._stream_error: str | None = None  # a transport fault the session reported
        self.tools_changed = asyncio.Event()
        self._closing = False
        self._lock = asyncio.Lock()

    # -- state -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def connected(self) -> bool:
        return self._session is not None and self._lost is None and not self._stop.is_set()

    async def wait_ended(self) -> None:
        """Return once the current session has ended (at once if there is none)."""
        await self._ended.wait()

    def check_command(self) -> str | None:
        """For stdio, the executable path to spawn; raises ``McpError`` if not allowed.

        Runs no process. ``None`` for the HTTP transports.
        """
        if self.cfg.transport != "stdio":
            return None
        return resolve_command(self.cfg, self.allowed_commands)

    # -- lifecycle ---------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the transport and initialize the MCP session.

        Idempotent while connected. Waits for an earlier session's teardown first.
        For stdio the command is checked against ``allowed_commands`` before anything
        is spawned. Raises ``McpError`` with the reason (refused/missing command, spawn
        failure, HTTP error, no ``initialize`` answer within ``connect_timeout_s``, a
        child that exited, with the tail of its stderr). Cancelling ``connect()``
        abandons the attempt and tears down what was opened.
        """
        async with self._lock:
            if self.connected:
                return
            await self._reap()
            try:
                path = self.check_command()
            except McpError as exc:
                self.last_error = exc.message
                raise
            self._stop = asyncio.Event()
            self._ended = asyncio.Event()
            self._lost = None
            self._stream_error = None
            self._closing = False
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            # Consume the outcome even when this connect() is cancelled before reading it.
            ready.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._runner = asyncio.create_task(
                self._run(ready, path), name=f"mcp-runner:{self.cfg.name}"
            )
            try:
                # One bound for the whole attempt: transport and ``initialize`` (an SSE
                # server can accept, then never name its endpoint).
                done, _ = await asyncio.wait({ready}, timeout=self.connect_timeout_s)
            except asyncio.CancelledError:
                await self._abandon()
                raise
            if not done:
                await self._abandon()
                self.last_error = f"no answer within {self.connect_timeout_s:g}s"
                raise McpError(
                    f"MCP server {self.name!r}: cannot connect: {self.last_error}",
                    server=self.name,
                )
            try:
                ready.result()
            except McpError as exc:
                self.last_error = exc.message
                raise

    async def _abandon(self) -> None:
        """Give up a connect attempt: cancel the runner wherever it is stuck, and reap it."""
        self._closing = True
        self._stop.set()
        if self._runner is not None:
            self._runner.cancel()
        await asyncio.shield(self._reap())

    async def close(self) -> None:
        """End the session: close the streams, stop and reap a stdio child.

        Idempotent; safe while a connect or a call is in flight (those fail with
        ``McpError``). Returns when the runner has unwound, or after
        ``CLOSE_TIMEOUT_S`` by cancelling it.
        """
        runner = self._runner
        if runner is None:
            return
        self._closing = True
        self._stop.set()
        if not runner.done():
            done, _ = await asyncio.wait({runner}, timeout=CLOSE_TIMEOUT_S)
            if not done:
                log.warning("MCP server %s: teardown took too long; cancelling it", self.name)
                runner.cancel()
                await asyncio.wait({runner})
        await self._reap()

    async def _reap(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if not runner.done():
            self._stop.set()
            await asyncio.wait({runner})
        if not runner.cancelled() and (exc := runner.exception()) is not None:
            log.error("MCP server %s: runner failed", self.name, exc_info=exc)

    def _mark_lost(self, reason: str) -> None:
        """The session is dead: report it now, and let the runner tear it down."""
        if self._lost is None and not self._closing:
            self._lost = reason
            self.last_error = reason
            if self._session is not None:
                log.warning("MCP server %s: connection lost: %s", self.name, reason)
        self._stop.set()

    def _on_stream_end(self) -> None:
        what = "the server process exited" if self.cfg.transport == "stdio" else "stream ended"
        self._mark_lost(f"{what}: {self._stream_error}" if self._stream_error else what)

    async def _on_message(self, message: IncomingMessage) -> None:
        """Server notifications and transport faults the session surfaces."""
        if isinstance(message, Exception):
            self._stream_error = _describe(message)
        elif isinstance(message, types.ToolListChangedNotification):
            self.tools_changed.set()

    async def _run(self, ready: asyncio.Future[None], path: str | None) -> None:
        """Hold the transport and session open in this one task until told to stop."""
        tail = StderrTail() if self.cfg.transport == "stdio" else None
        failure: BaseException | None = None
        try:
            transport = open_transport(self.cfg, command_path=path, stderr=tail)
            async with transport as (read, write):
                watched = _WatchedReadStream(read, self._on_stream_end)
                session_cm = ClientSession(
                    watched, write, client_info=_CLIENT_INFO, message_handler=self._on_message
                )
                async with session_cm as session:
                    await session.initialize()  # connect() bounds the whole attempt
                    if not self._stop.is_set():
                        self._session = session
                        ready.set_result(None)
                        await self._stop.wait()
        except Exception as exc:  # every failure becomes the reason the session ended
            failure = exc
        finally:
            self._session = None
            reason = self._end_reason(failure, tail)
            if not ready.done():
                reason = reason or "closed while connecting"
                ready.set_exception(
                    McpError(
                        f"MCP server {self.name!r}: cannot connect: {reason}", server=self.name
                    )
                )
            elif reason and not self._closing:
                self._mark_lost(reason)
                self.last_error = reason  # now with the stderr tail, when there is one
            self._ended.set()

    def _end_reason(self, failure: BaseException | None, tail: StderrTail | None) -> str | None:
        """Why the session ended, or None when ``close()`` ended it cleanly."""
        if failure is not None:
            reason = _describe(failure)
        elif self._lost is not None:
            reason = self._lost
        elif self._closing:
            return None
        else:
            reason = "the server closed the connection"
        if tail is not None and (text := tail.text()):
            reason = f"{reason}; stderr: {text}"
        return reason

    # -- requests ----------------------------------------------------------------------
    def _require_session(self) -> ClientSession:
        session = self._session
        if session is None or not self.connected:
            why = self._lost or self.last_error or "not connected yet"
            raise McpError(f"MCP server {self.name!r} is not connected ({why})", server=self.name)
        return session

    async def _failed(self, what: str, exc: BaseException, limit: float) -> McpError:
        """Turn a request failure into an ``McpError``; a dead connection is marked lost.

        On a lost connection, waits briefly for the teardown so the error can carry
        the full reason (for stdio, the child's last words on stderr).
        """
        if isinstance(exc, TimeoutError) or (
            isinstance(exc, MCPError) and exc.code == types.REQUEST_TIMEOUT
        ):
            return McpError(f"MCP {what} timed out after {limit:g}s", server=self.name)
        if isinstance(exc, MCPError) and exc.code != types.CONNECTION_CLOSED:
            return McpError(f"MCP {what} failed: {exc.message}", server=self.name)
        if not isinstance(exc, MCPError | anyio.BrokenResourceError | anyio.ClosedResourceError):
            return McpError(f"MCP {what} failed: {_describe(exc)}", server=self.name)
        if self._closing:
            return McpError(f"MCP {what}: the connection was closed", server=self.name)
        self._mark_lost("the server closed the connection")
        ended = self._ended
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ended.wait()), _SETTLE_S)
        why = self.last_error or self._lost or "closed"
        return McpError(f"MCP {what}: connection lost ({why})", server=self.name)

    async def list_tools(self) -> list[McpTool]:
        """All the server's tools (every page), also kept in ``tools``.

        The whole listing is time-limited by ``cfg.tool_timeout_s``. Raises ``McpError``
        (a dead connection also turns ``connected`` False).
        """
        session = self._require_session()
        limit = self.cfg.tool_timeout_s
        tools: list[McpTool] = []
        cursor: str | None = None
        try:
            async with asyncio.timeout(limit):
                while True:
                    params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                    page = await session.list_tools(params=params)
                    tools.extend(
                        McpTool(t.name, t.description or "", dict(t.input_schema))
                        for t in page.tools
                    )
                    cursor = page.next_cursor
                    if not cursor:
                        break
        except Exception as exc:
            raise await self._failed(f"server {self.name!r} tools/list", exc, limit) from exc
        self.tools = tools
        return tools

    async def call_tool(
        self, name: str, arguments: dict[str, Any], *, limit: float | None = None
    ) -> str:
        """Call tool ``name`` and return its content as text (see ``render_content``).

        Waits at most ``limit`` seconds (default ``cfg.tool_timeout_s``); on time-out the
        server is told to cancel the call and ``McpError("... timed out after Ns")`` is
        raised, the connection staying usable. A result flagged ``isError`` raises
        ``McpError`` carrying the server's text. A dead connection raises ``McpError``
        and ``connected`` turns False. Not retried: a tool call may have side effects.
        """
        session = self._require_session()
        limit = self.cfg.tool_timeout_s if limit is None else limit
        what = f"tool {name!r} on server {self.name!r}"
        try:
            async with asyncio.timeout(limit + _BACKSTOP_S):
                result = await session.call_tool(name, arguments, read_timeout_seconds=limit)
        except Exception as exc:
            raise await self._failed(what, exc, limit) from exc
        text = render_content(result)
        if result.is_error:
            raise McpError(
                f"MCP {what} failed: {text or 'no message'}", server=self.name, tool=name
            )
        return text

    async def ping(self, *, limit: float = 10.0) -> None:
        """Check the server answers; raises ``McpError`` (and marks the connection lost
        when it does not answer in ``limit`` seconds)."""
        session = self._require_session()
        try:
            async with asyncio.timeout(limit):
                await session.send_ping()
        except TimeoutError as exc:
            self._mark_lost(f"no answer to ping within {limit:g}s")
            raise McpError(
                f"MCP server {self.name!r}: no answer to ping within {limit:g}s", server=self.name
            ) from exc
        except Exception as exc:
            raise await self._failed(f"server {self.name!r} ping", exc, limit) from exc
