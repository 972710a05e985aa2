"""The dashboard's API in the running tree: login, scopes and CSRF; providers,
platforms, plugins, personas and config edited through the same models as the YAML
file and applied without restarting what did not change; conversations, logs,
metrics; and refusals of hostile requests."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from yarl import URL

from astr_ray.auth import Auth
from astr_ray.store import Store
from tests.conftest import Runtime, eventually, free_port
from tests.peers.openai_server import FakeLLM

pytestmark = pytest.mark.timeout(180)

PASSWORD = "dashboard-test-password"


async def set_password(rt: Runtime, password: str = PASSWORD) -> None:
    store = await Store.open(rt.cfg.store_url)
    try:
        await Auth(store).reset_password(password)
    finally:
        await store.close()


def config_text(rt: Runtime) -> str:
    return Path(rt.cfg.runtime.config_file or "").read_text(encoding="utf-8")


class Console:
    """A logged-in dashboard user (cookie + CSRF header), as the browser is."""

    def __init__(self, rt: Runtime, http: aiohttp.ClientSession, csrf: str) -> None:
        self.rt, self.http, self.csrf = rt, http, csrf

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        csrf: bool = True,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        headers = {"X-CSRF-Token": self.csrf} if csrf else {}
        async with self.http.request(
            method,
            self.rt.dashboard + path,
            json=body if raw is None else None,
            data=io.BytesIO(raw) if raw is not None else None,  # aiohttp warns on big bytes
            headers=headers,
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


@pytest.fixture
async def console(runtime: Runtime) -> AsyncIterator[Console]:
    await set_password(runtime)
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    async with aiohttp.ClientSession(
        cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=120)
    ) as http:
        async with http.post(
            runtime.dashboard + "/api/auth/login",
            json={"username": "admin", "password": PASSWORD},
        ) as resp:
            assert resp.status == 200, await resp.text()
            csrf = (await resp.json())["csrf"]
            cookie = resp.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        yield Console(runtime, http, csrf)


@pytest.fixture(scope="module")
def third_llm() -> Any:
    fake = FakeLLM(model_tag="third").start()
    yield fake
    fake.stop()


async def test_only_health_and_the_front_end_are_public(runtime: Runtime) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(runtime.dashboard + "/health") as resp:
            assert resp.status == 200 and (await resp.json())["ok"] is True
        async with http.get(runtime.dashboard + "/") as resp:
            assert resp.status == 200 and "<main" in await resp.text()
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        for path in ("/api/status", "/api/config", "/api/providers", "/api/logs", "/api/kb"):
            async with http.get(runtime.dashboard + path) as resp:
                assert resp.status == 401, path
        async with http.post(runtime.dashboard + "/api/auth/login", data=b"\x00garbage") as resp:
            assert resp.status == 400
        for sneaky in ("/static/../config.yaml", "/static/%2e%2e/config.yaml", "/static/..%2fx"):
            url = URL(runtime.dashboard + sneaky, encoded=True)  # sent as written
            async with http.get(url) as resp:
                body = await resp.text()
                assert resp.status in (401, 404), sneaky
                assert runtime.token not in body and "providers" not in body


async def test_status_shows_the_tree_and_writes_need_the_csrf_token(console: Console) -> None:
    status, info = await console.call("GET", "/api/status")
    assert status == 200
    names = {a["name"]: a for a in info["actors"]}
    for name in ("dashboard", "adapter-webchat", "session-host-0", "tts-0", "stt-0"):
        assert names[name]["state"] == "alive" and names[name]["node_id"], name
    assert info["ray_dashboard"].startswith("http://127.0.0.1:")
    status, body = await console.call("POST", "/api/plugins/reload", csrf=False)
    assert status == 403 and "CSRF" in body["error"]
    console_bad = Console(console.rt, console.http, "not-the-token")
    status, _ = await console_bad.call("PUT", "/api/personas/x", {"system_prompt": "y"})
    assert status == 403


async def test_api_keys_have_scopes_and_are_shown_once(console: Console) -> None:
    status, made = await console.call("POST", "/api/keys", {"name": "reader", "scopes": ["read"]})
    assert status == 201, made
    key = made["key"]
    status, listed = await console.call("GET", "/api/keys")
    assert key not in json.dumps(listed) and any(k["name"] == "reader" for k in listed["keys"])
    bearer = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(console.rt.dashboard + "/api/status", headers=bearer) as resp:
            assert resp.status == 200
        async with http.post(
            console.rt.dashboard + "/api/chat", json={"text": "hi"}, headers=bearer
        ) as resp:
            assert resp.status == 403 and "chat" in (await resp.json())["error"]
    status, _ = await console.call("POST", "/api/keys", {"name": "x", "scopes": ["root"]})
    assert status == 400
    await console.call("DELETE", f"/api/keys/{made['id']}")
    async with (
        aiohttp.ClientSession() as http,
        http.get(console.rt.dashboard + "/api/status", headers=bearer) as resp,
    ):
        assert resp.status == 401


async def test_a_provider_added_in_the_dashboard_answers_the_chat(
    console: Console, third_llm: FakeLLM
) -> None:
    secret = "sk-third-" + uuid.uuid4().hex
    provider = {"id": "third", "model": "openai/third", "api_base": third_llm.base_url}
    status, bad = await console.call("POST", "/api/providers", {"id": "third"})
    assert status == 400 and bad["field"].endswith("model"), bad
    status, added = await console.call("POST", "/api/providers", {**provider, "api_key": secret})
    assert status == 201, added
    try:
        assert added["provider"]["api_key"] == {"set": True}
        status, dup = await console.call("POST", "/api/providers", provider)
        assert status == 409, dup
        status, tested = await console.call("POST", "/api/providers/third/test")
        assert tested["ok"] is True and tested["reply"].startswith("echo: Say OK."), tested
        status, _ = await console.call(
            "PUT", "/api/providers/order", {"fallback": ["third", "primary", "fallback"]}
        )
        assert status == 200
        third_llm.reset()
        status, reply = await console.call("POST", "/api/chat", {"session": "p", "text": "who?"})
        assert status == 200 and reply["text"] == "echo: who? (turn 1)", reply
        assert third_llm.user_turns()[-1][-1] == "who?", "the new provider answered"
        # The file holds the secret (it must); no answer of the API ever does.
        text = config_text(console.rt)
        assert secret in text
        _, providers = await console.call("GET", "/api/providers")
        _, config = await console.call("GET", "/api/config")
        assert secret not in json.dumps(providers) + json.dumps(config)
        assert "sk-test-primary" not in json.dumps(config)
    finally:
        await console.call("PUT", "/api/providers/order", {"fallback": ["primary", "fallback"]})
        status, _ = await console.call("DELETE", "/api/providers/third")
    assert status == 200
    on_disk = yaml.safe_load(config_text(console.rt))
    assert [p["id"] for p in on_disk["providers"]] == ["primary", "fallback"]
    status, reply = await console.call("POST", "/api/chat", {"session": "p2", "text": "back"})
    assert reply["text"] == "echo: back (turn 1)"


async def test_an_account_added_and_removed_starts_and_stops_only_its_adapter(
    console: Console,
) -> None:
    async def actors() -> dict[str, dict[str, Any]]:
        _, info = await console.call("GET", "/api/status")
        return {a["name"]: a for a in info["actors"]}

    before = await actors()
    account = {"id": "qq2", "type": "onebot", "port": free_port(), "access_token": "t0ken-qq2"}
    status, bad = await console.call("POST", "/api/platforms", {**account, "port": "x"})
    assert status == 400 and bad["field"].endswith("port"), bad
    status, added = await console.call("POST", "/api/platforms", account)
    assert status == 201, added
    try:
        assert added["platform"]["access_token"] == {"set": True}
        now = await eventually(lambda: _alive(actors, "adapter-qq2"), within=60)
        # Nothing else restarted.
        for name in ("adapter-qq", "adapter-tg", "session-host-0", "adapter-webchat"):
            assert now[name]["pid"] == before[name]["pid"], name
        _, listed = await console.call("GET", "/api/platforms")
        row = next(p for p in listed["platforms"] if p["id"] == "qq2")
        assert row["type"] == "onebot" and "t0ken-qq2" not in json.dumps(listed)
    finally:
        status, _ = await console.call("DELETE", "/api/platforms/qq2")
    assert status == 200
    assert "adapter-qq2" not in await actors()


async def _alive(actors: Any, name: str) -> dict[str, Any] | None:
    found: dict[str, dict[str, Any]] = await actors()
    return found if found.get(name, {}).get("state") == "alive" else None


async def test_a_plugin_is_enabled_configured_and_used(console: Console) -> None:
    _, listed = await console.call("GET", "/api/plugins")
    dice = next(p for p in listed["plugins"] if p["name"] == "dice")
    assert dice["enabled"] is False
    assert dice["config_schema"]["properties"]["sides"]["type"] == "integer"
    _, off = await console.call("POST", "/api/chat", {"session": "d", "text": "/roll 2"})
    assert "rolled" not in off["text"]
    try:
        assert (await console.call("POST", "/api/plugins/dice/enable"))[0] == 200
        status, bad = await console.call("PUT", "/api/plugins/dice/config", {"sides": "many"})
        assert status == 400 and bad["field"] == "sides", bad
        status, cfg = await console.call("PUT", "/api/plugins/dice/config", {"sides": 20})
        assert status == 200 and cfg["config"]["sides"] == 20, cfg

        async def rolled() -> bool:
            _, r = await console.call("POST", "/api/chat", {"session": "d", "text": "/roll 2"})
            return bool(r["text"] == "rolled 40")

        await eventually(rolled, within=20, interval=1)
    finally:
        await console.call("POST", "/api/plugins/dice/disable")
        await console.call("PUT", "/api/plugins/dice/config", {})
    status, _ = await console.call("POST", "/api/plugins/nosuch/enable")
    assert status == 404


async def test_personas_are_created_listed_and_deleted(console: Console) -> None:
    status, bad = await console.call("PUT", "/api/personas/poet", {"system_prompt": ""})
    assert status == 400 and bad["field"] == "system_prompt"
    status, _ = await console.call(
        "PUT", "/api/personas/poet", {"system_prompt": "You rhyme.", "tools": ["add_numbers"]}
    )
    assert status == 200
    _, listed = await console.call("GET", "/api/personas")
    sources = {p["name"]: p["source"] for p in listed["personas"]}
    assert sources["poet"] == "store" and sources["librarian"] == "config"
    assert (await console.call("DELETE", "/api/personas/poet"))[0] == 200
    assert (await console.call("DELETE", "/api/personas/poet"))[0] == 404
    status, _ = await console.call("PUT", "/api/personas/..%2Fetc", {"system_prompt": "x"})
    assert status in (400, 404)


async def test_conversations_are_browsed_searched_and_deleted(console: Console) -> None:
    word = "zebra" + uuid.uuid4().hex[:6]
    await console.call("POST", "/api/chat", {"session": "browse", "text": f"about the {word}"})
    _, found = await console.call("GET", f"/api/search?q={word}")
    hits = found["hits"]
    assert hits and all(word in h["content"] for h in hits)
    key = hits[0]["session"]
    assert key == "webchat:private:dash-admin-browse"
    _, sessions = await console.call("GET", "/api/sessions?q=dash-admin-browse")
    assert any(s["key"] == key and s["messages"] >= 2 for s in sessions["sessions"])
    _, convs = await console.call("GET", f"/api/sessions/{key}/conversations")
    cid = convs["conversations"][0]["id"]
    _, msgs = await console.call("GET", f"/api/conversations/{cid}/messages")
    assert [m["role"] for m in msgs["messages"]] == ["user", "assistant"]
    assert (await console.call("DELETE", f"/api/conversations/{cid}"))[0] == 200
    assert (await console.call("GET", f"/api/conversations/{cid}/messages"))[0] == 404
    _, again = await console.call("GET", f"/api/search?q={word}")
    assert again["hits"] == []
    assert (await console.call("GET", "/api/search?q="))[0] == 400
    assert (await console.call("GET", "/api/sessions?limit=-1"))[0] == 400


async def test_logs_of_every_actor_are_listed_and_followed(console: Console) -> None:
    async def some() -> list[dict[str, Any]] | None:
        _, data = await console.call("GET", "/api/logs?level=INFO&limit=1000")
        actors = {r["actor"] for r in data["logs"]}
        return data["logs"] if {"supervisor", "session-host-0"} <= actors else None

    await eventually(some, within=30)
    _, warnings = await console.call("GET", "/api/logs?level=WARNING")
    assert all(r["level"] in ("WARNING", "ERROR", "CRITICAL") for r in warnings["logs"])
    assert (await console.call("GET", "/api/logs?level=LOUD"))[0] == 400

    got: list[dict[str, Any]] = []

    async def follow() -> None:
        async with console.http.get(
            console.rt.dashboard + "/api/logs/stream?actor=supervisor"
        ) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for line in resp.content:
                if line.startswith(b"data: "):
                    got.append(json.loads(line[6:]))
                    return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.5)
    await console.call("POST", "/api/plugins/reload")  # the supervisor logs the reload
    await asyncio.wait_for(task, 30)
    assert got[0]["actor"] == "supervisor"


async def test_metrics_series_fill_in(console: Console) -> None:
    async def points() -> dict[str, Any] | None:
        await console.call("POST", "/api/chat", {"session": "m", "text": "tick"})
        _, data = await console.call("GET", "/api/metrics/series")
        series = data["series"]
        if len(series.get("messages_in_per_s", [])) >= 2 and series.get("turn_p50_ms"):
            return series
        return None

    series = await eventually(points, within=40, interval=2)
    assert all(len(p) == 2 for p in series["messages_in_per_s"])
    assert any(v > 0 for _, v in series["messages_in_per_s"])


async def test_config_sections_are_validated_written_and_applied(console: Console) -> None:
    status, bad = await console.call(
        "PUT", "/api/config", {"section": "agent", "value": {"max_steps": 0}}
    )
    assert status == 400 and bad["field"] == "agent.max_steps", bad
    status, bad = await console.call("PUT", "/api/config", {"section": "nosuch", "value": {}})
    assert status == 400
    status, done = await console.call(
        "PUT", "/api/config", {"section": "agent", "value": {"max_steps": 7}}
    )
    assert status == 200 and "agent" in done["applied"]["applied"], done
    assert done["config"]["agent"]["max_steps"] == 7
    status, done = await console.call("PUT", "/api/config", {"section": "agent", "value": {}})
    assert status == 200
    big = b'{"section": "agent", "value": "' + b"x" * (300 * 1024) + b'"}'
    assert (await console.call("PUT", "/api/config", raw=big))[0] == 413


async def test_the_openapi_description_lists_the_api(console: Console) -> None:
    _, doc = await console.call("GET", "/api/openapi.json")
    for path in ("/api/status", "/api/providers", "/api/plugins", "/api/logs", "/api/sessions"):
        assert path in doc["paths"], path


async def test_knowledge_bases_behind_the_login_refuse_paths_and_oversized_uploads(
    console: Console,
) -> None:
    name = "dash" + uuid.uuid4().hex[:6]
    status, made = await console.call("POST", "/api/kb", {"name": name, "description": "d"})
    assert status == 201, made
    try:
        status, bad = await console.call(
            "POST", f"/api/kb/{name}/documents?name=../../etc/passwd", raw=b"hello"
        )
        assert status == 400 and "not a path" in bad["error"]
        limit = int(console.rt.cfg.knowledge.max_document_mb * 1024 * 1024)
        status, _ = await console.call(
            "POST", f"/api/kb/{name}/documents?name=big.txt", raw=b"x" * (limit + 1)
        )
        assert status == 413
        status, job = await console.call(
            "POST", f"/api/kb/{name}/documents?name=notes.txt", raw=b"The pantry key is blue."
        )
        assert status == 202, job

        async def ready() -> bool:
            _, docs = await console.call("GET", f"/api/kb/{name}/documents")
            return any(d["status"] == "ready" for d in docs["documents"])

        await eventually(ready, within=60)
        _, found = await console.call("POST", f"/api/kb/{name}/search", {"query": "pantry key"})
        assert "pantry key is blue" in found["passages"][0]["text"]
    finally:
        await console.call("DELETE", f"/api/kb/{name}")
