"""The plugin API: what a plugin author imports.

    from astr_ray.plugins import Context, Plugin

See ``docs/plugins.md`` for the guide and ``examples/plugins/`` for a complete plugin.
"""

from astr_ray.errors import PluginError
from astr_ray.plugins.api import CommandGroup, Plugin, PluginSpec, UsageError
from astr_ray.plugins.context import Context, DialogTimeout, KeyValue
from astr_ray.plugins.manifest import Capability, ConfigField, PluginManifest, load_manifest

__all__ = [
    "Capability",
    "CommandGroup",
    "ConfigField",
    "Context",
    "DialogTimeout",
    "KeyValue",
    "Plugin",
    "PluginError",
    "PluginManifest",
    "PluginSpec",
    "UsageError",
    "load_manifest",
]
