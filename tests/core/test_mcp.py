"""The MCP client core against a real MCP server (``tests/peers/mcp_server.py``), over
stdio (a child process), streamable HTTP and SSE (a server process on a loopback port).

No mocks: every test spawns or talks to a real server written with the SDK.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from astr_ray.config import McpServerConfig
from astr_ray.errors import McpError
from astr_ray.mcp import McpConnection, McpTool, keep_connected, resolve_command
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
SERVER_ARGS = ["-m", "tests.peers.mcp_server", "--transport"]


def stdio_cfg(**over: Any) -> McpServerConfig:
    data: dict[str, Any] = {
        "name": "tools",
        "transport": "stdio",
        "command": PY,
        "args": [*SERVER_ARGS, "stdio"],
        "cwd": str(REPO),
        "tool_timeout_s": 20,
    }
    data.update(over)
    return McpServerConfig(**data)


def alive(pid: int) -> bool:
    """True while the process exists at all, a zombie included (it keeps /proc/<pid>)."""
    return Path(f"/proc/{pid}").exists()


async def eventually(check: Callable[[], bool], within: float = 20.0) -> None:
    """Poll ``check`` until it holds; TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            if check():
                return
            await asyncio.sleep(0.05)


class ServerProcess:
    """``python -m tests.peers.mcp_server`` for HTTP or SSE on a fixed loopback port."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        path = "mcp" if self.transport == "http" else "sse"
        return f"http://127.0.0.1:{self.port}/{path}"

    def cfg(self, **over: Any) -> McpServerConfig:
        data: dict[str, Any] = {
            "name": f"tools-{self.transport}",
            "transport": self.transport,
            "url": self.url,
            "tool_timeout_s": 20,
        }
        data.update(over)
        return McpServerConfig(**data)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            PY,
            *SERVER_ARGS,
            self.transport,
            "--port",
            str(self.port),
            cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(30):
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"MCP test server exited with {self.proc.returncode}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                await writer.wait_closed()
                return

    async def wait_exit(self) -> int:
        assert self.proc is not None
        async with asyncio.timeout(20):
            return await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await self.wait_exit()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture(scope="module")
async def http_server() -> AsyncIterator[ServerProcess]:
    server = ServerProcess("http")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def sse_server() -> AsyncIterator[ServerProcess]:
    server = ServerProcess("sse")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(params=["stdio", "http", "sse"])
async def conn(
    request: pytest.FixtureRequest, http_server: ServerProcess, sse_server: ServerProcess
) -> AsyncIterator[McpConnection]:
    """A connected ``McpConnection`` per transport; closed after the test."""
    if request.param == "stdio":
        c = McpConnection(stdio_cfg(), [PY])
    else:
        server = http_server if request.param == "http" else sse_server
        c = McpConnection(server.cfg(), [])
    await c.connect()
    yield c
    await c.close()


# -- tools over every transport -----------------------------------------------------------
async def test_lists_tools_with_their_json_schemas(conn: McpConnection) -> None:
    tools = {t.name: t for t in await conn.list_tools()}
    assert {"add", "echo", "slow", "fail", "crash"} <= set(tools)
    add = tools["add"]
    assert isinstance(add, McpTool)
    assert add.description == "Add two integers."
    assert add.input_schema["type"] == "object"
    assert add.input_schema["properties"]["a"]["type"] == "integer"
    assert add.input_schema["properties"]["b"]["type"] == "integer"
    assert sorted(add.input_schema["required"]) == ["a", "b"]
    assert tools["echo"].input_schema["properties"]["text"]["type"] == "string"
    assert conn.tools == list(tools.values())


async def test_calls_add_and_echo(conn: McpConnection) -> None:
    assert await conn.call_tool("add", {"a": 2, "b": 40}) == "42"
    text = "héllo, 世界 \n second line"
    assert await conn.call_tool("echo", {"text": text}) == text


async def test_concurrent_calls_share_one_session(conn: McpConnection) -> None:
    results = await asyncio.gather(*(conn.call_tool("add", {"a": i, "b": i}) for i in range(8)))
    assert results == [str(2 * i) for i in range(8)]


async def test_tool_error_is_an_mcp_error_with_the_message(conn: McpConnection) -> None:
    with pytest.raises(McpError, match="disk is full, code 7") as err:
        await conn.call_tool("fail", {"message": "disk is full, code 7"})
    assert err.value.context["tool"] == "fail"
    assert conn.connected  # a tool's failure is not the connection's
    assert await conn.call_tool("add", {"a": 1, "b": 1}) == "2"


async def test_bad_arguments_and_unknown_tools_are_mcp_errors(conn: McpConnection) -> None:
    with pytest.raises(McpError, match="add"):
        await conn.call_tool("add", {"a": "not a number"})
    with pytest.raises(McpError, match="no_such_tool"):
        await conn.call_tool("no_such_tool", {})
    assert await conn.call_tool("echo", {"text": "still fine"}) == "still fine"


async def test_slow_tool_times_out_cleanly(conn: McpConnection) -> None:
    with pytest.raises(McpError, match=r"timed out after 0\.3s"):
        await conn.call_tool("slow", {"seconds": 30}, limit=0.3)
    assert conn.connected
    assert await conn.call_tool("slow", {"seconds": 0.01}) == "slept 0.01"
    assert await conn.call_tool("add", {"a": 3, "b": 4}) == "7"


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_configured_headers_reach_an_http_server(
    transport: str, http_server: ServerProcess, sse_server: ServerProcess
) -> None:
    server = http_server if transport == "http" else sse_server
    cfg = server.cfg(headers={"Authorization": SecretStr("Bearer t0k3n"), "X-Team": "a"})
    c = McpConnection(cfg, [])
    await c.connect()
    try:
        assert await c.call_tool("header", {"name": "Authorization"}) == "Bearer t0k3n"
        assert await c.call_tool("header", {"name": "x-team"}) == "a"
    finally:
        await c.close()


# -- stdio specifics ----------------------------------------------------------------------
async def test_default_limit_is_the_servers_tool_timeout() -> None:
    c = McpConnection(stdio_cfg(tool_timeout_s=0.4), [PY])
    await c.connect()
    try:
        with pytest.raises(McpError, match=r"timed out after 0\.4s"):
            await c.call_tool("slow", {"seconds": 30})
    finally:
        await c.close()


async def test_non_text_content_is_summarized() -> None:
    from tests.peers.mcp_server import _PNG

    c = McpConnection(stdio_cfg(), [PY])
    await c.connect()
    try:
        text = await c.call_tool("picture", {})
    finally:
        await c.close()
    assert text == f"a tiny picture\n[image: image/png, {len(_PNG)} bytes]"
    assert len(base64.b64encode(_PNG)) > len(_PNG)  # the size is of the bytes, not base64


async def test_env_reaches_the_child_but_the_hosts_environment_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASTR_MCP_HOST_ONLY", "host secret")
    cfg = stdio_cfg(env={"ASTR_MCP_TOKEN": SecretStr("s3cret")})
    c = McpConnection(cfg, [PY])
    await c.connect()
    try:
        assert await c.call_tool("env", {"name": "ASTR_MCP_TOKEN"}) == "s3cret"
        assert await c.call_tool("env", {"name": "ASTR_MCP_HOST_ONLY"}) == ""
    finally:
        await c.close()


async def test_close_leaves_no_child_process() -> None:
    c = McpConnection(stdio_cfg(), [PY])
    await c.connect()
    await c.connect()  # idempotent while connected: still one child
    pid = int(await c.call_tool("pid", {}))
    assert pid != os.getpid() and alive(pid)
    await c.close()
    assert not alive(pid)  # gone, and reaped (a zombie would keep /proc/<pid>)
    assert not c.connected
    assert c.last_error is None  # a requested close is not an error
    await c.close()  # idempotent
    with pytest.raises(McpError, match="not connected"):
        await c.call_tool("add", {"a": 1, "b": 2})


async def test_command_outside_the_allow_list_is_refused_before_spawning(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    cfg = stdio_cfg(args=["-c", f"open({str(marker)!r}, 'w').close()"])
    c = McpConnection(cfg, ["/usr/bin/node"])
    with pytest.raises(McpError) as err:
        await c.connect()
    assert PY in str(err.value)
    assert "mcp.allowed_commands" in str(err.value)
    assert not c.connected
    assert c.last_error is not None and "not allowed" in c.last_error
    await asyncio.sleep(0.2)
    assert not marker.exists()


def test_allow_list_matches_the_command_or_its_resolved_path(tmp_path: Path) -> None:
    # The exact string; what gets spawned is the absolute path found on PATH.
    sh = resolve_command(stdio_cfg(command="sh"), ["sh"])
    assert os.path.isabs(sh) and os.path.basename(sh) == "sh"
    # A name on PATH against an absolute entry, and the other way round.
    assert resolve_command(stdio_cfg(command="sh"), [os.path.realpath(sh)]) == sh
    assert resolve_command(stdio_cfg(command=sh), ["sh"]) == sh
    # The real path of a symlink stands for the link.
    link = tmp_path / "my-python"
    link.symlink_to(PY)
    assert resolve_command(stdio_cfg(command=str(link)), [PY]) == str(link)
    # Not allowed, and allowed but missing.
    with pytest.raises(McpError, match="not allowed"):
        resolve_command(stdio_cfg(command="sh"), ["bash-not-sh"])
    with pytest.raises(McpError, match="not found"):
        resolve_command(stdio_cfg(command="no-such-mcp-binary"), ["no-such-mcp-binary"])


async def test_a_server_that_dies_on_start_reports_its_stderr() -> None:
    script = "import sys; sys.stderr.write('fatal: no config file here\\n'); sys.exit(2)"
    c = McpConnection(stdio_cfg(args=["-c", script]), [PY])
    with pytest.raises(McpError, match="cannot connect") as err:
        await c.connect()
    assert "fatal: no config file here" in str(err.value)
    assert c.last_error is not None and "fatal: no config file here" in c.last_error
    assert not c.connected


async def test_a_missing_executable_is_an_mcp_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "bin" / "mcp-server")
    with pytest.raises(McpError, match="not found"):
        await McpConnection(stdio_cfg(command=missing), [missing]).connect()


async def test_a_server_that_never_answers_times_out_and_is_ended(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    c = McpConnection(stdio_cfg(args=["-c", script]), [PY], connect_timeout_s=1.0)
    with pytest.raises(McpError, match=r"no answer within 1s"):
        await c.connect()
    assert not c.connected
    assert not alive(int(pid_file.read_text()))


async def test_an_http_peer_that_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, reads, never answers
        writer.close()

    tcp = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        for transport in ("sse", "http"):
            cfg = McpServerConfig(name="mute", transport=transport, url=f"http://127.0.0.1:{port}/")
            c = McpConnection(cfg, [], connect_timeout_s=0.5)
            with pytest.raises(McpError, match=r"no answer within 0\.5s"):
                await c.connect()
            await c.close()
    finally:
        tcp.close()
        await tcp.wait_closed()


async def test_an_unreachable_http_server_is_an_mcp_error() -> None:
    for transport in ("http", "sse"):
        cfg = McpServerConfig(
            name="down", transport=transport, url=f"http://127.0.0.1:{free_port()}/mcp"
        )
        c = McpConnection(cfg, [])
        with pytest.raises(McpError, match="cannot connect"):
            await c.connect()
        assert not c.connected
        await c.close()


# -- crash and reconnect ------------------------------------------------------------------
class ToolsSeen:
    """Records each tool list keep_connected reports."""

    def __init__(self) -> None:
        self.lists: list[list[str]] = []

    async def __call__(self, tools: list[McpTool]) -> None:
        self.lists.append(sorted(t.name for t in tools))


async def run_keeper(
    c: McpConnection, seen: ToolsSeen
) -> tuple[asyncio.Event, asyncio.Task[None], Callable[[], Awaitable[None]]]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        keep_connected(c, stop, backoff_s=0.1, max_backoff_s=1.0, on_tools=seen)
    )

    async def finish() -> None:
        stop.set()
        async with asyncio.timeout(20):
            await task

    await eventually(lambda: len(seen.lists) == 1 and c.connected)
    return stop, task, finish


async def test_stdio_crash_mid_call_then_keep_connected_restarts_it() -> None:
    c = McpConnection(stdio_cfg(), [PY])
    seen = ToolsSeen()
    _, task, finish = await run_keeper(c, seen)
    try:
        assert "crash" in seen.lists[0]
        first_pid = int(await c.call_tool("pid", {}))
        with pytest.raises(McpError, match="connection lost") as err:
            await c.call_tool("crash", {})
        assert "crashing on request" in str(err.value)  # the child's stderr tail
        assert not c.connected
        assert c.last_error is not None and "exited" in c.last_error
        # Reconnected: a new process, the tool list refreshed, calls work again.
        await eventually(lambda: len(seen.lists) == 2 and c.connected)
        assert seen.lists[1] == seen.lists[0]
        second_pid = int(await c.call_tool("pid", {}))
        assert second_pid != first_pid
        assert not alive(first_pid)  # the crashed child was reaped
        assert await c.call_tool("add", {"a": 20, "b": 22}) == "42"
    finally:
        await finish()
    assert task.done() and not c.connected
    assert not alive(second_pid)  # stopping the keeper closed the connection


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_http_server_crash_then_keep_connected_reconnects(transport: str) -> None:
    server = ServerProcess(transport)
    await server.start()
    c = McpConnection(server.cfg(), [])
    seen = ToolsSeen()
    _, _, finish = await run_keeper(c, seen)
    try:
        assert await c.call_tool("add", {"a": 1, "b": 2}) == "3"
        with pytest.raises(McpError, match="connection lost"):
            await c.call_tool("crash", {})
        assert await server.wait_exit() == 3
        assert not c.connected
        with pytest.raises(McpError, match="not connected"):
            await c.call_tool("add", {"a": 1, "b": 2})
        await asyncio.sleep(0.5)  # the keeper retries against the dead port meanwhile
        assert len(seen.lists) == 1
        await server.start()  # the same port
        await eventually(lambda: len(seen.lists) == 2 and c.connected)
        assert "add" in seen.lists[1]
        assert await c.call_tool("add", {"a": 5, "b": 6}) == "11"
    finally:
        await finish()
        await server.stop()


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_keep_connected_refreshes_tools_when_the_server_says_so(
    transport: str, http_server: ServerProcess
) -> None:
    cfg = stdio_cfg() if transport == "stdio" else http_server.cfg()
    c = McpConnection(cfg, [PY])
    seen = ToolsSeen()
    _, _, finish = await run_keeper(c, seen)
    try:
        assert "grown" not in seen.lists[0]
        assert await c.call_tool("grow", {"name": "grown"}) == "added grown"
        await eventually(lambda: len(seen.lists) == 2)
        assert "grown" in seen.lists[1]
        assert await c.call_tool("grown", {}) == "grown"
    finally:
        await finish()


async def test_close_during_a_call_fails_the_call_promptly() -> None:
    c = McpConnection(stdio_cfg(), [PY])
    await c.connect()
    call = asyncio.create_task(c.call_tool("slow", {"seconds": 30}))
    await asyncio.sleep(0.3)
    async with asyncio.timeout(15):
        await c.close()
        with pytest.raises(McpError, match="closed"):
            await call
    assert c.last_error is None


async def test_keep_connected_does_not_retry_a_refused_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    c = McpConnection(stdio_cfg(args=["-c", f"open({str(marker)!r}, 'w').close()"]), [])
    stop = asyncio.Event()
    task = asyncio.create_task(keep_connected(c, stop, backoff_s=0.05))
    await eventually(lambda: c.last_error is not None)
    assert "mcp.allowed_commands" in (c.last_error or "")
    await asyncio.sleep(0.3)
    assert not task.done() and not c.connected and not marker.exists()
    stop.set()
    async with asyncio.timeout(5):
        await task
