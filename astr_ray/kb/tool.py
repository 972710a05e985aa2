"""Knowledge in chat: the ``search_knowledge`` tool and the passages put into prompts.

    agent ──search_knowledge(query)──► KnowledgeTools ─► Searcher.search(bases, query, k)
    turn (mode context|both) ─────────────────────────► the same, with the user's text;
                                                        passages go into the system prompt

Passages are numbered ``[1] document > heading`` so that answers can cite their
sources. Which bases a turn reads: its persona's ``knowledge`` list, else
``knowledge.default``; none means no tool and no context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from astr_ray.config import Config
from astr_ray.errors import KnowledgeError
from astr_ray.tools import Tool, ToolContext, ToolFailure

__all__ = [
    "CONTEXT_NOTE",
    "KnowledgeTools",
    "Passage",
    "Searcher",
    "bases_for",
    "context_note",
    "format_passages",
]

PASSAGE_CHARS = 2000  # one passage in a tool result or prompt, at most


@dataclass(frozen=True)
class Passage:
    chunk_id: int
    kb: str
    document: str
    heading: str | None
    text: str
    score: float

    @property
    def source(self) -> str:
        return f"{self.document} > {self.heading}" if self.heading else self.document

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_id": self.chunk_id,
            "kb": self.kb,
            "document": self.document,
            "heading": self.heading,
            "text": self.text,
            "score": self.score,
        }


class Searcher(Protocol):
    async def search(self, bases: Sequence[str], query: str, k: int) -> list[Passage]: ...


def bases_for(cfg: Config, persona_knowledge: list[str] | None) -> tuple[str, ...]:
    """The bases a turn reads (empty when knowledge is off)."""
    if cfg.knowledge.mode == "off" or cfg.knowledge.embedders < 1:
        return ()
    chosen = persona_knowledge if persona_knowledge is not None else cfg.knowledge.default
    return tuple(chosen)


def format_passages(passages: Sequence[Passage]) -> str:
    out = []
    for i, p in enumerate(passages, start=1):
        text = p.text if len(p.text) <= PASSAGE_CHARS else p.text[:PASSAGE_CHARS] + " …"
        out.append(f"[{i}] {p.source}\n{text}")
    return "\n\n".join(out)


CONTEXT_NOTE = (
    "Excerpts from the knowledge base that may help with the user's message. Use them "
    "when relevant and cite them as [n]; say so when they do not answer it.\n\n"
)


def context_note(passages: Sequence[Passage]) -> str:
    return CONTEXT_NOTE + format_passages(passages)


SEARCH = Tool(
    "search_knowledge",
    "Search the knowledge base for passages about a topic. Returns numbered passages "
    "with their source document; cite them as [n] in the answer.",
    {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "what to look for", "minLength": 1},
            "k": {
                "type": "integer",
                "description": "how many passages (default 5)",
                "minimum": 1,
                "maximum": 20,
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    },
    "knowledge",
)


class KnowledgeTools:
    """The ``search_knowledge`` tool, offered when the turn reads some base and
    ``knowledge.mode`` is ``tool`` or ``both``."""

    def __init__(self, cfg: Config, searcher: Searcher) -> None:
        self.cfg = cfg
        self.searcher = searcher

    def tools(self, ctx: ToolContext) -> list[Tool]:
        if ctx.knowledge and self.cfg.knowledge.mode in ("tool", "both"):
            return [SEARCH]
        return []

    async def call(self, tool: Tool, arguments: dict[str, Any], ctx: ToolContext) -> str:
        query = str(arguments.get("query", "")).strip()
        if not query:
            raise ToolFailure("query must not be empty")
        k = int(arguments.get("k") or self.cfg.knowledge.top_k)
        try:
            passages = await self.searcher.search(ctx.knowledge, query, max(1, min(k, 20)))
        except KnowledgeError as exc:
            raise ToolFailure(f"knowledge search failed: {exc.message}") from None
        if not passages:
            return "No passages in the knowledge base match that."
        return format_passages(passages)
