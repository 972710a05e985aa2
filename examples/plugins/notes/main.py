"""notes: personal notes for every user of every chat (the example of docs/plugins.md).

    /note add <text...>   save a note             note: <text>   the same, without the /
    /note ls              list your notes         /note del <n>  delete note n
    /note clear           delete them all (asks "yes or no" first)
    /note summarize       the LLM sums them up    /note stats    (admins) totals

The LLM gets a ``search_notes`` tool, so "what did I note about the car?" works. An
``after_llm`` hook reminds users who ask the model to remember something that it may
forget. The ``loaded`` hook upgrades notes stored by an earlier version of the plugin.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from astr_ray.plugins import Context, Plugin

from .notebook import (
    KEY_PREFIX,
    SCHEMA,
    Note,
    fits,
    format_notes,
    new_note,
    notes_key,
    search,
    upgrade,
)

log = logging.getLogger(__name__)

plugin = Plugin()
note = plugin.group("note", help="your personal notes")

SCHEMA_KEY = "meta:schema"
SUMMARY_PROMPT = (
    "Summarize the user's notes below in at most five short lines, in their language. "
    "Group related notes; do not invent anything."
)
TIP = "\n\n(Tip: I may forget this in a later conversation. To keep it: /note add <text>)"
_REMEMBER = re.compile(r"\bremember\b", re.IGNORECASE)


# -- storage ----------------------------------------------------------------------------


def _key(ctx: Context) -> str:
    """The current user's key: notes belong to one sender in one chat."""
    if ctx.event is None:  # only the loaded/unloaded hooks run without a message
        raise RuntimeError("notes are per user: this needs a message")
    return notes_key(ctx.event.session_key, ctx.event.sender.id)


async def _notes(ctx: Context, key: str) -> list[Note]:
    stored: list[Any] = await ctx.kv.get(key, [])
    return upgrade(stored)


async def _save(ctx: Context, text: str) -> str:
    """Add a note for the current user, within the configured limits."""
    text = text.strip()
    max_length: int = ctx.config["max_length"]
    if len(text) > max_length:
        return f"That note is {len(text)} characters long; the limit is {max_length}."
    key = _key(ctx)
    notes = await _notes(ctx, key)
    max_notes: int = ctx.config["max_notes"]
    if len(notes) >= max_notes:
        return (
            f"You already have {len(notes)} notes, the most you can keep. "
            "Delete one first with /note del <n>."
        )
    notes.append(new_note(text))
    if not fits(notes):
        return "Your notes take all the room there is. Delete some first with /note del <n>."
    await ctx.kv.set(key, notes)
    return f"Saved note #{len(notes)}."


# -- commands ---------------------------------------------------------------------------


@note.command("add", help="save a note")
async def add(ctx: Context, text: str) -> str:
    """Save ``text`` (the rest of the line) as a new note."""
    return await _save(ctx, text)


@note.command("ls", aliases=("list",), help="list your notes")
async def ls(ctx: Context) -> str:
    """The user's notes, numbered."""
    notes = await _notes(ctx, _key(ctx))
    if not notes:
        return "You have no notes yet. Add one with /note add <text>."
    return format_notes(notes, ctx.config["prefix"])


@note.command("del", aliases=("rm",), help="delete note n of /note ls")
async def delete(ctx: Context, n: int) -> str:
    """Delete one note by its number in ``/note ls``."""
    key = _key(ctx)
    notes = await _notes(ctx, key)
    if not 1 <= n <= len(notes):
        have = f"you have {len(notes)}" if notes else "you have none"
        return f"There is no note {n}: {have}. See /note ls."
    gone = notes.pop(n - 1)
    await ctx.kv.set(key, notes)
    return f"Deleted note {n}: {gone['text']}"


@note.command("clear", help="delete all your notes (asks first)")
async def clear(ctx: Context) -> str:
    """Delete every note of the user, after a yes/no question (a dialog)."""
    key = _key(ctx)  # before ctx.ask: ctx.event then becomes the answer
    notes = await _notes(ctx, key)
    if not notes:
        return "You have no notes to delete."
    answer = await ctx.ask(f"Delete all {len(notes)} of your notes? Answer yes or no.", timeout=60)
    if answer.text.strip().lower() not in ("yes", "y"):
        return f"Kept your {len(notes)} notes."
    await ctx.kv.delete(key)
    return f"Deleted {len(notes)} notes."


@note.command("summarize", aliases=("sum",), help="a short summary of your notes, by the LLM")
async def summarize(ctx: Context) -> str:
    """Ask the LLM for a summary (needs the ``llm`` capability)."""
    notes = await _notes(ctx, _key(ctx))
    if not notes:
        return "You have no notes to summarize."
    listing = "\n".join(f"- {n['text']}" for n in notes)
    return await ctx.ask_llm(listing, system=SUMMARY_PROMPT)


@note.command("stats", admin=True, help="how many notes the bot keeps")
async def stats(ctx: Context) -> str:
    """Totals over every chat and user (admins only: it reads everyone's keys)."""
    counts = [len(await ctx.kv.get(k, [])) for k in await ctx.kv.keys(KEY_PREFIX)]
    users = sum(1 for c in counts if c)
    return f"{sum(counts)} notes from {users} users."


# -- a regex handler, an LLM tool, hooks -------------------------------------------------


@plugin.regex(r"^note:\s*(.*)$", flags=re.IGNORECASE | re.DOTALL)
async def quick_note(ctx: Context, groups: list[str]) -> str | None:
    """``note: buy milk`` saves a note. A bare ``note:`` is not ours: returning None
    lets the message go on to other handlers and the LLM."""
    text = groups[1].strip()
    if not text:
        return None
    return await _save(ctx, text)


@plugin.tool()
async def search_notes(ctx: Context, query: str, limit: int = 5) -> list[dict[str, Any]] | str:
    """Search the notes the current user saved with /note add.

    Use it when the user refers to something they noted down or asked to keep.

    Args:
        query: words to look for; a note matches when it contains all of them,
            ignoring case
        limit: how many matching notes to return at most (1 to 20)
    """
    notes = await _notes(ctx, _key(ctx))
    hits = search(notes, query, max(1, min(limit, 20)))
    return hits or f"No note of this user matches {query!r} (they have {len(notes)} notes)."


@plugin.on("after_llm")
async def remember_tip(ctx: Context, response: dict[str, Any]) -> dict[str, Any]:
    """When the user asks the LLM to remember something, point them at /note add."""
    if ctx.config["tips"] and _REMEMBER.search(ctx.text) and "/note" not in response["text"]:
        response["text"] += TIP
    return response


@plugin.on("loaded")
async def upgrade_storage(ctx: Context) -> None:
    """Rewrite notes stored in an older format. Every process that loads the plugin
    runs this (each session host), so it is idempotent and cheap once done."""
    if await ctx.kv.get(SCHEMA_KEY, 0) >= SCHEMA:
        return
    upgraded = 0
    for key in await ctx.kv.keys(KEY_PREFIX):
        stored = await ctx.kv.get(key, [])
        notes = upgrade(stored)
        if notes != stored:
            await ctx.kv.set(key, notes)
            upgraded += 1
    await ctx.kv.set(SCHEMA_KEY, SCHEMA)
    log.info("notes: storage is at format %d (%d users upgraded)", SCHEMA, upgraded)
