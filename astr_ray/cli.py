"""The ``astr-ray`` command line.

    astr-ray init                      write data/config.yaml with a fresh web chat token
    astr-ray dev                       single node: local Ray + dashboard, SQLite, web chat
    astr-ray run --address ADDR        start (or re-attach to) the tree on a Ray cluster
    astr-ray status [--address auto]   actors, state, restarts, sessions per host
    astr-ray stop   [--address auto]   drain and stop the tree
    astr-ray rolling-restart           replace session hosts one by one (after an upgrade)
    astr-ray chat                      talk to the running bot from the terminal

Ray is imported only by the commands that need it. A bad config is reported as
``config error: <key path>: <reason>`` with exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from astr_ray.config import DEFAULT_CONFIG_PATH, Config, load_config, write_default_config
from astr_ray.errors import ConfigError

__all__ = ["main"]


def _load(path: Path) -> Config:
    return load_config(path)


def cmd_init(args: argparse.Namespace) -> int:
    path = write_default_config(args.config, force=args.force)
    cfg = _load(path)
    token = cfg.webchat.token.get_secret_value() if cfg.webchat.token else ""
    print(f"wrote {path} (mode 600)")
    print(f"web chat token: {token}")
    print("next: add an LLM provider under `providers:` and run `astr-ray dev`")
    return 0


def _print_where(cfg: Config, ray_info: dict[str, Any] | None) -> None:
    token = cfg.webchat.token.get_secret_value() if cfg.webchat.token else "(none)"
    base = f"http://{cfg.webchat.host}:{cfg.webchat.port}"
    print("astr-ray is up")
    print(f"  web chat      {base}/api/chat   ws://{cfg.webchat.host}:{cfg.webchat.port}/ws/chat")
    print(f"  health        {base}/health")
    print(f"  token         {token}")
    if ray_info and ray_info.get("dashboard_url"):
        print(f"  ray dashboard http://{ray_info['dashboard_url']}")
    print(f"  data          {cfg.data_dir}")
    providers = ", ".join(p.id for p in cfg.provider_chain()) or (
        "none configured: add one under `providers:` in the config"
    )
    print(f"  providers     {providers}")
    print("  chat          astr-ray chat")


def cmd_dev(args: argparse.Namespace) -> int:
    if not Path(args.config).exists():
        cmd_init(argparse.Namespace(config=args.config, force=False))
    cfg = _load(args.config)
    from actors import runtime

    print("starting Ray (single node)...", flush=True)
    info = runtime.init_local(cfg, dashboard=not args.no_ray_dashboard)
    stopping = False

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    sup = None
    try:
        sup, status = runtime.start_tree(cfg)
        _print_where(cfg, info)
        _print_status(status, brief=True)
        print("Ctrl-C stops everything.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stopping = True
    finally:
        # A second Ctrl-C must not cut the drain short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        import ray

        if stopping and sup is not None:
            print("\nstopping (draining sessions)...", flush=True)
            try:
                runtime.stop_tree(cfg.runtime.namespace, handle=sup)
            except Exception as exc:
                print(f"stop: {exc}", file=sys.stderr)
        ray.shutdown()
    print("stopped.")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from actors import runtime

    runtime.connect(args.address, cfg.runtime.namespace)
    _, status = runtime.start_tree(cfg)
    _print_where(cfg, None)
    _print_status(status, brief=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from actors import runtime

    try:
        runtime.connect(args.address, cfg.runtime.namespace)
        status = runtime.tree_status(cfg.runtime.namespace)
    except (ConnectionError, ValueError) as exc:
        print(f"astr-ray is not running here: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        _print_status(status)
    return 0 if status.get("ok") else 1


def cmd_rolling_restart(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from actors import runtime

    runtime.connect(args.address, cfg.runtime.namespace)
    status = runtime.rolling_restart(cfg.runtime.namespace)
    _print_status(status, brief=True)
    return 0 if status.get("ok") else 1


def cmd_stop(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from actors import runtime

    runtime.connect(args.address, cfg.runtime.namespace)
    runtime.stop_tree(cfg.runtime.namespace)
    print("stopped.")
    return 0


def _print_status(status: dict[str, Any], brief: bool = False) -> None:
    nodes = status.get("nodes", [])
    short = {n["node_id"]: f"node-{k}" for k, n in enumerate(nodes)}
    print(
        f"tree: {'ok' if status.get('ok') else 'DEGRADED'}  namespace={status.get('namespace')}"
        f"  shard epoch={status.get('epoch', '-')}"
    )
    if nodes and not brief:
        print(f"  {'node':8} {'alive':6} {'address':16} resources")
        for n in nodes:
            res = " ".join(f"{k}={v:g}" for k, v in sorted(n.get("resources", {}).items()))
            print(
                f"  {short[n['node_id']]:8} {'yes' if n['alive'] else 'NO':6} "
                f"{n.get('address') or '-':16} {res}"
            )
    print(f"  {'actor':28} {'state':11} {'node':8} {'pid':>7} {'restarts':>8}  detail")
    for a in status.get("actors", []):
        info = a.get("info") or {}
        detail = ""
        if a["kind"] == "session_host":
            detail = (
                f"sessions={info.get('active_sessions', 0)} "
                f"shards={info.get('owned_shards', '-')} turns={info.get('turns', 0)} "
                f"mailbox={info.get('mailbox_depth', 0)}"
            )
        elif a["kind"] == "provider_pool":
            detail = (
                f"healthy={info.get('healthy')} in_use={info.get('in_use')} "
                f"failures={info.get('failures')}"
            )
        elif a["kind"] == "adapter":
            detail = f"port={info.get('port')} messages={info.get('messages')}"
        if a.get("state") != "alive" and a.get("last_error"):
            detail = a["last_error"]
        node = short.get(a.get("node_id") or "", "-")
        print(
            f"  {a['name']:28} {a['state']:11} {node:8} {a.get('pid') or '-':>7} "
            f"{a['restarts']:>8}  {detail}"
        )
    if not brief and status.get("restart_log"):
        print("restart log (newest first):")
        for e in status["restart_log"][:20]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
            print(f"  {when}  {e['actor']:28} {e['kind']:10} {e['reason']}")


# -- chat ----------------------------------------------------------------------------
async def _chat(url: str, token: str, session: str, one_shot: str | None) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, params={"token": token}, heartbeat=30)
        except aiohttp.ClientError as exc:
            print(f"cannot reach the bot at {url}: {exc}", file=sys.stderr)
            return 1
        async with ws:
            loop = asyncio.get_running_loop()
            while True:
                if one_shot is not None:
                    text = one_shot
                else:
                    try:
                        text = await loop.run_in_executor(None, input, "you> ")
                    except EOFError:
                        return 0
                    if not text.strip():
                        continue
                    if text.strip() in ("/quit", "/exit"):
                        return 0
                mid = uuid.uuid4().hex
                await ws.send_json(
                    {"type": "message", "session": session, "text": text, "message_id": mid}
                )
                streamed = False
                sys.stdout.write("bot> ")
                while True:
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        print(
                            f"\nconnection closed ({msg.extra or msg.type.name})", file=sys.stderr
                        )
                        return 1
                    data = json.loads(msg.data)
                    if data.get("type") == "chunk" and data.get("message_id") == mid:
                        streamed = True
                        sys.stdout.write(data["text"])
                        sys.stdout.flush()
                    elif data.get("type") == "reply" and data.get("message_id") == mid:
                        print("" if streamed else data["text"])
                        break
                    elif data.get("type") == "error":
                        print(f"\nerror: {data.get('message')}", file=sys.stderr)
                        break
                if one_shot is not None:
                    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    token = args.token or (cfg.webchat.token.get_secret_value() if cfg.webchat.token else "")
    url = args.url or f"ws://{cfg.webchat.host}:{cfg.webchat.port}/ws/chat"
    return asyncio.run(_chat(url, token, args.session, args.message))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astr-ray", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"config file (default {DEFAULT_CONFIG_PATH})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write a commented default config")
    p.add_argument("--force", action="store_true", help="overwrite an existing config")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("dev", help="run everything on this machine")
    p.add_argument("--no-ray-dashboard", action="store_true")
    p.set_defaults(func=cmd_dev)
    p = sub.add_parser("run", help="start on an existing Ray cluster")
    p.add_argument("--address", default="auto")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("status", help="show the actor tree")
    p.add_argument("--address", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser(
        "rolling-restart", help="replace every session host, one at a time (upgrades)"
    )
    p.add_argument("--address", default="auto")
    p.set_defaults(func=cmd_rolling_restart)
    p = sub.add_parser("stop", help="stop the tree")
    p.add_argument("--address", default="auto")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("chat", help="chat with the running bot")
    p.add_argument("--session", default="cli")
    p.add_argument("--url")
    p.add_argument("--token")
    p.add_argument("-m", "--message", help="send one message, print the answer, exit")
    p.set_defaults(func=cmd_chat)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
