"""The one exception tree of astr-ray.

Every error the runtime raises on purpose is an ``AstrRayError``. Families follow the
boundaries of the system; control-flow signals are kept apart from failures::

    AstrRayError                      root: carries ``context`` (session, actor, provider...)
    ├── ConfigError                   a config file or value is invalid (has ``path``)
    ├── MessageFormatError            a message/event dict that does not fit the model
    ├── StoreError                    the database failed or refused a write
    │   └── DuplicateEventError       this platform event id was already committed
    ├── ProviderError                 an LLM provider failed
    │   ├── ProviderUnavailableError  retries and fallbacks exhausted: no provider answered
    │   └── ProviderRetryableError    429 / 5xx / time-out / connection: worth retrying
    ├── SessionError                  a session host could not take or finish a turn
    │   ├── SessionBusyError          the session's mailbox or the host is full (backpressure)
    │   └── WrongShardError           the host does not own that shard at that epoch (re-route)
    ├── PlatformError                 a platform adapter failed (connect, send, payload)
    ├── PluginError                   a plugin failed to load or raised in a handler
    ├── SandboxError                  a code-execution backend failed or refused a run
    ├── McpError                      an MCP server could not be started, reached or used
    └── SpeechError                   a TTS or STT backend failed, or speech is off
        └── BadAudioError             audio that cannot be decoded, or is too long or large

    ControlSignal                     not failures: flow control inside the pipeline
    └── StopTurn                      end the current turn now (e.g. ``/stop``)

Errors read well in a log line: ``str(err)`` is the message followed by its context as
``key=value`` pairs. Secrets never go into the context.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AstrRayError",
    "BadAudioError",
    "ConfigError",
    "ControlSignal",
    "DuplicateEventError",
    "McpError",
    "MessageFormatError",
    "PlatformError",
    "PluginError",
    "ProviderError",
    "ProviderRetryableError",
    "ProviderUnavailableError",
    "SandboxError",
    "SessionBusyError",
    "SessionError",
    "SpeechError",
    "StopTurn",
    "StoreError",
    "WrongShardError",
]


class AstrRayError(Exception):
    """Root of every deliberate astr-ray error.

    ``context`` holds what a reader of the log needs to place the error (session key,
    actor name, provider id...). It is kept as keyword arguments so that errors survive
    pickling across Ray process boundaries.
    """

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = context

    def __str__(self) -> str:
        if not self.context:
            return self.message
        ctx = " ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({ctx})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle by ``args``; keep the keyword context too.
        return (_rebuild, (type(self), self.message, self.context))


def _rebuild(cls: type[AstrRayError], message: str, context: dict[str, Any]) -> AstrRayError:
    return cls(message, **context)


class ConfigError(AstrRayError):
    """A config file or value is invalid. ``path`` is the dotted key path (``a.b[0].c``)."""

    def __init__(self, message: str, path: str = "", **context: Any) -> None:
        super().__init__(message, **context)
        self.path = path

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        base = f"{where}{self.message}"
        if not self.context:
            return base
        return f"{base} ({' '.join(f'{k}={v}' for k, v in self.context.items())})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_config, (self.message, self.path, self.context))


def _rebuild_config(message: str, path: str, context: dict[str, Any]) -> ConfigError:
    return ConfigError(message, path, **context)


class MessageFormatError(AstrRayError):
    """An event or reply dict that does not fit the message model."""


class StoreError(AstrRayError):
    """The database failed or refused a write."""


class DuplicateEventError(StoreError):
    """The platform event was already committed; its stored reply is authoritative."""


class ProviderError(AstrRayError):
    """An LLM provider failed."""


class ProviderRetryableError(ProviderError):
    """A failure worth retrying: rate limited, server error, time-out, connection refused.

    ``retry_after`` is the delay the provider asked for (seconds), when it said one.
    """

    def __init__(self, message: str, retry_after: float | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_retryable, (self.message, self.retry_after, self.context))


def _rebuild_retryable(
    message: str, retry_after: float | None, context: dict[str, Any]
) -> ProviderRetryableError:
    return ProviderRetryableError(message, retry_after, **context)


class ProviderUnavailableError(ProviderError):
    """Every provider in the fallback chain failed (after its retries)."""


class SessionError(AstrRayError):
    """A session host could not take or finish a turn."""


class SessionBusyError(SessionError):
    """Backpressure: the session's mailbox or the host's ingress is full."""


class WrongShardError(SessionError):
    """The host does not own the shard at the caller's epoch; refresh the route and retry."""


class PlatformError(AstrRayError):
    """A platform adapter failed to connect, send, or parse a payload."""


class PluginError(AstrRayError):
    """A plugin failed to load, or raised or timed out in a handler."""


class SandboxError(AstrRayError):
    """A code-execution backend failed."""


class ControlSignal(Exception):
    """Base of control-flow signals. Never logged as failures."""


class StopTurn(ControlSignal):
    """End the current turn now."""


class KnowledgeError(AstrRayError):
    """A knowledge-base request was refused (an unknown base, a document that is too
    large, malformed or of an unsupported kind) or its embedding or search failed."""


class McpError(AstrRayError):
    """An MCP server could not be started (e.g. a command outside the allow-list),
    reached, or answered a tool call with an error."""


class SpeechError(AstrRayError):
    """A TTS or STT backend failed, could not be loaded, or speech is turned off."""


class BadAudioError(SpeechError):
    """The audio itself is the problem: not decodable, empty, too long or too large."""
