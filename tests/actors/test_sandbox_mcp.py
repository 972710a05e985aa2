"""Code execution and MCP tools in the running tree: the agent calls them through the
fake LLM's tool calls; executors and MCP servers die and come back."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from tests.conftest import RUNTIME_ADMIN, ChatClient, Runtime, eventually, new_session
from tests.peers.openai_server import FakeLLM, Scripted

pytestmark = pytest.mark.timeout(240)


def tool_names(request: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in request.get("tools", [])]


async def actor(rt: Runtime, name: str) -> dict[str, Any]:
    status = await rt.status()
    return next(a for a in status["actors"] if a["name"] == name)


async def admin_tool_call(
    chat: ChatClient, fake: FakeLLM, name: str, arguments: dict[str, Any], session: str
) -> dict[str, Any]:
    """The admin asks; the model calls ``name``; the reply carries the tool's result."""
    fake.script.append(Scripted(tool_calls=[{"name": name, "arguments": arguments}]))
    _, reply = await chat.post(session, f"please use {name}")
    return reply


async def test_code_tools_are_for_admins(chat: ChatClient, fake_llm: FakeLLM) -> None:
    await chat.ask(new_session(), "hello")
    assert "run_python" not in tool_names(fake_llm.requests[-1])
    await chat.ask(RUNTIME_ADMIN, "hello")
    names = tool_names(fake_llm.requests[-1])
    assert {"run_python", "run_shell", "read_file", "write_file", "list_files", "send_file"} <= set(
        names
    )


async def test_the_agent_runs_python_in_the_sandbox(chat: ChatClient, fake_llm: FakeLLM) -> None:
    reply = await admin_tool_call(
        chat, fake_llm, "run_python", {"code": "print(6 * 7)"}, RUNTIME_ADMIN
    )
    assert "42" in reply["text"], reply


async def test_sandboxed_code_has_no_network(
    runtime: Runtime, chat: ChatClient, fake_llm: FakeLLM
) -> None:
    code = (
        "import socket\n"
        "s = socket.socket()\n"
        "s.settimeout(2)\n"
        f"s.connect(('127.0.0.1', {runtime.cfg.webchat.port}))\n"
        "print('CONNECTED')\n"
    )
    reply = await admin_tool_call(chat, fake_llm, "run_python", {"code": code}, RUNTIME_ADMIN)
    assert "CONNECTED" not in reply["text"]
    assert "Error" in reply["text"] or "error" in reply["text"]


async def test_files_persist_and_come_back_as_attachments(
    chat: ChatClient, fake_llm: FakeLLM
) -> None:
    s = RUNTIME_ADMIN
    png = (
        "import base64\n"
        "open('dot.png', 'wb').write(base64.b64decode("
        "'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=='))\n"
        "print('made')\n"
    )
    made = await admin_tool_call(chat, fake_llm, "run_python", {"code": png}, s)
    assert "made" in made["text"]
    listed = await admin_tool_call(chat, fake_llm, "list_files", {"path": "."}, s)
    assert "dot.png" in listed["text"]
    sent = await admin_tool_call(chat, fake_llm, "send_file", {"path": "dot.png"}, s)
    (attachment,) = sent["attachments"]
    assert attachment["type"] == "image" and attachment["url"].startswith("data:image/png;base64,")


async def test_an_executor_killed_mid_run_gives_a_clear_error_and_recovers(
    runtime: Runtime, chat: ChatClient, fake_llm: FakeLLM
) -> None:
    s = RUNTIME_ADMIN
    await admin_tool_call(
        chat, fake_llm, "write_file", {"path": "keep.txt", "content": "still here"}, s
    )
    before = (await actor(runtime, "sandbox-0"))["pid"]
    fake_llm.script.append(
        Scripted(
            tool_calls=[
                {"name": "run_python", "arguments": {"code": "import time; time.sleep(60)"}}
            ]
        )
    )
    running = asyncio.create_task(chat.post(s, "sleep in the sandbox"))
    await asyncio.sleep(2.0)
    os.kill(before, signal.SIGKILL)
    _, reply = await asyncio.wait_for(running, 60)
    assert "stopped during the run" in reply["text"], reply

    async def back() -> bool:
        info = await actor(runtime, "sandbox-0")
        return bool(info["pid"] != before and info["state"] == "alive")

    await eventually(back, within=30)
    again = await admin_tool_call(chat, fake_llm, "run_python", {"code": "print('fresh')"}, s)
    assert "fresh" in again["text"]
    kept = await admin_tool_call(chat, fake_llm, "read_file", {"path": "keep.txt"}, s)
    assert "still here" in kept["text"], "the workspace survives the executor's restart"


async def test_mcp_tools_reach_the_agent(
    runtime: Runtime, chat: ChatClient, fake_llm: FakeLLM
) -> None:
    async def listed() -> bool:
        await chat.ask(new_session(), "what tools?")
        return "tests__add" in tool_names(fake_llm.requests[-1])

    await eventually(listed, within=60, interval=1.0)
    fake_llm.script.append(
        Scripted(tool_calls=[{"name": "tests__add", "arguments": {"a": 2, "b": 3}}])
    )
    assert (await chat.ask(new_session(), "add them"))["text"] == "tool results: 5"
    info = (await actor(runtime, "mcp-tests"))["info"]
    assert info["connected"] is True and info["transport"] == "stdio"


async def test_an_mcp_server_crash_is_survived(
    runtime: Runtime, chat: ChatClient, fake_llm: FakeLLM
) -> None:
    async def listed() -> bool:
        await chat.ask(new_session(), "what tools?")
        return "tests__crash" in tool_names(fake_llm.requests[-1])

    await eventually(listed, within=60, interval=1.0)
    fake_llm.script.append(Scripted(tool_calls=[{"name": "tests__crash", "arguments": {}}]))
    crashed = await chat.ask(new_session(), "crash it")
    assert crashed["text"].startswith("tool results: error:"), crashed

    async def works_again() -> bool:
        fake_llm.script.append(
            Scripted(tool_calls=[{"name": "tests__echo", "arguments": {"text": "back"}}])
        )
        return bool((await chat.ask(new_session(), "echo"))["text"] == "tool results: back")

    await eventually(works_again, within=60, interval=1.0)


async def test_a_stdio_command_outside_the_allow_list_is_refused(runtime: Runtime) -> None:
    async def refused() -> dict[str, Any] | None:
        info = (await actor(runtime, "mcp-forbidden"))["info"]
        return info if info.get("last_error") else None

    info = await eventually(refused, within=30)
    assert info["connected"] is False and "/bin/sh" in info["last_error"]
    assert (await runtime.status())["ok"], "a refused MCP server does not make the bot unhealthy"


async def test_runs_beyond_the_queue_are_refused_not_piled_up(
    ray_cluster: dict[str, Any], tmp_path: Any
) -> None:
    import ray

    from actors.sandbox_executor import SandboxExecutor
    from astr_ray.config import parse_config
    from astr_ray.errors import SandboxError

    cfg = parse_config(
        {"data_dir": str(tmp_path), "sandbox": {"backend": "bwrap", "queue": 1}}
    ).to_transport()
    ex = SandboxExecutor.options(max_concurrency=100).remote("test-sandbox", cfg)  # type: ignore[attr-defined]
    try:
        await ex.start.remote()
        runs = [
            ex.run.remote(f"test:private:q{i}", ["/bin/sh", "-c", "sleep 1.5; echo done"])
            for i in range(4)
        ]
        results = await asyncio.gather(*runs, return_exceptions=True)
        done = [r for r in results if isinstance(r, dict)]
        busy = [r for r in results if isinstance(r, SandboxError)]
        assert len(done) == 3 and all(r["stdout"].strip() == "done" for r in done), results
        assert len(busy) == 1 and "busy" in str(busy[0])
    finally:
        ray.kill(ex)
