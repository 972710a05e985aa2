"""The dashboard app: the JSON API, the live streams and the static front end.

    /                  index.html (the front end: plain ES modules, dashboard/static/)
    /health            no login
    /api/auth/...      login, logout, me, password, API keys      (dashboard.auth)
    /api/status ...    the actor tree, chat accounts, plugins, logs, metrics, chat
                                                                   (dashboard.api_runtime)
    /api/providers ... providers, platforms, personas, plugin config, config sections
                                                                   (dashboard.api_config)
    /api/sessions ...  conversations: browse, search, delete      (dashboard.api_browse)
    /api/kb ...        knowledge bases                             (dashboard.knowledge_api)
    /api/openapi.json  the OpenAPI description of all of it

Every path but ``/health``, the front end's files and the login needs a login
(``AuthMiddleware``): a session cookie plus the CSRF header on writes, or a bearer API
key with the right scope. Responses carry a strict Content-Security-Policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.schemas import SchemaGenerator
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard.api_browse import browse_routes
from dashboard.api_config import config_routes
from dashboard.api_runtime import runtime_routes
from dashboard.auth import AuthMiddleware, auth_routes
from dashboard.knowledge_api import knowledge_routes

__all__ = ["STATIC", "create_app"]

STATIC = Path(__file__).resolve().parent / "static"

CSP = (
    "default-src 'self'; img-src 'self' data:; media-src 'self' data: blob:; "
    "connect-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class SecurityHeaders:
    """CSP, no sniffing, no framing, no referrer, no caching of API answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if api:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(backend: Any) -> Starlette:
    """``backend`` is the Dashboard actor (``actors.dashboard``): its store, auth,
    config file, log book and series, and its calls into the tree."""
    schemas = SchemaGenerator(
        {"openapi": "3.0.0", "info": {"title": "astr-ray dashboard", "version": "1"}}
    )

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def health(request: Request) -> Response:
        info = await backend.health()
        return JSONResponse(info, status_code=200 if info.get("ok") else 503)

    async def openapi(request: Request) -> Response:
        """The OpenAPI description of this API.
        ---
        summary: OpenAPI description
        responses:
          200:
            description: the document
        """
        return JSONResponse(schemas.get_schema(routes=app.routes))

    max_upload = int(backend.cfg.knowledge.max_document_mb * 1024 * 1024)
    routes = [
        Route("/", index, methods=["GET"], include_in_schema=False),
        Route("/health", health, methods=["GET"]),
        Route("/api/openapi.json", openapi, methods=["GET"]),
        *auth_routes(backend.auth, secure_cookies=backend.cfg.dashboard.secure_cookies),
        *runtime_routes(backend),
        *config_routes(backend),
        *browse_routes(backend),
        *knowledge_routes(backend, lambda request: True, max_upload),  # AuthMiddleware guards
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(AuthMiddleware, auth=backend.auth),
        ],
    )
    return app
