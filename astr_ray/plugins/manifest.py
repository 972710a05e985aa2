"""A plugin's manifest: what it is and what it asks for, checked before its code runs.

A folder plugin carries ``plugin.yaml`` next to its code; a packaged plugin (an entry
point in the ``astr_ray.plugins`` group naming its package) carries the same file in
its package folder. Nothing of the
plugin is imported until the manifest validates, so a wrong manifest is a load error
with the key path and the reason, never a half-loaded plugin.

    name: weather                 # [a-z0-9_-], unique
    version: 1.0.0
    description: Current weather for a city
    author: someone
    module: main                  # the module to import (folder plugins): main.py
    capabilities: [network, llm]  # network | files | llm | send
    isolated: false               # true: its own supervised actor process
    requirements: [httpx==0.27]   # isolated only: installed into its own environment
    config:                       # the plugin's settings, as typed fields
      api_url: {type: str, default: "https://example.org"}
      days: {type: int, default: 3, description: forecast length}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from astr_ray.errors import PluginError

__all__ = [
    "MANIFEST_FILE",
    "Capability",
    "ConfigField",
    "PluginManifest",
    "load_manifest",
    "manifest_from_dict",
]

MANIFEST_FILE = "plugin.yaml"

Capability = Literal["network", "files", "llm", "send"]

_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list": list[Any],
    "dict": dict[str, Any],
}

_REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-\[\],<>=!~ ]*$|^(/|\./|file:).+$")


class ConfigField(BaseModel):
    """One setting of a plugin's config: its type, default and description."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["str", "int", "float", "bool", "list", "dict"] = "str"
    default: Any = None
    description: str = ""

    @model_validator(mode="after")
    def _default_fits(self) -> ConfigField:
        if self.default is not None:
            try:
                TypeAdapter(_TYPES[self.type]).validate_python(self.default)
            except ValidationError:
                raise ValueError(f"default {self.default!r} is not a {self.type}") from None
        return self


class PluginManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    version: str = Field(min_length=1, max_length=64)
    description: str = Field(default="", max_length=500)
    author: str = Field(default="", max_length=200)
    module: str = Field(default="main", pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    capabilities: tuple[Capability, ...] = ()
    isolated: bool = False
    requirements: tuple[str, ...] = ()
    config: dict[str, ConfigField] = Field(default_factory=dict)

    @field_validator("requirements")
    @classmethod
    def _check_requirements(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for req in value:
            if not _REQUIREMENT.match(req):
                raise ValueError(f"not a pip requirement: {req!r}")
        return value

    @field_validator("config")
    @classmethod
    def _check_config(cls, value: dict[str, ConfigField]) -> dict[str, ConfigField]:
        for key in value:
            if not key.isidentifier() or key.startswith("_"):
                raise ValueError(f"config key {key!r} must be a Python identifier")
        return value

    def model_post_init(self, _context: Any) -> None:
        if self.requirements and not self.isolated:
            raise PluginError(
                "requirements need `isolated: true` (they are installed into the plugin's "
                "own environment, never the core's)",
                plugin=self.name,
            )

    def config_model(self) -> type[BaseModel]:
        """A pydantic model of the plugin's settings (unknown keys refused)."""
        fields: dict[str, Any] = {
            key: (_TYPES[f.type], Field(default=f.default, description=f.description))
            for key, f in self.config.items()
        }
        model: type[BaseModel] = create_model(
            f"{self.name.replace('-', '_')}_config",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
        return model

    def check_config(self, values: dict[str, Any] | None) -> dict[str, Any]:
        """Validate ``values`` (from the bot's config) against the schema; the defaults
        fill what is missing. ``PluginError`` names the bad key."""
        try:
            return self.config_model().model_validate(values or {}).model_dump()
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "<root>"
            raise PluginError(
                f"bad config for plugin {self.name}: {where}: {err['msg']}", plugin=self.name
            ) from None


def manifest_from_dict(data: Any, *, source: str) -> PluginManifest:
    if not isinstance(data, dict):
        raise PluginError("the manifest must be a mapping", source=source)
    try:
        return PluginManifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise PluginError(f"invalid manifest: {where}: {msg}", source=source) from None
    except PluginError as exc:
        raise PluginError(exc.message, source=source) from None


def load_manifest(folder: Path) -> PluginManifest:
    """Read and validate ``folder/plugin.yaml``; ``PluginError`` says what is wrong."""
    path = folder / MANIFEST_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PluginError(f"no {MANIFEST_FILE} in the plugin folder", source=str(folder)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PluginError(f"cannot read {MANIFEST_FILE}: {exc}", source=str(folder)) from None
    except yaml.YAMLError as exc:
        raise PluginError(f"{MANIFEST_FILE} is not valid YAML: {exc}", source=str(path)) from None
    return manifest_from_dict(data, source=str(path))
