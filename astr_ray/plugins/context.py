"""What a plugin handler gets as ``ctx``: the event, its config, storage, and actions.

Capabilities from the manifest are enforced here: ``ask_llm`` needs ``llm``, ``send``
to another session needs ``send``, ``data_dir`` needs ``files``. (``network`` is
declared for the operator to see, not enforced: Python cannot take sockets away from
code, and ``isolated`` contains crashes and blocking, not network access.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from astr_ray.errors import PluginError
from astr_ray.message import Event

__all__ = ["Context", "DialogTimeout", "KeyValue", "Services"]


class Services(Protocol):
    """The runtime behind a context (the session host, or an isolated plugin's actor)."""

    async def send(self, session_key: str, text: str) -> None: ...

    async def ask_llm(self, messages: list[dict[str, Any]]) -> str: ...

    async def kv_get(self, plugin: str, key: str, default: Any = None) -> Any: ...

    async def kv_set(self, plugin: str, key: str, value: Any) -> None: ...

    async def kv_delete(self, plugin: str, key: str) -> bool: ...

    async def kv_keys(self, plugin: str, prefix: str = "") -> list[str]: ...


class DialogTimeout(PluginError):
    """``ctx.ask`` waited longer than its timeout for the user's next message."""


class KeyValue:
    """The plugin's own key-value store (JSON values, 64 KiB each), shared by every
    session and every host."""

    def __init__(self, services: Services, plugin: str) -> None:
        self._s = services
        self._plugin = plugin

    async def get(self, key: str, default: Any = None) -> Any:
        return await self._s.kv_get(self._plugin, key, default)

    async def set(self, key: str, value: Any) -> None:
        await self._s.kv_set(self._plugin, key, value)

    async def delete(self, key: str) -> bool:
        return await self._s.kv_delete(self._plugin, key)

    async def keys(self, prefix: str = "") -> list[str]:
        return await self._s.kv_keys(self._plugin, prefix)


AskHook = Callable[[str, float], Awaitable[Event]]


class Context:
    """One invocation's view of the bot. Not shared between invocations."""

    def __init__(
        self,
        *,
        plugin: str,
        capabilities: tuple[str, ...],
        config: dict[str, Any],
        services: Services,
        data_dir: Path,
        event: Event | None = None,
        is_admin: bool = False,
        ask_hook: AskHook | None = None,
    ) -> None:
        self.plugin = plugin
        self.capabilities = capabilities
        self.config = config
        self.event = event
        self.is_admin = is_admin
        self.kv = KeyValue(services, plugin)
        self._services = services
        self._data_dir = data_dir
        self._ask_hook = ask_hook

    @property
    def session_key(self) -> str | None:
        return self.event.session_key if self.event is not None else None

    @property
    def text(self) -> str:
        return self.event.text if self.event is not None else ""

    def _need(self, capability: str, what: str) -> None:
        if capability not in self.capabilities:
            raise PluginError(
                f"{what} needs the {capability!r} capability in the plugin's manifest",
                plugin=self.plugin,
            )

    @property
    def data_dir(self) -> Path:
        """A folder of the plugin's own (created on first use); needs ``files``."""
        self._need("files", "data_dir")
        self._data_dir.mkdir(parents=True, exist_ok=True)
        return self._data_dir

    async def send(self, session_key: str, text: str) -> None:
        """Send a message to a session now (not as a reply). Another session than the
        current one needs the ``send`` capability."""
        if session_key != self.session_key:
            self._need("send", "sending to another session")
        await self._services.send(session_key, text)

    async def reply(self, text: str) -> None:
        """Send a message to the current session now, before the handler returns."""
        if self.session_key is None:
            raise PluginError("reply() needs a message to reply to", plugin=self.plugin)
        await self._services.send(self.session_key, text)

    async def ask_llm(self, prompt: str, *, system: str | None = None) -> str:
        """One LLM completion (no history, no tools); needs ``llm``."""
        self._need("llm", "ask_llm")
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        return await self._services.ask_llm(messages)

    async def ask(self, question: str, *, timeout: float = 120.0) -> Event:  # noqa: ASYNC109
        """Say ``question`` as the reply to the current message and wait for this user's
        next message in this session, which is returned. The handler's final return
        value then answers that next message. ``DialogTimeout`` if none comes in time;
        ``/stop`` from the user cancels the handler."""
        if self._ask_hook is None:
            raise PluginError(
                "ask() only works in a command or message handler", plugin=self.plugin
            )
        event = await self._ask_hook(question, timeout)
        self.event = event
        return event
