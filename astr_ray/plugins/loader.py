"""Finding plugins and importing them: manifests first, code second.

Two sources: folders under the plugins directory (``<data_dir>/plugins/<name>/`` with a
``plugin.yaml``) and installed packages that declare an entry point in the
``astr_ray.plugins`` group (the entry point names the package; its folder holds the
same ``plugin.yaml``). ``discover`` reads manifests only; ``load`` imports the code.
A plugin that fails either step becomes a ``LoadFailure`` with the reason; it never
stops the others from loading.

Folder plugins import as ``astr_ray_plugins.<name>`` packages, so a plugin's modules
may import each other relatively (``from . import util``); ``unload`` drops them from
``sys.modules`` so that a reload runs the new code.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import sys
import types
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from astr_ray.errors import PluginError
from astr_ray.plugins.api import Plugin, PluginSpec
from astr_ray.plugins.manifest import MANIFEST_FILE, PluginManifest, load_manifest

__all__ = ["ENTRY_POINT_GROUP", "LoadFailure", "LoadedPlugin", "PluginSource", "discover", "load"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "astr_ray.plugins"
_PACKAGE = "astr_ray_plugins"


@dataclass(frozen=True)
class PluginSource:
    manifest: PluginManifest
    folder: Path
    package: str | None = None  # an installed package (entry point); None: a folder

    @property
    def name(self) -> str:
        return self.manifest.name

    def fingerprint(self) -> tuple[tuple[str, float, int], ...]:
        """Names, mtimes and sizes of the plugin's files: changes mean "reload"."""
        files = sorted(
            p for p in self.folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )
        out = []
        for p in files:
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((str(p.relative_to(self.folder)), st.st_mtime, st.st_size))
        return tuple(out)


@dataclass(frozen=True)
class LoadFailure:
    name: str
    source: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "source": self.source, "reason": self.reason}


@dataclass
class LoadedPlugin:
    source: PluginSource
    plugin: Plugin
    spec: PluginSpec
    module: str

    @property
    def manifest(self) -> PluginManifest:
        return self.source.manifest

    @property
    def name(self) -> str:
        return self.source.manifest.name


def discover(plugins_dir: Path | None) -> tuple[list[PluginSource], list[LoadFailure]]:
    """Every plugin's manifest (folders, then entry points); no plugin code runs."""
    sources: list[PluginSource] = []
    failures: list[LoadFailure] = []
    seen: dict[str, str] = {}

    def add(src: PluginSource, where: str) -> None:
        if src.name in seen:
            failures.append(
                LoadFailure(
                    src.name, where, f"another plugin is named {src.name!r} ({seen[src.name]})"
                )
            )
            return
        seen[src.name] = where
        sources.append(src)

    if plugins_dir is not None and plugins_dir.is_dir():
        for folder in sorted(p for p in plugins_dir.iterdir() if p.is_dir()):
            if folder.name.startswith((".", "_")):
                continue
            try:
                manifest = load_manifest(folder)
            except PluginError as exc:
                failures.append(LoadFailure(folder.name, str(folder), exc.message))
                continue
            if manifest.name != folder.name:
                failures.append(
                    LoadFailure(
                        manifest.name,
                        str(folder),
                        f"the folder must be named like the plugin ({manifest.name!r})",
                    )
                )
                continue
            add(PluginSource(manifest, folder), str(folder))
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ep.name} = {ep.value}"
        try:
            spec = importlib.util.find_spec(ep.value)
        except (ImportError, ValueError) as exc:
            failures.append(LoadFailure(ep.name, where, f"cannot find {ep.value}: {exc}"))
            continue
        if spec is None or not spec.submodule_search_locations:
            failures.append(LoadFailure(ep.name, where, f"{ep.value} is not a package"))
            continue
        folder = Path(next(iter(spec.submodule_search_locations)))
        try:
            manifest = load_manifest(folder)
        except PluginError as exc:
            failures.append(LoadFailure(ep.name, where, exc.message))
            continue
        add(PluginSource(manifest, folder, package=ep.value), where)
    return sources, failures


def _module_names(source: PluginSource) -> tuple[str, str]:
    """(package, module to import) for a source."""
    if source.package is not None:
        return source.package, f"{source.package}.{source.manifest.module}"
    pkg = f"{_PACKAGE}.{source.name.replace('-', '_')}"
    return pkg, f"{pkg}.{source.manifest.module}"


def _ensure_folder_package(source: PluginSource, pkg: str) -> None:
    if _PACKAGE not in sys.modules:
        root = types.ModuleType(_PACKAGE)
        root.__path__ = []
        sys.modules[_PACKAGE] = root
    init = source.folder / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(
            pkg, init, submodule_search_locations=[str(source.folder)]
        )
    else:  # a plain folder: a package with no code of its own
        spec = importlib.machinery.ModuleSpec(pkg, None, is_package=True)
        spec.submodule_search_locations = [str(source.folder)]
    if spec is None:
        raise PluginError("cannot make a package of the plugin folder", plugin=source.name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[pkg] = module
    if spec.loader is not None:
        spec.loader.exec_module(module)


def load(source: PluginSource) -> LoadedPlugin:
    """Import the plugin's code and collect what it registered. ``PluginError`` with
    the reason (the exception its code raised, or what is missing)."""
    pkg, module_name = _module_names(source)
    unload_modules(pkg)
    try:
        if source.package is None:
            _ensure_folder_package(source, pkg)
        if (
            not (source.folder / (source.manifest.module.replace(".", "/") + ".py")).exists()
            and not (
                source.folder / source.manifest.module.replace(".", "/") / "__init__.py"
            ).exists()
        ):
            raise PluginError(
                f"module {source.manifest.module!r} not found in the plugin folder",
                plugin=source.name,
            )
        module = importlib.import_module(module_name)
    except PluginError:
        unload_modules(pkg)
        raise
    except BaseException as exc:  # its code may raise anything, even SystemExit
        unload_modules(pkg)
        raise PluginError(
            f"importing {module_name} failed: {type(exc).__name__}: {exc}", plugin=source.name
        ) from None
    plugin = _find_plugin(module)
    if plugin is None:
        unload_modules(pkg)
        raise PluginError(
            f"{module_name} defines no `plugin = Plugin()` (astr_ray.plugins.Plugin)",
            plugin=source.name,
        )
    return LoadedPlugin(source, plugin, plugin.spec(), module_name)


def _find_plugin(module: Any) -> Plugin | None:
    candidate = getattr(module, "plugin", None)
    if isinstance(candidate, Plugin):
        return candidate
    found = [v for v in vars(module).values() if isinstance(v, Plugin)]
    return found[0] if len(found) == 1 else None


def unload_modules(pkg: str) -> None:
    for name in [n for n in sys.modules if n == pkg or n.startswith(pkg + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def manifest_path(source: PluginSource) -> Path:
    return source.folder / MANIFEST_FILE
