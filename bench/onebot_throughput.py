"""OneBot v11 throughput and overhead: many simulated QQ users over the reverse WebSocket.

A load generator plays the OneBot implementation (NapCat): it connects to the bot's
reverse WebSocket with the access token, sends private message events for N users
(each waits for its reply: a closed loop) and answers the bot's ``send_msg`` actions.
The LLM is the fake one at 0 ms, in its own process. Prints messages/s and end-to-end
p50/p99, with the web chat over HTTP on the same tree and the fake LLM driven directly
as baselines measured in the same run.

Targets (issue 4): >= 500 messages/s with a 0 ms LLM; overhead <= 10 ms p50 / 50 ms p99.

    python -m bench.onebot_throughput [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.webchat_throughput import (
    FakeLLMProcess,
    Tree,
    baseline_body,
    chat_body,
    closed_loop,
    free_port,
    report,
    start_ray,
)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SELF_ID = 10001
# Message ids are the idempotency key: never reuse one across runs (a message seen
# before gets its stored reply, which is not sent twice).
_IDS = itertools.count(int(time.time() * 1000) % 10**9)


async def onebot_loop(url: str, token: str, users: int, messages: int) -> tuple[float, list[float]]:
    """The simulated implementation: one WebSocket, ``users`` closed-loop users."""
    waiting: dict[int, asyncio.Future[float]] = {}
    ids = _IDS
    base = next(_IDS) * 1000
    lat: list[float] = []
    headers = {
        "X-Self-ID": str(SELF_ID),
        "X-Client-Role": "Universal",
        "Authorization": f"Bearer {token}",
    }
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        send_lock = asyncio.Lock()

        async def send(obj: dict[str, Any]) -> None:
            async with send_lock:
                await ws.send_str(json.dumps(obj))

        async def reader() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "action" not in data:
                    continue
                await send(
                    {
                        "status": "ok",
                        "retcode": 0,
                        "data": {"message_id": next(ids)},
                        "echo": data.get("echo"),
                    }
                )
                if data["action"] in ("send_msg", "send_private_msg"):
                    user = int(data["params"].get("user_id", 0))
                    fut = waiting.pop(user, None)
                    if fut is not None and not fut.done():
                        fut.set_result(time.perf_counter())

        reading = asyncio.create_task(reader())

        async def user(u: int) -> None:
            uid = base + u
            for j in range(messages):
                fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
                waiting[uid] = fut
                t0 = time.perf_counter()
                await send(
                    {
                        "time": int(time.time()),
                        "self_id": SELF_ID,
                        "post_type": "message",
                        "message_type": "private",
                        "sub_type": "friend",
                        "message_id": next(ids),
                        "user_id": uid,
                        "message": [{"type": "text", "data": {"text": f"hello {j}"}}],
                        "raw_message": f"hello {j}",
                        "font": 0,
                        "sender": {"user_id": uid, "nickname": f"user{u}"},
                    }
                )
                done = await asyncio.wait_for(fut, 60)
                lat.append(done - t0)

        start = time.perf_counter()
        await asyncio.gather(*(user(u) for u in range(users)))
        wall = time.perf_counter() - start
        reading.cancel()
    return wall, lat


async def amain(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="astr-bench-onebot-"))
    start_ray()
    users, messages = (50, 20) if not args.quick else (20, 10)
    fake = FakeLLMProcess(0.0)
    token = uuid.uuid4().hex
    port = free_port()
    tree = Tree(
        fake,
        args.hosts,
        "native",
        tmp,
        extra={"platforms": [{"id": "qq", "port": port, "access_token": token}]},
    )
    print(f"closed loop: {users} users x {messages} messages, 0 ms fake LLM, {args.hosts} host(s)")
    try:
        headers = {"Content-Type": "application/json"}
        wall, lat, _ = await closed_loop(
            fake.base_url + "/chat/completions", users, messages, headers, baseline_body
        )
        report("baseline: fake LLM directly", wall, lat, 0.0)
        await onebot_loop(f"ws://127.0.0.1:{port}/onebot/v11/ws", token, 10, 5)  # warm up
        wall, lat = await onebot_loop(
            f"ws://127.0.0.1:{port}/onebot/v11/ws", token, users, messages
        )
        report("astr-ray over OneBot v11 (reverse WS)", wall, lat, 0.0)
        wall, lat, _ = await closed_loop(tree.url, users, messages, tree.headers, chat_body)
        report("astr-ray over the web chat (HTTP)", wall, lat, 0.0)
        print("overhead at one user (200 messages, one at a time):")
        wall, lat, _ = await closed_loop(
            fake.base_url + "/chat/completions", 1, 200, headers, baseline_body
        )
        report("baseline: fake LLM directly", wall, lat, 0.0)
        wall, lat = await onebot_loop(f"ws://127.0.0.1:{port}/onebot/v11/ws", token, 1, 200)
        report("astr-ray over OneBot v11 (reverse WS)", wall, lat, 0.0)
    finally:
        tree.stop()
        fake.stop()
        import ray

        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--hosts", type=int, default=2)
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
