"""The knowledge-base API (the dashboard's and scripts'), behind the same token as the
web chat.

    GET    /api/kb                          the bases, with document and chunk counts
    POST   /api/kb                          {"name", "description"?} -> 201 the base
    DELETE /api/kb/{kb}                     the base, its documents and chunks
    GET    /api/kb/{kb}/documents           each document's status, size, chunks
    POST   /api/kb/{kb}/documents?name=F    the file's bytes as the body -> 202 the job
    POST   /api/kb/{kb}/documents           {"url", "name"?} (JSON) -> 202 the job
    DELETE /api/kb/{kb}/documents/{name}    a document and its chunks
    GET    /api/kb/jobs/{id}                a job's progress: status, chunks, embedded
    POST   /api/kb/{kb}/search              {"query", "k"?} -> {"passages": [...]}

Refused with a reason: names that are not plain names (no paths: ``../x`` is not a
document name), uploads over ``knowledge.max_document_mb`` (413), unknown bases (404),
and whatever the service refuses (400: an unsupported or malformed document...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from astr_ray.errors import KnowledgeError

__all__ = ["KnowledgeBackend", "knowledge_routes"]

_KB = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DOC = re.compile(r"^[^/\\\x00-\x1f]{1,255}$")
_JOB = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class KnowledgeBackend(Protocol):
    async def knowledge(self, method: str, *args: Any, **kwargs: Any) -> Any: ...


def _doc_name(name: str) -> str | None:
    name = name.strip()
    if not _DOC.match(name) or name in (".", "..") or name.startswith("."):
        return None
    return name


def knowledge_routes(
    backend: KnowledgeBackend,
    authorized: Callable[[Request], bool],
    max_upload: int,
) -> list[Route]:
    def guard(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            if not authorized(request):
                return JSONResponse({"error": "missing or wrong token"}, status_code=401)
            kb = request.path_params.get("kb")
            if kb is not None and not _KB.match(kb):
                return JSONResponse({"error": "not a knowledge base name"}, status_code=400)
            try:
                return await handler(request)
            except KnowledgeError as exc:
                status = 400
                if exc.message.startswith(("no knowledge base", "no document", "no job")):
                    status = 404
                elif exc.message.startswith("the knowledge service is not available"):
                    status = 503
                return JSONResponse({"error": exc.message}, status_code=status)

        return wrapped

    async def call(method: str, *args: Any, **kwargs: Any) -> Any:
        return await backend.knowledge(method, *args, **kwargs)

    async def json_body(request: Request, limit: int = 64 * 1024) -> dict[str, Any]:
        body = await request.body()
        if len(body) > limit:
            raise KnowledgeError("request body too large")
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise KnowledgeError("body is not valid JSON") from None
        if not isinstance(data, dict):
            raise KnowledgeError("body must be a JSON object")
        return data

    async def bases(request: Request) -> Response:
        return JSONResponse({"bases": await call("bases")})

    async def create(request: Request) -> Response:
        data = await json_body(request)
        name = data.get("name")
        if not isinstance(name, str) or not _KB.match(name):
            raise KnowledgeError("name must be 1-64 letters, digits, '_', '.' or '-'")
        description = data.get("description", "")
        if not isinstance(description, str) or len(description) > 2000:
            raise KnowledgeError("description must be text of at most 2000 characters")
        return JSONResponse(await call("create", name, description), status_code=201)

    async def delete(request: Request) -> Response:
        if not await call("delete", request.path_params["kb"]):
            raise KnowledgeError(f"no knowledge base called {request.path_params['kb']!r}")
        return JSONResponse({"deleted": request.path_params["kb"]})

    async def documents(request: Request) -> Response:
        return JSONResponse({"documents": await call("documents", request.path_params["kb"])})

    async def add(request: Request) -> Response:
        kb = request.path_params["kb"]
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            data = await json_body(request)
            url = data.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise KnowledgeError("url must be an http(s) URL")
            raw_name = data.get("name") or url.rstrip("/").rsplit("/", 1)[-1] or "page.html"
            name = _doc_name(str(raw_name))
            if name is None:
                raise KnowledgeError("name must be a file name, not a path")
            job = await call("add", kb, name, url=url)
            return JSONResponse(job, status_code=202)
        name = _doc_name(request.query_params.get("name", ""))
        if name is None:
            raise KnowledgeError("?name= must be a file name, not a path")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload:
            return _too_large(max_upload)
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > max_upload:
                return _too_large(max_upload)
        if not body:
            raise KnowledgeError("the document is empty")
        mime = ctype.split(";")[0].strip() or None
        job = await call("add", kb, name, data=bytes(body), mime=mime)
        return JSONResponse(job, status_code=202)

    async def remove_document(request: Request) -> Response:
        name = _doc_name(request.path_params["name"])
        if name is None:
            raise KnowledgeError("not a document name")
        removed = await call("remove_document", request.path_params["kb"], name)
        return JSONResponse({"deleted": name, "chunks": removed})

    async def job(request: Request) -> Response:
        job_id = request.path_params["job"]
        if not _JOB.match(job_id):
            raise KnowledgeError("not a job id")
        return JSONResponse(await call("job", job_id))

    async def search(request: Request) -> Response:
        data = await json_body(request)
        query = data.get("query")
        if not isinstance(query, str) or not query.strip() or len(query) > 4000:
            raise KnowledgeError("query must be non-empty text of at most 4000 characters")
        k = data.get("k", 5)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 50:
            raise KnowledgeError("k must be an integer from 1 to 50")
        passages = await call("search", [request.path_params["kb"]], query, k)
        return JSONResponse({"passages": passages})

    return [
        Route("/api/kb", guard(bases), methods=["GET"]),
        Route("/api/kb", guard(create), methods=["POST"]),
        Route("/api/kb/jobs/{job}", guard(job), methods=["GET"]),
        Route("/api/kb/{kb}", guard(delete), methods=["DELETE"]),
        Route("/api/kb/{kb}/documents", guard(documents), methods=["GET"]),
        Route("/api/kb/{kb}/documents", guard(add), methods=["POST"]),
        Route("/api/kb/{kb}/documents/{name}", guard(remove_document), methods=["DELETE"]),
        Route("/api/kb/{kb}/search", guard(search), methods=["POST"]),
    ]


def _too_large(limit: int) -> Response:
    return JSONResponse(
        {"error": f"upload is over the {limit / 2**20:g} MB limit (knowledge.max_document_mb)"},
        status_code=413,
    )
