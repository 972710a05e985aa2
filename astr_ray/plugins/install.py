"""Installing plugins into the plugins folder: from git, a local folder or an archive.

Admin-side and blocking (file copies, ``git`` in a subprocess): the CLI calls it
directly, async code calls it from a worker thread. A running bot sees the change on
``astr-ray plugin reload`` (or by itself when ``plugins.watch`` is on)::

    source ──► <plugins_dir>/.tmp-XXXX/         hidden: the loader skips dot folders
                 git clone --depth 1 | copy | safe extract (one top folder unwrapped)
                 load_manifest + module check  ◄── refused here: nothing became visible
                 .astr-source.json             where it came from, for ``update``
           ──► rename to <plugins_dir>/<manifest.name>/
                 (force: the old folder moves into the temp folder first, then goes)

Whatever fails, the temp folder is removed and ``PluginError`` says why: the plugin's
folder is the old one or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from astr_ray.errors import PluginError
from astr_ray.plugins.manifest import MANIFEST_FILE, PluginManifest, load_manifest

__all__ = [
    "GIT_TIMEOUT_S",
    "MAX_EXTRACT_BYTES",
    "SOURCE_FILE",
    "InstalledPlugin",
    "SourceKind",
    "install",
    "installed",
    "source_kind",
    "uninstall",
    "update",
]

SourceKind = Literal["git", "folder", "archive"]

SOURCE_FILE = ".astr-source.json"
GIT_TIMEOUT_S = 120.0
MAX_EXTRACT_BYTES = 50 * 1024 * 1024
MAX_ARCHIVE_MEMBERS = 10_000

_GIT_PREFIXES = ("https://", "http://", "ssh://", "git://", "file://", "git@")
_ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
_COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".venv")
_KINDS: dict[str, SourceKind] = {"git": "git", "folder": "folder", "archive": "archive"}
_JUNK = "__MACOSX"  # resource forks that macOS puts into zips


@dataclass(frozen=True)
class InstalledPlugin:
    """One folder of the plugins directory.

    ``name`` is the folder's name (what ``update`` and ``uninstall`` take). When its
    manifest does not validate, ``version`` is None and ``error`` says why. ``source``,
    ``kind`` and ``installed_at`` come from the install record: None for a plugin that
    was put there by hand.
    """

    name: str
    version: str | None
    folder: Path
    source: str | None = None
    kind: SourceKind | None = None
    error: str | None = None
    installed_at: str | None = None


def source_kind(source: str) -> SourceKind:
    """What ``source`` names: a git URL (by its form), else a folder or an archive on
    disk. ``PluginError`` when it is none of them."""
    if source.startswith(_GIT_PREFIXES) or source.rstrip("/").endswith(".git"):
        return "git"
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder"
    if path.is_file() and path.name.lower().endswith(_ARCHIVE_SUFFIXES):
        return "archive"
    if not path.exists():
        raise PluginError("no such folder or archive, and not a git URL", source=source)
    raise PluginError(
        "not a plugin source: expected a git URL, a folder, or a .zip, .tar.gz, .tgz or "
        ".tar archive",
        source=source,
    )


def install(source: str, plugins_dir: Path, *, force: bool = False) -> InstalledPlugin:
    """Install the plugin at ``source`` as ``plugins_dir/<its manifest's name>``.

    ``source`` is a git URL (``https://``, ``git@``, ``file://``... or ending in
    ``.git``; cloned with ``--depth 1``), a folder (copied without ``.git`` and caches)
    or a ``.zip``/``.tar.gz``/``.tgz``/``.tar`` archive (extracted safely; an archive
    holding one top folder is unwrapped). The manifest validates before the plugin
    becomes visible. A plugin of that name already there is refused unless ``force``;
    then it is replaced by two renames. Where it came from is recorded in
    ``SOURCE_FILE`` for ``update``. On any failure nothing is left behind and
    ``PluginError`` gives the reason (with git's own words for a failed clone).
    """
    kind = source_kind(source)
    if kind != "git":
        source = str(Path(source).expanduser().resolve())
    return _install(source, kind, plugins_dir, force=force, expect=None)


def update(name: str, plugins_dir: Path) -> InstalledPlugin:
    """Install plugin ``name`` again from its recorded source (a fresh clone, copy or
    extraction), replacing the installed one. ``PluginError`` when the plugin is
    unknown, has no install record, or its source now holds another plugin (then the
    installed one is left as it was)."""
    folder = _plugin_folder(name, plugins_dir)
    record = _read_record(folder)
    if record is None:
        raise PluginError(
            f"plugin {name!r} has no install record ({SOURCE_FILE}): it was not installed "
            "with `astr-ray plugin install`; install it again from its source with --force",
            plugin=name,
        )
    source, kind, _ = record
    return _install(source, kind, plugins_dir, force=True, expect=name)


def uninstall(name: str, plugins_dir: Path) -> None:
    """Remove plugin ``name``'s folder (only the link, for a symlinked plugin). The
    folder is renamed out of sight first, so a running watcher never sees half of it.
    ``PluginError`` for an unknown name or one that is not a plain folder name."""
    folder = _plugin_folder(name, plugins_dir)
    try:
        if folder.is_symlink():
            folder.unlink()
            return
        trash = Path(tempfile.mkdtemp(prefix=".tmp-", dir=plugins_dir))
        try:
            os.rename(folder, trash / name)
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    except OSError as exc:
        raise PluginError(f"cannot remove the plugin: {exc}", plugin=name) from None


def installed(plugins_dir: Path) -> list[InstalledPlugin]:
    """Every plugin folder (hidden and ``_`` folders skipped, like the loader), sorted
    by name, with its manifest's version or its manifest error, and its source."""
    if not plugins_dir.is_dir():
        return []
    folders = sorted(
        p for p in plugins_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )
    return [_describe(folder) for folder in folders]


# -- installing ------------------------------------------------------------------------
def _install(
    source: str, kind: SourceKind, plugins_dir: Path, *, force: bool, expect: str | None
) -> InstalledPlugin:
    try:
        plugins_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=plugins_dir))
    except OSError as exc:
        raise PluginError(f"cannot use the plugins folder: {exc}", source=source) from None
    try:
        root = _fetch(source, kind, staging)
        manifest = _validate(root, source)
        if expect is not None and manifest.name != expect:
            raise PluginError(
                f"the source now holds plugin {manifest.name!r}, not {expect!r}; uninstall "
                "the old one and install the new one",
                source=source,
            )
        installed_at = datetime.now(UTC).isoformat(timespec="seconds")
        record = {"source": source, "kind": kind, "installed_at": installed_at}
        (root / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        target = plugins_dir / manifest.name
        _put_in_place(root, target, staging, force=force, source=source)
    except OSError as exc:
        raise PluginError(f"install failed: {exc}", source=source) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return InstalledPlugin(
        manifest.name, manifest.version, target, source, kind, installed_at=installed_at
    )


def _fetch(source: str, kind: SourceKind, staging: Path) -> Path:
    """Put the plugin's files under ``staging``; returns the folder that holds them."""
    if kind == "git":
        dest = staging / "plugin"
        _git_clone(source, dest)
        # The loader fingerprints every file of a plugin and ``update`` clones afresh:
        # the history is dead weight.
        shutil.rmtree(dest / ".git", ignore_errors=True)
        return dest
    path = Path(source)
    if kind == "folder":
        if not path.is_dir():
            raise PluginError("the folder does not exist (any more)", source=source)
        # Checked before copying, so that a wrong path does not copy a whole tree.
        if not (path / MANIFEST_FILE).is_file():
            raise PluginError(
                f"not a valid plugin: no {MANIFEST_FILE} in the folder", source=source
            )
        dest = staging / "plugin"
        shutil.copytree(path, dest, ignore=_COPY_IGNORE)
        return dest
    if not path.is_file():
        raise PluginError("the archive does not exist (any more)", source=source)
    dest = staging / "extract"
    dest.mkdir()
    _extract(path, dest)
    entries = [p for p in dest.iterdir() if p.name != _JUNK]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return dest


def _validate(root: Path, source: str) -> PluginManifest:
    try:
        manifest = load_manifest(root)
    except PluginError as exc:
        raise PluginError(f"not a valid plugin: {exc.message}", source=source) from None
    module = manifest.module.replace(".", "/")
    if not (root / f"{module}.py").is_file() and not (root / module / "__init__.py").is_file():
        raise PluginError(
            f"not a valid plugin: its module {manifest.module!r} ({module}.py) is missing",
            source=source,
        )
    return manifest


def _put_in_place(new: Path, target: Path, staging: Path, *, force: bool, source: str) -> None:
    previous: Path | None = None
    if target.exists() or target.is_symlink():
        if not force:
            raise PluginError(
                f"plugin {target.name!r} is installed already (--force replaces it)",
                source=source,
            )
        # Into the temp folder: the caller's cleanup deletes it with the rest.
        previous = staging / "previous"
        os.rename(target, previous)
    try:
        os.rename(new, target)
    except OSError as exc:
        if previous is not None:
            os.rename(previous, target)
        elif target.exists():  # another install of the same name won the race
            raise PluginError(
                f"plugin {target.name!r} is installed already (--force replaces it)",
                source=source,
            ) from None
        raise PluginError(f"cannot move the plugin into place: {exc}", source=source) from None


def _git_clone(url: str, dest: Path) -> None:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    cmd = ["git", "clone", "--depth", "1", "--quiet", "--", url, str(dest)]
    try:
        # Its own process group: on a time-out git's helpers (git-remote-https, ssh)
        # must die too, or they keep the pipe open and the wait never ends.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise PluginError("git is not installed (needed for a git source)", source=url) from None
    with proc:
        try:
            _, err = proc.communicate(timeout=GIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise PluginError(
                f"git clone took longer than {GIT_TIMEOUT_S:g} s", source=url
            ) from None
    if proc.returncode != 0:
        lines = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
        tail = " | ".join(lines[-6:])[-800:] or "(no output)"
        raise PluginError(f"git clone failed (exit {proc.returncode}): {tail}", source=url)


# -- archives ---------------------------------------------------------------------------
def _extract(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest`` after checking every member: no absolute paths,
    no ``..``, no links leaving ``dest`` or reached through another link, no special
    files, at most ``MAX_EXTRACT_BYTES`` and ``MAX_ARCHIVE_MEMBERS``."""
    src = str(archive)
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, dest, src)
        else:
            _extract_tar(archive, dest, src)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise PluginError(f"cannot read the archive: {exc}", source=src) from None


def _unsafe(name: str, why: str, src: str) -> PluginError:
    return PluginError(f"unsafe archive: {name!r} {why}", source=src)


def _member_parts(name: str, src: str) -> tuple[str, ...]:
    if "\x00" in name:
        raise _unsafe(name, "has a NUL byte in its name", src)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise _unsafe(name, "has an absolute path", src)
    parts = tuple(p for p in re.split(r"[/\\]", name) if p not in ("", "."))
    if ".." in parts:
        raise _unsafe(name, "points outside the plugin folder (..)", src)
    return parts


def _through_link(parts: tuple[str, ...], links: set[tuple[str, ...]]) -> bool:
    return any(parts[:i] in links for i in range(1, len(parts)))


class _Budget:
    """Counts members and bytes against the limits; refuses as soon as one is passed."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.members = 0
        self.bytes = 0

    def add(self, size: int) -> None:
        self.members += 1
        self.bytes += size
        if self.members > MAX_ARCHIVE_MEMBERS:
            raise PluginError(
                f"archive refused: more than {MAX_ARCHIVE_MEMBERS} entries", source=self.src
            )
        if self.bytes > MAX_EXTRACT_BYTES:
            raise PluginError(
                f"archive refused: more than {MAX_EXTRACT_BYTES // (1024 * 1024)} MiB "
                "once extracted",
                source=self.src,
            )


def _extract_zip(archive: Path, dest: Path, src: str) -> None:
    budget = _Budget(src)
    with zipfile.ZipFile(archive) as zf:
        plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
        for info in zf.infolist():
            parts = _member_parts(info.filename, src)
            if not parts or parts[0] == _JUNK:
                continue
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise _unsafe(info.filename, "is a symlink (not allowed in zip archives)", src)
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _unsafe(info.filename, "is a device, fifo or other special file", src)
            budget.add(info.file_size)
            plan.append((info, parts))
        for info, parts in plan:
            target = dest.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_capped(zf, info, target, src)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                target.chmod(mode | 0o600)


def _copy_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, src: str) -> None:
    # The declared size was counted; a member that inflates past it is a lie, refused.
    left = info.file_size
    with zf.open(info) as fin, target.open("wb") as fout:
        while chunk := fin.read(1 << 16):
            left -= len(chunk)
            if left < 0:
                raise _unsafe(info.filename, "inflates past its declared size", src)
            fout.write(chunk)


def _extract_tar(archive: Path, dest: Path, src: str) -> None:
    budget = _Budget(src)
    with tarfile.open(archive, "r:*") as tf:
        members: list[tuple[tarfile.TarInfo, tuple[str, ...]]] = []
        # Headers are read one by one: a huge member is refused before its data is.
        for member in tf:
            parts = _member_parts(member.name, src)
            if not parts or parts[0] == _JUNK:
                continue
            if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                raise _unsafe(member.name, "is a device, fifo or other special file", src)
            budget.add(member.size)
            members.append((member, parts))
        # Checked against every symlink of the archive, whatever the order: no path may
        # pass through one, so resolving a link by its name is resolving it for real.
        links = {parts for member, parts in members if member.issym()}
        for member, parts in members:
            if _through_link(parts, links):
                raise _unsafe(member.name, "lies behind a symlink of the archive", src)
            if member.issym():
                _check_symlink(member, parts, links, src)
            elif member.islnk():
                target = _member_parts(member.linkname, src)
                if not target or target in links or _through_link(target, links):
                    raise _unsafe(member.name, "is a hard link to a link or to nothing", src)
        chosen = [member for member, _ in members]
        if hasattr(tarfile, "data_filter"):
            # Python's own "data" filter re-checks every path as it extracts.
            tf.extractall(dest, members=chosen, filter="data")
        else:  # Python < 3.11.4: the checks above are the whole defence
            tf.extractall(dest, members=chosen)


def _check_symlink(
    member: tarfile.TarInfo, parts: tuple[str, ...], links: set[tuple[str, ...]], src: str
) -> None:
    target = member.linkname
    if not target or target.startswith("/"):
        raise _unsafe(member.name, f"is a symlink to an absolute path ({target!r})", src)
    here = list(parts[:-1])
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not here:
                raise _unsafe(member.name, f"is a symlink pointing outside ({target!r})", src)
            here.pop()
            continue
        here.append(part)
        if tuple(here) in links:
            raise _unsafe(member.name, f"is a symlink through another symlink ({target!r})", src)


# -- records and lookups ---------------------------------------------------------------
def _plugin_folder(name: str, plugins_dir: Path) -> Path:
    """``plugins_dir/name`` for a plain folder name of an existing plugin."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\x00"):
        raise PluginError(f"not a plugin name: {name!r}")
    folder = plugins_dir / name
    if not folder.is_dir():
        raise PluginError(f"no plugin named {name!r} in {plugins_dir}", plugin=name)
    return folder


def _read_record(folder: Path) -> tuple[str, SourceKind, str | None] | None:
    """(source, kind, installed_at) from the install record; None when there is none
    or it cannot be read."""
    try:
        data: Any = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    source, kind, when = data.get("source"), data.get("kind"), data.get("installed_at")
    if not isinstance(source, str) or not isinstance(kind, str) or kind not in _KINDS:
        return None
    return source, _KINDS[kind], when if isinstance(when, str) else None


def _describe(folder: Path) -> InstalledPlugin:
    record = _read_record(folder)
    source, kind, when = record if record is not None else (None, None, None)
    try:
        manifest = load_manifest(folder)
    except PluginError as exc:
        return InstalledPlugin(folder.name, None, folder, source, kind, exc.message, when)
    error = None
    if manifest.name != folder.name:
        error = f"the folder must be named like the plugin ({manifest.name!r})"
    return InstalledPlugin(folder.name, manifest.version, folder, source, kind, error, when)
