"""``ConfigFile``: the dashboard's edits of the YAML config file, on real temp files."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from astr_ray.config import load_config
from astr_ray.config_edit import (
    HEADER,
    ConfigConflictError,
    ConfigFile,
    ConfigNotFoundError,
    mask,
)
from astr_ray.errors import ConfigError

CONFIG = """\
# hand-written notes
bot_name: test-bot
providers:
  - id: local
    model: openai/qwen
    api_base: ${LLM_BASE}
    api_key: ${LLM_KEY}
  - id: backup
    model: openai/other
    api_key: sk-backup-literal-secret
fallback: [local, backup]
webchat:
  token: webchat-token-secret
platforms:
  - id: tg
    type: telegram
    token: ${TG_TOKEN}
  - id: qq
    access_token: onebot-secret
mcp:
  servers:
    - name: files
      transport: http
      url: https://mcp.example/
      headers: {Authorization: Bearer mcp-header-secret}
store:
  url: postgresql+asyncpg://bot:db-password-secret@db/astr
plugins:
  settings:
    weather: {api_url: "${WEATHER_URL}", units: metric}
"""

ENV = {
    "LLM_BASE": "http://127.0.0.1:9/v1",
    "LLM_KEY": "sk-env-secret",
    "TG_TOKEN": "tg-env-secret",
    "WEATHER_URL": "https://weather.example/api",
}

SECRETS = [
    "sk-env-secret",
    "sk-backup-literal-secret",
    "webchat-token-secret",
    "tg-env-secret",
    "onebot-secret",
    "mcp-header-secret",
    "db-password-secret",
]


@pytest.fixture
def path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    p = tmp_path / "config.yaml"
    p.write_text(CONFIG, encoding="utf-8")
    return p


@pytest.fixture
def cf(path: Path) -> ConfigFile:
    return ConfigFile(path)


def _secret(value: Any) -> str:
    assert value is not None
    text: str = value.get_secret_value()
    return text


def _provider(cf: ConfigFile, provider_id: str) -> dict[str, Any]:
    return next(p for p in cf.raw()["providers"] if p["id"] == provider_id)


def _platform(cf: ConfigFile, platform_id: str) -> dict[str, Any]:
    return next(p for p in cf.raw()["platforms"] if p["id"] == platform_id)


# -- reading ---------------------------------------------------------------------------


def test_load_is_load_config_and_raw_is_the_file_as_written(cf: ConfigFile, path: Path) -> None:
    assert cf.load().to_transport() == load_config(path).to_transport()
    raw = cf.raw()
    assert raw["providers"][0]["api_key"] == "${LLM_KEY}"
    assert raw["providers"][0]["api_base"] == "${LLM_BASE}"
    assert _secret(cf.load().providers[0].api_key) == "sk-env-secret"
    assert ConfigFile(path.parent / "missing.yaml").raw() == {}


def test_masked_holds_no_secret_value_anywhere(cf: ConfigFile) -> None:
    masked = cf.masked()
    text = json.dumps(masked)
    for secret in SECRETS:
        assert secret not in text
    assert masked["providers"][0]["api_key"] == {"set": True}
    assert masked["providers"][0]["api_base"] == "http://127.0.0.1:9/v1"
    assert masked["webchat"]["token"] == {"set": True}
    assert masked["platforms"][0]["token"] == {"set": True}
    assert masked["platforms"][1]["access_token"] == {"set": True}
    assert masked["platforms"][0]["secret_token"] is None
    assert masked["mcp"]["servers"][0]["headers"] == {"Authorization": {"set": True}}
    assert masked["knowledge"]["api_key"] is None
    assert masked["store"]["url"] == "postgresql+asyncpg://bot:***@db/astr"
    assert mask(cf.load().providers[1])["api_key"] == {"set": True}


def test_invalid_yaml_is_refused_with_its_line(cf: ConfigFile, path: Path) -> None:
    path.write_text("sessions:\n  hosts: 2\n bad: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        cf.raw()
    assert err.value.path.startswith("line ")
    with pytest.raises(ConfigError):
        cf.set_section("sessions", {"hosts": 3})
    assert path.read_text(encoding="utf-8").startswith("sessions:")


# -- writing ---------------------------------------------------------------------------


def test_masked_sections_written_back_change_nothing(cf: ConfigFile, path: Path) -> None:
    before = cf.load().to_transport()
    masked = cf.masked()
    for section, value in masked.items():
        if section != "data_dir":  # resolved to an absolute path by load_config
            cf.set_section(section, value)

    assert cf.load().to_transport() == before
    text = path.read_text(encoding="utf-8")
    for ref in ("${LLM_KEY}", "${LLM_BASE}", "${TG_TOKEN}", "${WEATHER_URL}"):
        assert ref in text
    assert "db-password-secret" in text and "***" not in text
    assert "config_file" not in text
    assert "max_concurrency" not in text, "defaults the file left out stay out"


def test_a_written_file_is_private_and_says_who_writes_it(cf: ConfigFile, path: Path) -> None:
    path.chmod(0o644)
    cf.set_section("sessions", {"hosts": 3})
    text = path.read_text(encoding="utf-8")
    assert text.startswith(HEADER) and HEADER.startswith("# ")
    assert "hand-written notes" not in text
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]
    assert load_config(path).sessions.hosts == 3


def test_a_refused_edit_leaves_the_file_untouched(cf: ConfigFile, path: Path) -> None:
    path.chmod(0o644)
    before = path.read_bytes()
    with pytest.raises(ConfigError) as err:
        cf.upsert_provider({"id": "extra", "model": ""}, create=True)
    assert err.value.path == "providers[2].model"
    with pytest.raises(ConfigError) as err:
        cf.upsert_provider({"id": "extra", "model": "m", "modle": "typo"}, create=True)
    assert err.value.path == "providers[2].modle" and "unknown key" in str(err.value)

    def boom(data: dict[str, Any]) -> None:
        data["bot_name"] = "half-done"
        raise ConfigError("refused by the edit", path="bot_name")

    with pytest.raises(ConfigError, match="refused by the edit"):
        cf.update(boom)
    assert path.read_bytes() == before
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]


def test_an_unset_environment_variable_is_named(
    cf: ConfigFile, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = path.read_bytes()
    monkeypatch.delenv("TG_TOKEN")
    with pytest.raises(ConfigError) as err:
        cf.set_section("sessions", {"hosts": 3})
    assert err.value.path == "platforms[0].token" and "TG_TOKEN" in str(err.value)
    assert path.read_bytes() == before


def test_update_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "config.yaml"
    cfg = ConfigFile(path).update(lambda data: data.update(bot_name="fresh"))
    assert cfg.bot_name == "fresh" == load_config(path).bot_name
    assert path.stat().st_mode & 0o777 == 0o600


def test_concurrent_updates_are_all_kept(cf: ConfigFile) -> None:
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            cf.upsert_provider({"id": f"p{i}", "model": f"openai/m{i}"}, create=True)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = [p.id for p in cf.load().providers]
    assert ids[:2] == ["local", "backup"] and sorted(ids[2:]) == [f"p{i}" for i in range(8)]


# -- providers -------------------------------------------------------------------------


def test_provider_create_and_conflict(cf: ConfigFile, path: Path) -> None:
    cfg = cf.upsert_provider(
        {"id": "cloud", "model": "openai/gpt", "api_key": "sk-cloud", "max_retries": 4},
        create=True,
    )
    cloud = cfg.providers[2]
    assert (cloud.id, cloud.max_retries, _secret(cloud.api_key)) == ("cloud", 4, "sk-cloud")
    assert cf.masked()["providers"][2]["api_key"] == {"set": True}

    before = path.read_bytes()
    with pytest.raises(ConfigConflictError) as err:
        cf.upsert_provider({"id": "cloud", "model": "openai/x"}, create=True)
    assert err.value.path == "providers.id" and "exists already" in str(err.value)
    with pytest.raises(ConfigError) as err:
        cf.upsert_provider({"model": "openai/x"}, create=True)
    assert err.value.path == "providers.id"
    assert path.read_bytes() == before

    cfg = cf.upsert_provider({"id": "keyless", "model": "m", "api_key": {"set": True}}, create=True)
    assert cfg.providers[3].api_key is None


def test_provider_change_keeps_unsent_fields_and_the_secret(cf: ConfigFile) -> None:
    cfg = cf.upsert_provider({"id": "local", "model": "openai/qwen3"}, create=False)
    assert cfg.providers[0].model == "openai/qwen3"
    assert _provider(cf, "local")["api_key"] == "${LLM_KEY}"
    assert _provider(cf, "local")["api_base"] == "${LLM_BASE}"

    for keep in ({"api_key": None}, {"api_key": {"set": True}}):
        cfg = cf.upsert_provider({"id": "local", **keep, "timeout_s": 5}, create=False)
        assert _secret(cfg.providers[0].api_key) == "sk-env-secret"
        assert _provider(cf, "local")["api_key"] == "${LLM_KEY}"
    # The base URL sent back as the page showed it keeps its ${ENV} form.
    cf.upsert_provider({"id": "local", "api_base": "http://127.0.0.1:9/v1"}, create=False)
    assert _provider(cf, "local")["api_base"] == "${LLM_BASE}"

    cfg = cf.upsert_provider({"id": "local", "api_key": "sk-replaced"}, create=False)
    assert _secret(cfg.providers[0].api_key) == "sk-replaced"
    cfg = cf.upsert_provider({"id": "local", "api_key": {"set": False}}, create=False)
    assert cfg.providers[0].api_key is None

    cfg = cf.upsert_provider({"id": "local", "requests_per_minute": 30}, create=False)
    assert cfg.providers[0].requests_per_minute == 30
    cfg = cf.upsert_provider({"id": "local", "requests_per_minute": None}, create=False)
    assert cfg.providers[0].requests_per_minute is None
    with pytest.raises(ConfigError) as err:
        cf.upsert_provider({"id": "local", "max_retries": "lots"}, create=False)
    assert err.value.path == "providers[0].max_retries"


def test_changing_or_deleting_an_unknown_provider_is_not_found(cf: ConfigFile) -> None:
    with pytest.raises(ConfigNotFoundError, match="no provider 'ghost'"):
        cf.upsert_provider({"id": "ghost", "model": "m"}, create=False)
    with pytest.raises(ConfigNotFoundError):
        cf.delete_provider("ghost")


def test_deleting_a_provider_removes_it_from_fallback(cf: ConfigFile) -> None:
    cfg = cf.delete_provider("local")
    assert [p.id for p in cfg.providers] == ["backup"]
    assert cfg.fallback == ["backup"]


def test_fallback_order_names_existing_providers_once(cf: ConfigFile) -> None:
    assert cf.set_fallback(["backup", "local"]).fallback == ["backup", "local"]
    with pytest.raises(ConfigError) as err:
        cf.set_fallback(["backup", "nope"])
    assert err.value.path == "fallback[1]" and "unknown provider id 'nope'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        cf.set_fallback(["local", "local"])
    assert err.value.path == "fallback[1]"
    assert cf.load().fallback == ["backup", "local"]


# -- platforms -------------------------------------------------------------------------


def test_platform_create_needs_its_secret(cf: ConfigFile) -> None:
    with pytest.raises(ConfigError) as err:
        cf.upsert_platform({"id": "dc", "type": "discord"}, create=True)
    assert err.value.path == "platforms[2].token"
    with pytest.raises(ConfigError) as err:
        cf.upsert_platform({"id": "dc", "type": "discord", "token": {"set": True}}, create=True)
    assert err.value.path == "platforms[2].token"
    with pytest.raises(ConfigError) as err:
        cf.upsert_platform({"id": "webchat", "type": "discord", "token": "x"}, create=True)
    assert err.value.path == "platforms[2].id" and "taken" in str(err.value)

    cfg = cf.upsert_platform({"id": "dc", "type": "discord", "token": "dc-secret"}, create=True)
    assert _secret(cfg.platforms[2].token) == "dc-secret"  # type: ignore[union-attr]
    with pytest.raises(ConfigConflictError):
        cf.upsert_platform({"id": "dc", "type": "discord", "token": "x"}, create=True)
    assert "dc-secret" not in json.dumps(cf.masked())


def test_platform_change_keeps_secrets_of_the_same_type_only(cf: ConfigFile) -> None:
    cfg = cf.upsert_platform(
        {"id": "tg", "wake": {"prefixes": ["!"]}, "token": {"set": True}}, create=False
    )
    assert cfg.platforms[0].wake.prefixes == ["!"]
    assert _platform(cf, "tg")["token"] == "${TG_TOKEN}"

    cfg = cf.upsert_platform({"id": "qq", "mode": "forward", "url": "ws://nap:3001/"}, create=False)
    assert _secret(cfg.platforms[1].access_token) == "onebot-secret"  # type: ignore[union-attr]

    with pytest.raises(ConfigError) as err:
        cf.upsert_platform({"id": "tg", "type": "discord"}, create=False)
    assert err.value.path == "platforms[0].token"
    cfg = cf.upsert_platform({"id": "tg", "type": "discord", "token": "dc-new"}, create=False)
    assert cfg.platforms[0].type == "discord"
    assert _platform(cf, "tg") == {"id": "tg", "type": "discord", "token": "dc-new"}

    with pytest.raises(ConfigNotFoundError, match="no platform 'ghost'"):
        cf.upsert_platform({"id": "ghost", "wake": {}}, create=False)


def test_deleting_a_platform(cf: ConfigFile) -> None:
    cfg = cf.delete_platform("tg")
    assert [p.id for p in cfg.platforms] == ["qq"]
    with pytest.raises(ConfigNotFoundError):
        cf.delete_platform("tg")


# -- plugin settings and sections ------------------------------------------------------


def test_plugin_settings_replace_that_plugin_only(cf: ConfigFile) -> None:
    cfg = cf.set_plugin_settings(
        "weather", {"api_url": "https://weather.example/api", "units": "imperial"}
    )
    assert cfg.plugins.settings["weather"] == {
        "api_url": "https://weather.example/api",
        "units": "imperial",
    }
    assert cf.raw()["plugins"]["settings"]["weather"]["api_url"] == "${WEATHER_URL}"
    cfg = cf.set_plugin_settings("notes", {"max": 10})
    assert set(cfg.plugins.settings) == {"weather", "notes"}
    with pytest.raises(ConfigError) as err:
        cf.set_plugin_settings("notes", ["not", "a", "mapping"])  # type: ignore[arg-type]
    assert err.value.path == "plugins.settings.notes"


def test_sections_are_validated_and_keep_unsent_secrets(cf: ConfigFile) -> None:
    with pytest.raises(ConfigError) as err:
        cf.set_section("nope", {})
    assert err.value.path == "nope" and "unknown section" in str(err.value)
    with pytest.raises(ConfigError) as err:
        cf.set_section("speech", {"tts": {"backend": "litellm"}})
    assert err.value.path == "speech.tts" and "model" in str(err.value)
    with pytest.raises(ConfigError) as err:
        cf.set_section("sessions", {"hostz": 2})
    assert err.value.path == "sessions.hostz" and "unknown key" in str(err.value)

    cfg = cf.set_section("webchat", {"port": 7000})
    assert cfg.webchat.port == 7000
    assert _secret(cfg.webchat.token) == "webchat-token-secret"

    servers = cf.masked()["mcp"]["servers"]
    servers[0]["headers"]["X-Extra"] = "extra-secret"
    cfg = cf.set_section("mcp", {"servers": servers})
    headers = {k: _secret(v) for k, v in cfg.mcp.servers[0].headers.items()}
    assert headers == {"Authorization": "Bearer mcp-header-secret", "X-Extra": "extra-secret"}

    cfg = cf.set_section("speech", {"tts": {"backend": "litellm", "model": "openai/tts-1"}})
    assert (cfg.speech.tts.backend, cfg.speech.tts.model) == ("litellm", "openai/tts-1")
