"""The decorators a plugin uses, and the plain-data description of what it registered.

    from astr_ray.plugins import Context, Plugin

    plugin = Plugin()

    @plugin.command("weather", aliases=("wx",), help="current weather")
    async def weather(ctx: Context, city: str, days: int = 1) -> str:
        return f"{city}: sunny for {days} days"

    @plugin.tool()
    async def get_time(ctx: Context, timezone: str = "UTC") -> str:
        '''The current time.

        Args:
            timezone: an IANA zone name
        '''

A handler's arguments after ``ctx`` are its typed parameters: a command parses them
from the message (a clear usage error when they do not fit), a tool gets them from the
LLM (validated against the JSON schema built from the type hints and docstring).

``PluginSpec`` is what a plugin registered, as data: the host builds its command table,
tool list and hook chain from it, whether the plugin's code runs in the host or in its
own actor process (``isolated: true``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from astr_ray.errors import PluginError

__all__ = [
    "HOOKS",
    "CommandGroup",
    "CommandSpec",
    "Filters",
    "HookName",
    "HookSpec",
    "MessageSpec",
    "Param",
    "Plugin",
    "PluginSpec",
    "RegexSpec",
    "ToolSpec",
    "UsageError",
    "parse_args",
]

HookName = Literal["loaded", "unloaded", "before_llm", "after_llm", "decorate", "after_send"]
HOOKS: tuple[str, ...] = ("loaded", "unloaded", "before_llm", "after_llm", "decorate", "after_send")

Handler = Callable[..., Any]

_SCALARS: dict[Any, str] = {str: "str", int: "int", float: "float", bool: "bool"}
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class UsageError(Exception):
    """The message did not fit the command's parameters; the text says how to use it."""


@dataclass(frozen=True)
class Filters:
    """Where a handler applies. Empty tuples mean everywhere."""

    platforms: tuple[str, ...] = ()
    chat_types: tuple[str, ...] = ()
    admin: bool = False

    def allows(self, platform: str, chat_type: str) -> bool:
        return (not self.platforms or platform in self.platforms) and (
            not self.chat_types or chat_type in self.chat_types
        )


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # str | int | float | bool
    required: bool
    default: Any = None
    rest: bool = False  # the last str parameter takes the rest of the line

    def usage(self) -> str:
        label = self.name if self.type == "str" else f"{self.name}:{self.type}"
        if self.rest:
            label += "..."
        return f"<{label}>" if self.required else f"[{label}]"


@dataclass(frozen=True)
class CommandSpec:
    id: str
    name: str
    aliases: tuple[str, ...]
    group: str | None
    help: str
    params: tuple[Param, ...]
    filters: Filters

    @property
    def usage(self) -> str:
        head = f"/{self.group} {self.name}" if self.group else f"/{self.name}"
        return " ".join([head, *(p.usage() for p in self.params)])


@dataclass(frozen=True)
class RegexSpec:
    id: str
    pattern: str
    flags: int
    filters: Filters


@dataclass(frozen=True)
class MessageSpec:
    id: str
    filters: Filters


@dataclass(frozen=True)
class ToolSpec:
    id: str
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class HookSpec:
    id: str
    hook: str
    priority: int = 0


@dataclass(frozen=True)
class PluginSpec:
    """Everything a plugin registered, as picklable data."""

    commands: tuple[CommandSpec, ...] = ()
    groups: dict[str, str] = field(default_factory=dict)  # group name -> help
    regexes: tuple[RegexSpec, ...] = ()
    messages: tuple[MessageSpec, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    hooks: tuple[HookSpec, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PluginSpec:
        def filters(d: dict[str, Any]) -> Filters:
            return Filters(tuple(d["platforms"]), tuple(d["chat_types"]), bool(d["admin"]))

        return cls(
            commands=tuple(
                CommandSpec(
                    c["id"],
                    c["name"],
                    tuple(c["aliases"]),
                    c["group"],
                    c["help"],
                    tuple(Param(**p) for p in c["params"]),
                    filters(c["filters"]),
                )
                for c in data["commands"]
            ),
            groups=dict(data["groups"]),
            regexes=tuple(
                RegexSpec(r["id"], r["pattern"], r["flags"], filters(r["filters"]))
                for r in data["regexes"]
            ),
            messages=tuple(MessageSpec(m["id"], filters(m["filters"])) for m in data["messages"]),
            tools=tuple(ToolSpec(**t) for t in data["tools"]),
            hooks=tuple(HookSpec(**h) for h in data["hooks"]),
        )


_TOKEN = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'[^']*'|\S+)""")


def _words(text: str, limit: int) -> tuple[list[str], str]:
    """Up to ``limit`` words (quotes group: "New York"), and the raw rest of the line."""
    words: list[str] = []
    pos = 0
    while len(words) < limit:
        m = _TOKEN.match(text, pos)
        if m is None:
            break
        token = m.group(1)
        if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
            token = token[1:-1]
            if m.group(1)[0] == '"':
                token = re.sub(r"\\(.)", r"\1", token)
        words.append(token)
        pos = m.end()
    return words, text[pos:].strip()


def parse_args(params: tuple[Param, ...], text: str) -> dict[str, Any]:
    """Bind a command's argument text to its parameters; ``UsageError`` says what is
    wrong. Quotes group words ("New York"); the last ``str`` parameter takes the rest of
    the line exactly as typed."""
    fixed = params[:-1] if params and params[-1].rest else params
    words, rest = _words(text, len(fixed))
    out: dict[str, Any] = {}
    for i, p in enumerate(fixed):
        if i >= len(words):
            if p.required:
                raise UsageError(f"missing <{p.name}>")
            out[p.name] = p.default
            continue
        out[p.name] = _convert(p, words[i])
    if len(fixed) < len(params):
        last = params[-1]
        if rest:
            out[last.name] = rest
        elif last.required:
            raise UsageError(f"missing <{last.name}>")
        else:
            out[last.name] = last.default
    elif rest:
        raise UsageError(f"too many arguments: {rest!r}")
    return out


def _convert(p: Param, value: str) -> Any:
    try:
        if p.type == "int":
            return int(value)
        if p.type == "float":
            return float(value)
        if p.type == "bool":
            low = value.lower()
            if low in ("1", "true", "yes", "on", "y"):
                return True
            if low in ("0", "false", "no", "off", "n"):
                return False
            raise ValueError(value)
    except ValueError:
        raise UsageError(f"<{p.name}> must be {_ARTICLE[p.type]}, not {value!r}") from None
    return value


_ARTICLE = {"int": "a whole number", "float": "a number", "bool": "yes or no", "str": "text"}


def _hints(fn: Handler) -> dict[str, Any]:
    try:
        return get_type_hints(fn, include_extras=True)
    except Exception as exc:  # a hint that does not resolve is the plugin author's bug
        raise PluginError(f"cannot read the type hints of {fn.__qualname__}: {exc}") from None


def _handler_params(fn: Handler) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise PluginError(f"{fn.__qualname__} must take the context as its first argument")
    return params[1:]


def command_params(fn: Handler) -> tuple[Param, ...]:
    hints = _hints(fn)
    out: list[Param] = []
    params = _handler_params(fn)
    for i, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise PluginError(f"{fn.__qualname__}: *args/**kwargs are not command parameters")
        typ = hints.get(p.name, str)
        kind = _SCALARS.get(typ)
        if kind is None:
            raise PluginError(
                f"{fn.__qualname__}: parameter {p.name!r} must be str, int, float or bool"
            )
        required = p.default is inspect.Parameter.empty
        default = None if required else p.default
        out.append(
            Param(p.name, kind, required, default, rest=kind == "str" and i == len(params) - 1)
        )
    return tuple(out)


def parse_docstring(fn: Handler) -> tuple[str, dict[str, str]]:
    """The summary (text before ``Args:``) and each argument's description."""
    doc = inspect.getdoc(fn) or ""
    summary_lines: list[str] = []
    args: dict[str, str] = {}
    current: str | None = None
    in_args = False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            in_args = True
            continue
        if in_args:
            if stripped.endswith(":") and stripped.lower() in ("returns:", "raises:", "example:"):
                break
            m = re.match(r"^(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", stripped)
            if m:
                current = m.group(1)
                args[current] = m.group(2)
            elif current and stripped:
                args[current] += " " + stripped
        else:
            summary_lines.append(stripped)
    summary = " ".join(s for s in summary_lines if s).strip()
    return summary, args


def tool_model(fn: Handler) -> type[BaseModel]:
    """The pydantic model of a tool's arguments (unknown arguments refused)."""
    hints = _hints(fn)
    _, docs = parse_docstring(fn)
    fields: dict[str, Any] = {}
    from pydantic import Field

    for p in _handler_params(fn):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise PluginError(f"{fn.__qualname__}: tools cannot take *args/**kwargs")
        typ = hints.get(p.name, str)
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (typ, Field(default, description=docs.get(p.name) or None))
    try:
        model: type[BaseModel] = create_model(
            f"{fn.__name__}_args", __config__=ConfigDict(extra="forbid"), **fields
        )
        model.model_json_schema()
    except Exception as exc:
        raise PluginError(
            f"tool {fn.__qualname__}: its type hints have no JSON schema: {exc}"
        ) from None
    return model


def check_tool_args(model: type[BaseModel], args: Any) -> dict[str, Any]:
    """Validate the LLM's arguments; ``ValueError`` with a message the LLM can act on."""
    if not isinstance(args, dict):
        raise ValueError("arguments must be a JSON object")
    try:
        validated = model.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"invalid arguments: {problems}") from None
    return {k: getattr(validated, k) for k in type(validated).model_fields}


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


class Plugin:
    """A plugin's registrations. Create one per plugin module as ``plugin = Plugin()``."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.tool_models: dict[str, type[BaseModel]] = {}
        self._commands: list[CommandSpec] = []
        self._groups: dict[str, str] = {}
        self._regexes: list[RegexSpec] = []
        self._messages: list[MessageSpec] = []
        self._tools: list[ToolSpec] = []
        self._hooks: list[HookSpec] = []

    def _register(self, kind: str, fn: Handler) -> str:
        hid = f"{kind}:{fn.__qualname__}"
        if hid in self.handlers:
            raise PluginError(f"{fn.__qualname__} is registered twice as a {kind}")
        self.handlers[hid] = fn
        return hid

    def command(
        self,
        name: str,
        *,
        aliases: tuple[str, ...] | list[str] = (),
        help: str = "",
        platforms: tuple[str, ...] | list[str] = (),
        chat_types: tuple[str, ...] | list[str] = (),
        admin: bool = False,
        _group: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """``/name args``; the handler's return value (text) is the reply."""
        for n in (name, *aliases):
            if not _NAME.match(n):
                raise PluginError(f"command name {n!r} must match {_NAME.pattern}")

        def register(fn: Handler) -> Handler:
            hid = self._register("command", fn)
            doc = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
            self._commands.append(
                CommandSpec(
                    hid,
                    name,
                    tuple(aliases),
                    _group,
                    help or doc,
                    command_params(fn),
                    Filters(tuple(platforms), tuple(chat_types), admin),
                )
            )
            return fn

        return register

    def group(self, name: str, *, help: str = "") -> CommandGroup:
        """A command group: ``/name sub args`` (e.g. ``/todo add milk``)."""
        if not _NAME.match(name):
            raise PluginError(f"group name {name!r} must match {_NAME.pattern}")
        self._groups[name] = help
        return CommandGroup(self, name)

    def regex(
        self,
        pattern: str,
        *,
        flags: int = 0,
        platforms: tuple[str, ...] | list[str] = (),
        chat_types: tuple[str, ...] | list[str] = (),
        admin: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Messages matching ``pattern`` (``re.search``); the handler gets
        ``(ctx, match_groups: list[str])``. Returning None lets the message go on."""
        try:
            re.compile(pattern, flags)
        except re.error as exc:
            raise PluginError(f"bad regex {pattern!r}: {exc}") from None

        def register(fn: Handler) -> Handler:
            hid = self._register("regex", fn)
            self._regexes.append(
                RegexSpec(hid, pattern, flags, Filters(tuple(platforms), tuple(chat_types), admin))
            )
            return fn

        return register

    def on_message(
        self,
        *,
        platforms: tuple[str, ...] | list[str] = (),
        chat_types: tuple[str, ...] | list[str] = (),
        admin: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Every message (that is not a command) where the filters allow; returning text
        answers it (the LLM is skipped), returning None lets it go on."""

        def register(fn: Handler) -> Handler:
            hid = self._register("message", fn)
            self._messages.append(
                MessageSpec(hid, Filters(tuple(platforms), tuple(chat_types), admin))
            )
            return fn

        return register

    def tool(
        self, name: str | None = None, *, description: str | None = None
    ) -> Callable[[Handler], Handler]:
        """An LLM tool. Its JSON schema comes from the type hints and the docstring's
        ``Args:`` section; the return value (text, or anything JSON-able) goes back to
        the model."""

        def register(fn: Handler) -> Handler:
            tool_name = name or fn.__name__
            if not re.match(r"^[A-Za-z0-9_-]{1,64}$", tool_name):
                raise PluginError(f"tool name {tool_name!r} must be 1-64 of [A-Za-z0-9_-]")
            model = tool_model(fn)
            summary, _ = parse_docstring(fn)
            hid = self._register("tool", fn)
            self.tool_models[hid] = model
            self._tools.append(ToolSpec(hid, tool_name, description or summary, _schema(model)))
            return fn

        return register

    def on(self, hook: HookName, *, priority: int = 0) -> Callable[[Handler], Handler]:
        """A lifecycle or pipeline hook (see ``HOOKS``); higher ``priority`` runs first.

        ``before_llm(ctx, request)``: ``request`` is ``{"system_prompt", "messages"}``.
        ``after_llm(ctx, response)`` / ``decorate(ctx, reply)``: ``{"text"}``. These three
        may change the dict in place or return a new one. ``after_send(ctx, reply)``,
        ``loaded(ctx)`` and ``unloaded(ctx)`` are notifications."""
        if hook not in HOOKS:
            raise PluginError(f"unknown hook {hook!r}; hooks are {', '.join(HOOKS)}")

        def register(fn: Handler) -> Handler:
            hid = self._register(f"hook-{hook}", fn)
            self._hooks.append(HookSpec(hid, hook, priority))
            return fn

        return register

    def spec(self) -> PluginSpec:
        return PluginSpec(
            tuple(self._commands),
            dict(self._groups),
            tuple(self._regexes),
            tuple(self._messages),
            tuple(self._tools),
            tuple(self._hooks),
        )


class CommandGroup:
    def __init__(self, plugin: Plugin, name: str) -> None:
        self.plugin = plugin
        self.name = name

    def command(
        self,
        name: str,
        *,
        aliases: tuple[str, ...] | list[str] = (),
        help: str = "",
        platforms: tuple[str, ...] | list[str] = (),
        chat_types: tuple[str, ...] | list[str] = (),
        admin: bool = False,
    ) -> Callable[[Handler], Handler]:
        return self.plugin.command(
            name,
            aliases=aliases,
            help=help,
            platforms=platforms,
            chat_types=chat_types,
            admin=admin,
            _group=self.name,
        )
