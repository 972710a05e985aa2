"""The notes themselves: how they are stored and how they read. No I/O here.

Each user's notes are one key-value entry, ``notes:<session key>:<sender id>``, holding
a list of ``Note`` dicts (version 1 of the format; version 0 stored bare strings).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, TypedDict

__all__ = [
    "KEY_PREFIX",
    "SCHEMA",
    "VALUE_LIMIT",
    "Note",
    "fits",
    "format_notes",
    "new_note",
    "notes_key",
    "search",
    "upgrade",
]

SCHEMA = 1
KEY_PREFIX = "notes:"
VALUE_LIMIT = 64 * 1024  # ctx.kv takes JSON values up to 64 KiB


class Note(TypedDict):
    text: str
    saved: float  # Unix time; 0 when unknown (notes from format version 0)


def notes_key(session_key: str, sender_id: str) -> str:
    """The key of one user's notes in one chat."""
    return f"{KEY_PREFIX}{session_key}:{sender_id}"


def new_note(text: str, now: float | None = None) -> Note:
    return Note(text=text, saved=time.time() if now is None else now)


def upgrade(stored: list[Any]) -> list[Note]:
    """Notes in the current format, from whatever an earlier version stored."""
    return [
        Note(text=item, saved=0.0)
        if isinstance(item, str)
        else Note(text=str(item["text"]), saved=float(item.get("saved") or 0.0))
        for item in stored
    ]


def fits(notes: list[Note]) -> bool:
    """Whether the list can be stored (its JSON within the key-value store's limit)."""
    encoded = json.dumps(notes, ensure_ascii=False, separators=(",", ":"))
    return len(encoded.encode()) <= VALUE_LIMIT


def saved_day(note: Note) -> str:
    """The day the note was saved (``YYYY-MM-DD``, UTC), or "" if unknown."""
    if not note["saved"]:
        return ""
    return datetime.fromtimestamp(note["saved"], UTC).date().isoformat()


def format_notes(notes: list[Note], prefix: str) -> str:
    """The numbered list that ``/note ls`` shows (numbers are what ``/note del`` takes)."""
    return "\n".join(f"{prefix}{i}. {note['text']}" for i, note in enumerate(notes, 1))


def search(notes: list[Note], query: str, limit: int) -> list[dict[str, Any]]:
    """The notes that contain every word of ``query`` (ignoring case), at most ``limit``,
    as ``{"n", "text", "saved"}`` (``n`` is the number ``/note ls`` shows)."""
    words = query.lower().split()
    hits = [
        {"n": i, "text": note["text"], "saved": saved_day(note)}
        for i, note in enumerate(notes, 1)
        if all(w in note["text"].lower() for w in words)
    ]
    return hits[:limit]
