"""Configuration: pydantic models for every setting, loaded from one YAML file.

Every key has a default, so an empty file is a working single-node config. Secrets
(API keys, tokens) are ``SecretStr`` and may be written as ``${ENV_VAR}`` (or
``${ENV_VAR:-default}``) to come from the environment. A bad file is refused with the
dotted path of the bad key and the reason (``ConfigError``), never a traceback.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    model_validator,
)

from astr_ray.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AccessConfig",
    "AgentConfig",
    "Config",
    "DashboardConfig",
    "DiscordConfig",
    "KnowledgeConfig",
    "McpConfig",
    "McpServerConfig",
    "OneBotConfig",
    "PersonaConfig",
    "PlatformConfig",
    "PluginsConfig",
    "ProviderConfig",
    "RateLimitConfig",
    "RuntimeConfig",
    "SandboxConfig",
    "SessionsConfig",
    "SlackConfig",
    "StoreConfig",
    "TelegramConfig",
    "WakeConfig",
    "WebChatConfig",
    "default_config_text",
    "load_config",
    "parse_config",
    "write_default_config",
]

DEFAULT_CONFIG_PATH = Path("data/config.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class StoreConfig(_Section):
    """Where conversations live. Empty ``url`` means SQLite under the data directory."""

    url: str = ""


class ProviderConfig(_Section):
    """One LLM provider. ``model`` is a litellm model string (``openai/<name>`` for any
    OpenAI-compatible server at ``api_base``)."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(min_length=1)
    api_base: str | None = None
    api_key: SecretStr | None = None
    transport: Literal["auto", "native", "litellm"] = "auto"
    max_concurrency: int = Field(default=64, ge=1, le=10_000)
    requests_per_minute: int | None = Field(default=None, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    backoff_s: float = Field(default=0.5, ge=0)
    max_backoff_s: float = Field(default=10.0, ge=0)
    failure_threshold: int = Field(default=3, ge=1)
    cooldown_s: float = Field(default=15.0, ge=0)
    context_window: int | None = Field(
        default=None, ge=256, description="input tokens; default: what litellm knows, else 8192"
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    enabled: bool = True


class SessionsConfig(_Section):
    """Virtual sessions: how many hosts, how many shards, when sessions are passivated."""

    hosts: int = Field(default=2, ge=1, le=256)
    hosts_per_node: int | None = Field(default=None, ge=1, le=64)
    shards: int = Field(default=1024, ge=1, le=65_536)
    idle_timeout_s: float = Field(default=600.0, gt=0)
    max_active_per_host: int = Field(default=10_000, ge=1)
    mailbox_size: int = Field(default=32, ge=1)
    history_turns: int = Field(default=50, ge=1, description="turns sent to the LLM")
    turn_timeout_s: float = Field(default=180.0, gt=0)
    batch_window_ms: float = Field(default=2.0, ge=0, le=100)
    batch_hold_ms: float = Field(default=10.0, ge=0, le=1000)
    stream_flush_ms: float = Field(default=80.0, ge=0)


class WebChatConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=6186, ge=0, le=65_535)
    token: SecretStr | None = None
    max_message_chars: int = Field(default=16_000, ge=1)


class DashboardConfig(_Section):
    """The web console (login required; `astr-ray password` sets the admin password)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=6185, ge=0, le=65_535)
    secure_cookies: bool = Field(
        default=False, description="set when the dashboard is served over HTTPS (a proxy)"
    )


class PluginsConfig(_Section):
    """Plugins: where they live, their time limits, their settings."""

    dir: Path | None = Field(default=None, description="default: <data_dir>/plugins")
    handler_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    max_dialog_wait_s: float = Field(default=600.0, gt=0)
    watch: bool = Field(default=False, description="reload plugins when their files change")
    disabled: list[str] = Field(default_factory=list, description="plugins off by default")
    ping_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="an isolated plugin's process that does not answer a "
        "ping this long (its event loop is blocked) is restarted",
    )
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per plugin: values for its config schema"
    )


class SandboxConfig(_Section):
    """Where model-written code runs. ``auto`` picks the strongest backend available
    (docker, then bwrap); ``subprocess`` is NOT isolated and must be chosen on purpose."""

    backend: Literal["auto", "docker", "bwrap", "subprocess", "none"] = "auto"
    executors: int = Field(default=2, ge=0, le=64, description="executor actors")
    queue: int = Field(default=8, ge=1, description="runs waiting per executor before 'busy'")
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    memory_mb: int = Field(default=512, ge=16)
    cpu_s: int = Field(default=30, ge=1, description="CPU seconds per run")
    max_processes: int = Field(default=64, ge=1)
    max_output_kb: int = Field(default=64, ge=1)
    workspace_mb: int = Field(default=200, ge=1, description="per session")
    network: bool = Field(default=False, description="let sandboxed code reach the network")
    docker_image: str = "astr-ray-sandbox:latest"
    docker_url: str | None = Field(default=None, description="default: the local socket")
    idle_s: float = Field(default=600.0, gt=0, description="a warm container is removed after")
    admin_only: bool = Field(default=True, description="code tools only for admins")


class McpServerConfig(_Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    transport: Literal["stdio", "sse", "http"]
    command: str | None = Field(default=None, description="stdio: the executable (no shell)")
    args: list[str] = Field(default_factory=list)
    env: dict[str, SecretStr] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = Field(default=None, description="sse / http: the endpoint")
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    tool_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    enabled: bool = True

    @model_validator(mode="after")
    def _fits_transport(self) -> McpServerConfig:
        if self.transport == "stdio" and not self.command:
            raise ValueError("a stdio MCP server needs `command`")
        if self.transport != "stdio" and not self.url:
            raise ValueError(f"an {self.transport} MCP server needs `url`")
        return self


class McpConfig(_Section):
    servers: list[McpServerConfig] = Field(default_factory=list)
    allowed_commands: list[str] = Field(
        default_factory=list,
        description="executables a stdio MCP server may be started with (exact paths or "
        "names); anything else is refused",
    )


class WakeConfig(_Section):
    """When the bot answers in a group: always in private chats; in groups when
    mentioned, when replied to, or when the text starts with a prefix. Commands
    (``/...``) always wake it."""

    mention: bool = True
    reply: bool = True
    prefixes: list[str] = Field(default_factory=list, description='e.g. ["bot ", "!"]')


_PLATFORM_ID = Field(
    min_length=1,
    pattern=r"^[a-z][a-z0-9_-]{0,31}$",
    description="the platform id in session keys and admin ids, e.g. qq",
)


class _PlatformBase(_Section):
    """What every chat account has: an id, wake rules, reconnect backoff, streaming."""

    id: str = _PLATFORM_ID
    enabled: bool = True
    wake: WakeConfig = Field(default_factory=WakeConfig)
    reconnect_max_s: float = Field(default=30.0, gt=0, description="backoff cap")
    action_timeout_s: float = Field(default=30.0, gt=0, description="one platform call")


class _Streaming(_Section):
    stream: bool = Field(default=True, description="stream answers by editing the message")
    stream_interval_s: float = Field(
        default=1.0, ge=0.2, description="at most one edit per this many seconds"
    )


class OneBotConfig(_PlatformBase):
    """A QQ account through a OneBot v11 implementation (NapCat, Lagrange...)."""

    type: Literal["onebot"] = "onebot"
    mode: Literal["reverse", "forward"] = Field(
        default="reverse",
        description="reverse: the implementation connects to us; forward: we connect to it",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=6199, ge=0, le=65_535)
    path: str = "/onebot/v11/ws"
    url: str | None = Field(default=None, description="forward mode: ws://host:port/")
    access_token: SecretStr | None = None

    @model_validator(mode="after")
    def _fits_mode(self) -> OneBotConfig:
        if self.mode == "forward" and not self.url:
            raise ValueError("forward mode needs `url` (the implementation's WebSocket)")
        return self

    def describe(self) -> str:
        """One line for the start banner: where this account connects."""
        if self.mode == "reverse":
            where = f"ws://{self.host}:{self.port}{self.path} (reverse: point NapCat/Lagrange here)"
        else:
            where = f"{self.url} (forward)"
        return f"OneBot v11 {where}"


class TelegramConfig(_PlatformBase, _Streaming):
    """A Telegram bot (python-telegram-bot): long polling, or a webhook we serve."""

    type: Literal["telegram"]
    token: SecretStr = Field(description="the bot token from @BotFather")
    mode: Literal["polling", "webhook"] = "polling"
    api_base: str = Field(
        default="https://api.telegram.org/bot", description="Bot API base (a local server)"
    )
    file_base: str = Field(
        default="https://api.telegram.org/file/bot", description="file download base"
    )
    poll_timeout_s: int = Field(default=30, ge=0, le=50, description="getUpdates long poll")
    host: str = Field(default="127.0.0.1", description="webhook mode: where we listen")
    port: int = Field(default=8443, ge=0, le=65_535)
    path: str = "/telegram/webhook"
    public_url: str | None = Field(
        default=None, description="webhook mode: the https URL Telegram posts to"
    )
    secret_token: SecretStr | None = Field(
        default=None, description="webhook mode: checked on every update"
    )

    @model_validator(mode="after")
    def _fits_mode(self) -> TelegramConfig:
        if self.mode == "webhook":
            if not self.public_url:
                raise ValueError("webhook mode needs `public_url` (what Telegram posts to)")
            if self.secret_token is None or not self.secret_token.get_secret_value():
                raise ValueError("webhook mode needs `secret_token` (checked on every update)")
        return self

    def describe(self) -> str:
        if self.mode == "webhook":
            return f"Telegram webhook {self.public_url} -> {self.host}:{self.port}{self.path}"
        return "Telegram long polling"


class DiscordConfig(_PlatformBase, _Streaming):
    """A Discord bot (discord.py) over the gateway. Needs the message content intent."""

    type: Literal["discord"]
    token: SecretStr = Field(description="the bot token")
    api_base: str | None = Field(
        default=None, description="REST base, e.g. http://127.0.0.1:8080/api/v10; null = Discord"
    )

    def describe(self) -> str:
        return "Discord gateway"


class SlackConfig(_PlatformBase, _Streaming):
    """A Slack app (slack-sdk): Socket Mode, or the Events API over HTTP."""

    type: Literal["slack"]
    mode: Literal["socket", "events"] = "socket"
    bot_token: SecretStr = Field(description="xoxb-... (Web API calls)")
    app_token: SecretStr | None = Field(default=None, description="socket mode: xapp-...")
    signing_secret: SecretStr | None = Field(
        default=None, description="events mode: verifies each request"
    )
    api_base: str = "https://slack.com/api/"
    host: str = Field(default="127.0.0.1", description="events mode: where we listen")
    port: int = Field(default=3000, ge=0, le=65_535)
    path: str = "/slack/events"

    @model_validator(mode="after")
    def _fits_mode(self) -> SlackConfig:
        if self.mode == "socket" and not self.app_token:
            raise ValueError("socket mode needs `app_token` (xapp-...)")
        if self.mode == "events" and not self.signing_secret:
            raise ValueError("events mode needs `signing_secret`")
        return self

    def describe(self) -> str:
        if self.mode == "events":
            return f"Slack Events API at http://{self.host}:{self.port}{self.path}"
        return "Slack Socket Mode"


def _platform_type(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "onebot"))
    return str(getattr(value, "type", "onebot"))


PlatformConfig = Annotated[
    Annotated[OneBotConfig, Tag("onebot")]
    | Annotated[TelegramConfig, Tag("telegram")]
    | Annotated[DiscordConfig, Tag("discord")]
    | Annotated[SlackConfig, Tag("slack")],
    Discriminator(
        _platform_type,
        custom_error_type="platform_type",
        custom_error_message="type must be onebot, telegram, discord or slack",
    ),
]
"""One chat account; ``type`` picks the platform (onebot when left out)."""


class PersonaConfig(_Section):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[\w.-]+$")
    system_prompt: str
    begin_dialogs: list[tuple[str, str]] = Field(default_factory=list)
    tools: list[str] | None = Field(default=None, description="allowed tools; null = all")
    knowledge: list[str] | None = Field(
        default=None, description="knowledge bases this persona reads; null = knowledge.default"
    )
    voice: str | None = Field(
        default=None,
        max_length=128,
        description="the TTS voice this persona speaks with; null = speech.tts.voice",
    )


class KnowledgeConfig(_Section):
    """Knowledge bases: an embedder pool and sharded hybrid (FAISS + BM25) search."""

    embedder: Literal["minilm", "static", "litellm"] = Field(
        default="minilm",
        description="minilm: all-MiniLM-L6-v2 int8 ONNX, offline; static: a 64-dim static "
        "model (fast, rough); litellm: any embedding API (`model`, `api_base`, `api_key`)",
    )
    model: str | None = Field(
        default=None, description="litellm: e.g. openai/text-embedding-3-small"
    )
    api_base: str | None = None
    api_key: SecretStr | None = None
    embedders: int = Field(default=1, ge=0, le=64, description="embedder actors (num_cpus=1 each)")
    batch_size: int = Field(default=64, ge=1, le=2048)
    shards: int = Field(default=2, ge=1, le=256, description="KnowledgeShard actors")
    chunk_size: int = Field(default=600, ge=50, le=20_000, description="characters per chunk")
    chunk_overlap: int = Field(default=80, ge=0, le=5_000)
    hnsw_threshold: int = Field(
        default=20_000, ge=0, description="a shard with more chunks uses HNSW, else exact"
    )
    top_k: int = Field(default=5, ge=1, le=100)
    mode: Literal["tool", "context", "both", "off"] = Field(
        default="tool",
        description="tool: the model calls search_knowledge; context: top-k chunks are "
        "added to every prompt; both; off",
    )
    default: list[str] = Field(
        default_factory=list, description="knowledge bases used when a persona names none"
    )
    max_document_mb: float = Field(default=20.0, gt=0, le=1024)
    fetch_timeout_s: float = Field(default=30.0, gt=0, description="adding a document by URL")

    @model_validator(mode="after")
    def _fits(self) -> KnowledgeConfig:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        if self.embedder == "litellm" and not self.model:
            raise ValueError("the litellm embedder needs `model`")
        return self


class TtsConfig(_Section):
    """Text to speech: the TTS worker pool."""

    backend: Literal["piper", "espeak", "litellm", "off"] = Field(
        default="piper",
        description="piper: a neural voice packaged on PyPI, offline; espeak: espeak-ng "
        "(light, robotic; needs the espeak-ng program); litellm: an OpenAI-compatible "
        "speech API (`model`, `api_base`, `api_key`); off",
    )
    workers: int = Field(default=1, ge=0, le=64, description="TTS actors (num_cpus=1 each)")
    voice: str | None = Field(
        default=None,
        max_length=128,
        description="default voice: piper: a voice name or .onnx path (default: the "
        "packaged en_US-joe-medium); espeak: e.g. en-us; litellm: e.g. alloy",
    )
    speed: float = Field(default=1.0, ge=0.25, le=4.0, description="speaking rate")
    model: str | None = Field(default=None, description="litellm: e.g. openai/tts-1")
    api_base: str | None = None
    api_key: SecretStr | None = None

    @model_validator(mode="after")
    def _fits(self) -> TtsConfig:
        if self.backend == "litellm" and not self.model:
            raise ValueError("the litellm TTS backend needs `model`")
        return self


class SttConfig(_Section):
    """Speech to text: the STT worker pool."""

    backend: Literal["whisper", "litellm", "off"] = Field(
        default="whisper",
        description="whisper: faster-whisper with the packaged Whisper tiny.en model, "
        "offline; litellm: an OpenAI-compatible transcription API; off",
    )
    workers: int = Field(default=1, ge=0, le=64, description="STT actors (num_cpus=1 each)")
    model: str | None = Field(
        default=None,
        description="whisper: a CTranslate2 model folder (default: the packaged tiny.en); "
        "litellm: e.g. openai/whisper-1",
    )
    language: str | None = Field(
        default=None, max_length=16, description="e.g. en; null = detect (tiny.en: en)"
    )
    api_base: str | None = None
    api_key: SecretStr | None = None

    @model_validator(mode="after")
    def _fits(self) -> SttConfig:
        if self.backend == "litellm" and not self.model:
            raise ValueError("the litellm STT backend needs `model`")
        return self


class SpeechConfig(_Section):
    """Voice in (transcribed, then handled as text) and voice out (spoken replies)."""

    tts: TtsConfig = Field(default_factory=TtsConfig)
    stt: SttConfig = Field(default_factory=SttConfig)
    reply: Literal["never", "always", "on_request", "probability"] = Field(
        default="on_request",
        description="when replies are spoken: never; always (unless `/tts off`); "
        "on_request (after `/tts on` in that chat); probability (that share of replies)",
    )
    probability: float = Field(default=0.3, ge=0, le=1, description="with reply: probability")
    answer_voice_with_voice: bool = Field(
        default=True, description="a voice message gets a spoken reply (unless never or /tts off)"
    )
    max_chars: int = Field(
        default=1000, ge=1, le=20_000, description="longer replies are sent as text only"
    )
    max_audio_s: float = Field(
        default=120.0, gt=0, le=3600, description="longer voice messages are refused"
    )
    max_audio_mb: float = Field(default=10.0, gt=0, le=200, description="voice message size cap")
    timeout_s: float = Field(default=60.0, gt=0, le=600, description="one TTS or STT job")


class AgentConfig(_Section):
    """The agent loop and context management."""

    max_steps: int = Field(default=8, ge=1, le=64, description="LLM calls per turn, at most")
    tool_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    max_tool_result_chars: int = Field(
        default=8000, ge=100, description="a longer tool result is cut (and says so)"
    )
    default_persona: str | None = None
    compress_at: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="compress when a request nears this fraction of the model's context window",
    )
    compression: Literal["summarize", "truncate"] = "summarize"
    keep_recent_turns: int = Field(default=4, ge=0, le=100)
    reply_reserve_tokens: int = Field(default=1024, ge=0, description="room kept for the answer")


class RateLimitConfig(_Section):
    per_minute: float | None = Field(default=None, gt=0, description="messages per session")
    burst: int = Field(default=5, ge=1)
    mode: Literal["reply", "queue"] = Field(
        default="reply", description="reply: answer 'slow down'; queue: wait for a token"
    )


class AccessConfig(_Section):
    """Who may use the bot, and how fast."""

    admins: list[str] = Field(
        default_factory=list, description="<platform>:<user id>, e.g. webchat:alice"
    )
    allow: list[str] = Field(
        default_factory=list,
        description="session keys (or prefixes ending in *) allowed; empty = everyone",
    )
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    blocked_words: list[str] = Field(default_factory=list, description="case-insensitive")


class RuntimeConfig(_Section):
    namespace: str = Field(default="astr-ray", min_length=1)
    placement: Literal["auto", "resources", "any"] = Field(
        default="auto",
        description="resources: hosts need the `session_hosts` resource and adapters "
        "`adapters`; any: no custom resources; auto: resources if the cluster has them",
    )
    supervise_interval_s: float = Field(default=1.0, gt=0)
    restart_backoff_s: float = Field(default=1.0, gt=0)
    restart_backoff_max_s: float = Field(default=60.0, gt=0)
    ray_dashboard_port: int = Field(default=8265, ge=0, le=65_535)
    config_file: str | None = Field(
        default=None,
        description="set when the config is loaded from a file: the file the dashboard "
        "edits (not written in the file itself)",
    )


class Config(_Section):
    """The whole configuration. ``data_dir`` is where SQLite and plugins live."""

    data_dir: Path = Path("data")
    bot_name: str = "astr-ray"
    system_prompt: str = "You are a helpful assistant."
    providers: list[ProviderConfig] = Field(default_factory=list)
    fallback: list[str] = Field(default_factory=list, description="provider ids in order")
    store: StoreConfig = Field(default_factory=StoreConfig)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    webchat: WebChatConfig = Field(default_factory=WebChatConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    personas: list[PersonaConfig] = Field(default_factory=list)
    access: AccessConfig = Field(default_factory=AccessConfig)
    platforms: list[PlatformConfig] = Field(default_factory=list)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    mcp: McpConfig = Field(default_factory=McpConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    speech: SpeechConfig = Field(default_factory=SpeechConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _check_providers(self) -> Config:
        ids = [p.id for p in self.providers]
        seen: set[str] = set()
        for i, pid in enumerate(ids):
            if pid in seen:
                raise _KeyError(f"providers[{i}].id", f"duplicate provider id {pid!r}")
            seen.add(pid)
        for i, pid in enumerate(self.fallback):
            if pid not in seen:
                raise _KeyError(f"fallback[{i}]", f"unknown provider id {pid!r}")
        platform_ids = [p.id for p in self.platforms]
        for i, pid in enumerate(platform_ids):
            if pid in platform_ids[:i] or pid == "webchat":
                raise _KeyError(f"platforms[{i}].id", f"platform id {pid!r} is taken")
        names = [p.name for p in self.personas]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _KeyError(f"personas[{i}].name", f"duplicate persona {name!r}")
        default = self.agent.default_persona
        if default is not None and default not in names:
            raise _KeyError("agent.default_persona", f"no persona named {default!r} in `personas`")
        return self

    @property
    def plugins_dir(self) -> Path:
        return self.plugins.dir or self.data_dir / "plugins"

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite+aiosqlite:///{(self.data_dir / 'astr_ray.db').resolve()}"

    def provider_chain(self) -> list[ProviderConfig]:
        """Enabled providers in fallback order: ``fallback`` first, then the rest as listed."""
        by_id = {p.id: p for p in self.providers if p.enabled}
        order = [pid for pid in self.fallback if pid in by_id]
        order += [p.id for p in self.providers if p.enabled and p.id not in order]
        return [by_id[pid] for pid in order]

    def to_transport(self) -> dict[str, Any]:
        """A dict that rebuilds this config in another process, secrets included.

        Only for passing between our own actors; never log or serve it.
        """
        data = self.model_dump(mode="python")
        return _reveal(data)


class _KeyError(ValueError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _expand_env(value: Any, path: str) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in strings; unknown names are an error."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set", path=path)

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


_PLATFORM_TAGS = frozenset({"onebot", "telegram", "discord", "slack"})


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if i >= 2 and loc[i - 2] == "platforms" and part in _PLATFORM_TAGS:
            continue  # the union's tag: platforms[0].telegram.token -> platforms[0].token
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_config(data: Any, *, source: str = "<config>") -> Config:
    """Validate a loaded YAML document; raise ``ConfigError`` with the first bad key's path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            "the config must be a mapping of keys to values", path="<root>", file=source
        )
    data = _expand_env(data, "")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx_error = err.get("ctx", {}).get("error")
        if isinstance(ctx_error, _KeyError):
            raise ConfigError(ctx_error.reason, path=ctx_error.path, file=source) from None
        path = _loc_to_path(tuple(err["loc"])) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `astr-ray init` for every key)"
        raise ConfigError(msg, path=path, file=source) from None


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> Config:
    """Load and validate the YAML file at ``path``; a missing file gives the defaults."""
    p = Path(path)
    if not p.exists():
        return parse_config({}, source=str(p))
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML: {problem}", path=where, file=str(p)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", file=str(p)) from None
    cfg = parse_config(data, source=str(p))
    cfg = cfg.model_copy(
        update={"runtime": cfg.runtime.model_copy(update={"config_file": str(p.resolve())})}
    )
    if not cfg.data_dir.is_absolute():
        # A relative data_dir is relative to the folder that holds data/config.yaml's parent,
        # i.e. where the user runs astr-ray; keep it as given but absolute for actors.
        cfg = cfg.model_copy(update={"data_dir": cfg.data_dir.resolve()})
    return cfg


_TEMPLATE = """\
# astr-ray configuration. Every key is optional; the values below are the defaults
# unless marked "example". Secrets may be written as ${ENV_VAR} or ${ENV_VAR:-default}.

# Where the SQLite database (and later plugins, knowledge bases) live.
data_dir: data
bot_name: astr-ray
system_prompt: You are a helpful assistant.

# LLM providers, tried in `fallback` order (then in the order listed here).
# `model` is a litellm model string; `openai/<name>` talks to any OpenAI-compatible
# server at `api_base` (Ollama, vLLM, LM Studio, OpenAI itself...).
providers: []
#  - id: local                          # example
#    model: openai/qwen2.5:7b
#    api_base: http://127.0.0.1:11434/v1
#    api_key: ${OPENAI_API_KEY:-none}
#    transport: auto                    # auto | native | litellm
#    max_concurrency: 64                # calls in flight at once, all hosts together
#    requests_per_minute: null          # rate limit, null = none
#    timeout_s: 60
#    max_retries: 2                     # on 429 / 5xx / time-outs, honouring Retry-After
fallback: []                            # e.g. [local, openai]

store:
  url: ""            # empty: SQLite in data_dir; or postgresql+asyncpg://user:pw@host/db

sessions:
  hosts: 2                   # SessionHost actors (one or two per 2-core node)
  hosts_per_node: null       # cluster: this many hosts per node marked `session_hosts`
  shards: 1024               # fixed number of session shards
  idle_timeout_s: 600        # passivate a session idle this long
  max_active_per_host: 10000 # LRU cap of live sessions per host
  mailbox_size: 32           # queued messages per session before "busy"
  history_turns: 50          # turns of history sent to the LLM
  turn_timeout_s: 180
  batch_window_ms: 2         # adapter->host batching window under load
  batch_hold_ms: 10          # a finished reply waits at most this for its batch-mates
  stream_flush_ms: 80        # coalesce streamed tokens into chunks this often

webchat:
  enabled: true
  host: 127.0.0.1
  port: 6186
  token: "{token}"           # required by the web chat API and `astr-ray chat`
  max_message_chars: 16000

dashboard:                   # the web console; log in as admin (astr-ray password)
  enabled: true
  host: 127.0.0.1
  port: 6185
  secure_cookies: false      # true when served over HTTPS (behind a proxy)

plugins:
  dir: null                  # default: <data_dir>/plugins
  handler_timeout_s: 30      # every plugin handler and hook, each call
  # watch: true               # reload plugins on file change (default: on in `astr-ray dev`)
  disabled: []               # plugins off until enabled (/plugin on <name>)
  settings: {}               # per plugin, e.g. weather: {api_url: "https://..."}

agent:
  max_steps: 8               # LLM calls per turn (tool rounds + the answer)
  tool_timeout_s: 30
  default_persona: null      # a name from `personas`
  compress_at: 0.8           # fraction of the model's context window
  compression: summarize     # summarize | truncate
  keep_recent_turns: 4       # turns kept verbatim when older ones are summarized

personas: []
#  - name: pirate                       # example
#    system_prompt: You talk like a pirate.
#    begin_dialogs: [["Who are you?", "Arr, a pirate bot!"]]
#    tools: null                        # null = every tool; or a list of tool names

access:
  admins: []                 # <platform>:<user id>, e.g. webchat:alice
  allow: []                  # session keys allowed (prefix*); empty = everyone
  rate_limit:
    per_minute: null         # messages per session per minute; null = unlimited
    burst: 5
    mode: reply              # reply ("slow down") | queue (wait)
  blocked_words: []

platforms: []               # chat accounts besides the web chat; `type` picks one
#  - id: qq                             # QQ through NapCat/Lagrange (OneBot v11)
#    mode: reverse                      # they connect to ws://host:port/onebot/v11/ws
#    host: 127.0.0.1
#    port: 6199
#    access_token: ${ONEBOT_TOKEN}
#    wake: {mention: true, reply: true, prefixes: []}   # groups; private chats always
#  - id: tg
#    type: telegram
#    token: ${TELEGRAM_TOKEN}
#    mode: polling                      # or webhook: public_url, secret_token, port
#  - id: dc
#    type: discord
#    token: ${DISCORD_TOKEN}            # needs the Message Content intent
#  - id: sl
#    type: slack
#    mode: socket                       # or events: signing_secret, port
#    bot_token: ${SLACK_BOT_TOKEN}
#    app_token: ${SLACK_APP_TOKEN}
#    stream: true                       # (telegram, discord, slack) answer by editing

sandbox:                     # where model-written code runs (run_python, run_shell...)
  backend: auto              # auto (docker, else bwrap) | docker | bwrap | none |
                             # subprocess (NOT isolated: only on purpose)
  executors: 2
  timeout_s: 30
  memory_mb: 512
  network: false
  admin_only: true

mcp:
  allowed_commands: []       # executables stdio MCP servers may be started with
  servers: []
#  - name: files                        # example
#    transport: stdio                   # stdio | sse | http
#    command: /usr/bin/npx
#    args: ["-y", "@modelcontextprotocol/server-filesystem", "/srv/shared"]

knowledge:                   # knowledge bases (astr-ray kb ..., /api/kb)
  embedder: minilm           # minilm (packaged ONNX model, offline) | static | litellm
  embedders: 1               # embedder actors, one CPU each; 0 turns knowledge bases off
  shards: 2                  # KnowledgeShard actors (FAISS + BM25)
  chunk_size: 600            # characters
  chunk_overlap: 80
  top_k: 5
  mode: tool                 # tool (search_knowledge) | context (into every prompt) | both | off
  default: []                # bases every persona reads unless it names its own
#  model: openai/text-embedding-3-small  # with embedder: litellm (+ api_base, api_key)

speech:                      # voice messages in (STT) and spoken replies (TTS)
  tts:
    backend: piper           # piper (packaged neural voice, offline) | espeak | litellm | off
    workers: 1               # TTS actors, one CPU each
    voice: null              # default voice; a persona's `voice` overrides it
  stt:
    backend: whisper         # whisper (packaged tiny.en, offline) | litellm | off
    workers: 1               # STT actors, one CPU each
    language: null
  reply: on_request          # never | always | on_request (/tts on) | probability
  probability: 0.3           # with reply: probability
  answer_voice_with_voice: true
  max_chars: 1000            # longer replies are not spoken
  max_audio_s: 120           # longer voice messages are refused

runtime:
  namespace: astr-ray
  placement: auto            # resources | any | auto (use custom resources if present)
  supervise_interval_s: 1
  restart_backoff_s: 1
  restart_backoff_max_s: 60
  ray_dashboard_port: 8265
"""


def default_config_text(token: str | None = None) -> str:
    """The commented default config, with a fresh random web chat token."""
    return _TEMPLATE.replace("{token}", token or secrets.token_urlsafe(24))


def write_default_config(path: Path | str = DEFAULT_CONFIG_PATH, *, force: bool = False) -> Path:
    """Write the default config; refuses to overwrite an existing file unless ``force``."""
    p = Path(path)
    if p.exists() and not force:
        raise ConfigError("config file exists already (use --force to overwrite)", file=str(p))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(default_config_text(), encoding="utf-8")
    p.chmod(0o600)
    return p
