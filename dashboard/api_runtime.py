"""Dashboard API: the running tree: actors, chat accounts' health, plugins, logs,
metrics and chatting with the bot.

    GET  /api/status                 actors per node, restarts, hosts' shards and mailboxes
    GET  /api/platforms              each account's health and counters (+ masked config)
    GET  /api/plugins                plugins: state, errors, commands, tools, config schema
    POST /api/plugins/{name}/enable|disable, POST /api/plugins/reload
    GET  /api/logs, GET /api/logs/stream (SSE)      filtered by level, actor, session
    GET  /api/metrics/series         the few charted series
    POST /api/chat, WS /api/chat/ws  the bot, as web chat sessions "dash-<user>-<name>"
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from astr_ray.logbook import LogFilter
from astr_ray.plugins.loader import discover
from dashboard.auth import ws_csrf_ok
from dashboard.webchat import (
    MAX_VOICE_BODY,
    BadRequest,
    parse_message,
    read_body,
    reply_json,
    serve_chat_socket,
)

__all__ = ["runtime_routes"]

log = logging.getLogger(__name__)

_PLUGIN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _chat_id(request: Request | WebSocket, session: str) -> str:
    """Each dashboard user talks in web chat sessions of their own."""
    principal = getattr(request.state, "principal", None)
    user = re.sub(r"[^A-Za-z0-9_.@-]", "_", getattr(principal, "user", "anonymous"))
    return f"dash-{user}-{session}"[:128]


def runtime_routes(backend: Any) -> list[BaseRoute]:
    async def status(request: Request) -> Response:
        """The actor tree.
        ---
        summary: Actors per node with state, pid and restarts; hosts; the restart log
        responses:
          200:
            description: the Supervisor's status and the Ray dashboard's address
        """
        info = await backend.supervisor("status")
        info["events"] = info.get("restart_log", [])
        info["hosts"] = [
            {
                "name": a["name"],
                "shards": a["info"].get("owned_shards", 0),
                "sessions": a["info"].get("active_sessions", 0),
                "mailbox": a["info"].get("mailbox_depth", 0),
            }
            for a in info["actors"]
            if a["kind"] == "session_host"
        ]
        cfg = backend.cfg
        host = "127.0.0.1" if cfg.dashboard.host in ("0.0.0.0", "::") else cfg.dashboard.host
        info["ray_dashboard"] = f"http://{host}:{cfg.runtime.ray_dashboard_port}"
        return JSONResponse(info)

    async def platforms(request: Request) -> Response:
        """Chat accounts and their health.
        ---
        summary: Each chat account's state, connection, counters and masked config
        responses:
          200:
            description: the accounts
        """
        health = {p["id"]: p for p in await backend.platforms()}
        masked = await asyncio.to_thread(backend.config_file.masked) if backend.config_file else {}
        configured = {p["id"]: p for p in masked.get("platforms", [])}
        out = []
        for pid in dict.fromkeys([*configured, *health]):
            row = dict(health.get(pid, {"id": pid, "state": "stopped"}))
            if pid in configured:
                row.setdefault("type", configured[pid].get("type"))
                row["enabled"] = configured[pid].get("enabled", True)
                row["config"] = configured[pid]
            out.append(row)
        return JSONResponse({"platforms": out})

    async def plugins(request: Request) -> Response:
        """Plugins.
        ---
        summary: Every plugin with its state, load error, commands, tools and config schema
        responses:
          200:
            description: the plugins
        """
        listing = await backend.any_host("plugin_listing")
        sources, _ = await asyncio.to_thread(discover, backend.cfg.plugins_dir)
        manifests = {s.name: s.manifest for s in sources}
        settings = backend.cfg.plugins.settings
        # The switch as stored (hosts cache it for a couple of seconds).
        states = await backend.store.get_setting("global", "plugin_states") or {}
        rows = []
        for row in listing["plugins"]:
            manifest = manifests.get(row["name"])
            on = states.get(row["name"], row["name"] not in backend.cfg.plugins.disabled)
            row = {**row, "enabled": bool(on)}
            if row["state"] in ("on", "off"):
                row["state"] = "on" if on else "off"
            if manifest is not None:
                row["author"] = manifest.author
                row["config_schema"] = (
                    manifest.config_model().model_json_schema() if manifest.config else None
                )
                row["config"] = (
                    manifest.check_config(settings.get(row["name"])) if (manifest.config) else {}
                )
            rows.append(row)
        return JSONResponse({"plugins": rows, "conflicts": listing.get("conflicts", [])})

    async def switch(request: Request) -> Response:
        """Switch a plugin on or off everywhere.
        ---
        summary: Enable or disable a plugin (for every chat)
        responses:
          200:
            description: the plugin's new state
          404:
            description: no such plugin
        """
        name, verb = request.path_params["name"], request.path_params["verb"]
        if verb not in ("enable", "disable"):
            return _error("not found", 404)
        on = verb == "enable"
        if not _PLUGIN.match(name):
            return _error("not a plugin name")
        listing = await backend.any_host("plugin_listing")
        if name not in {p["name"] for p in listing["plugins"]}:
            return _error(f"no plugin {name!r}", 404)
        states = dict(await backend.store.get_setting("global", "plugin_states") or {})
        states[name] = on
        await backend.store.set_setting("global", "plugin_states", states)
        return JSONResponse({"ok": True, "name": name, "enabled": on})

    async def reload(request: Request) -> Response:
        """Reload every plugin.
        ---
        summary: Reload plugins in every host and isolated worker
        responses:
          200:
            description: what loaded and what failed
        """
        result = await backend.supervisor("reload_plugins", None, within=180)
        return JSONResponse(result)

    def log_filter(request: Request) -> LogFilter:
        q = request.query_params
        return LogFilter.parse(q.get("level"), q.get("actor"), q.get("session"))

    async def logs(request: Request) -> Response:
        """Recent log lines.
        ---
        summary: The newest log records of every actor, filtered by level, actor and session
        responses:
          200:
            description: the records, oldest first
        """
        try:
            keep = log_filter(request)
            limit = min(max(int(request.query_params.get("limit", "200")), 1), 5000)
        except ValueError as exc:
            return _error(str(exc))
        return JSONResponse({"logs": backend.logbook.recent(keep, limit)})

    async def log_stream(request: Request) -> Response:
        """Live log lines (server-sent events).
        ---
        summary: Follow the log, one `data:` JSON record per event
        responses:
          200:
            description: an event stream
        """
        try:
            keep = log_filter(request)
        except ValueError as exc:
            return _error(str(exc))
        queue = backend.logbook.follow(keep)

        async def events() -> AsyncIterator[str]:
            try:
                yield ": following\n\n"
                while True:
                    try:
                        record = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"data: {json.dumps(record)}\n\n"
            finally:
                backend.logbook.unfollow(queue)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"cache-control": "no-store"}
        )

    async def series(request: Request) -> Response:
        """Metric series.
        ---
        summary: Messages, turn latency, errors and sessions over the last minutes
        responses:
          200:
            description: "[time, value] points per series"
        """
        return JSONResponse(
            {
                "interval_s": backend.sample_interval_s,
                "series": {k: [list(p) for p in v] for k, v in backend.series.items()},
            }
        )

    async def chat(request: Request) -> Response:
        """Talk to the bot.
        ---
        summary: One message to the bot (text and/or a voice data URL); the reply
        responses:
          200:
            description: the reply, with attachments (images, voice)
          400:
            description: a malformed message
        """
        body = await read_body(request, MAX_VOICE_BODY)
        if body is None:
            return _error("request body too large", 413)
        try:
            data = json.loads(body or b"null")
            if isinstance(data, dict):
                data["session"] = _chat_id(request, str(data.get("session") or "main"))
            event = parse_message(data, backend.cfg.webchat.max_message_chars)
        except (ValueError, BadRequest) as exc:
            return _error(str(exc) if isinstance(exc, BadRequest) else "body is not valid JSON")
        return JSONResponse(reply_json(await backend.send(event)))

    async def chat_ws(ws: WebSocket) -> None:
        principal = getattr(ws.state, "principal", None)
        await ws.accept()
        if principal is not None and principal.via == "cookie":
            # The cookie rides along cross-site attempts too: the page proves it read
            # the CSRF token (only same-origin script can) before anything is sent.
            try:
                first = json.loads(await asyncio.wait_for(ws.receive_text(), 10))
            except (TimeoutError, ValueError, WebSocketDisconnect):
                first = None
            if not ws_csrf_ok(principal, first):
                await ws.close(code=4403, reason="missing or wrong CSRF token")
                return

        def parse(data: dict[str, Any]) -> Any:
            data["session"] = _chat_id(ws, str(data.get("session") or "main"))
            data.setdefault("message_id", uuid.uuid4().hex)
            return parse_message(data, backend.cfg.webchat.max_message_chars)

        await serve_chat_socket(ws, backend.stream, parse)

    return [
        Route("/api/status", status, methods=["GET"]),
        Route("/api/platforms", platforms, methods=["GET"]),
        Route("/api/plugins", plugins, methods=["GET"]),
        Route("/api/plugins/reload", reload, methods=["POST"]),
        Route("/api/plugins/{name}/{verb:str}", switch, methods=["POST"]),
        Route("/api/logs", logs, methods=["GET"]),
        Route("/api/logs/stream", log_stream, methods=["GET"]),
        Route("/api/metrics/series", series, methods=["GET"]),
        Route("/api/chat", chat, methods=["POST"]),
        WebSocketRoute("/api/chat/ws", chat_ws),
    ]
