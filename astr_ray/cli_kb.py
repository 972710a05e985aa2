"""``astr-ray kb``: knowledge bases of the running bot, from the command line.

    astr-ray kb ls [NAME]                      the bases, or one base's documents
    astr-ray kb create NAME [-d TEXT]
    astr-ray kb add NAME PATH|URL... [--no-wait]   files, folders (recursively) or URLs
    astr-ray kb search NAME QUERY [-k N]
    astr-ray kb rm NAME [DOCUMENT]             a document, or the whole base

Files are read here and sent to the KnowledgeService, which may run on another machine;
``add`` shows each document's progress until it is ready (or failed, with the reason).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from astr_ray.config import Config
from astr_ray.errors import KnowledgeError
from astr_ray.kb.parse import SUPPORTED

__all__ = ["add_kb_parser", "cmd_kb"]

POLL_S = 0.3
BAR = 24


class _Service:
    """The running KnowledgeService, called synchronously."""

    def __init__(self, address: str, cfg: Config) -> None:
        import ray

        from actors import runtime
        from actors.common import KNOWLEDGE

        runtime.connect(address, cfg.runtime.namespace)
        self._ray = ray
        self._actor = ray.get_actor(KNOWLEDGE, namespace=cfg.runtime.namespace)

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        ray = self._ray
        try:
            return ray.get(getattr(self._actor, method).remote(*args, **kwargs), timeout=300)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, KnowledgeError):
                raise exc.cause from None
            raise


def _files(target: str) -> list[Path]:
    path = Path(target)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED)
        if not found:
            raise KnowledgeError(f"no {', '.join(sorted(SUPPORTED))} files under {target}")
        return found
    if path.is_file():
        return [path]
    raise KnowledgeError(f"{target}: no such file or folder")


def _bar(job: dict[str, Any]) -> str:
    total, done = job.get("chunks") or 0, job.get("embedded") or 0
    filled = int(BAR * done / total) if total else 0
    return f"[{'#' * filled}{'.' * (BAR - filled)}] {done}/{total} chunks"


def _follow(service: _Service, jobs: list[dict[str, Any]]) -> int:
    """Show each job until it ends; returns how many failed."""
    failed = 0
    for job in jobs:
        name = job["document"]
        while job["status"] not in ("ready", "unchanged", "failed"):
            line = f"  {name[:40]:40} {job['status']:9} {_bar(job)}"
            if sys.stdout.isatty():
                print(f"\r{line}", end="", flush=True)
            time.sleep(POLL_S)
            job = service("job", job["id"])
        end = "\r" if sys.stdout.isatty() else ""
        if job["status"] == "failed":
            failed += 1
            print(f"{end}  {name[:40]:40} FAILED    {job['error']}")
        else:
            extra = f" ({job['duplicates']} duplicate chunks skipped)" if job["duplicates"] else ""
            print(f"{end}  {name[:40]:40} {job['status']:9} {job['chunks']} chunks{extra}")
    return failed


def cmd_kb(args: argparse.Namespace, cfg: Config) -> int:
    try:
        if args.kb_command == "add":
            sources: list[tuple[str, Path | None]] = []
            for target in args.sources:
                if target.startswith(("http://", "https://")):
                    sources.append((target, None))
                else:
                    sources += [(p.name, p) for p in _files(target)]
        try:
            service = _Service(args.address, cfg)
        except (ConnectionError, ValueError) as exc:
            print(f"astr-ray is not running here (or knowledge is off): {exc}", file=sys.stderr)
            return 1
        if args.kb_command == "ls":
            return _ls(service, args.name)
        if args.kb_command == "create":
            kb = service("create", args.name, args.description)
            print(f"created {kb['name']} (embedder {kb['embedder']}, {kb['dim']} dimensions)")
            return 0
        if args.kb_command == "add":
            limit = cfg.knowledge.max_document_mb * 1024 * 1024
            jobs = []
            for name, path in sources:
                if path is None:
                    jobs.append(
                        service("add", args.name, name.rsplit("/", 1)[-1] or name, url=name)
                    )
                    continue
                if path.stat().st_size > limit:
                    print(f"  {name}: over the {cfg.knowledge.max_document_mb:g} MB limit; skipped")
                    continue
                jobs.append(service("add", args.name, name, data=path.read_bytes()))
            if args.no_wait:
                for job in jobs:
                    print(f"  {job['document']}: {job['id']} {job['status']}")
                return 0
            return 1 if _follow(service, jobs) else 0
        if args.kb_command == "search":
            passages = service("search", [args.name], args.query, args.k)
            if not passages:
                print("no matching passages")
            for i, p in enumerate(passages, start=1):
                source = p["document"] + (f" > {p['heading']}" if p["heading"] else "")
                text = " ".join(p["text"].split())
                print(f"[{i}] {source}  (score {p['score']:.4f})\n    {text[:300]}")
            return 0
        if args.kb_command == "rm":
            if args.document:
                n = service("remove_document", args.name, args.document)
                print(f"removed {args.document} ({n} chunks) from {args.name}")
            elif service("delete", args.name):
                print(f"deleted knowledge base {args.name}")
            else:
                print(f"no knowledge base called {args.name!r}", file=sys.stderr)
                return 1
            return 0
    except KnowledgeError as exc:
        print(f"kb error: {exc.message}", file=sys.stderr)
        return 2
    raise AssertionError(args.kb_command)  # pragma: no cover


def _ls(service: _Service, name: str | None) -> int:
    if name is None:
        bases = service("bases")
        if not bases:
            print("no knowledge bases (astr-ray kb create NAME)")
        for kb in bases:
            print(
                f"  {kb['name']:24} {kb['documents']:5} documents {kb['chunks']:8} chunks  "
                f"{kb['embedder']}  {kb['description']}"
            )
        return 0
    for doc in service("documents", name):
        error = f"  {doc['error']}" if doc["error"] else ""
        print(f"  {doc['name'][:40]:40} {doc['status']:9} {doc['chunks']:6} chunks{error}")
    return 0


def add_kb_parser(sub: Any) -> None:
    p = sub.add_parser("kb", help="knowledge bases of the running bot")
    p.add_argument("--address", default="auto")
    ksub = p.add_subparsers(dest="kb_command", required=True)
    q = ksub.add_parser("ls", help="the bases, or one base's documents")
    q.add_argument("name", nargs="?")
    q = ksub.add_parser("create", help="create a knowledge base")
    q.add_argument("name")
    q.add_argument("-d", "--description", default="")
    q = ksub.add_parser("add", help="add files, folders or URLs (txt, md, html, pdf)")
    q.add_argument("name")
    q.add_argument("sources", nargs="+", metavar="PATH|URL")
    q.add_argument("--no-wait", action="store_true", help="print the job ids and return")
    q = ksub.add_parser("search", help="search a base (hybrid: vectors and BM25)")
    q.add_argument("name")
    q.add_argument("query")
    q.add_argument("-k", type=int, default=5)
    q = ksub.add_parser("rm", help="remove a document, or the whole base")
    q.add_argument("name")
    q.add_argument("document", nargs="?")
