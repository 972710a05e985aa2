"""A session's folder on the host: the only host path its sandboxed code can see.

    <root>/<slug>-<sha256(key)[:16]>/     one per session key, made on first use

The host side (the tools that read, write and list files for the model) goes through
``Workspace`` only, which keeps every access inside the folder even though sandboxed
code controls what is in it: absolute paths and ``..`` above the top are refused, and
symlinks are resolved by hand, refusing any that lead outside (an absolute target
``/workspace/...`` is read as the sandbox sees it). The resolved path is then opened
component by component with ``O_NOFOLLOW``, so a link swapped in meanwhile fails the
call instead of leading the host elsewhere.

Blocking: plain local file I/O, bounded by ``max_bytes`` and the quota. ``usage_bytes``
walks the whole folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from astr_ray.errors import SandboxError

__all__ = ["Workspace", "folder_name", "scrub"]

_MAX_LINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def folder_name(session_key: str) -> str:
    """A safe, stable, readable folder name for a session key (no dots, no slashes)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", session_key).strip("-")[:40] or "session"
    digest = hashlib.sha256(session_key.encode()).hexdigest()[:16]
    return f"{slug}-{digest}"


def scrub(folder: Path) -> int:
    """Clear the setuid/setgid bits sandboxed code set on files in ``folder``; returns
    how many files it changed. Backends call it after every run: inside the sandbox the
    folder is mounted nosuid, but on the host such a file may belong to root (bwrap run
    by root maps the sandbox uid to root) and the bit would be honoured there.

    Walks by directory fd and opens with ``O_NOFOLLOW``: never touches anything outside."""
    changed = 0
    for _, _, files, dir_fd in os.fwalk(folder, follow_symlinks=False):
        for name in files:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError:
                continue  # a symlink, a socket...
            try:
                mode = os.fstat(fd).st_mode
                if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                    os.fchmod(fd, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
                    changed += 1
            except OSError:
                pass
            finally:
                os.close(fd)
    return changed


class Workspace:
    """One session's folder under ``root``, with a size quota of ``quota_mb``."""

    def __init__(self, root: Path, session_key: str, quota_mb: int) -> None:
        self.root = Path(root)
        self.session_key = session_key
        self.quota_bytes = quota_mb << 20
        self._dir = self.root / folder_name(session_key)

    @property
    def path(self) -> Path:
        """The folder (created on first use, private to the runtime's user). This is what
        a backend binds at /workspace."""
        if not self._dir.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            self._dir.mkdir(mode=0o700, exist_ok=True)
        return self._dir

    def _fail(self, rel: str, why: str) -> SandboxError:
        return SandboxError(f"{rel}: {why}", session=self.session_key)

    def _parts(self, rel: str) -> list[str]:
        """``rel`` resolved inside the folder: its components, symlinks followed."""
        if not isinstance(rel, str) or "\x00" in rel:
            raise self._fail(repr(rel), "not a valid path")
        if PurePosixPath(rel).is_absolute():
            raise self._fail(
                rel, "absolute paths are refused; give a path relative to the workspace"
            )
        base = self.path
        todo = list(reversed(PurePosixPath(rel).parts))
        done: list[str] = []
        links = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    raise self._fail(rel, "leads outside the workspace")
                done.pop()
                continue
            here = base.joinpath(*done, part)
            if not here.is_symlink():
                done.append(part)
                continue
            links += 1
            if links > _MAX_LINKS:
                raise self._fail(rel, "too many levels of symbolic links")
            target = PurePosixPath(os.readlink(here))
            if target.is_absolute():
                if target.parts[:2] != ("/", "workspace"):
                    raise self._fail(rel, f"a symlink points outside the workspace ({target})")
                done = []
                target = PurePosixPath(*target.parts[2:])
            todo.extend(reversed(target.parts))
        return done

    def resolve(self, rel: str) -> Path:
        """The host path of ``rel``, guaranteed inside the folder at the time of the call.

        Raises ``SandboxError`` for absolute paths, ``..`` above the top, and symlinks
        leading outside."""
        return self.path.joinpath(*self._parts(rel))

    @contextlib.contextmanager
    def _parent_fd(self, rel: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """(fd of the resolved parent folder, last component), opened without following
        links; ``create`` makes missing folders."""
        parts = self._parts(rel)
        if not parts:
            parts = ["."]
        fd = os.open(self.path, _DIR_FLAGS)
        try:
            for part in parts[:-1]:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    raise self._fail(rel, "no such folder") from None
                except (NotADirectoryError, OSError) as exc:
                    raise self._fail(rel, f"cannot open folder {part!r}: {exc.strerror}") from None
                os.close(fd)
                fd = nxt
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _open_file(self, rel: str, flags: int, *, create: bool = False) -> int:
        with self._parent_fd(rel, create=create) as (parent, name):
            try:
                fd = os.open(
                    name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=parent
                )
            except FileNotFoundError:
                raise self._fail(rel, "no such file") from None
            except IsADirectoryError:
                raise self._fail(rel, "is a folder") from None
            except OSError as exc:
                raise self._fail(rel, f"cannot open: {exc.strerror}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise self._fail(rel, "is a folder" if stat.S_ISDIR(mode) else "not a regular file")
        os.set_blocking(fd, True)
        return fd

    def read_bytes(self, rel: str, max_bytes: int) -> bytes:
        """At most ``max_bytes`` from the start of the file."""
        fd = self._open_file(rel, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            return f.read(max_bytes)

    def read_text(self, rel: str, max_bytes: int) -> str:
        """The file as UTF-8 text (undecodable bytes replaced), at most ``max_bytes``."""
        return self.read_bytes(rel, max_bytes).decode("utf-8", errors="replace")

    def write_text(self, rel: str, text: str) -> None:
        """Create or replace a file (and its folders). Refused when the workspace would
        grow past its quota."""
        data = text.encode()
        old = 0
        with contextlib.suppress(OSError):
            st = self.resolve(rel).lstat()
            old = st.st_size if stat.S_ISREG(st.st_mode) else 0
        used = self.usage_bytes()
        if used - old + len(data) > self.quota_bytes:
            raise self._fail(
                rel,
                f"workspace quota of {self.quota_bytes >> 20} MiB would be exceeded "
                f"({used} bytes used, writing {len(data)})",
            )
        fd = self._open_file(rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, create=True)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def list(self, rel: str = ".") -> list[dict[str, Any]]:
        """The entries of a folder, by name: ``{"name", "size", "is_dir"}`` (links are
        listed, not followed)."""
        with self._parent_fd(rel) as (parent, name):
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                raise self._fail(rel, "no such folder") from None
            except OSError as exc:
                raise self._fail(rel, f"not a folder ({exc.strerror})") from None
        try:
            entries = []
            with os.scandir(fd) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    is_dir = stat.S_ISDIR(st.st_mode)
                    entries.append(
                        {"name": e.name, "size": 0 if is_dir else st.st_size, "is_dir": is_dir}
                    )
        finally:
            os.close(fd)
        return sorted(entries, key=lambda e: str(e["name"]))

    def usage_bytes(self) -> int:
        """Bytes in the folder's regular files (apparent size; links not followed)."""
        total = 0
        for dirpath, _, files in os.walk(self.path, followlinks=False):
            for name in files:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, name))
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
        return total
