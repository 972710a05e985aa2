"""Dashboard API: browsing conversations.

GET    /api/sessions?q=&platform=&limit=&offset=   sessions, newest first, with counts
GET    /api/sessions/{key}/conversations            a session's conversations
GET    /api/conversations/{id}/messages?limit=      a conversation's messages
GET    /api/search?q=&limit=                        messages containing the text
DELETE /api/conversations/{id}                      delete one (a session whose current
                                                    conversation it was gets a fresh one)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

__all__ = ["browse_routes"]


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = int(raw)  # ValueError -> 400 in the handler
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}")
    return value


def _json_of(row: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return dataclasses.asdict(row)
    data: dict[str, Any] = dict(row)
    return data


def browse_routes(backend: Any) -> list[BaseRoute]:
    store = lambda: backend.store  # noqa: E731 - the store is opened when the actor starts

    async def sessions(request: Request) -> Response:
        """Sessions.
        ---
        summary: Sessions, newest first, with their conversation and message counts
        responses:
          200:
            description: a page of sessions and the total
        """
        try:
            limit = _int(request, "limit", 50, 1, 500)
            offset = _int(request, "offset", 0, 0, 10**9)
        except ValueError as exc:
            return _error(str(exc) if "between" in str(exc) else "limit and offset are numbers")
        q = request.query_params.get("q") or None
        platform = request.query_params.get("platform") or None
        rows, total = await store().list_sessions(q, platform, limit, offset)
        return JSONResponse({"sessions": [_json_of(r) for r in rows], "total": total})

    async def conversations(request: Request) -> Response:
        """A session's conversations.
        ---
        summary: The conversations of one session, the current one marked
        responses:
          200:
            description: the conversations
        """
        convs = await store().list_conversations(request.path_params["key"])
        if not convs:  # every session has a conversation: none means no such session
            return _error("no such session", 404)
        return JSONResponse({"conversations": [_json_of(c) for c in convs]})

    async def messages(request: Request) -> Response:
        """A conversation's messages.
        ---
        summary: The messages of one conversation, oldest first
        responses:
          200:
            description: the messages
          404:
            description: no such conversation
        """
        try:
            limit = _int(request, "limit", 200, 1, 5000)
        except ValueError as exc:
            return _error(str(exc))
        rows = await store().conversation_messages(request.path_params["id"], limit)
        if rows is None:
            return _error("no such conversation", 404)
        return JSONResponse({"messages": [_json_of(m) for m in rows]})

    async def search(request: Request) -> Response:
        """Search messages.
        ---
        summary: Messages containing the text (case-insensitive), newest first
        responses:
          200:
            description: the hits
        """
        q = (request.query_params.get("q") or "").strip()
        if not q:
            return _error("q is required")
        try:
            limit = _int(request, "limit", 50, 1, 500)
        except ValueError as exc:
            return _error(str(exc))
        hits = await store().search_messages(q, limit)
        return JSONResponse({"hits": [_json_of(h) for h in hits]})

    async def delete(request: Request) -> Response:
        """Delete a conversation.
        ---
        summary: Delete a conversation and its messages
        responses:
          200:
            description: deleted
          404:
            description: no such conversation
        """
        cid = request.path_params["id"]
        if not await store().delete_conversation_by_id(cid):
            return _error("no such conversation", 404)
        await backend.every_host("forget_conversation", cid)  # no host keeps it cached
        return JSONResponse({"ok": True})

    return [
        Route("/api/sessions", sessions, methods=["GET"]),
        Route("/api/sessions/{key}/conversations", conversations, methods=["GET"]),
        Route("/api/conversations/{id}/messages", messages, methods=["GET"]),
        Route("/api/conversations/{id}", delete, methods=["DELETE"]),
        Route("/api/search", search, methods=["GET"]),
    ]
