"""The ``astr-ray`` command line.

    astr-ray init                      write data/config.yaml with a fresh web chat token
    astr-ray dev                       single node: local Ray + dashboard, SQLite, web chat
    astr-ray run --address ADDR        start (or re-attach to) the tree on a Ray cluster
    astr-ray status [--address auto]   actors, state, restarts, sessions per host
    astr-ray stop   [--address auto]   drain and stop the tree
    astr-ray kb ls|create|add|search|rm  knowledge bases (astr_ray.cli_kb)
    astr-ray rolling-restart           replace session hosts one by one (after an upgrade)
    astr-ray chat                      talk to the running bot from the terminal
    astr-ray password                  give the dashboard's admin a new password
    astr-ray plugin ls                 installed plugins: version, source, manifest errors
    astr-ray plugin install SOURCE     from a git URL, a folder or a .zip/.tar.gz (--force)
    astr-ray plugin update NAME        install again from where it came from
    astr-ray plugin uninstall NAME     remove its folder
    astr-ray plugin reload [NAME]      make the running bot load the plugins again

Ray is imported only by the commands that need it. A bad config is reported as
``config error: <key path>: <reason>`` with exit status 2, a refused plugin command as
``plugin error: <reason>``, also with 2.
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

from astr_ray.cli_kb import add_kb_parser, cmd_kb
from astr_ray.config import DEFAULT_CONFIG_PATH, Config, load_config, write_default_config
from astr_ray.errors import ConfigError, PluginError, StoreError

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


def _admin_auth(cfg: Config, new_password: bool) -> str | None:
    """Open the store (migrated) and either give the dashboard admin a password if it
    has none (``new_password`` false: returns it, or ``None``) or reset it (returns it)."""
    from astr_ray.auth import Auth
    from astr_ray.store import Store

    async def go() -> str | None:
        async with await Store.open(cfg.store_url) as store:
            await store.migrate()
            auth = Auth(store)
            return await (auth.reset_password() if new_password else auth.ensure_admin())

    return asyncio.run(go())


def _print_where(
    cfg: Config,
    ray_info: dict[str, Any] | None,
    status: dict[str, Any] | None = None,
    admin_password: str | None = None,
) -> None:
    token = cfg.webchat.token.get_secret_value() if cfg.webchat.token else "(none)"
    base = f"http://{cfg.webchat.host}:{cfg.webchat.port}"
    print("astr-ray is up")
    print(f"  dashboard     http://{cfg.dashboard.host}:{cfg.dashboard.port}/")
    if admin_password is not None:
        print(
            f"  login         admin / {admin_password}   "
            "(shown once; change it in the dashboard or with astr-ray password)"
        )
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
    for p in cfg.platforms:
        print(f"  {p.id:13} {p.describe()}" + ("" if p.enabled else " (disabled)"))
    sandbox = cfg.sandbox.backend
    if sandbox != "none" and cfg.sandbox.executors:
        found = next(
            (
                a.get("info") or {}
                for a in (status or {}).get("actors", [])
                if a["kind"] == "sandbox"
            ),
            {},
        )
        backend = found.get("backend")
        print(
            f"  code sandbox  {backend} (sandbox.backend: {sandbox})"
            if backend
            else f"  code sandbox  off: {found.get('unavailable') or 'starting'}"
        )
    print("  chat          astr-ray chat")


def cmd_dev(args: argparse.Namespace) -> int:
    if not Path(args.config).exists():
        cmd_init(argparse.Namespace(config=args.config, force=False))
    cfg = _load(args.config)
    if "watch" not in cfg.plugins.model_fields_set:
        # Dev mode: plugins reload when their files change, unless the config says no.
        cfg = cfg.model_copy(update={"plugins": cfg.plugins.model_copy(update={"watch": True})})
    # Before Ray: a store that cannot be opened fails fast, with nothing to tear down.
    admin_password = _admin_auth(cfg, new_password=False)
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
        _print_where(cfg, info, status, admin_password)
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
    admin_password = _admin_auth(cfg, new_password=False)
    from actors import runtime

    runtime.connect(args.address, cfg.runtime.namespace)
    _, status = runtime.start_tree(cfg)
    _print_where(cfg, None, status, admin_password)
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
        elif a["kind"] == "adapter" and info.get("platform"):
            mode = f" {info['mode']}" if info.get("mode") else ""
            port = f" port={info['port']}" if info.get("port") else ""
            detail = (
                f"{info['platform']}{mode}{port} "
                f"connected={info.get('connected')} reconnects={info.get('reconnects', 0)} "
                f"events={info.get('events', 0)} replies={info.get('replies', 0)}"
            )
            if info.get("send_failures") or info.get("malformed"):
                detail += (
                    f" send_failures={info.get('send_failures', 0)}"
                    f" malformed={info.get('malformed', 0)}"
                )
        elif a["kind"] == "adapter":
            detail = f"port={info.get('port')} messages={info.get('messages')}"
        elif a["kind"] == "sandbox":
            backend = info.get("backend")
            detail = (
                f"backend={backend} runs={info.get('runs', 0)} waiting={info.get('waiting', 0)}"
                if backend
                else f"OFF: {info.get('unavailable')}"
            )
        elif a["kind"] == "mcp":
            detail = (
                f"{info.get('transport')} connected={info.get('connected')} "
                f"calls={info.get('calls', 0)}"
            )
            if not info.get("connected") and info.get("last_error"):
                detail += f" last_error={info['last_error']}"
        elif a["kind"] == "plugin":
            detail = f"loaded={info.get('loaded')}" + (
                f" error={info['error']}" if info.get("error") else ""
            )
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


def cmd_password(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    password = _admin_auth(cfg, new_password=True)
    print(f"new dashboard password: admin / {password}   (shown once)")
    print("every dashboard login was logged out; API keys still work")
    return 0


# -- plugins -------------------------------------------------------------------------
_RELOAD_HINT = (
    "a running bot picks this up with `astr-ray plugin reload` "
    "(or by itself in dev mode when plugins.watch is on)"
)


def cmd_plugin(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    try:
        result: int = args.plugin_func(args, cfg.plugins_dir, cfg)
        return result
    except PluginError as exc:
        print(f"plugin error: {exc}", file=sys.stderr)
        return 2


def _plugin_ls(args: argparse.Namespace, plugins_dir: Path, cfg: Config) -> int:
    from astr_ray.plugins import install

    plugins = install.installed(plugins_dir)
    if not plugins:
        print(f"no plugins in {plugins_dir}")
        return 0
    print(f"plugins in {plugins_dir}:")
    print(f"  {'name':24} {'version':12} {'kind':8} source")
    for p in plugins:
        source = p.source or "(put there by hand)"
        print(f"  {p.name:24} {p.version or '-':12} {p.kind or '-':8} {source}")
        if p.error:
            print(f"  {'':24} error: {p.error}")
    return 0


def _plugin_install(args: argparse.Namespace, plugins_dir: Path, cfg: Config) -> int:
    from astr_ray.plugins import install

    before = {p.name: p.version for p in install.installed(plugins_dir)}
    p = install.install(args.source, plugins_dir, force=args.force)
    print(f"installed {p.name} {p.version} from {p.source} ({p.kind}) into {p.folder}")
    if p.name in before:
        print(f"  (replaced {p.name} {before[p.name] or '(broken manifest)'})")
    print(_RELOAD_HINT)
    return 0


def _plugin_update(args: argparse.Namespace, plugins_dir: Path, cfg: Config) -> int:
    from astr_ray.plugins import install

    before = {p.name: p.version for p in install.installed(plugins_dir)}.get(args.name)
    p = install.update(args.name, plugins_dir)
    print(f"updated {p.name}: {before or '?'} -> {p.version} from {p.source} ({p.kind})")
    print(_RELOAD_HINT)
    return 0


def _plugin_uninstall(args: argparse.Namespace, plugins_dir: Path, cfg: Config) -> int:
    from astr_ray.plugins import install

    install.uninstall(args.name, plugins_dir)
    print(f"removed {args.name} from {plugins_dir}")
    print(_RELOAD_HINT)
    return 0


def _plugin_reload(args: argparse.Namespace, plugins_dir: Path, cfg: Config) -> int:
    import ray

    from actors import runtime

    try:
        runtime.connect(args.address, cfg.runtime.namespace)
        sup = runtime.find_supervisor(cfg.runtime.namespace)
    except (ConnectionError, ValueError) as exc:
        print(f"astr-ray is not running here: {exc}", file=sys.stderr)
        return 1
    try:
        result: dict[str, Any] = ray.get(sup.reload_plugins.remote(args.name), timeout=300)
    except ray.exceptions.RayTaskError as exc:
        # The supervisor's own error (e.g. an unknown plugin name) rides inside.
        if isinstance(exc.cause, PluginError):
            raise exc.cause from None
        print(f"reload failed: {exc.cause!r}", file=sys.stderr)
        return 1
    except ray.exceptions.RayError as exc:
        print(f"reload failed: {exc}", file=sys.stderr)
        return 1
    reloaded = result.get("reloaded", [])
    failures = result.get("failures", [])
    print(f"reloaded: {', '.join(reloaded) if reloaded else 'nothing'}")
    for f in failures:
        print(f"failed:   {f.get('name')}: {f.get('reason')}")
    return 1 if failures else 0


def _add_plugin_parser(sub: Any) -> None:
    p = sub.add_parser("plugin", help="install, update, remove and reload plugins")
    p.set_defaults(func=cmd_plugin)
    psub = p.add_subparsers(dest="plugin_command", required=True)
    q = psub.add_parser("ls", help="installed plugins, their versions and sources")
    q.set_defaults(plugin_func=_plugin_ls)
    q = psub.add_parser("install", help="install from a git URL, a folder or an archive")
    q.add_argument("source", help="git URL, folder, or .zip / .tar.gz / .tgz / .tar file")
    q.add_argument("--force", action="store_true", help="replace a plugin of the same name")
    q.set_defaults(plugin_func=_plugin_install)
    q = psub.add_parser("update", help="install a plugin again from its recorded source")
    q.add_argument("name")
    q.set_defaults(plugin_func=_plugin_update)
    q = psub.add_parser("uninstall", help="remove a plugin's folder")
    q.add_argument("name")
    q.set_defaults(plugin_func=_plugin_uninstall)
    q = psub.add_parser("reload", help="make the running bot reload its plugins")
    q.add_argument("name", nargs="?", default=None, help="only this plugin (default: all)")
    q.add_argument("--address", default="auto")
    q.set_defaults(plugin_func=_plugin_reload)


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
    p = sub.add_parser(
        "password", help="give the dashboard's admin a new, generated password (shown once)"
    )
    p.set_defaults(func=cmd_password)
    _add_plugin_parser(sub)
    add_kb_parser(sub)
    sub.choices["kb"].set_defaults(func=lambda args: cmd_kb(args, _load(args.config)))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"store error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
