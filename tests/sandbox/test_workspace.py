"""The host side of a session's folder: confinement, quota, listing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from astr_ray.errors import SandboxError
from sandbox.workspace import Workspace, folder_name


def test_folder_per_session_named_safely(tmp_path: Path):
    names = {folder_name(k) for k in ("telegram:1", "telegram:2", "../../etc", "a/b", "")}
    assert len(names) == 5
    for n in names:
        assert "/" not in n and "." not in n and n
    ws = Workspace(tmp_path, "../../etc", 1)
    assert not ws._dir.exists()  # made on first use
    assert ws.path.parent == tmp_path and ws.path.is_dir()
    assert Workspace(tmp_path, "telegram:1", 1).path.name.startswith("telegram-1-")


@pytest.mark.parametrize(
    "rel", ["/etc/passwd", "..", "../x", "a/../../x", "./../x", "a/b/../../../x", "\x00"]
)
def test_escapes_are_refused(tmp_path: Path, rel: str):
    ws = Workspace(tmp_path / "root", "s", 1)
    with pytest.raises(SandboxError):
        ws.resolve(rel)
    with pytest.raises(SandboxError):
        ws.read_text(rel, 100)
    with pytest.raises(SandboxError):
        ws.write_text(rel, "x")
    assert not (tmp_path / "x").exists()


def test_symlinks_leading_outside_are_refused(tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    ws = Workspace(tmp_path / "root", "s", 1)
    os.symlink(secret, ws.path / "abs-link")
    os.symlink("../../secret.txt", ws.path / "rel-link")
    os.symlink(tmp_path, ws.path / "dir-link")
    for rel in ("abs-link", "rel-link", "dir-link/secret.txt"):
        with pytest.raises(SandboxError, match="outside"):
            ws.read_text(rel, 100)
    with pytest.raises(SandboxError):
        ws.write_text("dir-link/new.txt", "x")
    assert not (tmp_path / "new.txt").exists()
    with pytest.raises(SandboxError):
        ws.list("dir-link")


def test_symlinks_inside_are_followed(tmp_path: Path):
    ws = Workspace(tmp_path, "s", 1)
    ws.write_text("data/a.txt", "hello")
    os.symlink("data/a.txt", ws.path / "rel")
    os.symlink("/workspace/data", ws.path / "as-sandbox-sees-it")  # made inside a sandbox
    assert ws.read_text("rel", 100) == "hello"
    assert ws.read_text("as-sandbox-sees-it/a.txt", 100) == "hello"
    assert ws.resolve("as-sandbox-sees-it/a.txt") == ws.path / "data" / "a.txt"


def test_read_write_list_and_limits(tmp_path: Path):
    ws = Workspace(tmp_path, "s", 1)
    ws.write_text("notes/today.md", "é" * 10)
    assert ws.read_text("notes/today.md", 1000) == "é" * 10
    assert ws.read_bytes("notes/today.md", 4) == "éé".encode()
    assert ws.list() == [{"name": "notes", "size": 0, "is_dir": True}]
    assert ws.list("notes") == [{"name": "today.md", "size": 20, "is_dir": False}]
    assert ws.usage_bytes() == 20
    with pytest.raises(SandboxError, match="folder"):
        ws.read_text("notes", 10)
    with pytest.raises(SandboxError, match="no such"):
        ws.read_text("missing.txt", 10)
    os.mkfifo(ws.path / "pipe")  # a sandbox could leave one: never block on it
    with pytest.raises(SandboxError, match="not a regular file"):
        ws.read_text("pipe", 10)


def test_quota_is_enforced(tmp_path: Path):
    ws = Workspace(tmp_path, "s", 1)
    ws.write_text("a.txt", "x" * 700_000)
    with pytest.raises(SandboxError, match="quota"):
        ws.write_text("b.txt", "x" * 400_000)
    ws.write_text("a.txt", "x" * 1_000_000)  # replacing counts the old size back
    assert ws.usage_bytes() == 1_000_000
