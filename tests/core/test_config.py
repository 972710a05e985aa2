from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from astr_ray.config import (
    default_config_text,
    load_config,
    parse_config,
    write_default_config,
)
from astr_ray.errors import ConfigError


def test_empty_config_is_a_working_default() -> None:
    cfg = parse_config(None)
    assert cfg.sessions.hosts >= 1 and cfg.webchat.port == 6186
    assert cfg.store_url.startswith("sqlite+aiosqlite:///")
    assert cfg.provider_chain() == []


def test_init_template_parses_and_has_a_fresh_token(tmp_path: Path) -> None:
    a = parse_config(yaml.safe_load(default_config_text()))
    b = parse_config(yaml.safe_load(default_config_text()))
    assert a.webchat.token is not None and b.webchat.token is not None
    assert a.webchat.token.get_secret_value() != b.webchat.token.get_secret_value()
    path = write_default_config(tmp_path / "config.yaml")
    assert path.stat().st_mode & 0o777 == 0o600, "the file holds a token"
    with pytest.raises(ConfigError, match="exists already"):
        write_default_config(path)


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        ({"sessions": {"hosts": 0}}, "sessions.hosts", "greater than or equal to 1"),
        (
            {"providers": [{"id": "a", "model": "m", "max_retries": "lots"}]},
            "providers[0].max_retries",
            "valid integer",
        ),
        (
            {"providers": [{"id": "a", "model": "m"}], "fallback": ["b"]},
            "fallback[0]",
            "unknown provider id 'b'",
        ),
        (
            {"providers": [{"id": "a", "model": "m"}, {"id": "a", "model": "n"}]},
            "providers[1].id",
            "duplicate provider id",
        ),
        ({"sesions": {}}, "sesions", "unknown key"),
        ({"webchat": {"port": 70000}}, "webchat.port", "less than or equal"),
        ({"providers": [{"id": "bad id!", "model": "m"}]}, "providers[0].id", "pattern"),
    ],
)
def test_bad_config_names_the_key(data: object, path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert err.value.path == path
    assert reason in str(err.value)


def test_secrets_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    cfg = parse_config(
        {
            "providers": [
                {"id": "a", "model": "m", "api_key": "${MY_KEY}"},
                {"id": "b", "model": "m", "api_key": "${NOPE:-dflt}"},
            ]
        }
    )
    assert cfg.providers[0].api_key is not None
    assert cfg.providers[0].api_key.get_secret_value() == "sk-secret-123"
    assert cfg.providers[1].api_key is not None
    assert cfg.providers[1].api_key.get_secret_value() == "dflt"
    assert "sk-secret-123" not in repr(cfg) and "sk-secret-123" not in str(cfg.model_dump())
    with pytest.raises(ConfigError) as err:
        parse_config({"providers": [{"id": "a", "model": "m", "api_key": "${UNSET_VAR_X}"}]})
    assert err.value.path == "providers[0].api_key" and "UNSET_VAR_X" in str(err.value)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_text("sessions:\n  hosts: 2\n bad: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert err.value.path.startswith("line ")


def test_cli_refuses_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_text("sessions:\n  idle_timeout_s: -5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "astr_ray.cli", "-c", str(p), "dev"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "config error: sessions.idle_timeout_s:" in proc.stderr
    assert "Traceback" not in proc.stderr
