"""Knowledge bases in the running tree: the KnowledgeService ingests through the
embedder pool (the packaged MiniLM model) into two KnowledgeShards; chat reads them
through context injection and the search_knowledge tool; the API and the CLI manage
them; a shard or an embedder SIGKILLed mid-work loses nothing."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import KB_NAME, ChatClient, Runtime, eventually
from tests.peers.openai_server import FakeLLM, Scripted

pytestmark = pytest.mark.timeout(240)

CORPUS = {
    "refunds.md": (
        "# Refund policy\n\n## Returns\n\nCustomers may return any item within 30 days of "
        "delivery for a full refund. The amount goes to the original card within five "
        "business days.\n\n## Exchanges\n\nItems can be swapped for another size or colour "
        "at no charge, once per order.\n"
    ),
    "errors.txt": (
        "Error ZXQ-77 means the flux capacitor lost its calibration. Hold the blue button "
        "for ten seconds to recalibrate.\n\nError KLM-12 means the water tank is empty. "
        "Fill it up to the line marked MAX.\n"
    ),
    "office.html": (
        "<html><head><title>Office</title><script>var x = 1;</script></head><body>"
        "<h1>Office hours</h1><p>The office opens at 9 am and closes at 5 pm on weekdays; "
        "on weekends the building stays shut.</p><h2>Parking</h2><p>Visitors park in lot B, "
        "behind the cafeteria, and show the ticket at reception.</p></body></html>"
    ),
    "pets.md": (
        "# Pets\n\nDogs may come to work on Fridays when they are on a leash. Cats stay at home.\n"
    ),
}


def call(rt: Runtime, method: str, *args: Any, **kwargs: Any) -> Any:
    import ray

    from actors.common import KNOWLEDGE

    actor = ray.get_actor(KNOWLEDGE, namespace=rt.namespace)
    return getattr(actor, method).remote(*args, **kwargs)


async def until_done(rt: Runtime, job: dict[str, Any], within: float = 120) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        now: dict[str, Any] = await call(rt, "job", job["id"])
        return now if now["status"] in ("ready", "unchanged", "failed") else None

    done: dict[str, Any] = await eventually(finished, within=within, interval=0.2)
    return done


@pytest.fixture(scope="module")
async def handbook(runtime: Runtime) -> AsyncIterator[str]:
    bases = {b["name"] for b in await call(runtime, "bases")}
    if KB_NAME not in bases:
        await call(runtime, "create", KB_NAME, "the company handbook")
    jobs = [
        await call(runtime, "add", KB_NAME, name, data=text.encode())
        for name, text in CORPUS.items()
    ]
    for job in jobs:
        done = await until_done(runtime, job)
        assert done["status"] in ("ready", "unchanged"), done
    yield KB_NAME


async def top_document(rt: Runtime, query: str) -> str:
    passages = await call(rt, "search", [KB_NAME], query, 3)
    assert passages, query
    return str(passages[0]["document"])


async def test_lexical_and_semantic_queries_find_the_right_chunk(
    runtime: Runtime, handbook: str
) -> None:
    assert await top_document(runtime, "ZXQ-77") == "errors.txt"
    # No word in common with the answer: only the vectors can find these.
    assert await top_document(runtime, "Can I get reimbursed for a purchase?") == "refunds.md"
    passages = await call(runtime, "search", [KB_NAME], "where should guests leave their cars", 3)
    assert passages[0]["document"] == "office.html" and "lot B" in passages[0]["text"]
    assert passages[0]["heading"] and "Parking" in passages[0]["heading"]
    assert "var x" not in " ".join(p["text"] for p in passages), "scripts are dropped"


async def test_adding_a_document_again_changes_nothing(runtime: Runtime, handbook: str) -> None:
    before = {b["name"]: b for b in await call(runtime, "bases")}[KB_NAME]["chunks"]
    job = await call(runtime, "add", KB_NAME, "pets.md", data=CORPUS["pets.md"].encode())
    assert (await until_done(runtime, job))["status"] == "unchanged"
    copy = await call(runtime, "add", KB_NAME, "pets-copy.md", data=CORPUS["pets.md"].encode())
    done = await until_done(runtime, copy)
    assert done["status"] == "ready" and done["chunks"] == 0 and done["duplicates"] >= 1
    after = {b["name"]: b for b in await call(runtime, "bases")}[KB_NAME]["chunks"]
    assert after == before, "duplicate chunks are stored once"


async def test_chat_gets_the_passages_in_its_prompt(
    chat: ChatClient, fake_llm: FakeLLM, handbook: str
) -> None:
    session = f"kb-{uuid.uuid4().hex[:8]}"
    await chat.ask(session, "/persona librarian")
    await chat.ask(session, "what does error ZXQ-77 mean?")
    system = fake_llm.requests[-1]["messages"][0]["content"]
    assert system.startswith("You answer from the handbook.")
    assert "[1] errors.txt" in system and "flux capacitor" in system
    # A session with the default persona reads no knowledge base.
    await chat.ask(f"plain-{uuid.uuid4().hex[:8]}", "what does error ZXQ-77 mean?")
    assert "flux capacitor" not in fake_llm.requests[-1]["messages"][0]["content"]


async def test_the_agent_searches_with_the_tool(
    chat: ChatClient, fake_llm: FakeLLM, handbook: str
) -> None:
    session = f"kb-{uuid.uuid4().hex[:8]}"
    await chat.ask(session, "/persona librarian")
    fake_llm.script.append(
        Scripted(tool_calls=[{"name": "search_knowledge", "arguments": {"query": "dogs at work"}}])
    )
    reply = await chat.ask(session, "can I bring my dog?")
    offered = [t["function"]["name"] for t in fake_llm.requests[-2].get("tools", [])]
    assert "search_knowledge" in offered
    tool_results = [m for m in fake_llm.requests[-1]["messages"] if m["role"] == "tool"]
    assert tool_results and "pets.md" in tool_results[-1]["content"]
    assert "Fridays" in tool_results[-1]["content"]
    assert reply["error"] is None


# -- the API ------------------------------------------------------------------------------


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    headers = {"Authorization": f"Bearer {runtime.token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        yield http, f"{runtime.http}/api/kb"


async def test_the_api_manages_bases_and_documents(
    runtime: Runtime, api: tuple[aiohttp.ClientSession, str]
) -> None:
    http, base = api
    async with aiohttp.ClientSession() as anonymous, anonymous.get(base) as resp:
        assert resp.status == 401
    name = f"scratch-{uuid.uuid4().hex[:6]}"
    async with http.post(base, json={"name": name, "description": "tmp"}) as resp:
        assert resp.status == 201, await resp.text()
    async with http.post(base, json={"name": name}) as resp:
        assert resp.status == 400 and "exists" in (await resp.json())["error"]
    async with http.post(
        f"{base}/{name}/documents",
        params={"name": "notes.md"},
        data=b"# Notes\n\nThe vault code is 4711.",
    ) as resp:
        assert resp.status == 202
        job = await resp.json()
    while job["status"] not in ("ready", "failed"):
        await asyncio.sleep(0.2)
        async with http.get(f"{base}/jobs/{job['id']}") as resp:
            job = await resp.json()
    assert job["status"] == "ready" and job["chunks"] == 1
    async with http.post(f"{base}/{name}/search", json={"query": "vault code"}) as resp:
        passages = (await resp.json())["passages"]
    assert passages[0]["document"] == "notes.md" and "4711" in passages[0]["text"]
    async with http.get(f"{base}/{name}/documents") as resp:
        (doc,) = (await resp.json())["documents"]
    assert doc["name"] == "notes.md" and doc["status"] == "ready"
    async with http.delete(f"{base}/{name}/documents/notes.md") as resp:
        assert resp.status == 200 and (await resp.json())["chunks"] == 1
    async with http.delete(f"{base}/{name}") as resp:
        assert resp.status == 200
    async with http.get(f"{base}/{name}/documents") as resp:
        assert resp.status == 404


async def test_the_api_refuses_bad_requests(
    runtime: Runtime, api: tuple[aiohttp.ClientSession, str], handbook: str
) -> None:
    http, base = api
    docs = f"{base}/{KB_NAME}/documents"
    for bad in ("../../etc/passwd", "a/b.md", ".hidden.md", ""):
        async with http.post(docs, params={"name": bad}, data=b"hello") as resp:
            assert resp.status == 400, bad
    async with http.post(
        f"{base}/no-such-base/documents", params={"name": "a.md"}, data=b"x"
    ) as resp:
        assert resp.status == 404
    async with http.post(f"{base}/bad name!/search", json={"query": "x"}) as resp:
        assert resp.status in (400, 404)
    too_big = io.BytesIO(b"a" * (int(runtime.cfg.knowledge.max_document_mb * 2**20) + 10))
    async with http.post(docs, params={"name": "big.txt"}, data=too_big) as resp:
        assert resp.status == 413 and "limit" in (await resp.json())["error"]
    async with http.post(f"{base}/{KB_NAME}/search", json={"query": ""}) as resp:
        assert resp.status == 400
    async with http.post(f"{base}/{KB_NAME}/search", data=b"{not json") as resp:
        assert resp.status == 400
    for name, body, why in (
        ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "PDF"),
        ("tool.exe", b"MZ\x90\x00\x03", "unsupported"),
        ("blank.txt", b"   \n\n  ", "no text"),
    ):
        async with http.post(docs, params={"name": name}, data=body) as resp:
            assert resp.status == 202, name
            job = await resp.json()
        done = await until_done(runtime, job)
        assert done["status"] == "failed", done
        assert why.lower() in done["error"].lower(), done["error"]
    assert await top_document(runtime, "ZXQ-77") == "errors.txt", "the base still serves"


# -- fault tolerance ----------------------------------------------------------------------


async def actor_info(rt: Runtime, name: str) -> dict[str, Any]:
    status = await rt.status()
    found: dict[str, Any] = next(a for a in status["actors"] if a["name"] == name)
    return found


async def kill(rt: Runtime, name: str) -> int:
    pid = int((await actor_info(rt, name))["pid"])
    os.kill(pid, signal.SIGKILL)
    return pid


async def wait_restarted(rt: Runtime, name: str, old_pid: int) -> None:
    async def back() -> bool:
        info = await actor_info(rt, name)
        return bool(info["pid"] != old_pid and info["state"] == "alive")

    await eventually(back, within=60)


QUERIES = (
    "ZXQ-77",
    "Can I get reimbursed for a purchase?",
    "where should guests leave their cars",
    "water tank",
)


async def test_a_shard_killed_during_queries_comes_back_with_the_same_results(
    runtime: Runtime, handbook: str
) -> None:
    async def results() -> list[list[int]]:
        out = []
        for q in QUERIES:
            out.append([p["chunk_id"] for p in await call(runtime, "search", [KB_NAME], q, 5)])
        return out

    before = await results()
    old = await kill(runtime, "kb-shard-0")
    answered = 0
    for _ in range(10):  # queries keep being answered while the shard restarts
        for q in QUERIES:
            assert isinstance(await call(runtime, "search", [KB_NAME], q, 5), list)
            answered += 1
    assert answered == 10 * len(QUERIES)
    await wait_restarted(runtime, "kb-shard-0", old)
    assert await results() == before


async def test_an_embedder_killed_during_ingestion_loses_no_chunk(
    runtime: Runtime, handbook: str
) -> None:
    name = f"bulk-{uuid.uuid4().hex[:6]}"
    await call(runtime, "create", name, "")
    paragraphs = [
        f"Paragraph {i}: the widget number {i} is painted {('red', 'green', 'blue')[i % 3]} "
        f"and weighs {i * 7 % 101} grams; it was catalogued under code W-{i:05d}."
        for i in range(1500)
    ]
    retries = (await actor_info(runtime, "knowledge"))["info"]["embed_retries"]
    job = await call(runtime, "add", name, "catalog.txt", data="\n\n".join(paragraphs).encode())

    async def embedding() -> dict[str, Any] | None:
        now: dict[str, Any] = await call(runtime, "job", job["id"])
        return now if now["status"] == "embedding" and now["embedded"] > 0 else None

    at_kill = await eventually(embedding, within=60, interval=0.05)
    old = await kill(runtime, "embedder-0")
    done = await until_done(runtime, job, within=180)
    assert done["status"] == "ready", done
    assert at_kill["embedded"] < done["chunks"], "killed mid-ingestion"
    assert done["embedded"] == done["chunks"] > 400

    async def retried() -> bool:
        info = (await actor_info(runtime, "knowledge"))["info"]
        return bool(info["embed_retries"] > retries)

    await eventually(retried, within=10)  # the batch the dead worker held was sent again
    await wait_restarted(runtime, "embedder-0", old)
    (kb,) = [b for b in await call(runtime, "bases") if b["name"] == name]
    assert kb["chunks"] == done["chunks"]
    hits = await call(runtime, "search", [name], "W-00321", 3)
    assert "W-00321" in hits[0]["text"]
    await call(runtime, "delete", name)


# -- the CLI ------------------------------------------------------------------------------


def test_the_cli_lists_and_searches(runtime: Runtime, handbook: str, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(runtime.cfg.data_dir),
                "runtime": {"namespace": runtime.namespace},
                "knowledge": {"max_document_mb": 1},
            }
        )
    )
    doc = tmp_path / "docs"
    doc.mkdir()
    (doc / "ops.md").write_text("# Ops\n\nThe backup runs at 03:00 every night.")
    (doc / "ignored.bin").write_bytes(b"\x00\x01")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "astr_ray.cli",
                "-c",
                str(cfg),
                "kb",
                "--address",
                runtime.gcs_address,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    name = f"cli-{uuid.uuid4().hex[:6]}"
    assert cli("create", name).returncode == 0
    added = cli("add", name, str(doc))
    assert added.returncode == 0, added.stderr
    assert "ops.md" in added.stdout and "ready" in added.stdout and "ignored" not in added.stdout
    listed = cli("ls")
    assert name in listed.stdout and KB_NAME in listed.stdout
    found = cli("search", name, "when does the backup run")
    assert "[1] ops.md" in found.stdout and "03:00" in found.stdout
    missing = cli("search", "no-such-base", "x")
    assert missing.returncode == 2 and "no knowledge base" in missing.stderr
    assert cli("rm", name).returncode == 0


async def test_urls_are_fetched_and_a_changed_document_replaces_its_chunks(
    runtime: Runtime,
) -> None:
    from aiohttp import web

    pages = {"/faq.html": "<html><body><h1>FAQ</h1><p>The wifi password is orchid-42.</p>"}

    async def serve(request: web.Request) -> web.Response:
        body = pages.get(request.path)
        if body is None:
            return web.Response(status=404)
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    server = web.AppRunner(app)
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    port = server.addresses[0][1]
    name = f"web-{uuid.uuid4().hex[:6]}"
    try:
        await call(runtime, "create", name, "")
        url = f"http://127.0.0.1:{port}/faq.html"
        done = await until_done(runtime, await call(runtime, "add", name, "faq.html", url=url))
        assert done["status"] == "ready" and done["source"] == url
        (hit,) = await call(runtime, "search", [name], "wifi password", 1)
        assert "orchid-42" in hit["text"]
        # The page changed: adding it again replaces its chunks.
        pages["/faq.html"] = "<html><body><h1>FAQ</h1><p>The wifi password is lotus-7.</p>"
        done = await until_done(runtime, await call(runtime, "add", name, "faq.html", url=url))
        assert done["status"] == "ready"
        hits = await call(runtime, "search", [name], "wifi password", 5)
        texts = " ".join(h["text"] for h in hits)
        assert "lotus-7" in texts and "orchid-42" not in texts
        missing = f"http://127.0.0.1:{port}/gone.html"
        failed = await until_done(
            runtime, await call(runtime, "add", name, "gone.html", url=missing)
        )
        assert failed["status"] == "failed" and "404" in failed["error"]
    finally:
        await call(runtime, "delete", name)
        await server.cleanup()
