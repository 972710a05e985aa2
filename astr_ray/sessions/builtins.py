"""The built-in commands. Plugins add theirs beside these (``PluginManager``); a plugin
may not take a built-in's name.

Admin commands (``admin=True``) answer "for admins only" to everyone else. Admins are
``access.admins`` in the config plus those added with ``/op``.
"""

from __future__ import annotations

from astr_ray.errors import StoreError
from astr_ray.sessions.commands import CommandRegistry
from astr_ray.sessions.turn import CommandContext
from astr_ray.store import Persona

__all__ = ["builtin_commands"]


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _on_off(args: str) -> bool | None:
    low = args.strip().lower()
    return True if low in ("on", "1", "yes") else False if low in ("off", "0", "no") else None


async def _pick(ctx: CommandContext, args: str) -> str | None:
    """The conversation id that ``args`` (a number from /ls) names, else None."""
    convs = await ctx.processor.store.list_conversations(ctx.live.key)
    try:
        n = int(args)
    except ValueError:
        return None
    return convs[n - 1].id if 1 <= n <= len(convs) else None


def builtin_commands() -> CommandRegistry:
    reg = CommandRegistry()

    @reg.command("help", "/help", "list the commands")
    async def _help(ctx: CommandContext, args: str) -> str:
        plugins = ctx.processor.plugins
        extra = plugins.help_entries(ctx.disabled, admin=ctx.is_admin) if plugins else []
        return ctx.processor.commands.help_text(extra, admin=ctx.is_admin)

    @reg.command("new", "/new [title]", "start a new conversation (the old one is kept)")
    async def _new(ctx: CommandContext, args: str) -> str:
        cid = await ctx.processor.store.new_conversation(ctx.live.key, title=args or None)
        await ctx.processor.switch_conversation(ctx.live, cid)
        return "Started a new conversation."

    @reg.command("reset", "/reset", "forget the current conversation's history")
    async def _reset(ctx: CommandContext, args: str) -> str:
        n = await ctx.processor.store.clear_conversation(ctx.live.conversation_id)
        ctx.live.history.clear()
        ctx.live.summary = None
        ctx.live.next_seq = 0
        return f"Cleared this conversation ({n} messages)."

    @reg.command("ls", "/ls", "list your conversations")
    async def _ls(ctx: CommandContext, args: str) -> str:
        convs = await ctx.processor.store.list_conversations(ctx.live.key)
        lines = ["Conversations (/switch <n>):"]
        for i, c in enumerate(convs, 1):
            mark = "*" if c.id == ctx.live.conversation_id else " "
            title = c.title or "untitled"
            persona = f", persona {c.persona}" if c.persona else ""
            lines.append(f"{mark}{i}. {title} ({c.message_count} messages{persona})")
        return "\n".join(lines)

    @reg.command("switch", "/switch <n>", "go to conversation n of /ls")
    async def _switch(ctx: CommandContext, args: str) -> str:
        cid = await _pick(ctx, args)
        if cid is None:
            return "Usage: /switch <n>, with n from /ls."
        await ctx.processor.store.switch_conversation(ctx.live.key, cid)
        await ctx.processor.switch_conversation(ctx.live, cid)
        return f"Switched to conversation {args}."

    @reg.command("rename", "/rename <title>", "rename the current conversation")
    async def _rename(ctx: CommandContext, args: str) -> str:
        if not args:
            return "Usage: /rename <title>"
        try:
            await ctx.processor.store.rename_conversation(
                ctx.live.key, ctx.live.conversation_id, args
            )
        except StoreError as exc:
            return f"Cannot rename: {exc.message}"
        return f"Renamed to {args!r}."

    @reg.command("del", "/del [n]", "delete conversation n of /ls (default: the current one)")
    async def _del(ctx: CommandContext, args: str) -> str:
        cid = await _pick(ctx, args) if args else ctx.live.conversation_id
        if cid is None:
            return "Usage: /del [n], with n from /ls."
        current = await ctx.processor.store.delete_conversation(ctx.live.key, cid)
        if current != ctx.live.conversation_id:
            await ctx.processor.switch_conversation(ctx.live, current)
        return "Deleted the conversation."

    @reg.command("history", "/history [n]", "show the last n turns (default 5)")
    async def _history(ctx: CommandContext, args: str) -> str:
        try:
            n = int(args) if args else 5
        except ValueError:
            return "Usage: /history [n] (n is a number of turns)"
        n = max(1, min(n, 50))
        rows = await ctx.processor.store.load_history(ctx.live.conversation_id, limit=2 * n)
        lines = [f"{m.role}: {_clip(m.content)}" for m in rows if m.role in ("user", "assistant")]
        return "\n".join(lines) if lines else "This conversation has no history yet."

    @reg.command(
        "persona",
        "/persona [name|none|new <name> <prompt>|del <name>]",
        "show or choose this conversation's persona",
    )
    async def _persona(ctx: CommandContext, args: str) -> str:
        p = ctx.processor
        known = await p.personas.all()
        verb, _, rest = args.partition(" ")
        if verb in ("new", "del"):
            if not ctx.is_admin:
                return f"/persona {verb} is for admins only."
            name, _, prompt = rest.strip().partition(" ")
            if verb == "del":
                ok = await p.store.delete_persona(name)
                p.personas.invalidate()
                return f"Deleted persona {name}." if ok else f"No stored persona {name!r}."
            if not name or not prompt.strip():
                return "Usage: /persona new <name> <system prompt>"
            await p.store.upsert_persona(Persona(name, prompt.strip()))
            p.personas.invalidate()
            return f"Saved persona {name}."
        if not args:
            current = (await p.personas.resolve(ctx.live.persona)).name
            names = ", ".join(sorted(known)) or "none defined"
            return f"Persona: {current}. Available: {names}. Choose with /persona <name>."
        if args in ("none", "default"):
            await p.store.set_conversation_persona(ctx.live.conversation_id, None)
            ctx.live.persona = None
            return "This conversation uses the default persona."
        if args not in known:
            return f"No persona {args!r}. Available: {', '.join(sorted(known)) or 'none'}."
        await p.store.set_conversation_persona(ctx.live.conversation_id, args)
        ctx.live.persona = args
        return f"This conversation now uses persona {args}."

    @reg.command("provider", "/provider [id]", "show or choose the LLM provider for this chat")
    async def _provider(ctx: CommandContext, args: str) -> str:
        p = ctx.processor
        ids = [c.id for c in p.cfg.provider_chain()]
        current = p.provider_for(ctx.live)
        if not args:
            marks = ", ".join(
                f"{i}{' (current)' if current and i == current.id else ''}" for i in ids
            )
            return f"Providers: {marks or 'none configured'}."
        if args not in ids:
            return f"No provider {args!r}. Providers: {', '.join(ids) or 'none'}."
        await _set(ctx, "provider", args)
        await _set(ctx, "model", None)
        return f"This chat now uses provider {args}."

    @reg.command("model", "/model [name|reset]", "show or set the model for this chat")
    async def _model(ctx: CommandContext, args: str) -> str:
        current = ctx.processor.provider_for(ctx.live)
        if current is None:
            return "No LLM provider is configured."
        if not args:
            model = ctx.live.settings.get("model") or current.model
            return f"Model: {model} (provider {current.id})."
        if args == "reset":
            await _set(ctx, "model", None)
            return f"Back to {current.model}."
        await _set(ctx, "model", args)
        return f"This chat now uses model {args} on provider {current.id}."

    @reg.command("sid", "/sid", "show this chat's session id and your user id")
    async def _sid(ctx: CommandContext, args: str) -> str:
        e = ctx.event
        return f"Session: {ctx.live.key}\nYou: {e.platform_id}:{e.sender.id}"

    @reg.command("stop", "/stop", "stop the answer being written")
    async def _stop(ctx: CommandContext, args: str) -> str:
        return "Nothing to stop."  # a running turn is stopped before it reaches here

    @reg.command("compact", "/compact", "summarize this conversation to save context")
    async def _compact(ctx: CommandContext, args: str) -> str:
        summary = await ctx.processor.compress(ctx.live, force=True)
        if summary is None:
            return "Nothing to compact yet."
        ctx.pending.append(summary)
        return f"Compacted. Summary: {_clip(summary.content, 500)}"

    @reg.command(
        "plugin",
        "/plugin ls|on <name> [here]|off <name> [here]|reload [name]",
        "manage plugins (here: only in this chat)",
        admin=True,
    )
    async def _plugin(ctx: CommandContext, args: str) -> str:
        p = ctx.processor
        if p.plugins is None:
            return "Plugins are not available here."
        verb, _, name = args.partition(" ")
        name, _, scope = name.strip().partition(" ")
        if verb in ("", "ls"):
            rows = p.plugins.listing(ctx.disabled)
            if not rows:
                return f"No plugins. Put them in {p.cfg.plugins_dir}."
            lines = []
            for r in rows:
                line = f"{r['name']} {r['version'] or ''} [{r['state']}]"
                if r["isolated"]:
                    line += " isolated"
                if r["error"]:
                    line += f": {r['error']}"
                lines.append(line)
            return "\n".join(lines + [f"conflict: {c}" for c in p.plugins.conflicts])
        if verb in ("on", "off"):
            if name not in p.plugins.sources and name not in p.plugins.failures:
                return f"No plugin {name!r}."
            if scope.strip() == "here":
                off = set(ctx.live.settings.get("plugins_off") or [])
                off = off - {name} if verb == "on" else off | {name}
                await _set(ctx, "plugins_off", sorted(off) or None)
                return f"Plugin {name} is {verb} in this chat."
            g = await p.globals.get()
            states = dict(g.get("plugin_states") or {})
            states[name] = verb == "on"
            await p.globals.set("plugin_states", states)
            return f"Plugin {name} is {verb} everywhere."
        if verb == "reload":
            reload = p.broadcast_reload or p.plugins.reload
            done = await reload(name or None)
            return f"Reloaded: {', '.join(done) or 'nothing'}."
        return "Usage: /plugin ls|on <name> [here]|off <name> [here]|reload [name]"

    @reg.command("op", "/op <platform:user>", "make a user an admin", admin=True)
    async def _op(ctx: CommandContext, args: str) -> str:
        return await _list_edit(ctx, "admins", args, add=True, what="admins")

    @reg.command("deop", "/deop <platform:user>", "remove an admin", admin=True)
    async def _deop(ctx: CommandContext, args: str) -> str:
        return await _list_edit(ctx, "admins", args, add=False, what="admins")

    @reg.command("wl", "/wl [session]", "allow a session (default: this one)", admin=True)
    async def _wl(ctx: CommandContext, args: str) -> str:
        return await _list_edit(ctx, "allow", args or ctx.live.key, add=True, what="the allow-list")

    @reg.command("dwl", "/dwl [session]", "remove a session from the allow-list", admin=True)
    async def _dwl(ctx: CommandContext, args: str) -> str:
        return await _list_edit(
            ctx, "allow", args or ctx.live.key, add=False, what="the allow-list"
        )

    @reg.command("bot", "/bot on|off", "switch the bot on or off in this chat", admin=True)
    async def _bot(ctx: CommandContext, args: str) -> str:
        value = _on_off(args)
        if value is None:
            return "Usage: /bot on|off"
        await _set(ctx, "bot", None if value else False)
        return "The bot is on here." if value else "The bot is off here until /bot on."

    @reg.command("llm", "/llm on|off", "switch LLM answers on or off in this chat", admin=True)
    async def _llm(ctx: CommandContext, args: str) -> str:
        value = _on_off(args)
        if value is None:
            return "Usage: /llm on|off"
        await _set(ctx, "llm", None if value else False)
        return "LLM answers are on here." if value else "LLM answers are off here (commands work)."

    @reg.command("tts", "/tts on|off", "spoken replies (voice messages) in this chat")
    async def _tts(ctx: CommandContext, args: str) -> str:
        speech = ctx.processor.cfg.speech
        can_speak = ctx.processor.speech is not None and ctx.processor.speech.can_speak
        if not args.strip():
            on = ctx.live.settings.get("tts")
            state = f"the default ({speech.reply})" if on is None else ("on" if on else "off")
            return f"Spoken replies here: {state}. Usage: /tts on|off"
        value = _on_off(args)
        if value is None:
            return "Usage: /tts on|off"
        if value and (speech.reply == "never" or not can_speak):
            return "Spoken replies are turned off for this bot (speech.reply / speech.tts)."
        await _set(ctx, "tts", value)
        return "Spoken replies are on here." if value else "Spoken replies are off here."

    return reg


async def _set(ctx: CommandContext, key: str, value: object) -> None:
    """A setting of this session, in the store and in the live cache."""
    await ctx.processor.store.set_setting(ctx.live.key, key, value)
    if value is None:
        ctx.live.settings.pop(key, None)
    else:
        ctx.live.settings[key] = value


async def _list_edit(ctx: CommandContext, key: str, item: str, *, add: bool, what: str) -> str:
    item = item.strip()
    if not item or " " in item:
        return f"Usage: give one id to {'add to' if add else 'remove from'} {what}."
    g = await ctx.processor.globals.get()
    items = list(g.get(key) or [])
    if add and item not in items:
        items.append(item)
    elif not add:
        if item not in items:
            return f"{item} is not in {what} (those in the config file stay)."
        items.remove(item)
    await ctx.processor.globals.set(key, items or None)
    return f"{'Added' if add else 'Removed'} {item} {'to' if add else 'from'} {what}."
