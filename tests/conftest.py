"""Shared fixtures: one real Ray per test session, fake LLM peers on loopback, and one
astr-ray actor tree (Supervisor and children) that the runtime tests share.

Tests isolate themselves by session key (each uses fresh chat ids), never by
restarting the tree: starting Ray costs ~5 s and the tree ~5 s on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from astr_ray.config import Config, parse_config
from tests.peers.discord_api import FakeDiscord
from tests.peers.openai_server import FakeLLM
from tests.peers.slack_api import APP_TOKEN, BOT_TOKEN, FakeSlack
from tests.peers.telegram_api import FakeTelegram
from tests.peers.threaded import Threaded

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


PG_ADMIN_DSN = os.environ.get("ASTR_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="module")
async def pg_database() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for this module, as an asyncpg SQLAlchemy URL."""
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = f"PostgreSQL unreachable at {PG_ADMIN_DSN}: {exc!r}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"astr_store_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# Node death is noticed in ~2 s instead of Ray's default ~30 s (documented for
# production in cluster.yaml's start commands).
FAST_HEALTH_CHECKS = {
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 4,
    "health_check_initial_delay_ms": 0,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests without Ray first, then those with Ray but without the shared tree, the
    shared tree's last. Once the shared tree is up (some forty actor processes pinging,
    polling and logging), everything after it runs on a busier machine: core tests took
    ~4 s each after it, 0.2 s before, and a second tree's start slowed past its limits."""

    def tier(item: pytest.Item) -> int:
        names = getattr(item, "fixturenames", ())
        if "runtime" in names:
            return 2
        return int(item.nodeid.startswith("tests/actors/") or "ray_cluster" in names)

    items.sort(key=tier)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, Any]]:
    """One Ray for the whole test session (FIELD_NOTES: per-test is 5x slower), started
    as a ``ray.cluster_utils.Cluster`` head so that tests can add and remove nodes."""
    import ray
    from ray.cluster_utils import Cluster

    metrics_port = free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            # Logical CPUs: the shared tree's CPU pools (an embedder, a TTS and an STT
            # worker, num_cpus=1 each) fit beside other tests' trees on this 2-core box.
            "num_cpus": 4,
            "include_dashboard": False,
            "object_store_memory": 100 * 1024 * 1024,
            "metrics_export_port": metrics_port,
            "resources": {"adapters": 1, "control": 1},  # like cluster.yaml's head node
            "_system_config": FAST_HEALTH_CHECKS,
        },
    )
    ray.init(address=cluster.address, namespace="astr-ray-tests", log_to_driver=False)
    yield {"gcs_address": cluster.address, "metrics_port": metrics_port, "cluster": cluster}
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM(model_tag="primary").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_fallback() -> Iterator[FakeLLM]:
    fake = FakeLLM(model_tag="fallback").start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _reset_fakes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts with both fake LLMs healthy and unscripted."""
    fakes = [
        request.getfixturevalue(n)
        for n in ("fake_llm", "fake_fallback")
        if n in request.fixturenames
    ]
    for f in fakes:
        f.reset()
    yield
    for f in fakes:
        f.reset()


def runtime_config(
    tmp: Path,
    primary: FakeLLM,
    fallback: FakeLLM,
    config_file: Path | None = None,
    **overrides: Any,
) -> Config:
    """A tree's config. With ``config_file`` it is also written there as YAML (the file
    the dashboard edits), and the tree knows it by that file."""
    data: dict[str, Any] = {
        "data_dir": str(tmp),
        "providers": [
            {
                "id": "primary",
                "model": "openai/primary",
                "api_base": primary.base_url,
                "api_key": "sk-test-primary",
                "max_retries": 2,
                "backoff_s": 0.05,
                "failure_threshold": 5,
                "cooldown_s": 0.5,
                "timeout_s": 10,
            },
            {
                "id": "fallback",
                "model": "openai/fallback",
                "api_base": fallback.base_url,
                "max_retries": 1,
                "backoff_s": 0.05,
                "failure_threshold": 5,
                "cooldown_s": 0.5,
                "timeout_s": 10,
            },
        ],
        "fallback": ["primary", "fallback"],
        "sessions": {"hosts": 2, "shards": 64, "idle_timeout_s": 4, "stream_flush_ms": 40},
        "sandbox": {"executors": 0},  # trees that run code say so
        "knowledge": {"embedders": 0},  # trees with knowledge bases say so
        "speech": {"tts": {"workers": 0}, "stt": {"workers": 0}},  # the shared tree speaks
        "dashboard": {"enabled": False, "port": free_port()},  # the shared tree has one
        "webchat": {"port": free_port(), "token": "test-token-" + uuid.uuid4().hex},
        "runtime": {
            "namespace": "astr-test-" + uuid.uuid4().hex[:8],
            "supervise_interval_s": 0.5,
            "placement": "any",
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    if config_file is not None:
        config_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        config_file.chmod(0o600)
        data["runtime"]["config_file"] = str(config_file)
    return parse_config(data)


REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE_PLUGINS = Path(__file__).resolve().parent / "fixtures" / "plugins"
RUNTIME_PLUGINS = ("greeter", "raiser", "sleeper", "isolated_box", "dice")
RUNTIME_ADMIN = "runtime-admin"
ONEBOT_TOKEN = "onebot-test-token"
KB_NAME = "handbook"  # the shared tree's librarian persona reads this knowledge base
TELEGRAM_TOKEN = "424242:runtime-telegram-token"
DISCORD_TOKEN = "runtime-discord-token"


@dataclass
class PlatformPeers:
    """Fake Telegram, Discord and Slack servers, each on its own loop in a thread (the
    adapter actors reach them while the blocking runtime fixture starts the tree)."""

    telegram: Threaded[FakeTelegram]
    discord: Threaded[FakeDiscord]
    slack: Threaded[FakeSlack]

    def platform_blocks(self) -> list[dict[str, Any]]:
        fast = {"action_timeout_s": 10, "reconnect_max_s": 1, "stream": False}
        return [
            {
                "id": "tg",
                "type": "telegram",
                "token": TELEGRAM_TOKEN,
                "api_base": self.telegram.peer.api_base,
                "file_base": self.telegram.peer.file_base,
                "poll_timeout_s": 2,
                **fast,
            },
            {
                "id": "dc",
                "type": "discord",
                "token": DISCORD_TOKEN,
                "api_base": self.discord.peer.api_base,
                **fast,
            },
            {
                "id": "sl",
                "type": "slack",
                "bot_token": BOT_TOKEN,
                "app_token": APP_TOKEN,
                "api_base": self.slack.peer.api_base,
                **fast,
            },
        ]


@pytest.fixture(scope="session")
def platform_peers() -> Iterator[PlatformPeers]:
    async def telegram() -> FakeTelegram:
        fake = FakeTelegram(TELEGRAM_TOKEN)
        await fake.start()
        return fake

    async def discord() -> FakeDiscord:
        fake = FakeDiscord(DISCORD_TOKEN)
        await fake.start()
        return fake

    async def slack() -> FakeSlack:
        fake = FakeSlack()
        await fake.start()
        return fake

    peers = PlatformPeers(
        Threaded(telegram, "fake-telegram").start(),
        Threaded(discord, "fake-discord").start(),
        Threaded(slack, "fake-slack").start(),
    )
    yield peers
    peers.telegram.stop("stop")
    peers.discord.stop("close")
    peers.slack.stop("close")


@dataclass
class Runtime:
    cfg: Config
    supervisor: Any
    gcs_address: str
    ray_metrics_port: int

    @property
    def namespace(self) -> str:
        return self.cfg.runtime.namespace

    @property
    def token(self) -> str:
        assert self.cfg.webchat.token is not None
        return self.cfg.webchat.token.get_secret_value()

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.cfg.webchat.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.cfg.dashboard.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.cfg.webchat.port}/ws/chat"

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.supervisor.status.remote()
        return result

    async def stored(self, session: str) -> list[tuple[str, str]]:
        """(role, content) of a web chat session's current conversation, from the store."""
        from astr_ray.store import Store

        store = await Store.open(self.cfg.store_url)
        try:
            state = await store.ensure_session(f"webchat:private:{session}")
            rows = await store.load_history(state.conversation_id)
            return [(m.role, m.content) for m in rows]
        finally:
            await store.close()

    async def host_of(self, session_key: str) -> tuple[str, Any]:
        import ray

        from actors.common import DIRECTORY
        from astr_ray.sessions.shards import ShardTable

        directory = ray.get_actor(DIRECTORY, namespace=self.namespace)
        table = ShardTable.from_dict(await directory.table.remote())
        name = table.host_of(session_key)
        return name, ray.get_actor(name, namespace=self.namespace)


@pytest.fixture(scope="session")
def runtime(
    ray_cluster: dict[str, Any],
    fake_llm: FakeLLM,
    fake_fallback: FakeLLM,
    platform_peers: PlatformPeers,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Runtime]:
    from actors import runtime as rt

    data = tmp_path_factory.mktemp("runtime")
    for name in RUNTIME_PLUGINS:
        shutil.copytree(FIXTURE_PLUGINS / name, data / "plugins" / name)
    cfg = runtime_config(
        data,
        fake_llm,
        fake_fallback,
        config_file=data / "config.yaml",
        plugins={"handler_timeout_s": 3, "ping_timeout_s": 2, "disabled": ["dice"]},
        dashboard={"enabled": True},
        access={"admins": [f"webchat:{RUNTIME_ADMIN}"]},
        sandbox={"executors": 1, "backend": "bwrap", "timeout_s": 20},
        knowledge={
            "embedder": "minilm",
            "embedders": 1,
            "shards": 2,
            "chunk_size": 400,
            "chunk_overlap": 40,
            "max_document_mb": 1,
            "mode": "both",
        },
        personas=[
            {
                "name": "librarian",
                "system_prompt": "You answer from the handbook.",
                "knowledge": [KB_NAME],
            }
        ],
        speech={
            "tts": {"backend": "piper", "workers": 1},
            "stt": {"backend": "whisper", "workers": 1},
            "reply": "on_request",
            "timeout_s": 60,
        },
        platforms=[
            {"id": "qq", "port": free_port(), "access_token": ONEBOT_TOKEN},
            *platform_peers.platform_blocks(),
        ],
        mcp={
            "allowed_commands": [sys.executable],
            "servers": [
                {
                    "name": "tests",
                    "transport": "stdio",
                    "command": sys.executable,
                    "args": ["-m", "tests.peers.mcp_server", "--transport", "stdio"],
                    "cwd": str(REPO_ROOT),
                    "tool_timeout_s": 5,
                },
                {"name": "forbidden", "transport": "stdio", "command": "/bin/sh"},
            ],
        },
    )
    sup, status = rt.start_tree(cfg, timeout=180)
    assert status["ok"], status
    yield Runtime(cfg, sup, ray_cluster["gcs_address"], ray_cluster["metrics_port"])
    rt.stop_tree(cfg.runtime.namespace, handle=sup)


class ChatClient:
    """A web chat user: HTTP posts and a WebSocket, as a browser or `astr-ray chat`."""

    def __init__(self, rt: Runtime, http: aiohttp.ClientSession) -> None:
        self.rt = rt
        self.http = http

    async def post(
        self, session: str, text: str, message_id: str | None = None, token: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"session": session, "text": text}
        if message_id:
            body["message_id"] = message_id
        async with self.http.post(
            f"{self.rt.http}/api/chat",
            json=body,
            headers={"Authorization": f"Bearer {token or self.rt.token}"},
        ) as resp:
            return resp.status, await resp.json()

    async def ask(self, session: str, text: str, message_id: str | None = None) -> dict[str, Any]:
        status, data = await self.post(session, text, message_id)
        assert status == 200, data
        return data

    async def ws_turns(self, session: str, texts: list[str]) -> list[dict[str, Any]]:
        """Send each text over one WebSocket, waiting for each reply; returns for each
        turn {"chunks": [...], "reply": {...}}."""
        out = []
        async with self.http.ws_connect(self.rt.ws, params={"token": self.rt.token}) as ws:
            for text in texts:
                mid = uuid.uuid4().hex
                await ws.send_json(
                    {"type": "message", "session": session, "text": text, "message_id": mid}
                )
                chunks: list[str] = []
                while True:
                    msg = await asyncio.wait_for(ws.receive(), 30)
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
                    data = json.loads(msg.data)
                    assert data["type"] != "error", data
                    if data["type"] == "chunk":
                        assert data["message_id"] == mid
                        chunks.append(data["text"])
                    elif data["type"] == "reply":
                        assert data["message_id"] == mid
                        out.append({"chunks": chunks, "reply": data})
                        break
        return out


@pytest.fixture
async def chat(runtime: Runtime) -> AsyncIterator[ChatClient]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        yield ChatClient(runtime, http)


async def eventually(predicate: Any, within: float = 20.0, interval: float = 0.2) -> Any:
    """Poll the async ``predicate`` until it returns something true; fail after ``within``."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await predicate()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def webchat_event(session: str, text: str) -> Any:
    """An Event as the web chat adapter builds it, with a fresh message id."""
    from astr_ray.message import ChatType, Event, Sender, Text

    return Event(
        platform_id="webchat",
        chat_type=ChatType.PRIVATE,
        chat_id=session,
        sender=Sender(id=session),
        message_id=uuid.uuid4().hex,
        components=(Text(text=text),),
    )


def new_session() -> str:
    return "t-" + uuid.uuid4().hex[:10]
