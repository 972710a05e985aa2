"""Installing plugins (``astr_ray/plugins/install.py``) and ``astr-ray plugin ...``: real
folders, archives built here, a real git repository and real ``git`` subprocesses."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from astr_ray.cli import main
from astr_ray.errors import PluginError
from astr_ray.plugins import install as inst
from astr_ray.plugins.loader import discover, load, unload_modules

MAIN_PY = "from astr_ray.plugins import Plugin\nplugin = Plugin()\n"

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _write_plugin(folder: Path, name: str = "hello", version: str = "1.0.0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.yaml").write_text(f"name: {name}\nversion: {version}\n")
    (folder / "main.py").write_text(MAIN_PY)
    return folder


def _files(name: str = "hello", version: str = "1.0.0") -> dict[str, bytes]:
    return {
        "plugin.yaml": f"name: {name}\nversion: {version}\n".encode(),
        "main.py": MAIN_PY.encode(),
    }


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def _tar(path: Path, entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tf.addfile(info, io.BytesIO(entry[1]))
    return path


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _visible(plugins_dir: Path) -> list[str]:
    """Everything in the plugins folder, hidden entries included."""
    return sorted(p.name for p in plugins_dir.iterdir()) if plugins_dir.exists() else []


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.org",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=60,
    )


def _git_repo(tmp_path: Path) -> Path:
    repo = _write_plugin(tmp_path / "repo")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first")
    return repo


def _record(folder: Path) -> dict[str, str]:
    data: dict[str, str] = json.loads((folder / inst.SOURCE_FILE).read_text())
    return data


# -- sources -------------------------------------------------------------------------
def test_install_from_a_folder_loads_through_the_real_loader(tmp_path: Path) -> None:
    src = _write_plugin(tmp_path / "src")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"stale")
    plugins = tmp_path / "plugins"

    p = inst.install(str(src), plugins)

    assert (p.name, p.version, p.kind, p.folder) == ("hello", "1.0.0", "folder", plugins / "hello")
    assert p.source == str(src.resolve()) and p.error is None
    assert _visible(plugins) == ["hello"]
    assert (plugins / "hello" / "main.py").read_text() == MAIN_PY
    assert not (plugins / "hello" / "__pycache__").exists()
    assert _record(plugins / "hello")["kind"] == "folder"
    sources, failures = discover(plugins)
    assert [s.name for s in sources] == ["hello"] and failures == []
    try:
        assert load(sources[0]).name == "hello"
    finally:
        unload_modules("astr_ray_plugins.hello")
    assert [(x.name, x.version, x.kind) for x in inst.installed(plugins)] == [
        ("hello", "1.0.0", "folder")
    ]


def test_install_from_a_zip_unwraps_its_single_top_folder(tmp_path: Path) -> None:
    entries = {f"hello-main/{k}": v for k, v in _files(version="2.0.0").items()}
    entries["hello-main/data/"] = b""
    entries["hello-main/data/words.txt"] = b"hi\n"
    entries["__MACOSX/hello-main/._main.py"] = b"junk"
    archive = _zip(tmp_path / "hello.zip", entries)
    plugins = tmp_path / "plugins"

    p = inst.install(str(archive), plugins)

    assert (p.name, p.version, p.kind) == ("hello", "2.0.0", "archive")
    assert sorted(x.name for x in (plugins / "hello").iterdir()) == [
        inst.SOURCE_FILE,
        "data",
        "main.py",
        "plugin.yaml",
    ]
    assert (plugins / "hello" / "data" / "words.txt").read_text() == "hi\n"
    assert _visible(plugins) == ["hello"]


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar"])
def test_install_from_a_flat_tar(tmp_path: Path, suffix: str) -> None:
    entries: list[tarfile.TarInfo | tuple[str, bytes]] = [
        (f"./{k}", v) for k, v in _files().items()
    ]
    entries.append(_link("./alias.py", "main.py"))  # a link that stays inside is fine
    archive = _tar(tmp_path / f"hello{suffix}", entries)
    plugins = tmp_path / "plugins"

    p = inst.install(str(archive), plugins)

    assert (p.name, p.kind) == ("hello", "archive")
    assert (plugins / "hello" / "alias.py").read_text() == MAIN_PY
    assert _visible(plugins) == ["hello"]


@needs_git
def test_install_from_git_then_update_picks_up_a_new_commit(tmp_path: Path) -> None:
    repo = _git_repo(tmp_path)
    url = repo.as_uri()
    plugins = tmp_path / "plugins"

    p = inst.install(url, plugins)

    assert (p.name, p.version, p.kind, p.source) == ("hello", "1.0.0", "git", url)
    assert not (plugins / "hello" / ".git").exists()
    assert _record(plugins / "hello")["source"] == url

    (repo / "plugin.yaml").write_text("name: hello\nversion: 1.1.0\n")
    (repo / "extra.py").write_text("X = 1\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "second")

    q = inst.update("hello", plugins)

    assert (q.version, q.kind, q.source) == ("1.1.0", "git", url)
    assert (plugins / "hello" / "extra.py").read_text() == "X = 1\n"
    assert _visible(plugins) == ["hello"]


@needs_git
def test_a_failed_clone_says_what_git_said(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    with pytest.raises(PluginError) as err:
        inst.install((tmp_path / "nothing-here.git").as_uri(), plugins)
    assert "git clone failed" in err.value.message
    assert "does not appear to be a git repository" in err.value.message  # git's own words
    assert _visible(plugins) == []


def test_update_from_a_folder_and_a_changed_name_is_refused(tmp_path: Path) -> None:
    src = _write_plugin(tmp_path / "src")
    plugins = tmp_path / "plugins"
    inst.install(str(src), plugins)
    _write_plugin(src, version="1.2.0")
    assert inst.update("hello", plugins).version == "1.2.0"

    _write_plugin(src, name="other")
    with pytest.raises(PluginError, match="now holds plugin 'other', not 'hello'"):
        inst.update("hello", plugins)
    assert _visible(plugins) == ["hello"]
    assert inst.installed(plugins)[0].version == "1.2.0"


def test_update_needs_a_known_plugin_with_a_record(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    _write_plugin(plugins / "hello")  # put there by hand
    with pytest.raises(PluginError, match="no install record"):
        inst.update("hello", plugins)
    with pytest.raises(PluginError, match="no plugin named 'nope'"):
        inst.update("nope", plugins)
    assert inst.installed(plugins)[0].source is None


# -- refusals ------------------------------------------------------------------------
def test_a_bad_manifest_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "plugin.yaml").write_text("name: hello\n")  # no version
    with pytest.raises(PluginError) as err:
        inst.install(str(folder), plugins)
    assert "not a valid plugin: invalid manifest: version" in err.value.message

    archive = _zip(tmp_path / "bad.zip", {"plugin.yaml": b"name: Not Valid\nversion: 1.0.0\n"})
    with pytest.raises(PluginError, match="invalid manifest: name"):
        inst.install(str(archive), plugins)
    archive = _zip(tmp_path / "nomain.zip", {"plugin.yaml": b"name: hello\nversion: 1.0.0\n"})
    with pytest.raises(PluginError, match="module 'main'"):
        inst.install(str(archive), plugins)
    archive = _zip(tmp_path / "empty.zip", {"README": b"hi"})
    with pytest.raises(PluginError, match=r"no plugin\.yaml"):
        inst.install(str(archive), plugins)
    with pytest.raises(PluginError, match="no such folder or archive"):
        inst.install(str(tmp_path / "missing"), plugins)
    assert _visible(plugins) == []


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda d: _zip(d / "a.zip", {**_files(), "../evil": b"x"}), "outside"),
        (lambda d: _zip(d / "a.zip", {**_files(), "/tmp/evil": b"x"}), "absolute path"),
        (lambda d: _tar(d / "a.tar.gz", [*_files().items(), ("../evil", b"x")]), "outside"),
        (lambda d: _tar(d / "a.tar.gz", [*_files().items(), ("/evil", b"x")]), "absolute"),
        (lambda d: _tar(d / "a.tar", [*_files().items(), _link("l", "../..")]), "outside"),
        (lambda d: _tar(d / "a.tar", [*_files().items(), _link("l", "/etc")]), "absolute"),
        (
            lambda d: _tar(
                d / "a.tar", [*_files().items(), _link("h", "../evil", tarfile.LNKTYPE)]
            ),
            "outside",
        ),
        (
            lambda d: _tar(d / "a.tar", [*_files().items(), _link("d", "."), ("d/../evil", b"x")]),
            "outside",
        ),
        (
            # Each link alone resolves inside by name; together they would climb out.
            lambda d: _tar(
                d / "a.tar",
                [*_files().items(), _link("a/b/t", "s/../../.."), _link("a/b/s", "../..")],
            ),
            "through another symlink",
        ),
        (
            lambda d: _tar(d / "a.tar", [*_files().items(), _link("s", "."), ("s/x", b"x")]),
            "behind a symlink",
        ),
        (
            lambda d: _tar(d / "a.tar", [*_files().items(), _link("dev", "", tarfile.CHRTYPE)]),
            "special file",
        ),
    ],
)
def test_unsafe_archives_are_refused(
    tmp_path: Path, build: Callable[[Path], Path], reason: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = build(work)
    plugins = tmp_path / "plugins"
    with pytest.raises(PluginError) as err:
        inst.install(str(archive), plugins)
    assert "unsafe archive" in err.value.message and reason in err.value.message
    assert _visible(plugins) == []
    assert not (tmp_path / "evil").exists() and not (work / "evil").exists()


def test_an_archive_too_big_once_extracted_is_refused(tmp_path: Path) -> None:
    big = tarfile.TarInfo("big.bin")
    big.size = inst.MAX_EXTRACT_BYTES + 1
    archive = tmp_path / "big.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tf:
        for name, data in _files().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        tf.addfile(big, io.BytesIO(bytes(big.size)))
    plugins = tmp_path / "plugins"
    with pytest.raises(PluginError, match="more than 50 MiB once extracted"):
        inst.install(str(archive), plugins)
    assert _visible(plugins) == []


def test_a_duplicate_is_refused_then_replaced_with_force(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    inst.install(str(_write_plugin(tmp_path / "v1")), plugins)
    v2 = _write_plugin(tmp_path / "v2", version="2.0.0")
    (v2 / "new.py").write_text("")

    with pytest.raises(PluginError, match="'hello' is installed already"):
        inst.install(str(v2), plugins)
    assert inst.installed(plugins)[0].version == "1.0.0"

    p = inst.install(str(v2), plugins, force=True)

    assert p.version == "2.0.0" and p.source == str(v2.resolve())
    assert (plugins / "hello" / "new.py").exists()
    assert _visible(plugins) == ["hello"]


def test_uninstall_and_names_that_are_not_plain(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    inst.install(str(_write_plugin(tmp_path / "src")), plugins)
    victim = _write_plugin(tmp_path / "victim")

    for bad in ("../victim", "..", ".", "", "a/b", "/tmp", ".tmp-x"):
        with pytest.raises(PluginError, match="not a plugin name"):
            inst.uninstall(bad, plugins)
    with pytest.raises(PluginError, match="no plugin named 'nope'"):
        inst.uninstall("nope", plugins)
    assert (victim / "plugin.yaml").exists()

    inst.uninstall("hello", plugins)

    assert _visible(plugins) == []
    assert inst.installed(plugins) == []
    assert (tmp_path / "src" / "plugin.yaml").exists()  # the source is left alone


def test_installed_reports_broken_folders(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    (plugins / "broken").mkdir(parents=True)
    (plugins / "broken" / "plugin.yaml").write_text("name: [\n")
    _write_plugin(plugins / "misnamed", name="other")
    (plugins / ".tmp-leftover").mkdir()

    found = {p.name: p for p in inst.installed(plugins)}

    assert sorted(found) == ["broken", "misnamed"]
    assert found["broken"].version is None
    assert "not valid YAML" in (found["broken"].error or "")
    assert found["misnamed"].error == "the folder must be named like the plugin ('other')"


# -- the command line ----------------------------------------------------------------
def test_plugin_commands_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugins = tmp_path / "plugins"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump({"data_dir": str(tmp_path / "data"), "plugins": {"dir": str(plugins)}})
    )
    src = _write_plugin(tmp_path / "src")

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["-c", str(cfg), "plugin", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    assert run("ls") == (0, f"no plugins in {plugins}\n", "")

    code, out, err = run("install", str(src))
    assert (code, err) == (0, "")
    assert f"installed hello 1.0.0 from {src.resolve()} (folder) into {plugins / 'hello'}" in out
    assert "astr-ray plugin reload" in out and "plugins.watch" in out

    code, out, err = run("install", str(src))
    assert code == 2 and out == ""
    assert err.startswith("plugin error: plugin 'hello' is installed already (--force replaces it)")

    _write_plugin(src, version="1.0.1")
    code, out, _ = run("install", str(src), "--force")
    assert code == 0 and "installed hello 1.0.1" in out and "replaced hello 1.0.0" in out

    _write_plugin(src, version="1.1.0")
    code, out, _ = run("update", "hello")
    assert code == 0 and f"updated hello: 1.0.1 -> 1.1.0 from {src.resolve()} (folder)" in out

    code, out, _ = run("ls")
    assert code == 0
    row = next(line for line in out.splitlines() if line.strip().startswith("hello"))
    assert row.split() == ["hello", "1.1.0", "folder", str(src.resolve())]

    code, _, err = run("install", str(tmp_path / "nowhere"))
    assert code == 2 and err.startswith("plugin error: no such folder or archive")

    code, _, err = run("uninstall", "../src")
    assert code == 2 and "not a plugin name" in err and src.exists()

    code, out, _ = run("uninstall", "hello")
    assert code == 0 and f"removed hello from {plugins}" in out
    assert run("ls")[1] == f"no plugins in {plugins}\n"

    code, _, err = run("update", "hello")
    assert code == 2 and "plugin error: no plugin named 'hello'" in err


def test_plugin_install_runs_as_a_command(tmp_path: Path) -> None:
    """The same through the real entry point in a subprocess: the exit status a shell sees."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"plugins": {"dir": str(tmp_path / "plugins")}}))
    archive = _zip(tmp_path / "bad.zip", {"../evil": b"x"})
    out = subprocess.run(
        [sys.executable, "-m", "astr_ray.cli", "-c", str(cfg), "plugin", "install", str(archive)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert out.returncode == 2
    assert "plugin error: unsafe archive: '../evil' points outside" in out.stderr
