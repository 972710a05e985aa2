"""Plugins in the running actor tree: containment across sessions, isolated plugins in
their own supervised processes (crash, blocked loop, own requirements), reload on every
host, messages sent by plugins."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUNTIME_ADMIN, ChatClient, Runtime, eventually, new_session
from tests.peers.openai_server import FakeLLM, Scripted

pytestmark = pytest.mark.timeout(240)

BOX = "plugin-isolated_box"


async def same_host_sessions(rt: Runtime, n: int = 2) -> list[str]:
    """``n`` fresh web chat sessions that live on the same session host."""
    first = new_session()
    host, _ = await rt.host_of(f"webchat:private:{first}")
    out = [first]
    while len(out) < n:
        s = new_session()
        if (await rt.host_of(f"webchat:private:{s}"))[0] == host:
            out.append(s)
    return out


async def actor_info(rt: Runtime, name: str) -> dict[str, Any]:
    status = await rt.status()
    return next(a for a in status["actors"] if a["name"] == name)


async def box_pid(chat: ChatClient) -> int | None:
    status, data = await chat.post(new_session(), "/boxpid")
    return int(data["text"]) if status == 200 and data["text"].isdigit() else None


async def host_pids(rt: Runtime) -> dict[str, int]:
    status = await rt.status()
    return {a["name"]: a["pid"] for a in status["actors"] if a["kind"] == "session_host"}


async def test_a_blocked_plugin_does_not_delay_another_session_on_its_host(
    runtime: Runtime, chat: ChatClient
) -> None:
    a, b = await same_host_sessions(runtime)
    napping = asyncio.create_task(chat.ask(a, "/nap 2.5"))
    snoozing = asyncio.create_task(chat.ask(new_session(), "/snooze 2"))
    await asyncio.sleep(0.3)
    reply = await chat.ask(b, "hello from b")
    assert reply["text"].startswith("echo: hello from b")
    assert not napping.done(), napping.result()
    assert not snoozing.done(), snoozing.result()
    assert (await napping)["text"] == "slept 2.5s"
    assert (await snoozing)["text"] == "snoozed 2s"


async def test_a_plugin_timeout_and_exception_are_reported_briefly(chat: ChatClient) -> None:
    s = new_session()
    timed_out = await chat.ask(s, "/nap 10")
    assert timed_out["error"] == "plugin_timeout" and "longer than 3s" in timed_out["text"]
    boom = await chat.ask(s, "/boom")
    assert boom["error"] == "plugin_exception" and "ValueError: kaboom" in boom["text"]
    assert (await chat.ask(s, "/greet Zoe"))["text"] == "Hello, Zoe!"


async def test_an_isolated_plugin_runs_in_its_own_process(
    runtime: Runtime, chat: ChatClient
) -> None:
    pid = await eventually(lambda: box_pid(chat), within=60)
    assert pid not in (await host_pids(runtime)).values()
    assert (await actor_info(runtime, BOX))["pid"] == pid
    listing = (await chat.ask(RUNTIME_ADMIN, "/plugin ls"))["text"]
    assert "isolated_box 0.1.0 [on] isolated" in listing


async def test_an_isolated_plugins_tool_runs_in_its_process(
    chat: ChatClient, fake_llm: FakeLLM
) -> None:
    pid = await eventually(lambda: box_pid(chat), within=60)
    fake_llm.script.append(Scripted(tool_calls=[{"name": "box_tool", "arguments": {"word": "hi"}}]))
    reply = await chat.ask(new_session(), "use the box")
    assert reply["text"] == f"tool results: box says hi from {pid}"


async def test_an_isolated_plugin_crash_restarts_only_its_actor(
    runtime: Runtime, chat: ChatClient
) -> None:
    before = await eventually(lambda: box_pid(chat), within=60)
    hosts = await host_pids(runtime)
    crashed = await chat.ask(new_session(), "/boxexit")
    assert crashed["error"] == "plugin_crashed" and "restarted" in crashed["text"]
    assert (await chat.ask(new_session(), "/greet Kim"))["text"] == "Hello, Kim!"

    async def restarted() -> int | None:
        pid = await box_pid(chat)
        return pid if pid is not None and pid != before else None

    await eventually(restarted, within=60)
    assert await host_pids(runtime) == hosts, "no session host restarted"

    async def logged() -> bool:
        log = (await runtime.status())["restart_log"]
        return any(e["actor"] == BOX and e["kind"] == "restarted" for e in log)

    await eventually(logged, within=20)


async def test_an_isolated_plugin_that_blocks_its_loop_is_restarted(
    runtime: Runtime, chat: ChatClient
) -> None:
    before = await eventually(lambda: box_pid(chat), within=60)
    hosts = await host_pids(runtime)
    blocked = await chat.ask(new_session(), "/boxblock 120")
    assert blocked["error"] in ("plugin_timeout", "plugin_crashed"), blocked
    other = await chat.ask(new_session(), "/greet Lu")
    assert other["text"] == "Hello, Lu!"

    async def killed() -> bool:
        log = (await runtime.status())["restart_log"]
        return any(e["actor"] == BOX and e["kind"] == "killed" for e in log)

    await eventually(killed, within=30)

    async def back() -> int | None:
        pid = await box_pid(chat)
        return pid if pid is not None and pid != before else None

    await eventually(back, within=60)
    assert await host_pids(runtime) == hosts


async def test_a_plugin_sends_to_another_web_chat_session(
    runtime: Runtime, chat: ChatClient
) -> None:
    friend = new_session()
    reply = await chat.ask(new_session(), f"/tell webchat:private:{friend} dinner at eight")
    assert reply["text"] == "sent"
    async with chat.http.get(
        f"{runtime.http}/api/outbox",
        params={"session": friend},
        headers={"Authorization": f"Bearer {runtime.token}"},
    ) as resp:
        assert resp.status == 200
        messages = (await resp.json())["messages"]
    assert [m["text"] for m in messages] == ["dinner at eight"]
    async with chat.http.get(f"{runtime.http}/api/outbox", params={"session": friend}) as resp:
        assert resp.status == 401


async def test_reload_reaches_every_host(runtime: Runtime, chat: ChatClient) -> None:
    main = runtime.cfg.plugins_dir / "greeter" / "main.py"
    original = main.read_text()
    sessions = {}
    while len(sessions) < 2:  # one session on each host
        s = new_session()
        sessions.setdefault((await runtime.host_of(f"webchat:private:{s}"))[0], s)
    try:
        main.write_text(original.replace("f\"{ctx.config['greeting']}, {name}!\"", 'f"Yo {name}"'))
        assert "admins only" in (await chat.ask(new_session(), "/plugin reload greeter"))["text"]
        reloaded = await chat.ask(RUNTIME_ADMIN, "/plugin reload greeter")
        assert reloaded["text"] == "Reloaded: greeter."
        for s in sessions.values():
            assert (await chat.ask(s, "/greet Max"))["text"] == "Yo Max"
    finally:
        main.write_text(original)
        await chat.ask(RUNTIME_ADMIN, "/plugin reload greeter")
    for s in sessions.values():
        assert (await chat.ask(s, "/greet Max"))["text"] == "Hello, Max!"


async def test_an_isolated_plugins_requirements_live_in_its_own_environment(
    runtime: Runtime, chat: ChatClient, tmp_path: Path
) -> None:
    dep = tmp_path / "astr_plugin_dep"
    (dep / "astr_plugin_dep").mkdir(parents=True)
    (dep / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "astr-plugin-dep"\nversion = "1.0.0"\n'
    )
    (dep / "astr_plugin_dep" / "__init__.py").write_text('VALUE = "installed for the plugin"\n')
    folder = runtime.cfg.plugins_dir / "depcheck"
    folder.mkdir()
    (folder / "plugin.yaml").write_text(
        f"name: depcheck\nversion: 1.0.0\nisolated: true\nrequirements: ['{dep}']\n"
    )
    (folder / "main.py").write_text(
        textwrap.dedent(
            """
            from astr_ray.plugins import Context, Plugin

            plugin = Plugin()


            @plugin.command("depvalue")
            async def depvalue(ctx: Context) -> str:
                import astr_plugin_dep

                return astr_plugin_dep.VALUE
            """
        )
    )
    try:
        result = await chat.ask(RUNTIME_ADMIN, "/plugin reload depcheck")
        assert result["text"] == "Reloaded: depcheck.", result
        assert (await chat.ask(new_session(), "/depvalue"))["text"] == "installed for the plugin"
        assert importlib.util.find_spec("astr_plugin_dep") is None, "not in the core's environment"
    finally:
        shutil.rmtree(folder)
        await chat.ask(RUNTIME_ADMIN, "/plugin reload depcheck")


async def test_dev_mode_reloads_a_plugin_when_its_files_change(
    ray_cluster: dict[str, Any],
    fake_llm: FakeLLM,
    fake_fallback: FakeLLM,
    tmp_path: Path,
) -> None:
    """A second, small tree with ``plugins.watch`` (what `astr-ray dev` turns on)."""
    import aiohttp

    from actors import runtime as rt
    from tests.conftest import FIXTURE_PLUGINS, runtime_config

    shutil.copytree(FIXTURE_PLUGINS / "greeter", tmp_path / "plugins" / "greeter")
    cfg = runtime_config(
        tmp_path, fake_llm, fake_fallback, plugins={"watch": True}, sessions={"hosts": 1}
    )
    sup, status = await asyncio.to_thread(rt.start_tree, cfg, timeout=120)
    try:
        assert status["ok"], status
        tree = Runtime(cfg, sup, ray_cluster["gcs_address"], ray_cluster["metrics_port"])
        async with aiohttp.ClientSession() as http:
            chat = ChatClient(tree, http)
            assert (await chat.ask(new_session(), "/greet Ivy"))["text"] == "Hello, Ivy!"
            main = cfg.plugins_dir / "greeter" / "main.py"
            main.write_text(
                main.read_text()
                .replace("Hello", "Hiya")
                .replace("ctx.config['greeting']", "'Hiya'")
            )

            async def reloaded() -> bool:
                reply = await chat.ask(new_session(), "/greet Ivy")
                return bool(reply["text"] == "Hiya, Ivy!")

            await eventually(reloaded, within=30)
            log = (await tree.status())["restart_log"]
            assert any(e["actor"] == "plugins" and e["kind"] == "reloaded" for e in log)
    finally:
        await asyncio.to_thread(rt.stop_tree, cfg.runtime.namespace, handle=sup)


async def test_a_plugin_blocking_its_hosts_loop_is_reported(
    runtime: Runtime, chat: ChatClient
) -> None:
    from astr_ray.metrics import sample_value

    s = new_session()
    _, host = await runtime.host_of(f"webchat:private:{s}")

    async def stalls() -> float:
        snap = await host.metrics_snapshot.remote()
        return sample_value(
            snap, "astr_ray_errors_total", component="session_host", kind="loop_stall"
        )

    before = await stalls()
    assert (await chat.ask(s, "/stall 1.6"))["text"] == "stalled 1.6s"
    await eventually(lambda: _more(stalls, before), within=10)


async def _more(probe: Any, before: float) -> bool:
    return bool(await probe() > before)
