"""Applying an edited config to the running tree (``Supervisor.apply_config``).

    edited config ─► diff with the running one, by section
       providers   ─► provider pools removed / added / re-created; hosts rebuild chains
       platforms   ─► adapters stopped / started / re-created (only the changed accounts)
       personas, access, agent, fallback, plugin settings, speech.reply... ─► hosts take
                      the new config in place (update_config); plugin settings reload plugins
       sections that shape the tree (sessions, store, webchat, dashboard, sandbox, mcp,
                      knowledge, speech workers, runtime) ─► reported: restart to apply

Nothing that did not change is restarted. A host or adapter that Ray restarts later
comes back with the config it was created with; the Supervisor's pass sends the current
one to a restarted host again (``config_rev`` in its ping).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from astr_ray.config import Config

if TYPE_CHECKING:
    from actors.supervisor import Child

__all__ = ["RESTART_SECTIONS", "config_rev", "reconfigure"]

log = logging.getLogger(__name__)

RESTART_SECTIONS = (
    "data_dir",
    "store",
    "sessions",
    "webchat",
    "dashboard",
    "sandbox",
    "mcp",
    "knowledge",
    "runtime",
)
"""Sections whose change needs the tree restarted (actors are made from them)."""


def config_rev(transport: dict[str, Any]) -> str:
    """A short fingerprint of a config (as sent to actors)."""
    blob = json.dumps(transport, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in items}


def _restart_needed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = [s for s in RESTART_SECTIONS if s != "runtime" and old.get(s) != new.get(s)]
    keep = ("config_file",)
    old_rt = {k: v for k, v in (old.get("runtime") or {}).items() if k not in keep}
    new_rt = {k: v for k, v in (new.get("runtime") or {}).items() if k not in keep}
    if old_rt != new_rt:
        out.append("runtime")
    for part in ("tts", "stt"):  # worker pools; the rest of speech applies in place
        a, b = (old.get("speech") or {}).get(part), (new.get("speech") or {}).get(part)
        if a != b:
            out.append(f"speech.{part}")
    return out


async def reconfigure(sup: Any, new: Config) -> dict[str, Any]:
    """Bring the tree in line with ``new``; returns what was applied, what needs a
    restart, and errors (an actor that could not be started, with the reason)."""
    old_t, new_t = sup.transport, new.to_transport()
    applied: list[str] = []
    errors: list[str] = []
    restart = _restart_needed(old_t, new_t)
    sup.cfg, sup.transport = new, new_t
    sup.config_rev = config_rev(new_t)

    # Provider pools first: the hosts' new chains lease from them.
    old_p, new_p = _by_id(old_t["providers"]), _by_id(new_t["providers"])
    for pid, p in old_p.items():
        if pid not in new_p or new_p[pid] != p or not new_p[pid]["enabled"]:
            child = sup.children.get(f"provider-pool-{pid}")
            if child is not None:
                gone = pid not in new_p or not new_p[pid]["enabled"]
                await sup._retire(
                    child,
                    "removed" if gone else "replaced",
                    "its provider left the config" if gone else "its provider changed",
                )
    for pid, p in new_p.items():
        if p["enabled"] and f"provider-pool-{pid}" not in sup.children:
            await _start(sup, sup._pool_child(p), "its provider was added in the config", errors)
    if old_p != new_p or old_t["fallback"] != new_t["fallback"]:
        applied.append("providers")

    # Chat accounts: only the changed ones go down.
    old_a, new_a = _by_id(old_t["platforms"]), _by_id(new_t["platforms"])
    for aid, a in old_a.items():
        if aid not in new_a or new_a[aid] != a:
            child = sup.children.get(f"adapter-{aid}")
            if child is not None:
                gone = aid not in new_a
                await sup._retire(
                    child,
                    "removed" if gone else "replaced",
                    "its account left the config" if gone else "its account changed",
                )
    for aid, a in new_a.items():
        if a["enabled"] and f"adapter-{aid}" not in sup.children:
            await _start(sup, sup._platform_child(aid), "its account is in the config", errors)
    if old_a != new_a:
        applied.append("platforms")

    # Hosts take the rest in place; future re-creations use the new config too.
    hosts = [c for c in sup.children.values() if c.kind == "session_host"]
    for child in hosts:
        child.factory = sup._host_child(child.name).factory
    results = await asyncio.gather(
        *(c.handle.update_config.remote(new_t) for c in hosts if c.handle is not None),
        return_exceptions=True,
    )
    for child, result in zip(hosts, results, strict=False):
        if isinstance(result, BaseException):
            errors.append(f"{child.name}: {type(result).__name__}: {result}"[:300])
    for section in ("personas", "access", "agent", "system_prompt", "bot_name", "speech"):
        if old_t.get(section) != new_t.get(section) and section not in restart:
            applied.append(section)
    if (old_t.get("plugins") or {}).get("settings") != (new_t.get("plugins") or {}).get("settings"):
        result = await sup.reload_plugins(None)
        applied.append("plugins.settings")
        errors.extend(f"plugin {f['name']}: {f['reason']}" for f in result.get("failures", []))
    await sup._record(
        "supervisor",
        "reconfigured",
        f"applied: {', '.join(applied) or 'nothing'}"
        + (f"; restart needed for: {', '.join(restart)}" if restart else ""),
        None,
    )
    return {"applied": applied, "restart_needed": restart, "errors": errors}


async def _start(sup: Any, child: Child, reason: str, errors: list[str]) -> None:
    try:
        child.handle = child.factory()
        info, _ = await sup._call_start(child)
    except Exception as exc:
        log.warning("starting %s failed: %s", child.name, exc)
        errors.append(f"{child.name}: {type(exc).__name__}: {str(exc)[:200]}")
        child.state = "dead"  # the reconcile pass keeps trying, with backoff
        sup._add(child)
        return
    child.pid, child.state, child.last_info = info.get("pid"), "alive", info
    sup._add(child)
    await sup._event(child, "started", reason)
