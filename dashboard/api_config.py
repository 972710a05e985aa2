"""Dashboard API: editing what the bot is made of.

    providers  GET/POST /api/providers, PUT/DELETE /api/providers/{id},
               PUT /api/providers/order, POST /api/providers/{id}/test
    platforms  POST /api/platforms, PUT/DELETE /api/platforms/{id}
    personas   GET /api/personas, PUT/DELETE /api/personas/{name}   (the store's)
    plugins    PUT /api/plugins/{name}/config
    config     GET /api/config, PUT /api/config {"section", "value"}

Every edit goes through the same pydantic models as the YAML file and is written to
that file (``astr_ray.config_edit.ConfigFile``); a value that does not fit is refused
with the field's path (``{"error", "field"}``) and nothing is written. The Supervisor
then applies it (``apply_config``): only what changed is restarted. Secrets are
write-only: answers carry ``{"set": true}`` in their place, and an edit that leaves a
secret out keeps the stored one.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from astr_ray.config import Config, ProviderConfig
from astr_ray.errors import AstrRayError, ConfigError
from astr_ray.store import Persona

__all__ = ["config_routes"]

_NAME = re.compile(r"^[\w.-]{1,128}$")
MAX_BODY = 256 * 1024


def _error(message: str, status: int = 400, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)


async def _json(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise _Refused("request body too large", 413)
    try:
        return json.loads(body or b"null")
    except ValueError:
        raise _Refused("body is not valid JSON") from None


class _Refused(Exception):
    def __init__(self, message: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.field = message, status, field


def config_routes(backend: Any) -> list[BaseRoute]:
    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except _Refused as exc:
                return _error(exc.message, exc.status, exc.field)
            except ConfigError as exc:
                status = 404 if exc.message.startswith("no ") else 400
                if "exists already" in exc.message:
                    status = 409
                return _error(exc.message, status, exc.path or None)

        wrapped.__doc__ = handler.__doc__
        return wrapped

    def file() -> Any:
        if backend.config_file is None:
            raise _Refused("the bot was not started from a config file: nothing to edit", 409)
        return backend.config_file

    async def edit(change: Callable[[Any], Config]) -> dict[str, Any]:
        """Write the change to the file, then let the Supervisor apply it."""
        cfg = await asyncio.to_thread(change, file())
        return await backend.apply(cfg)

    async def masked() -> dict[str, Any]:
        """The file's config with secrets masked (read and parsed off the event loop)."""
        data: dict[str, Any] = await asyncio.to_thread(file().masked)
        return data

    # -- providers ------------------------------------------------------------------------
    async def providers(request: Request) -> Response:
        """Providers and the fallback order.
        ---
        summary: LLM providers (api keys masked) and the fallback order
        responses:
          200:
            description: providers and fallback
        """
        data = await masked()
        return JSONResponse({"providers": data.get("providers", []), "fallback": data["fallback"]})

    async def provider_view(pid: str) -> dict[str, Any]:
        found: dict[str, Any] = next(p for p in (await masked())["providers"] if p["id"] == pid)
        return found

    async def add_provider(request: Request) -> Response:
        """Add a provider.
        ---
        summary: Add an LLM provider (written to the config file, then started)
        responses:
          201:
            description: the provider, its key masked
          400:
            description: a field does not fit (error and field)
          409:
            description: the id exists already
        """
        data = await _json(request)
        if not isinstance(data, dict):
            raise _Refused("body must be a JSON object")
        applied = await edit(lambda f: f.upsert_provider(data, create=True))
        return JSONResponse(
            {"provider": await provider_view(str(data.get("id"))), "applied": applied},
            status_code=201,
        )

    async def change_provider(request: Request) -> Response:
        """Change a provider.
        ---
        summary: Change a provider's fields (omit api_key to keep it)
        responses:
          200:
            description: the provider
          404:
            description: no such provider
        """
        pid = request.path_params["id"]
        data = await _json(request)
        if not isinstance(data, dict):
            raise _Refused("body must be a JSON object")
        data = {**data, "id": pid}
        applied = await edit(lambda f: f.upsert_provider(data, create=False))
        return JSONResponse({"provider": await provider_view(pid), "applied": applied})

    async def delete_provider(request: Request) -> Response:
        """Remove a provider.
        ---
        summary: Remove a provider (and its place in the fallback order)
        responses:
          200:
            description: removed
        """
        pid = request.path_params["id"]
        applied = await edit(lambda f: f.delete_provider(pid))
        return JSONResponse({"ok": True, "applied": applied})

    async def order(request: Request) -> Response:
        """Set the fallback order.
        ---
        summary: The providers' fallback order
        responses:
          200:
            description: the new order
        """
        data = await _json(request)
        ids = data.get("fallback") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _Refused('expected {"fallback": ["id", ...]}', field="fallback")
        applied = await edit(lambda f: f.set_fallback(ids))
        return JSONResponse({"fallback": (await masked())["fallback"], "applied": applied})

    async def test_provider(request: Request) -> Response:
        """Test a provider with one short request.
        ---
        summary: Send one short chat request to the provider and report the answer or error
        responses:
          200:
            description: "{ok, latency_ms, reply} or {ok: false, error}"
        """
        from astr_ray.providers.transport import make_transport

        pid = request.path_params["id"]
        cfg: Config = await asyncio.to_thread(file().load)
        found = [p for p in cfg.providers if p.id == pid]
        if not found:
            raise _Refused(f"no provider {pid!r}", 404)
        provider: ProviderConfig = found[0]
        transport = make_transport(provider)
        began = time.perf_counter()
        try:
            result = await asyncio.wait_for(
                transport.complete([{"role": "user", "content": "Say OK."}]),
                min(provider.timeout_s, 30),
            )
        except TimeoutError:
            return JSONResponse({"ok": False, "error": "no answer in time"})
        except AstrRayError as exc:
            return JSONResponse({"ok": False, "error": exc.message})
        except Exception as exc:
            return JSONResponse({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
        finally:
            await transport.close()
        latency = round((time.perf_counter() - began) * 1000)
        return JSONResponse({"ok": True, "latency_ms": latency, "reply": result.content[:500]})

    # -- platforms ------------------------------------------------------------------------
    async def add_platform(request: Request) -> Response:
        """Add a chat account.
        ---
        summary: Add a chat account (QQ, Telegram, Discord, Slack); its adapter starts
        responses:
          201:
            description: the account (secrets masked)
          400:
            description: a field does not fit (error and field)
        """
        data = await _json(request)
        if not isinstance(data, dict):
            raise _Refused("body must be a JSON object")
        applied = await edit(lambda f: f.upsert_platform(data, create=True))
        return JSONResponse(
            {"platform": await platform_view(str(data.get("id"))), "applied": applied}, 201
        )

    async def platform_view(aid: str) -> dict[str, Any]:
        found: dict[str, Any] = next(p for p in (await masked())["platforms"] if p["id"] == aid)
        return found

    async def change_platform(request: Request) -> Response:
        """Change a chat account.
        ---
        summary: Change a chat account (omit secrets to keep them); its adapter restarts
        responses:
          200:
            description: the account
        """
        aid = request.path_params["id"]
        data = await _json(request)
        if not isinstance(data, dict):
            raise _Refused("body must be a JSON object")
        data = {**data, "id": aid}
        applied = await edit(lambda f: f.upsert_platform(data, create=False))
        return JSONResponse({"platform": await platform_view(aid), "applied": applied})

    async def delete_platform(request: Request) -> Response:
        """Remove a chat account.
        ---
        summary: Remove a chat account; its adapter stops
        responses:
          200:
            description: removed
        """
        aid = request.path_params["id"]
        applied = await edit(lambda f: f.delete_platform(aid))
        return JSONResponse({"ok": True, "applied": applied})

    # -- personas (the store's; the config's are shown read-only) ---------------------------
    async def personas(request: Request) -> Response:
        """Personas.
        ---
        summary: Personas from the store (editable) and the config (read-only)
        responses:
          200:
            description: the personas
        """
        stored = await backend.store.list_personas()
        out = [_persona_json(p, "store") for p in stored]
        names = {p.name for p in stored}
        for p in backend.cfg.personas:
            if p.name not in names:
                row = p.model_dump(mode="json")
                out.append({**row, "source": "config"})
        return JSONResponse({"personas": sorted(out, key=lambda p: p["name"])})

    async def put_persona(request: Request) -> Response:
        """Create or change a persona.
        ---
        summary: Create or change a stored persona
        responses:
          200:
            description: the persona
          400:
            description: a field does not fit
        """
        name = request.path_params["name"]
        if not _NAME.match(name):
            raise _Refused("a persona name is 1-128 letters, digits, _ . -", field="name")
        data = await _json(request)
        if not isinstance(data, dict):
            raise _Refused("body must be a JSON object")
        prompt = data.get("system_prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _Refused("system_prompt must be a non-empty string", field="system_prompt")
        dialogs = data.get("begin_dialogs") or []
        if not isinstance(dialogs, list) or not all(
            isinstance(d, list | tuple) and len(d) == 2 and all(isinstance(x, str) for x in d)
            for d in dialogs
        ):
            raise _Refused("begin_dialogs must be [user, assistant] pairs", field="begin_dialogs")
        tools = data.get("tools")
        if tools is not None and (
            not isinstance(tools, list) or not all(isinstance(t, str) for t in tools)
        ):
            raise _Refused("tools must be a list of tool names or null", field="tools")
        persona = Persona(name, prompt, [(u, a) for u, a in dialogs], tools)
        await backend.store.upsert_persona(persona)
        return JSONResponse({"persona": _persona_json(persona, "store")})

    async def delete_persona(request: Request) -> Response:
        """Delete a stored persona.
        ---
        summary: Delete a stored persona
        responses:
          200:
            description: deleted
          404:
            description: no such stored persona
        """
        if not await backend.store.delete_persona(request.path_params["name"]):
            raise _Refused("no such stored persona", 404)
        return JSONResponse({"ok": True})

    # -- plugin settings and raw sections --------------------------------------------------
    async def plugin_config(request: Request) -> Response:
        """Set a plugin's config.
        ---
        summary: Set a plugin's settings (checked against its schema; plugins reload)
        responses:
          200:
            description: the settings as the plugin sees them
          400:
            description: a value does not fit the schema (error and field)
        """
        from astr_ray.errors import PluginError
        from astr_ray.plugins.loader import discover

        name = request.path_params["name"]
        values = await _json(request)
        if not isinstance(values, dict):
            raise _Refused("body must be a JSON object of settings")
        sources, _ = await asyncio.to_thread(discover, backend.cfg.plugins_dir)
        found = [s for s in sources if s.name == name]
        if not found:
            raise _Refused(f"no plugin {name!r}", 404)
        try:
            checked = found[0].manifest.check_config(values)
        except PluginError as exc:
            where = exc.message.split(": ")
            field = where[1] if len(where) > 2 else None
            raise _Refused(exc.message, field=field) from None
        applied = await edit(lambda f: f.set_plugin_settings(name, values))
        return JSONResponse({"config": checked, "applied": applied})

    async def get_config(request: Request) -> Response:
        """The whole config.
        ---
        summary: The effective config, secrets masked
        responses:
          200:
            description: the config
        """
        return JSONResponse(await masked())

    async def put_config(request: Request) -> Response:
        """Replace one section of the config.
        ---
        summary: Replace one top-level section (validated, written, applied)
        responses:
          200:
            description: what was applied and what needs a restart
          400:
            description: a field does not fit (error and field)
        """
        data = await _json(request)
        if not isinstance(data, dict) or not isinstance(data.get("section"), str):
            raise _Refused('expected {"section": "<name>", "value": ...}', field="section")
        section, value = data["section"], data.get("value")
        applied = await edit(lambda f: f.set_section(section, value))
        return JSONResponse({"config": await masked(), "applied": applied})

    return [
        Route("/api/providers", guarded(providers), methods=["GET"]),
        Route("/api/providers", guarded(add_provider), methods=["POST"]),
        Route("/api/providers/order", guarded(order), methods=["PUT"]),
        Route("/api/providers/{id}/test", guarded(test_provider), methods=["POST"]),
        Route("/api/providers/{id}", guarded(change_provider), methods=["PUT"]),
        Route("/api/providers/{id}", guarded(delete_provider), methods=["DELETE"]),
        Route("/api/platforms", guarded(add_platform), methods=["POST"]),
        Route("/api/platforms/{id}", guarded(change_platform), methods=["PUT"]),
        Route("/api/platforms/{id}", guarded(delete_platform), methods=["DELETE"]),
        Route("/api/personas", guarded(personas), methods=["GET"]),
        Route("/api/personas/{name}", guarded(put_persona), methods=["PUT"]),
        Route("/api/personas/{name}", guarded(delete_persona), methods=["DELETE"]),
        Route("/api/plugins/{name}/config", guarded(plugin_config), methods=["PUT"]),
        Route("/api/config", guarded(get_config), methods=["GET"]),
        Route("/api/config", guarded(put_config), methods=["PUT"]),
    ]


def _persona_json(p: Persona, source: str) -> dict[str, Any]:
    return {
        "name": p.name,
        "system_prompt": p.system_prompt,
        "begin_dialogs": [list(d) for d in p.begin_dialogs],
        "tools": p.tools,
        "voice": p.voice,
        "source": source,
    }
