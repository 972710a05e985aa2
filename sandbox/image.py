"""Build the default Docker sandbox image without a registry: ``python -m sandbox.image``.

The image is a small root filesystem copied from this host (Debian): the system
``python3`` with its standard library, ``sh``/``bash`` and the usual command-line
tools, each with the shared libraries it needs (found with ``ldd``), imported with
``docker import``. Nothing is downloaded. It runs as uid 65534 in /workspace.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from astr_ray.config import SandboxConfig
from sandbox.docker import KEEPER_UID, RUN_UID, _client, default_url

__all__ = ["build_image", "build_rootfs"]

PYTHON = "/usr/bin/python3"
_TOOL_NAMES = """
    sh dash bash env id ls cat echo printf true false sleep kill head tail wc sort uniq tr
    cut mkdir rmdir rm cp mv ln touch chmod stat du df find xargs grep sed awk mawk basename
    dirname pwd seq tee yes expr test date uname whoami nproc timeout setsid sha256sum
    md5sum base64 gzip gunzip tar diff cmp file hostname ps
"""
TOOLS = _TOOL_NAMES.split()
_SKIP = re.compile(r"/(test|tests|idlelib|tkinter|turtledemo|ensurepip|lib2to3)(/|$)")
_ETC = {
    "passwd": f"root:x:0:0:root:/root:/bin/sh\nkeeper:x:{KEEPER_UID}:{KEEPER_UID}::/:/bin/sh\n"
    f"sandbox:x:{RUN_UID}:{RUN_UID}:sandbox:/workspace:/bin/sh\n",
    "group": f"root:x:0:\nkeeper:x:{KEEPER_UID}:\nsandbox:x:{RUN_UID}:\n",
    "hosts": "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
}


def _libs(binary: str) -> set[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    found = set()
    for line in out.splitlines():
        m = re.search(r"(/\S+)", line.split("=>")[-1])
        if m:
            found.add(m.group(1))
    return found


def _usr(path: str) -> str:
    """The merged-/usr spelling of a host path (/lib/x -> usr/lib/x), relative."""
    p = path.lstrip("/")
    top = p.split("/", 1)[0]
    if top in ("bin", "sbin", "lib", "lib64", "lib32") and os.path.islink(f"/{top}"):
        p = "usr/" + p
    return p


def build_rootfs(dest: Path) -> None:
    """Fill ``dest`` with the image's files (needs a Debian-like host with python3)."""
    if not os.path.exists(PYTHON):
        raise SystemExit(f"{PYTHON} is missing: the image copies the system python")
    files: set[str] = set()
    binaries = [os.path.realpath(PYTHON)]
    for tool in TOOLS:
        found = shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin")
        if found:
            binaries.append(found)
    stdlib = Path(os.path.realpath(PYTHON)).name  # python3.11
    libdir = Path("/usr/lib") / stdlib
    for root, dirs, names in os.walk(libdir):
        dirs[:] = [d for d in dirs if not _SKIP.search(f"{root}/{d}")]
        for n in names:
            files.add(os.path.join(root, n))
            if n.endswith(".so"):
                files.update(_libs(os.path.join(root, n)))
    for b in binaries:
        files.add(b)
        files.update(_libs(b))
    files.update(str(p) for p in Path("/usr/lib/locale").glob("C.utf8/*"))
    for f in sorted(files):
        target = dest / _usr(f)
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isfile(f):
            shutil.copy2(os.path.realpath(f), target)
    (dest / "usr/bin/python3").unlink(missing_ok=True)
    (dest / "usr/bin/python3").symlink_to(stdlib)
    for b in binaries:  # tools reached through a symlink keep their name
        name = dest / "usr/bin" / Path(b).name
        if not name.exists():
            shutil.copy2(os.path.realpath(b), name)
    for top in ("bin", "sbin", "lib", "lib64"):
        if (dest / "usr" / top).exists():
            (dest / top).symlink_to(f"usr/{top}")
    for d in ("etc", "tmp", "workspace", "proc", "sys", "dev", "root"):
        (dest / d).mkdir(exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    for etc_name, text in _ETC.items():
        (dest / "etc" / etc_name).write_text(text)


def build_image(tag: str, url: str) -> str:
    """Build the rootfs in a temporary folder and ``docker import`` it as ``tag``."""
    with tempfile.TemporaryDirectory(prefix="astr-sandbox-rootfs-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        build_rootfs(root)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:

            def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
                owned = info.name in ("workspace", "./workspace")
                info.uid = info.gid = RUN_UID if owned else 0
                info.uname = info.gname = ""
                return info

            for entry in sorted(root.iterdir()):
                tar.add(entry, arcname=entry.name, filter=owner)
        repo, _, version = tag.partition(":")
        client = _client(url)
        try:
            client.api.import_image_from_data(
                buf.getvalue(),
                repository=repo,
                tag=version or "latest",
                changes=[
                    "WORKDIR /workspace",
                    "ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8",
                    f"USER {RUN_UID}:{RUN_UID}",
                    'CMD ["sleep", "infinity"]',
                ],
            )
            image_id: str = client.images.get(tag).id
        finally:
            client.close()
        return image_id


def main(argv: list[str] | None = None) -> int:
    cfg = SandboxConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default=cfg.docker_image)
    parser.add_argument("--docker-url", default=default_url(cfg))
    args = parser.parse_args(argv)
    image_id = build_image(args.tag, args.docker_url)
    print(f"built {args.tag} ({image_id[:19]}) on {args.docker_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
