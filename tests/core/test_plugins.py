"""Plugins through the real loader, and the turn pipeline that dispatches to them,
on a real SQLite store and the fake LLM (no Ray: the actor tests cover isolation)."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors.services import RuntimeServices
from astr_ray.config import Config, parse_config
from astr_ray.errors import PluginError
from astr_ray.message import ChatType, Event, Sender, Text
from astr_ray.plugins import Plugin
from astr_ray.plugins.api import UsageError, parse_args
from astr_ray.plugins.loader import discover, load
from astr_ray.plugins.manager import PluginManager
from astr_ray.plugins.manifest import manifest_from_dict
from astr_ray.providers import PermitCache, PermitLedger, ProviderChain, ProviderSlot
from astr_ray.providers.permits import Grant, Outcomes
from astr_ray.providers.transport import make_transport
from astr_ray.sessions.builtins import builtin_commands
from astr_ray.sessions.manager import SessionManager
from astr_ray.sessions.turn import TurnProcessor
from astr_ray.store import Store
from tests.peers.openai_server import FakeLLM, Scripted

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "plugins"
ADMIN = "admin-1"


class Services(RuntimeServices):
    """The runtime's services, with sends recorded as a platform would deliver them (no
    adapter actor runs in these in-process tests)."""

    def __init__(self, cfg: Config, store: Store, chain: ProviderChain) -> None:
        super().__init__(cfg, store, chain)
        self.sent: list[tuple[str, str]] = []

    async def send(self, session_key: str, text: str) -> None:
        self.sent.append((session_key, text))


@dataclass
class Bot:
    cfg: Config
    store: Store
    processor: TurnProcessor
    manager: SessionManager
    plugins: PluginManager
    services: Services

    async def say(
        self, chat: str, text: str, sender: str | None = None, group: bool = False
    ) -> Any:
        event = Event(
            platform_id="webchat",
            chat_type=ChatType.GROUP if group else ChatType.PRIVATE,
            chat_id=chat,
            sender=Sender(id=sender or chat),
            message_id=uuid.uuid4().hex,
            components=(Text(text=text),),
        )
        return await self.manager.submit(event)


def _chain(fake: FakeLLM, **kw: Any) -> ProviderChain:
    from astr_ray.config import ProviderConfig

    cfg = ProviderConfig(
        id="primary", model="openai/primary", api_base=fake.base_url, backoff_s=0.01, **kw
    )
    ledger = PermitLedger(cfg.max_concurrency, None, cfg.failure_threshold, cfg.cooldown_s)

    async def fetch(want: int, release: int, outcomes: Outcomes) -> Grant:
        return ledger.acquire("test", want, release, outcomes)

    return ProviderChain([ProviderSlot(cfg, make_transport(cfg), PermitCache("primary", fetch))])


async def make_bot(
    tmp: Path,
    fake: FakeLLM,
    names: list[str],
    chain_kw: dict[str, Any] | None = None,
    **overrides: Any,
) -> Bot:
    pdir = tmp / "plugins"
    pdir.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(FIXTURES / name, pdir / name)
    data: dict[str, Any] = {
        "data_dir": str(tmp),
        "providers": [
            {
                "id": "primary",
                "model": "openai/primary",
                "api_base": fake.base_url,
                **(chain_kw or {}),
            }
        ],
        "plugins": {"handler_timeout_s": 10},
        "agent": {"tool_timeout_s": 1},
        "access": {"admins": [f"webchat:{ADMIN}"]},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    cfg = parse_config(data)
    store = await Store.open(cfg.store_url)
    await store.migrate()
    chain = _chain(fake, **(chain_kw or {}))
    services = Services(cfg, store, chain)
    commands = builtin_commands()
    plugins = PluginManager(cfg, services, reserved=commands.names())
    await plugins.load_all()
    processor = TurnProcessor(store, chain, cfg, commands, plugins)
    return Bot(cfg, store, processor, SessionManager(processor, cfg.sessions), plugins, services)


@pytest.fixture
async def bot(tmp_path: Path, fake_llm: FakeLLM) -> AsyncIterator[Bot]:
    # A short limit, for the time-out tests; elsewhere 10 s leaves room on a busy machine.
    b = await make_bot(
        tmp_path, fake_llm, ["greeter", "raiser", "sleeper"], plugins={"handler_timeout_s": 2}
    )
    yield b
    await b.plugins.close()
    await b.processor.chain.close()
    await b.store.close()


def chat() -> str:
    return "u-" + uuid.uuid4().hex[:8]


# -- manifests and the loader ---------------------------------------------------------------


def test_manifest_is_checked_before_code_runs(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "broken_manifest", tmp_path / "broken_manifest")
    shutil.copytree(FIXTURES / "broken_import", tmp_path / "broken_import")
    shutil.copytree(FIXTURES / "greeter", tmp_path / "greeter")
    sources, failures = discover(tmp_path)
    assert [s.name for s in sources] == ["broken_import", "greeter"]
    (bad,) = failures
    assert bad.name == "broken_manifest" and "capabilities" in bad.reason
    with pytest.raises(PluginError, match="definitely_not_installed_module"):
        load(next(s for s in sources if s.name == "broken_import"))


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"version": "1"}, "name"),
        ({"name": "Bad Name", "version": "1"}, "name"),
        ({"name": "x", "version": "1", "colour": "red"}, "unknown key"),
        ({"name": "x", "version": "1", "requirements": ["six"]}, "isolated: true"),
        ({"name": "x", "version": "1", "config": {"n": {"type": "complex"}}}, "config.n.type"),
        (
            {"name": "x", "version": "1", "config": {"n": {"type": "int", "default": "lots"}}},
            "not a int",
        ),
    ],
)
def test_bad_manifests_say_what_is_wrong(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PluginError, match=fragment):
        manifest_from_dict(data, source="test")


def test_plugin_config_is_validated_against_its_schema() -> None:
    m = manifest_from_dict(
        {"name": "x", "version": "1", "config": {"n": {"type": "int", "default": 3}}},
        source="test",
    )
    assert m.check_config(None) == {"n": 3}
    assert m.check_config({"n": "7"}) == {"n": 7}
    with pytest.raises(PluginError, match="n"):
        m.check_config({"n": "many"})
    with pytest.raises(PluginError, match="typo"):
        m.check_config({"typo": 1})


def test_command_arguments_are_typed() -> None:
    p = Plugin()

    @p.command("w")
    async def w(ctx: Any, city: str, days: int = 1) -> str:
        return ""

    @p.command("note")
    async def note(ctx: Any, text: str) -> str:
        return ""

    w_spec, note_spec = p.spec().commands
    assert w_spec.usage == "/w <city> [days:int]"
    assert parse_args(w_spec.params, "Paris") == {"city": "Paris", "days": 1}
    assert parse_args(w_spec.params, '"New York" 3') == {"city": "New York", "days": 3}
    assert note_spec.usage == "/note <text...>"
    raw = 'say "hi"   to C:\\Bob'
    assert parse_args(note_spec.params, raw) == {"text": raw}, "the rest of the line as typed"
    with pytest.raises(UsageError, match="too many arguments"):
        parse_args(w_spec.params, "Paris 3 extra")
    with pytest.raises(UsageError, match="missing <text>"):
        parse_args(note_spec.params, "   ")


def test_tool_schema_comes_from_hints_and_docstring() -> None:
    p = Plugin()

    @p.tool()
    async def weather(ctx: Any, city: str, unit: str = "c", days: int = 1) -> str:
        """Get the weather.

        Args:
            city: the city name
            days: how many days ahead
        """
        return ""

    (tool,) = p.spec().tools
    assert tool.name == "weather" and tool.description == "Get the weather."
    props = tool.parameters["properties"]
    assert props["city"] == {"type": "string", "description": "the city name"}
    assert props["days"]["type"] == "integer" and props["days"]["default"] == 1
    assert tool.parameters["required"] == ["city"]


# -- commands, containment, dialogs ---------------------------------------------------------


async def test_plugin_commands_with_typed_arguments(bot: Bot) -> None:
    c = chat()
    assert (await bot.say(c, "/greet Ada 2")).text == "Hello, Ada! Hello, Ada!"
    assert (await bot.say(c, "/hi Bob")).text == "Hello, Bob!"
    bad = await bot.say(c, "/greet Ada many")
    assert "<times> must be a whole number" in bad.text and "Usage: /greet" in bad.text
    assert (await bot.say(c, "/loud hey there")).text == "HEY THERE!"


async def test_command_groups_and_the_key_value_store(bot: Bot) -> None:
    a, b = chat(), chat()
    assert "1 items" in (await bot.say(a, "/todo add milk")).text
    assert "2 items" in (await bot.say(b, "/todo add eggs")).text
    assert (await bot.say(a, "/todo ls")).text == "- milk\n- eggs"
    usage = (await bot.say(a, "/todo frobnicate")).text
    assert "Sub-commands" in usage and "/todo add" in usage
    assert await bot.store.kv_get("greeter", "items") == ["milk", "eggs"]


async def test_help_lists_plugin_commands_with_usage(bot: Bot) -> None:
    text = (await bot.say(chat(), "/help")).text
    for usage in ("/greet <name> [times:int]", "/todo add <item...>", "/boom", "/nap"):
        assert usage in text, text
    assert "/secret" not in text and "/op" not in text, "admin commands are for admins"
    admin_help = (await bot.say(chat(), "/help", sender=ADMIN)).text
    assert "/secret" in admin_help and "/op" in admin_help


async def test_admin_only_commands(bot: Bot) -> None:
    assert "admins only" in (await bot.say(chat(), "/secret")).text
    assert (await bot.say(chat(), "/secret", sender=ADMIN)).text == "the cake is a lie"


async def test_a_raising_plugin_is_reported_briefly_and_others_keep_working(bot: Bot) -> None:
    c = chat()
    reply = await bot.say(c, "/boom")
    assert reply.error == "plugin_exception"
    assert "raiser failed: ValueError: kaboom" in reply.text and "Traceback" not in reply.text
    assert (await bot.say(c, "/greet Eve")).text == "Hello, Eve!"


async def test_a_slow_handler_is_timed_out(bot: Bot) -> None:
    reply = await bot.say(chat(), "/nap 10")
    assert reply.error == "plugin_timeout" and "longer than 2s" in reply.text


async def test_a_sleeping_plugin_does_not_delay_another_session(bot: Bot) -> None:
    slow = asyncio.create_task(bot.say(chat(), "/snooze 1.5"))
    await asyncio.sleep(0.1)
    started = time.perf_counter()
    reply = await bot.say(chat(), "/greet Fast")
    elapsed = time.perf_counter() - started
    assert reply.text == "Hello, Fast!"
    assert not slow.done(), f"the other session answered while /snooze still ran ({elapsed:.2f}s)"
    assert (await slow).text == "snoozed 1.5s"


async def test_regex_handler_answers_without_the_llm(bot: Bot, fake_llm: FakeLLM) -> None:
    assert (await bot.say(chat(), "ping")).text == "pong"
    assert fake_llm.calls == 0


async def test_a_dialog_waits_for_the_same_users_next_messages(bot: Bot) -> None:
    c = chat()
    assert (await bot.say(c, "/quiz")).text == "What is your name?"
    assert (await bot.say(c, "Ada")).text == "Nice to meet you, Ada. Favourite colour?"
    assert (await bot.say(c, "green")).text == "Ada likes green."
    # The dialog is over: the next message goes to the LLM again.
    assert (await bot.say(c, "hello")).text.startswith("echo: hello")


async def test_stop_cancels_a_waiting_dialog(bot: Bot) -> None:
    c = chat()
    await bot.say(c, "/quiz")
    assert "Stopped greeter's question" in (await bot.say(c, "/stop")).text
    assert (await bot.say(c, "Ada")).text.startswith("echo: Ada")


async def test_stop_aborts_a_running_turn(bot: Bot, fake_llm: FakeLLM) -> None:
    c = chat()
    fake_llm.script.append(Scripted(200, delay=30))
    running = asyncio.create_task(bot.say(c, "tell me a long story"))
    await asyncio.sleep(0.3)
    assert (await bot.say(c, "/stop")).text == "Stopped the answer."
    stopped = await asyncio.wait_for(running, 5)
    assert stopped.error == "stopped"
    state = await bot.store.ensure_session(f"webchat:private:{c}")
    rows = await bot.store.load_history(state.conversation_id)
    assert [(m.role, m.content) for m in rows] == [("user", "tell me a long story")]
    assert (await bot.say(c, "/stop")).text == "Nothing to stop."


async def test_ctx_send_reaches_another_session(bot: Bot) -> None:
    reply = await bot.say(chat(), "/tell webchat:private:friend hello friend")
    assert reply.text == "sent"
    assert bot.services.sent == [("webchat:private:friend", "hello friend")]


async def test_disable_globally_and_per_session(bot: Bot) -> None:
    c = chat()
    assert "is on" not in (await bot.say(c, "/plugin off greeter")).text  # not an admin
    assert "is off everywhere" in (await bot.say(c, "/plugin off greeter", sender=ADMIN)).text
    assert "Unknown command /greet" in (await bot.say(c, "/greet Ann")).text
    listing = (await bot.say(c, "/plugin ls", sender=ADMIN)).text
    assert "greeter 1.2.0 [off]" in listing
    await bot.say(c, "/plugin on greeter", sender=ADMIN)
    assert (await bot.say(c, "/greet Ann")).text == "Hello, Ann!"
    await bot.store.set_setting(f"webchat:private:{c}", "plugins_off", ["greeter"])
    await bot.processor.reload(bot.manager.sessions[f"webchat:private:{c}"].live)  # type: ignore[arg-type]
    assert "Unknown command" in (await bot.say(c, "/greet Ann")).text
    assert (await bot.say(chat(), "/greet Ann")).text == "Hello, Ann!", "other sessions keep it"


async def test_reload_picks_up_changed_code(bot: Bot) -> None:
    main = bot.cfg.plugins_dir / "greeter" / "main.py"
    old = "f\"{ctx.config['greeting']}, {name}!\""
    main.write_text(main.read_text().replace(old, 'f"Howdy {name}"'))
    assert await bot.plugins.reload("greeter") == ["greeter"]
    assert (await bot.say(chat(), "/greet Ann")).text == "Howdy Ann"


async def test_load_errors_are_listed_not_fatal(tmp_path: Path, fake_llm: FakeLLM) -> None:
    b = await make_bot(tmp_path, fake_llm, ["greeter", "broken_manifest", "broken_import"])
    try:
        listing = (await b.say(chat(), "/plugin ls", sender=ADMIN)).text
        assert "broken_import" in listing and "definitely_not_installed_module" in listing
        assert "broken_manifest" in listing and "capabilities" in listing
        assert (await b.say(chat(), "/greet Ann")).text == "Hello, Ann!"
    finally:
        await b.plugins.close()
        await b.store.close()


async def test_plugin_settings_and_decorate_hook(tmp_path: Path, fake_llm: FakeLLM) -> None:
    b = await make_bot(
        tmp_path,
        fake_llm,
        ["greeter"],
        plugins={"settings": {"greeter": {"greeting": "Ahoy", "signature": "~g"}}},
    )
    try:
        assert (await b.say(chat(), "/greet Ann")).text == "Ahoy, Ann! ~g"
        assert (await b.say(chat(), "hi")).text.endswith("(turn 1) ~g")
    finally:
        await b.plugins.close()
        await b.store.close()


async def test_dialogs_are_per_sender_in_a_group(bot: Bot) -> None:
    room = chat()
    assert (await bot.say(room, "/quiz", sender="ann", group=True)).text == "What is your name?"
    assert (await bot.say(room, "/quiz", sender="bob", group=True)).text == "What is your name?"
    assert "Nice to meet you, Bob" in (await bot.say(room, "Bob", sender="bob", group=True)).text
    assert "/help" in (await bot.say(room, "/help", sender="ann", group=True)).text
    assert "Nice to meet you, Ann" in (await bot.say(room, "Ann", sender="ann", group=True)).text
    assert (await bot.say(room, "red", sender="ann", group=True)).text == "Ann likes red."
    assert (await bot.say(room, "blue", sender="bob", group=True)).text == "Bob likes blue."


async def test_admin_sub_commands_and_usage_errors_from_handlers(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    pdir = tmp_path / "plugins" / "vault"
    pdir.mkdir(parents=True)
    (pdir / "plugin.yaml").write_text("name: vault\nversion: 1.0.0\n")
    (pdir / "main.py").write_text(
        "from astr_ray.plugins import Plugin, UsageError\n"
        "plugin = Plugin()\n"
        "vault = plugin.group('vault')\n"
        "@vault.command('open', admin=True)\n"
        "async def open_(ctx) -> str:\n"
        "    return 'opened'\n"
        "@vault.command('put')\n"
        "async def put(ctx, amount: int) -> str:\n"
        "    if amount <= 0:\n"
        "        raise UsageError('the amount must be positive')\n"
        "    return f'put {amount}'\n"
    )
    b = await make_bot(tmp_path, fake_llm, [])
    try:
        assert (await b.say(chat(), "/vault open")).text == "/vault open is for admins only."
        assert (await b.say(chat(), "/vault open", sender=ADMIN)).text == "opened"
        listing = (await b.say(chat(), "/vault")).text
        assert "/vault put" in listing and "/vault open" not in listing
        assert "/vault open" in (await b.say(chat(), "/vault", sender=ADMIN)).text
        refused = await b.say(chat(), "/vault put -3")
        assert refused.text == "the amount must be positive. Usage: /vault put <amount:int>"
        assert refused.error is None
    finally:
        await b.plugins.close()
        await b.store.close()


async def test_a_plugin_can_be_switched_off_in_one_chat(bot: Bot) -> None:
    c, other = chat(), chat()
    assert "off in this chat" in (await bot.say(c, "/plugin off greeter here", sender=ADMIN)).text
    assert "Unknown command" in (await bot.say(c, "/greet Ann", sender=ADMIN)).text
    assert (await bot.say(other, "/greet Ann")).text == "Hello, Ann!"
    await bot.say(c, "/plugin on greeter here", sender=ADMIN)
    assert (await bot.say(c, "/greet Ann", sender=ADMIN)).text == "Hello, Ann!"


async def test_an_installed_package_plugin_loads_through_its_entry_point(
    tmp_path: Path, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    pkg = site / "astr_demo_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.yaml").write_text("name: demo-pkg\nversion: 2.0.0\n")
    (pkg / "main.py").write_text(
        "from astr_ray.plugins import Plugin\n"
        "plugin = Plugin()\n"
        "@plugin.command('pkgping')\n"
        "async def pkgping(ctx) -> str:\n"
        "    return 'pong from a package'\n"
    )
    info = site / "astr_demo_pkg-2.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: astr-demo-pkg\nVersion: 2.0.0\n")
    (info / "entry_points.txt").write_text("[astr_ray.plugins]\ndemo-pkg = astr_demo_pkg\n")
    monkeypatch.syspath_prepend(str(site))
    b = await make_bot(tmp_path / "bot", fake_llm, [])
    try:
        assert (await b.say(chat(), "/pkgping")).text == "pong from a package"
        listing = (await b.say(chat(), "/plugin ls", sender=ADMIN)).text
        assert "demo-pkg 2.0.0 [on]" in listing
    finally:
        await b.plugins.close()
        await b.store.close()


async def test_a_failing_message_handler_does_not_take_the_message(bot: Bot) -> None:
    reply = await bot.say(chat(), "please explode")
    assert reply.error is None and reply.text.startswith("echo: please explode")


async def test_lifecycle_and_pipeline_hooks(tmp_path: Path, fake_llm: FakeLLM) -> None:
    b = await make_bot(tmp_path, fake_llm, ["hooked"])
    try:
        assert await b.store.kv_get("hooked", "loaded") == 1
        reply = await b.say(chat(), "hello hooks")
        system = fake_llm.requests[-1]["messages"][0]["content"]
        assert system == "You are a helpful assistant. Always be brief.", "before_llm"

        async def recorded() -> Any:
            return await b.store.kv_get("hooked", "last_sent")

        for _ in range(50):  # after_send runs after the reply has left
            if await recorded() == reply.text:
                break
            await asyncio.sleep(0.05)
        assert await recorded() == reply.text, "after_send saw the reply"
        assert await b.plugins.reload("hooked") == ["hooked"]
        assert await b.store.kv_get("hooked", "unloaded") == 1
        assert await b.store.kv_get("hooked", "loaded") == 2
    finally:
        await b.plugins.close()
        await b.store.close()
