"""The public names of ``astr_ray``: changing them is a decision, not an accident."""

from __future__ import annotations

import astr_ray

EXPECTED = {
    "AstrRayError",
    "ChatType",
    "Config",
    "ConfigError",
    "Event",
    "File",
    "Image",
    "Mention",
    "MessageFormatError",
    "ProviderConfig",
    "ProviderError",
    "Reply",
    "ReplyTo",
    "Sender",
    "SessionError",
    "SessionKey",
    "StoreError",
    "Text",
    "Voice",
    "__version__",
    "load_config",
    "make_session_key",
    "parse_config",
    "parse_session_key",
}


def test_public_names_are_pinned() -> None:
    assert set(astr_ray.__all__) == EXPECTED
    for name in astr_ray.__all__:
        assert hasattr(astr_ray, name), name


def test_every_error_is_an_astr_ray_error() -> None:
    from astr_ray import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.AstrRayError | errors.ControlSignal), name


def test_the_plugin_api_is_pinned() -> None:
    """What plugin authors import (docs/plugins.md): changing it breaks their plugins."""
    import astr_ray.plugins

    assert set(astr_ray.plugins.__all__) == {
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
    }
    for name in astr_ray.plugins.__all__:
        assert hasattr(astr_ray.plugins, name), name
