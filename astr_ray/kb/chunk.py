"""Text into chunks for indexing: bounded size, some overlap, natural boundaries.

``chunk_text`` first normalizes whitespace, then (Markdown) splits the text into
sections at ATX headings (``#`` lines outside code fences), so that no chunk spans two
sections and each chunk knows its heading path ("Install > Linux"). A section longer
than ``size`` is cut at the coarsest boundary that works: paragraphs, then lines, then
sentences (``. ! ? ;`` before a space, and the CJK full stop, exclamation and question
marks and semicolon), then spaces, and only then inside a word. Pieces are packed
greedily up to ``size`` characters; each chunk after the first of a section starts with
up to ``overlap`` characters from the end of the previous one (begun at a word boundary
where there is one).

``chunk_hash`` is the dedup key: sha256 of the text with Unicode (NFC) and whitespace
normalized, so whitespace variants of one chunk collide on purpose.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

__all__ = ["Chunk", "chunk_hash", "chunk_text"]


@dataclass(frozen=True)
class Chunk:
    """A piece of a document. ``seq`` numbers the chunks of a document from 0.

    ``heading`` is the Markdown heading path of the chunk's section ("Install > Linux"),
    ``None`` for text before the first heading or without Markdown. It is not part of
    ``text``; ``search_text`` joins the two and is what an index should see.
    """

    text: str
    heading: str | None
    seq: int

    @property
    def search_text(self) -> str:
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def chunk_text(text: str, *, size: int, overlap: int, markdown: bool) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``size`` characters (see the module docs).

    Guarantees: no empty chunk; ``len(chunk.text) <= size``; chunks in document order;
    ``overlap`` characters (fewer where that would break ``size``) repeated between
    consecutive chunks of a section, never across sections.
    """
    if size < 1:
        raise ValueError("chunk size must be positive")
    if not 0 <= overlap < size:
        raise ValueError("chunk overlap must be in [0, size)")
    text = _normalize(text)
    sections = _sections(text) if markdown else [(None, text)]
    chunks: list[Chunk] = []
    for heading, body in sections:
        for piece in _pack(_pieces(body, size, 0), size, overlap):
            chunks.append(Chunk(text=piece, heading=heading, seq=len(chunks)))
    return chunks


def chunk_hash(text: str) -> str:
    """sha256 (hex) of ``text`` with NFC and all whitespace runs made one space."""
    norm = " ".join(unicodedata.normalize("NFC", text).split())
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()


# -- normalization and sections ---------------------------------------------------------

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")  # whitespace other than newlines
_BLANKS = re.compile(r"\n{3,}")


def _normalize(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", _ZERO_WIDTH.sub("", text))
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip()


_HEADING = re.compile(r"#{1,6} +(.*?)(?: +#+)? *")
_FENCE = re.compile(r"(`{3,}|~{3,})")


def _sections(text: str) -> list[tuple[str | None, str]]:
    """``[(heading path, body)]`` in order, split at ATX headings outside code fences."""
    sections: list[tuple[str | None, str]] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    fence: str | None = None

    def close() -> None:
        joined = "\n".join(body).strip()
        if joined:
            sections.append((" > ".join(t for _, t in path) or None, joined))
        body.clear()

    for line in text.split("\n"):
        fm = _FENCE.match(line)
        if fm is not None:
            if fence is None:
                fence = fm.group(1)
            elif fm.group(1).startswith(fence):
                fence = None
        m = _HEADING.fullmatch(line) if fence is None and fm is None else None
        if m is None or not m.group(1):
            body.append(line)
            continue
        close()
        level = len(line) - len(line.lstrip("#"))
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, m.group(1).strip()))
    close()
    return sections


# -- splitting and packing --------------------------------------------------------------

# Each level splits right after its separator, so that joining pieces gives back the
# text: paragraphs, lines, sentences, words.
_LEVELS = (
    re.compile(r"(?<=\n\n)"),
    re.compile(r"(?<=\n)"),
    re.compile("(?<=[\u3002\uff01\uff1f\uff1b])|(?<=[.!?;][ \"'\u201d\u2019)\\]])"),
    re.compile(r"(?<= )"),
)


def _pieces(text: str, size: int, level: int) -> list[str]:
    """``text`` cut into pieces of at most ``size`` characters at the coarsest level."""
    if len(text) <= size:
        return [text]
    if level == len(_LEVELS):
        return [text[i : i + size] for i in range(0, len(text), size)]
    parts = [p for p in _LEVELS[level].split(text) if p]
    if len(parts) == 1:
        return _pieces(text, size, level + 1)
    out: list[str] = []
    for part in parts:
        out.extend(_pieces(part, size, level + 1) if len(part) > size else [part])
    return out


def _pack(pieces: list[str], size: int, overlap: int) -> list[str]:
    """Greedy packing of pieces into chunks, each starting with the previous one's tail."""
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if len((current + piece).strip()) <= size:
            current += piece
            continue
        if current.strip():
            chunks.append(current.strip())
        current = _tail(current, overlap, size - len(piece)) + piece
        if len(current.strip()) > size:  # a piece with odd whitespace: no room for a tail
            current = piece
    if current.strip():
        chunks.append(current.strip())
    return chunks


def _tail(text: str, overlap: int, room: int) -> str:
    """The end of ``text`` to carry into the next chunk: at most ``overlap`` characters
    of text (and its trailing whitespace) fitting in ``room``, starting at a word start
    (a cut between two characters of a script written without spaces is one)."""
    body = text.rstrip()
    space = text[len(body) :]
    limit = min(overlap, room - len(space))
    if limit <= 0 or not body:
        return ""
    start = max(0, len(body) - limit)
    if start > 0 and not body[start - 1].isspace() and not _unspaced(body[start - 1]):
        m = _WHITESPACE.search(body, start)
        start = m.end() if m else len(body)
    tail = body[start:].lstrip()
    return tail + space if tail else ""


_WHITESPACE = re.compile(r"\s+")


def _unspaced(ch: str) -> bool:
    """Whether ``ch`` belongs to a script written without spaces (CJK and beyond)."""
    return ord(ch) >= 0x2E80
