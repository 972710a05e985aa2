"""``ConfigFile``: the YAML config file as the dashboard reads and edits it.

The same pydantic models and the same file as ``load_config``. An edit is a function that
changes a deep copy of the file's data as written (``${ENV}`` references unexpanded); the
result is dumped, read back and validated exactly as ``load_config`` would, and only then
written, atomically::

    raw() ──deepcopy──► edit(data) ──► YAML text ──► safe_load + parse_config ──ok──► temp file
                                                          │ ConfigError              fsync, 0600
                                                          ▼                          os.replace
                                                  nothing written

Contracts:

- **Secrets are write-only.** ``masked()`` / ``mask()`` replace every ``SecretStr`` value
  (anywhere: provider keys, platform tokens, MCP ``env`` and ``headers``) with
  ``{"set": true}``, or ``None`` when unset or empty, and hide the password of any
  ``scheme://user:password@`` URL. On the way in, a secret field that is absent, ``None`` or
  ``{"set": true}`` keeps what the file holds (a ``${ENV}`` reference stays one);
  ``{"set": false}`` clears it; a string replaces it.
- **Untouched values keep their form.** A value sent back equal to what the file's value
  expands to (or to its masked form) keeps the file's text, so a round trip of
  ``masked()`` does not turn ``${ENV}`` references into literals.
- **Comments are not kept** (PyYAML drops them): the first line of a written file says so.
- **Errors** are ``ConfigError`` with the dotted path of the bad key
  (``providers[2].model``); ``ConfigConflictError`` (an id that exists already) and
  ``ConfigNotFoundError`` (no such provider or platform) are its subclasses.
- Updates in one process are serialized by a lock; each one re-reads the file, so edits
  made by hand in between are kept. Every method blocks on file I/O: call it from an
  event loop through ``asyncio.to_thread``.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import re
import tempfile
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from astr_ray.config import (
    Config,
    PlatformConfig,
    ProviderConfig,
    _expand_env,
    load_config,
    parse_config,
)
from astr_ray.errors import ConfigError

__all__ = ["HEADER", "ConfigConflictError", "ConfigFile", "ConfigNotFoundError", "mask"]

HEADER = "# This file is also written by the astr-ray dashboard, which does not keep comments.\n"


class ConfigConflictError(ConfigError):
    """A provider or platform with that id exists already."""


class ConfigNotFoundError(ConfigError):
    """No provider or platform with that id."""


class _Missing:
    """A key that is not there (``None`` is a value)."""


_MISSING: Any = _Missing()

# Fields load_config fills in, never written to the file (a round trip of masked() has them).
_DERIVED = {"runtime": frozenset({"config_file"})}

# The password of scheme://user:password@host (a database URL, an API base with credentials).
_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*):[^@/\s]+@")


def mask(model: BaseModel) -> dict[str, Any]:
    """``model`` (a ``Config`` or any part of one) as JSON-able data without secrets."""
    masked: dict[str, Any] = _mask(model.model_dump(mode="python"))
    return masked


class ConfigFile:
    """The YAML config file as the dashboard edits it: same pydantic models, same file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def load(self) -> Config:
        """The effective config, exactly as ``load_config(path)`` gives it."""
        return load_config(self.path)

    def raw(self) -> dict[str, Any]:
        """The file's data as written (``${ENV}`` unexpanded, secrets in clear; never serve
        it). ``{}`` for a missing or empty file."""
        if not self.path.exists():
            return {}
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(
                f"not valid YAML: {problem}", path=where, file=str(self.path)
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot read config: {exc.strerror}", file=str(self.path)) from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(
                "the config must be a mapping of keys to values", path="<root>", file=str(self.path)
            )
        return data

    def masked(self) -> dict[str, Any]:
        """The effective config as JSON-able data, every secret ``{"set": true}`` or ``None``."""
        return mask(self.load())

    def update(self, edit: Callable[[dict[str, Any]], None]) -> Config:
        """Apply ``edit`` to a deep copy of ``raw()``, validate, write; return the new config.

        ``edit`` mutates the data in place and may raise ``ConfigError`` to refuse. On any
        error the file is left as it was. The write is atomic (a temp file in the same
        folder, fsync, ``os.replace``, mode 0600).
        """
        with self._lock:
            data = copy.deepcopy(self.raw())
            edit(data)
            try:
                body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
            except yaml.YAMLError as exc:
                raise ConfigError(f"cannot write as YAML: {exc}", file=str(self.path)) from None
            text = HEADER + body
            # What is validated is what a later load_config reads: the text as written.
            parse_config(yaml.safe_load(text), source=str(self.path))
            self._write(text)
            # Read back through load_config: what it adds (resolved paths) comes with it.
            return self.load()

    # -- providers ------------------------------------------------------------------

    def upsert_provider(self, data: dict[str, Any], *, create: bool) -> Config:
        """Add (``create``) or change the provider ``data["id"]``.

        A change merges ``data``'s keys into the provider's (keys left out stay; ``null``
        sets a field to null, except for ``api_key``, which it keeps). Creating an id that
        exists is a ``ConfigConflictError``; changing an unknown one a ``ConfigNotFoundError``.
        """

        def edit(raw: dict[str, Any]) -> None:
            _upsert(raw, "providers", "provider", ProviderConfig, data, create)

        return self.update(edit)

    def delete_provider(self, provider_id: str) -> Config:
        """Remove the provider, and its id from ``fallback``."""

        def edit(raw: dict[str, Any]) -> None:
            _remove(raw, "providers", "provider", provider_id)
            fallback = raw.get("fallback")
            if isinstance(fallback, list):
                raw["fallback"] = [pid for pid in fallback if pid != provider_id]

        return self.update(edit)

    def set_fallback(self, order: list[str]) -> Config:
        """Set the fallback order; every id must be a provider's, each listed once."""
        if not isinstance(order, list):
            raise ConfigError("fallback must be a list of provider ids", path="fallback")
        for i, pid in enumerate(order):
            if not isinstance(pid, str):
                raise ConfigError("a provider id must be a string", path=f"fallback[{i}]")
            if pid in order[:i]:
                raise ConfigError(f"provider id {pid!r} is listed twice", path=f"fallback[{i}]")

        def edit(raw: dict[str, Any]) -> None:
            raw["fallback"] = list(order)

        return self.update(edit)

    # -- platforms ------------------------------------------------------------------

    def upsert_platform(self, data: dict[str, Any], *, create: bool) -> Config:
        """Add (``create``) or change the platform ``data["id"]``, as ``upsert_provider``.

        A change that gives another ``type`` replaces the platform's keys instead of
        merging into them, and keeps none of its secrets.
        """

        def edit(raw: dict[str, Any]) -> None:
            _upsert(raw, "platforms", "platform", PlatformConfig, data, create)

        return self.update(edit)

    def delete_platform(self, platform_id: str) -> Config:
        """Remove the platform (chat account)."""

        def edit(raw: dict[str, Any]) -> None:
            _remove(raw, "platforms", "platform", platform_id)

        return self.update(edit)

    # -- sections -------------------------------------------------------------------

    def set_plugin_settings(self, plugin: str, values: dict[str, Any]) -> Config:
        """Replace ``plugins.settings.<plugin>`` with ``values`` (checked against the
        plugin's own schema by the caller, not here)."""
        if not isinstance(plugin, str) or not plugin:
            raise ConfigError("a plugin name must be a non-empty string", path="plugins.settings")
        path = f"plugins.settings.{plugin}"
        if not isinstance(values, dict):
            raise ConfigError("plugin settings must be a mapping of keys to values", path=path)

        def edit(raw: dict[str, Any]) -> None:
            plugins = _mapping(raw, "plugins", "plugins")
            settings = _mapping(plugins, "settings", "plugins.settings")
            settings[plugin] = _merge(values, settings.get(plugin, _MISSING), dict[str, Any])

        return self.update(edit)

    def set_section(self, section: str, value: Any) -> Config:
        """Replace the top-level key ``section`` (``speech``, ``sessions``...) with ``value``.

        Keys left out of ``value`` go back to their defaults, except secrets (see the
        module docstring). An unknown section is a ``ConfigError``.
        """
        field = Config.model_fields.get(section) if isinstance(section, str) else None
        if field is None:
            raise ConfigError("unknown section", path=str(section))
        tp = field.annotation
        if isinstance(value, dict) and section in _DERIVED:
            value = {k: v for k, v in value.items() if k not in _DERIVED[section]}

        def edit(raw: dict[str, Any]) -> None:
            raw[section] = _merge(value, raw.get(section, _MISSING), tp)

        return self.update(edit)

    # -- writing --------------------------------------------------------------------

    def _write(self, text: str) -> None:
        # Through a symlink: replace its target, not the link.
        target = Path(os.path.realpath(self.path))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        except OSError as exc:
            raise ConfigError(f"cannot write config: {exc.strerror}", file=str(self.path)) from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)  # it holds tokens
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise ConfigError(f"cannot write config: {exc.strerror}", file=str(self.path)) from None
        # The rename itself is durable only once the folder is synced.
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# -- editing lists of providers / platforms ------------------------------------------


def _entries(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key)
    if value is None:
        raw[key] = value = []
    if not isinstance(value, list):
        raise ConfigError(f"`{key}` in the file is not a list", path=key)
    return value


def _mapping(parent: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        parent[key] = value = {}
    if not isinstance(value, dict):
        raise ConfigError("not a mapping in the file", path=path)
    return value


def _find(entries: list[Any], entry_id: str) -> int | None:
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and entry.get("id") == entry_id:
            return i
    return None


def _upsert(raw: dict[str, Any], key: str, what: str, tp: Any, data: Any, create: bool) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"a {what} must be a mapping of keys to values", path=key)
    entry_id = data.get("id")
    if not isinstance(entry_id, str) or not entry_id:
        raise ConfigError(f"a {what} needs an `id` (a string)", path=f"{key}.id")
    entries = _entries(raw, key)
    index = _find(entries, entry_id)
    if create:
        if index is not None:
            raise ConfigConflictError(f"{what} {entry_id!r} exists already", path=f"{key}.id")
        entries.append(_merge(data, _MISSING, tp))
        return
    if index is None:
        raise ConfigNotFoundError(f"no {what} {entry_id!r}", path=f"{key}.id")
    old = entries[index]
    old_type = old.get("type", "onebot")
    if key == "platforms" and data.get("type", old_type) != old_type:
        # Another kind of account: the old keys (and secrets) mean nothing to it.
        entries[index] = _merge(data, _MISSING, tp)
    else:
        entries[index] = _merge({**old, **data}, old, tp)


def _remove(raw: dict[str, Any], key: str, what: str, entry_id: str) -> None:
    entries = _entries(raw, key)
    index = _find(entries, entry_id)
    if index is None:
        raise ConfigNotFoundError(f"no {what} {entry_id!r}", path=f"{key}.id")
    del entries[index]


# -- merging new data into the file's, guided by the models' field types ---------------


def _merge(new: Any, old: Any, tp: Any) -> Any:
    """``new`` (data for a field of type ``tp``) with the file's ``old`` data carried over
    where the module docstring says so; ``_MISSING`` when the key should be left out."""
    tp = _unwrap(tp)
    if _is_secret(tp):
        return _merge_secret(new, old)
    models = _models_in(tp)
    if models and isinstance(new, dict):
        model = _pick(models, new)
        if model is None:
            return new  # an unknown `type`: validation says so
        if not isinstance(old, dict) or _pick(models, old) is not model:
            old = {}
        return _merge_model(new, old, model)
    origin, args = get_origin(tp), get_args(tp)
    if isinstance(new, list) and (origin is list or tp is Any):
        item_tp = args[0] if args else Any
        return [_merge(item, _match(item, i, old), item_tp) for i, item in enumerate(new)]
    if isinstance(new, dict) and (origin is dict or tp is Any):
        value_tp = args[1] if len(args) == 2 else Any
        olds = old if isinstance(old, dict) else {}
        out = {}
        for k, v in new.items():
            merged = _merge(v, olds.get(k, _MISSING), value_tp)
            if merged is not _MISSING:
                out[k] = merged
        return out
    return _keep_unchanged(new, old)


def _merge_model(new: dict[str, Any], old: dict[str, Any], model: type[BaseModel]) -> Any:
    out: dict[str, Any] = {}
    for k, v in new.items():
        field = model.model_fields.get(k)
        if field is None:
            out[k] = v  # an unknown key: validation names it
            continue
        merged = _merge(v, old.get(k, _MISSING), field.annotation)
        if merged is _MISSING or (k not in old and _is_default(field, merged)):
            continue  # a default the file did not spell out stays unwritten
        out[k] = merged
    for k, field in model.model_fields.items():
        if k not in new and k in old and _is_secret(_unwrap(field.annotation)):
            out[k] = old[k]
    return out


def _is_default(field: FieldInfo, value: Any) -> bool:
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        # Its own defaults were left out already, so `{}` is the default too.
        if value == {}:
            return True
        default = default.model_dump(mode="json")
    elif isinstance(default, Path):
        default = str(default)
    # True == 1 in Python; a bool is only the default of a bool.
    return bool(value == default) and isinstance(value, bool) == isinstance(default, bool)


def _merge_secret(new: Any, old: Any) -> Any:
    if new is _MISSING or new is None or new == {"set": True}:
        return old
    if new == {"set": False}:
        return _MISSING
    return new


def _match(item: Any, index: int, old: Any) -> Any:
    """The old list item ``item`` replaces: same ``id``/``name``, else same position."""
    if not isinstance(old, list):
        return _MISSING
    if isinstance(item, dict):
        for ident in ("id", "name"):
            if ident in item:
                for candidate in old:
                    if isinstance(candidate, dict) and candidate.get(ident) == item[ident]:
                        return candidate
                return _MISSING
    return old[index] if index < len(old) else _MISSING


def _keep_unchanged(new: Any, old: Any) -> Any:
    """The file's text when ``new`` is what it expands to, or that masked."""
    if not isinstance(old, str) or isinstance(new, bool) or not isinstance(new, str | int | float):
        return new
    if str(new) == old:
        return old
    try:
        expanded = _expand_env(old, "")
    except ConfigError:
        return new
    if str(new) == expanded or (new != expanded and new == _hide_password(expanded)):
        return old
    return new


# -- the shape of field types ---------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    """Drop ``Annotated`` metadata and ``| None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
            continue
        if get_origin(tp) in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp


def _is_secret(tp: Any) -> bool:
    return tp is SecretStr


def _models_in(tp: Any) -> list[type[BaseModel]]:
    tp = _unwrap(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return [m for arg in get_args(tp) for m in _models_in(arg)]
    if get_origin(tp) is None and isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return []


def _pick(models: list[type[BaseModel]], data: dict[str, Any]) -> type[BaseModel] | None:
    """The model for ``data``: the only one, or the one whose ``type`` it names."""
    if len(models) == 1:
        return models[0]
    for model in models:
        field = model.model_fields.get("type")
        if field is None:
            continue
        if "type" in data:
            if data["type"] in get_args(field.annotation):
                return model
        elif not field.is_required():
            return model  # the default type (onebot for platforms)
    return None


# -- masking --------------------------------------------------------------------------


def _hide_password(value: str) -> str:
    return _URL_PASSWORD.sub(r"\1:***@", value)


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return {"set": True} if value.get_secret_value() else None
    if isinstance(value, dict):
        return {str(k): _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    if isinstance(value, str):
        return _hide_password(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return value
