"""The dashboard's login layer for Starlette: ``AuthMiddleware`` and ``auth_routes``.

Every request except the public paths needs a principal, found in this order::

    Authorization: Bearer <api key>   -> Auth.key_principal   (no CSRF token needed)
    ?key=<api key>  (WebSocket only)  -> Auth.key_principal
    cookie astr_session=<token>       -> Auth.session         (CSRF token on unsafe methods)

A request the middleware refuses never reaches the app::

    no principal                        401 {"error": "login required"}
    scope missing (GET/HEAD: read,      403 {"error": "this API key lacks the <scope> scope"}
      /api/chat...: chat, else: admin)
    cookie + POST/PUT/PATCH/DELETE      403 {"error": "missing or wrong CSRF token"}
      without the right X-CSRF-Token

A refused WebSocket is accepted and at once closed with code 4401 (or 4403): a close
sent before the accept becomes an HTTP 403 handshake failure, in which browsers cannot
see the reason. WebSockets are not CSRF-checked here; a cookie WebSocket's handler
checks the client's first frame with ``ws_csrf_ok``. Handlers find the caller in
``request.state.principal``.

``auth_routes`` serves the contract's Auth section (``/api/auth/*``, ``/api/keys``);
each handler's docstring carries its OpenAPI description (YAML after ``---``).
"""

from __future__ import annotations

import functools
import hmac
import json
import math
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from astr_ray.auth import (
    ADMIN_USER,
    Auth,
    AuthError,
    PasswordPolicyError,
    Principal,
    RateLimited,
    normalize_scopes,
)

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "AuthMiddleware",
    "auth_routes",
    "required_scope",
    "ws_csrf_ok",
]

COOKIE = "astr_session"
CSRF_HEADER = "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOGIN_BODY_LIMIT = 4 * 1024
BODY_LIMIT = 64 * 1024


def required_scope(scope_type: str, method: str | None, path: str) -> str:
    """The scope a request needs: ``read`` for GET/HEAD, ``chat`` for anything else
    under ``/api/chat`` (WebSockets included), ``admin`` for the rest."""
    if scope_type == "http" and method in ("GET", "HEAD"):
        return "read"
    if path == "/api/chat" or path.startswith("/api/chat/"):
        return "chat"
    return "admin"


def _csrf_matches(expected: str | None, sent: str | None) -> bool:
    if not expected or not sent:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode())


def ws_csrf_ok(principal: Principal, frame: Any) -> bool:
    """Whether a WebSocket's first client frame (parsed JSON) authorizes it: key
    principals need nothing; cookie ones need ``{"type": "auth", "csrf": <their token>}``."""
    if principal.via == "key":
        return True
    if not isinstance(frame, dict) or frame.get("type") != "auth":
        return False
    sent = frame.get("csrf")
    return isinstance(sent, str) and _csrf_matches(principal.csrf, sent)


class AuthMiddleware:
    """Pure ASGI middleware (http and websocket) that lets only authorized requests
    through and puts their ``Principal`` in ``scope["state"]["principal"]``."""

    def __init__(
        self,
        app: ASGIApp,
        auth: Auth,
        *,
        public: Collection[str] = ("/health", "/", "/api/auth/login"),
        public_prefixes: Collection[str] = ("/static/",),
    ) -> None:
        self.app = app
        self.auth = auth
        self.public = frozenset(public)
        self.public_prefixes = tuple(public_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        if self._is_public(path):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        principal = await self._principal(conn)
        if principal is None:
            await _deny(scope, receive, send, 401, "login required")
            return
        needed = required_scope(scope["type"], scope.get("method"), path)
        if not principal.allows(needed):
            await _deny(scope, receive, send, 403, f"this API key lacks the {needed} scope")
            return
        if (
            scope["type"] == "http"
            and principal.via == "cookie"
            and scope["method"] in UNSAFE_METHODS
            and not _csrf_matches(principal.csrf, conn.headers.get(CSRF_HEADER))
        ):
            await _deny(scope, receive, send, 403, "missing or wrong CSRF token")
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _is_public(self, path: str) -> bool:
        if path in self.public:
            return True
        # A dot segment could climb out of a public folder; such a path is not public.
        if any(segment in (".", "..") for segment in path.split("/")):
            return False
        return path.startswith(self.public_prefixes)

    async def _principal(self, conn: HTTPConnection) -> Principal | None:
        authorization = conn.headers.get("authorization")
        if authorization is not None:
            # Explicit credentials that fail are a failure, not a reason to try the cookie.
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                return None
            return await self.auth.key_principal(credentials.strip())
        if conn.scope["type"] == "websocket" and "key" in conn.query_params:
            return await self.auth.key_principal(conn.query_params["key"])
        token = conn.cookies.get(COOKIE)
        if token:
            return await self.auth.session(token)
        return None


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


async def _deny(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    if scope["type"] == "websocket":
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000 + status, "reason": message})
        return
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    response = JSONResponse({"error": message}, status_code=status, headers=headers)
    await response(scope, receive, send)


# -- routes -------------------------------------------------------------------------------


class _Refused(Exception):
    """A request the handler refuses: becomes ``{"error", "field"?}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers


def _refusals(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    @functools.wraps(handler)  # keeps the docstring, which is the OpenAPI description
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except _Refused as exc:
            body: dict[str, Any] = {"error": exc.message}
            if exc.field:
                body["field"] = exc.field
            return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    return wrapped


async def _json_object(request: Request, limit: int = BODY_LIMIT) -> dict[str, Any]:
    """The body as a JSON object; 413 past ``limit`` bytes, 400 if it is not one."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _Refused(413, f"the body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _Refused(413, f"the body is larger than {limit} bytes")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Refused(400, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise _Refused(400, "the body must be a JSON object")
    return data


def _string(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str):
        raise _Refused(400, f"{field} is missing or not a string", field)
    return value


def _principal(request: Request) -> Principal:
    principal: Principal = request.state.principal
    return principal


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _auth_error(exc: AuthError) -> _Refused:
    field = exc.context.get("field")
    return _Refused(400, exc.message, field if isinstance(field, str) else None)


def _rate_limited(exc: RateLimited) -> _Refused:
    wait = max(1, math.ceil(exc.retry_after))
    return _Refused(
        429, f"too many attempts, try again in {wait} s", headers={"Retry-After": str(wait)}
    )


def auth_routes(auth: Auth, *, secure_cookies: bool = False) -> list[BaseRoute]:
    """The Auth section of the dashboard API. Mount behind ``AuthMiddleware`` (login is
    public; the others read ``request.state.principal``)."""

    @_refusals
    async def login(request: Request) -> Response:
        """Log in as the admin: sets the session cookie, returns the CSRF token.
        ---
        summary: Log in
        tags: [auth]
        security: []
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                required: [username, password]
                properties:
                  username: {type: string, example: admin}
                  password: {type: string, format: password}
        responses:
          200:
            description: Logged in; the astr_session cookie (HttpOnly, SameSite=Strict) is set.
            content:
              application/json:
                schema:
                  type: object
                  properties:
                    user: {type: string}
                    csrf: {type: string, description: send as X-CSRF-Token on unsafe methods}
          400: {description: The body is not JSON or lacks username or password.}
          401: {description: Wrong username or password.}
          413: {description: The body is over 4 KiB.}
          429: {description: Too many failed attempts; the Retry-After header says how long.}
        """
        data = await _json_object(request, LOGIN_BODY_LIMIT)
        username, password = _string(data, "username"), _string(data, "password")
        try:
            token, csrf = await auth.login(username, password, _client(request))
        except RateLimited as exc:
            raise _rate_limited(exc) from None
        except AuthError:
            raise _Refused(401, "wrong username or password") from None
        response = JSONResponse({"user": ADMIN_USER, "csrf": csrf})
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(auth.session_ttl_s),
            path="/",
            secure=secure_cookies,
            httponly=True,
            samesite="strict",
        )
        return response

    @_refusals
    async def logout(request: Request) -> Response:
        """End the cookie session (an API key stays valid) and clear the cookie.
        ---
        summary: Log out
        tags: [auth]
        responses:
          200: {description: 'Logged out: {"ok": true}.'}
        """
        token = request.cookies.get(COOKIE)
        if token and _principal(request).via == "cookie":
            await auth.logout(token)
        response = JSONResponse({"ok": True})
        response.delete_cookie(
            COOKIE, path="/", secure=secure_cookies, httponly=True, samesite="strict"
        )
        return response

    @_refusals
    async def me(request: Request) -> Response:
        """Who is logged in, the session's CSRF token and the scopes.
        ---
        summary: The current login
        tags: [auth]
        responses:
          200:
            description: The caller.
            content:
              application/json:
                schema:
                  type: object
                  properties:
                    user: {type: string}
                    csrf: {type: string, nullable: true}
                    scopes: {type: array, items: {type: string, enum: [read, chat, admin]}}
          401: {description: Not logged in.}
        """
        principal = _principal(request)
        return JSONResponse(
            {"user": principal.user, "csrf": principal.csrf, "scopes": sorted(principal.scopes)}
        )

    @_refusals
    async def change_password(request: Request) -> Response:
        """Change the admin password; every other session is logged out.
        ---
        summary: Change the admin password
        tags: [auth]
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                required: [old, new]
                properties:
                  old: {type: string, format: password}
                  new: {type: string, format: password, minLength: 10}
        responses:
          200: {description: 'Changed: {"ok": true}.'}
          400: {description: 'The new password is shorter than 10 characters, or a bad body.'}
          403: {description: The old password is wrong.}
          429: {description: Too many wrong old passwords; see Retry-After.}
        """
        data = await _json_object(request, LOGIN_BODY_LIMIT)
        old, new = _string(data, "old"), _string(data, "new")
        keep = request.cookies.get(COOKIE) if _principal(request).via == "cookie" else None
        try:
            await auth.change_password(old, new, client=_client(request), keep_token=keep)
        except PasswordPolicyError as exc:
            raise _Refused(400, exc.message, "new") from None
        except RateLimited as exc:
            raise _rate_limited(exc) from None
        except AuthError as exc:
            raise _Refused(403, exc.message, "old") from None
        return JSONResponse({"ok": True})

    @_refusals
    async def list_keys(request: Request) -> Response:
        """The API keys (never the keys themselves).
        ---
        summary: List API keys
        tags: [keys]
        responses:
          200:
            description: The keys, oldest first.
            content:
              application/json:
                schema:
                  type: object
                  properties:
                    keys:
                      type: array
                      items:
                        type: object
                        properties:
                          id: {type: string}
                          name: {type: string}
                          scopes: {type: array, items: {type: string}}
                          created: {type: number, description: epoch seconds}
                          last_used: {type: number, nullable: true}
        """
        return JSONResponse({"keys": await auth.list_keys()})

    @_refusals
    async def create_key(request: Request) -> Response:
        """Create an API key; the key is in this response only.
        ---
        summary: Create an API key
        tags: [keys]
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                required: [name, scopes]
                properties:
                  name: {type: string, pattern: '^[\\w .-]{1,64}$'}
                  scopes: {type: array, items: {type: string, enum: [read, chat, admin]}}
        responses:
          201:
            description: 'Created: {"id", "name", "scopes", "key"}; use it as
              "Authorization: Bearer <key>".'
          400: {description: 'A bad name or scope: {"error", "field"}.'}
        """
        data = await _json_object(request)
        name = _string(data, "name")
        scopes = data.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise _Refused(400, "scopes must be a list of strings", "scopes")
        try:
            key_id, key = await auth.create_key(name, scopes)
        except AuthError as exc:
            raise _auth_error(exc) from None
        body = {"id": key_id, "name": name, "scopes": normalize_scopes(scopes), "key": key}
        return JSONResponse(body, status_code=201)

    @_refusals
    async def delete_key(request: Request) -> Response:
        """Revoke an API key at once.
        ---
        summary: Delete an API key
        tags: [keys]
        parameters:
          - {name: id, in: path, required: true, schema: {type: string}}
        responses:
          200: {description: 'Deleted: {"ok": true}.'}
          404: {description: No such key.}
        """
        if not await auth.delete_key(request.path_params["id"]):
            raise _Refused(404, "no such API key")
        return JSONResponse({"ok": True})

    return [
        Route("/api/auth/login", login, methods=["POST"]),
        Route("/api/auth/logout", logout, methods=["POST"]),
        Route("/api/auth/me", me, methods=["GET"]),
        Route("/api/auth/password", change_password, methods=["POST"]),
        Route("/api/keys", list_keys, methods=["GET"]),
        Route("/api/keys", create_key, methods=["POST"]),
        Route("/api/keys/{id}", delete_key, methods=["DELETE"]),
    ]
