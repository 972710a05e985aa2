"""Dashboard auth: ``astr_ray.auth`` on a real SQLite store, and ``dashboard.auth`` served
by uvicorn on 127.0.0.1 and driven with aiohttp, as the browser and scripts would."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.schemas import SchemaGenerator
from starlette.websockets import WebSocket
from yarl import URL

from astr_ray.auth import (
    Auth,
    AuthError,
    PasswordPolicyError,
    RateLimited,
    hash_password,
    verify_password,
)
from astr_ray.store import Store
from dashboard.auth import AuthMiddleware, auth_routes, ws_csrf_ok
from tests.conftest import free_port

PASSWORD = "correct horse battery"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await Store.open(str(tmp_path / "astr_ray.db")) as s:
        await s.migrate()
        yield s


@pytest.fixture
async def auth(store: Store) -> Auth:
    a = Auth(store)
    await a.reset_password(PASSWORD)
    return a


# -- a small app behind the middleware -------------------------------------------------------


async def echo(request: Request) -> Response:
    principal = request.state.principal
    return JSONResponse({"user": principal.user, "method": request.method})


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def chat_ws(ws: WebSocket) -> None:
    principal = ws.state.principal
    await ws.accept()
    if principal.via == "cookie" and not ws_csrf_ok(principal, await ws.receive_json()):
        await ws.close(code=4403, reason="missing or wrong CSRF token")
        return
    await ws.send_json({"user": principal.user})
    await ws.close()


@dataclass
class Served:
    url: str
    auth: Auth
    store: Store
    db: Path

    def ws_url(self, path: str) -> str:
        return self.url.replace("http://", "ws://") + path


@pytest.fixture
async def served(auth: Auth, store: Store, tmp_path: Path) -> AsyncIterator[Served]:
    app = Starlette(
        routes=[
            *auth_routes(auth),
            Route("/health", health),
            Route("/echo", echo, methods=["GET", "POST"]),
            Route("/api/chat/x", echo, methods=["POST"]),
            WebSocketRoute("/api/chat/ws", chat_ws),
        ],
        middleware=[Middleware(AuthMiddleware, auth=auth)],
    )
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", auth, store, tmp_path / "astr_ray.db")
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: aiohttp's jar otherwise ignores cookies set by an IP address host.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def login(http: aiohttp.ClientSession, url: str, password: str = PASSWORD) -> str:
    async with http.post(
        f"{url}/api/auth/login", json={"username": "admin", "password": password}
    ) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert body["user"] == "admin"
    csrf: str = body["csrf"]
    return csrf


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as r:
        return r.status, await r.json()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def session_cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"astr_session={token}"}


def settings_rows(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT scope, key, CAST(value AS TEXT) FROM settings").fetchall()
    return [(str(s), str(k), str(v)) for s, k, v in rows]


# -- the core: passwords -----------------------------------------------------------------------


def test_hash_password_verifies_and_a_tampered_hash_does_not() -> None:
    encoded = hash_password(PASSWORD)
    assert encoded.startswith("scrypt$16384$8$1$") and PASSWORD not in encoded
    assert verify_password(PASSWORD, encoded)
    assert not verify_password(PASSWORD + "!", encoded)
    assert hash_password(PASSWORD) != encoded  # a fresh salt each time
    head, digest = encoded.rsplit("$", 1)
    flipped = ("B" if digest[0] == "A" else "A") + digest[1:]
    assert not verify_password(PASSWORD, f"{head}${flipped}")
    salt_swapped = encoded.split("$")
    salt_swapped[4] = hash_password("x").split("$")[4]
    assert not verify_password(PASSWORD, "$".join(salt_swapped))
    for malformed in ("", "scrypt$1$2", "plain", encoded.replace("scrypt", "bcrypt")):
        assert not verify_password(PASSWORD, malformed)
    huge = encoded.split("$")
    huge[1] = str(2**30)  # would need 128 GiB: refused, not attempted
    assert not verify_password(PASSWORD, "$".join(huge))


async def test_ensure_admin_generates_once_and_stores_only_a_hash(store: Store) -> None:
    auth = Auth(store)
    password = await auth.ensure_admin()
    assert password is not None and len(password) >= 10
    assert await auth.ensure_admin() is None
    stored = (await store.get_settings("dashboard"))["admin_password"]
    assert stored != password and password not in stored and verify_password(password, stored)
    token, csrf = await auth.login("admin", password, "127.0.0.1")
    principal = await auth.session(token)
    assert principal is not None and principal.user == "admin" and principal.csrf == csrf
    assert principal.scopes == frozenset({"admin"}) and principal.via == "cookie"
    rows = json.dumps(await store.get_settings("dashboard_sessions"))
    assert token not in rows and hashlib.sha256(token.encode()).hexdigest() in rows


async def test_login_refuses_unknown_users_and_a_missing_password(store: Store) -> None:
    auth = Auth(store)
    with pytest.raises(AuthError, match="wrong username or password"):
        await auth.login("admin", "anything at all", "c")  # no admin password yet
    await auth.reset_password(PASSWORD)
    with pytest.raises(AuthError, match="wrong username or password"):
        await auth.login("root", PASSWORD, "c")


async def test_rate_limit_is_per_client_and_counts_only_failures(auth: Auth) -> None:
    for _ in range(4):
        with pytest.raises(AuthError):
            await auth.login("admin", "wrong password", "10.0.0.1")
    await auth.login("admin", PASSWORD, "10.0.0.1")  # a success does not count
    with pytest.raises(AuthError) as fifth:
        await auth.login("admin", "wrong password", "10.0.0.1")
    assert not isinstance(fifth.value, RateLimited)
    with pytest.raises(RateLimited) as limited:
        await auth.login("admin", PASSWORD, "10.0.0.1")  # even the right password
    assert 0 < limited.value.retry_after <= 60
    token, _ = await auth.login("admin", PASSWORD, "10.0.0.2")
    assert await auth.session(token) is not None


async def test_change_password_needs_the_old_one_and_ten_characters(auth: Auth) -> None:
    mine, _ = await auth.login("admin", PASSWORD, "c")
    other, _ = await auth.login("admin", PASSWORD, "c")
    with pytest.raises(PasswordPolicyError):
        await auth.change_password(PASSWORD, "short", keep_token=mine)
    with pytest.raises(AuthError, match="old password is wrong"):
        await auth.change_password("not the password", "a long new password", keep_token=mine)
    await auth.change_password(PASSWORD, "a long new password", keep_token=mine)
    assert await auth.session(mine) is not None
    assert await auth.session(other) is None
    with pytest.raises(AuthError):
        await auth.login("admin", PASSWORD, "c")
    await auth.login("admin", "a long new password", "c")


async def test_reset_password_drops_every_session(auth: Auth) -> None:
    tokens = [(await auth.login("admin", PASSWORD, "c"))[0] for _ in range(2)]
    with pytest.raises(PasswordPolicyError):
        await auth.reset_password("short")
    new = await auth.reset_password()
    assert new != PASSWORD and len(new) >= 10
    for token in tokens:
        assert await auth.session(token) is None
    await auth.login("admin", new, "c")


async def test_key_names_and_scopes_are_checked(auth: Auth) -> None:
    for name in ("", "x" * 65, "bad/name", "   "):
        with pytest.raises(AuthError) as err:
            await auth.create_key(name, ["read"])
        assert err.value.context["field"] == "name"
    for scopes in ([], ["read", "root"]):
        with pytest.raises(AuthError) as err:
            await auth.create_key("ci", scopes)
        assert err.value.context["field"] == "scopes"
    key_id, key = await auth.create_key("ci bot-1.0", ["admin", "read", "read"])
    assert key.startswith("ar_") and len(key) > 40
    with pytest.raises(AuthError, match="exists already"):
        await auth.create_key("ci bot-1.0", ["read"])
    principal = await auth.key_principal(key)
    assert principal is not None and principal.user == "key:ci bot-1.0"
    assert principal.scopes == frozenset({"read", "admin"}) and principal.csrf is None
    assert await auth.key_principal(key + "x") is None
    assert await auth.key_principal("not a key") is None
    assert await auth.delete_key(key_id) and not await auth.delete_key(key_id)
    assert await auth.key_principal(key) is None


# -- over HTTP ---------------------------------------------------------------------------------


async def test_login_sets_a_strict_http_only_cookie(
    served: Served, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{served.url}/api/auth/login", json={"username": "admin", "password": PASSWORD}
    ) as r:
        assert r.status == 200
        body = await r.json()
        cookie = r.cookies["astr_session"]
    assert body["user"] == "admin" and body["csrf"]
    assert cookie["httponly"] is True
    assert cookie["samesite"].lower() == "strict"
    assert cookie["path"] == "/"
    assert int(cookie["max-age"]) == 7 * 86400
    assert not cookie["secure"]  # secure_cookies is off for plain http
    status, me = await call(http, "GET", f"{served.url}/api/auth/me")
    assert status == 200
    assert me == {"user": "admin", "csrf": body["csrf"], "scopes": ["admin"]}


async def test_wrong_password_and_bad_bodies(served: Served, http: aiohttp.ClientSession) -> None:
    url = f"{served.url}/api/auth/login"
    status, body = await call(http, "POST", url, json={"username": "admin", "password": "nope"})
    assert (status, body) == (401, {"error": "wrong username or password"})
    assert not http.cookie_jar.filter_cookies(URL(served.url))
    status, body = await call(http, "POST", url, data=b"{not json")
    assert status == 400 and "JSON" in body["error"]
    status, body = await call(http, "POST", url, json={"username": "admin"})
    assert (status, body["field"]) == (400, "password")
    status, body = await call(http, "POST", url, json={"username": "admin", "password": "x" * 5000})
    assert status == 413


async def test_sixth_failure_within_a_minute_is_429_with_retry_after(
    served: Served, http: aiohttp.ClientSession
) -> None:
    url = f"{served.url}/api/auth/login"
    for _ in range(5):
        status, _ = await call(http, "POST", url, json={"username": "admin", "password": "no"})
        assert status == 401
    async with http.post(url, json={"username": "admin", "password": PASSWORD}) as r:
        assert r.status == 429
        wait = int(r.headers["Retry-After"])
        assert (await r.json())["error"] == f"too many attempts, try again in {wait} s"
    assert 1 <= wait <= 60


async def test_protected_routes_need_a_login(served: Served, http: aiohttp.ClientSession) -> None:
    for method, path in (
        ("GET", "/echo"),
        ("POST", "/echo"),
        ("GET", "/api/auth/me"),
        ("GET", "/api/keys"),
        ("GET", "/static/../echo"),
    ):
        status, body = await call(http, method, served.url + path)
        assert (status, body) == (401, {"error": "login required"}), path
    assert await call(http, "GET", f"{served.url}/health") == (200, {"ok": True})
    status, _ = await call(http, "GET", f"{served.url}/echo", headers=bearer("ar_made_up"))
    assert status == 401
    status, _ = await call(http, "GET", f"{served.url}/echo", headers={"Authorization": "Basic x"})
    assert status == 401


async def test_cookie_post_needs_the_csrf_token(
    served: Served, http: aiohttp.ClientSession
) -> None:
    csrf = await login(http, served.url)
    url = f"{served.url}/echo"
    assert await call(http, "GET", url) == (200, {"user": "admin", "method": "GET"})
    refused = (403, {"error": "missing or wrong CSRF token"})
    assert await call(http, "POST", url) == refused
    assert await call(http, "POST", url, headers={"X-CSRF-Token": csrf + "x"}) == refused
    ok = await call(http, "POST", url, headers={"X-CSRF-Token": csrf})
    assert ok == (200, {"user": "admin", "method": "POST"})


async def test_key_scopes(served: Served, http: aiohttp.ClientSession) -> None:
    csrf = await login(http, served.url)
    admin = {"X-CSRF-Token": csrf}
    keys = {}
    for name, scopes in (("reader", ["read"]), ("bot", ["chat"]), ("ops", ["admin"])):
        status, body = await call(
            http,
            "POST",
            f"{served.url}/api/keys",
            json={"name": name, "scopes": scopes},
            headers=admin,
        )
        assert status == 201 and body["name"] == name and body["scopes"] == scopes
        assert body["key"].startswith("ar_")
        keys[name] = body["key"]
    async with aiohttp.ClientSession() as plain:  # no cookie: the key alone
        echo_url, chat_url = f"{served.url}/echo", f"{served.url}/api/chat/x"
        reader, bot, ops = bearer(keys["reader"]), bearer(keys["bot"]), bearer(keys["ops"])
        assert await call(plain, "GET", echo_url, headers=reader) == (
            200,
            {"user": "key:reader", "method": "GET"},
        )
        assert await call(plain, "POST", echo_url, headers=reader) == (
            403,
            {"error": "this API key lacks the admin scope"},
        )
        assert await call(plain, "POST", chat_url, headers=reader) == (
            403,
            {"error": "this API key lacks the chat scope"},
        )
        assert await call(plain, "POST", chat_url, headers=bot) == (
            200,
            {"user": "key:bot", "method": "POST"},
        )
        assert await call(plain, "GET", echo_url, headers=bot) == (
            403,
            {"error": "this API key lacks the read scope"},
        )
        status, body = await call(
            plain,
            "POST",
            f"{served.url}/api/keys",
            json={"name": "x", "scopes": ["admin"]},
            headers=bot,
        )
        assert (status, body) == (403, {"error": "this API key lacks the admin scope"})
        # An admin key needs no CSRF token: browsers never send it on their own.
        assert (await call(plain, "POST", echo_url, headers=ops))[0] == 200
        assert (await call(plain, "POST", chat_url, headers=ops))[0] == 200
        status, me = await call(plain, "GET", f"{served.url}/api/auth/me", headers=bot)
        assert status == 403
        status, me = await call(plain, "GET", f"{served.url}/api/auth/me", headers=reader)
        assert me == {"user": "key:reader", "csrf": None, "scopes": ["read"]}


async def test_key_listing_never_shows_the_key(served: Served, http: aiohttp.ClientSession) -> None:
    csrf = await login(http, served.url)
    status, created = await call(
        http,
        "POST",
        f"{served.url}/api/keys",
        json={"name": "ci", "scopes": ["read", "chat"]},
        headers={"X-CSRF-Token": csrf},
    )
    assert status == 201
    key = created["key"]
    digest = hashlib.sha256(key.encode()).hexdigest()
    async with aiohttp.ClientSession() as plain:
        assert (await call(plain, "GET", f"{served.url}/echo", headers=bearer(key)))[0] == 200
    async with http.get(f"{served.url}/api/keys") as r:
        text = await r.text()
    assert key not in text and digest not in text
    listed = json.loads(text)["keys"]
    assert len(listed) == 1
    entry = listed[0]
    assert set(entry) == {"id", "name", "scopes", "created", "last_used"}
    assert entry["id"] == created["id"] and entry["name"] == "ci"
    assert entry["scopes"] == ["read", "chat"]
    assert entry["last_used"] is not None and entry["last_used"] >= entry["created"]
    rows = await asyncio.to_thread(settings_rows, served.db)
    assert rows and not any(key in value or key in k for _, k, value in rows)


async def test_deleted_key_is_refused_at_once(served: Served, http: aiohttp.ClientSession) -> None:
    csrf = await login(http, served.url)
    headers = {"X-CSRF-Token": csrf}
    _, created = await call(
        http,
        "POST",
        f"{served.url}/api/keys",
        json={"name": "tmp", "scopes": ["read"]},
        headers=headers,
    )
    url = f"{served.url}/echo"
    assert (await call(http, "GET", url, headers=bearer(created["key"])))[0] == 200
    status, body = await call(
        http, "DELETE", f"{served.url}/api/keys/{created['id']}", headers=headers
    )
    assert (status, body) == (200, {"ok": True})
    assert (await call(http, "GET", url, headers=bearer(created["key"])))[0] == 401
    status, _ = await call(
        http, "DELETE", f"{served.url}/api/keys/{created['id']}", headers=headers
    )
    assert status == 404
    status, body = await call(
        http,
        "POST",
        f"{served.url}/api/keys",
        json={"name": "bad", "scopes": ["root"]},
        headers=headers,
    )
    assert status == 400 and body["field"] == "scopes"


async def test_logout_ends_the_session_on_the_server(
    served: Served, http: aiohttp.ClientSession
) -> None:
    csrf = await login(http, served.url)
    token = http.cookie_jar.filter_cookies(URL(served.url))["astr_session"].value
    assert await call(http, "POST", f"{served.url}/api/auth/logout") == (
        403,
        {"error": "missing or wrong CSRF token"},
    )
    async with http.post(f"{served.url}/api/auth/logout", headers={"X-CSRF-Token": csrf}) as r:
        assert (r.status, await r.json()) == (200, {"ok": True})
        assert r.cookies["astr_session"].value == ""
    async with aiohttp.ClientSession() as plain:  # the old token, sent by hand
        status, _ = await call(plain, "GET", f"{served.url}/echo", headers=session_cookie(token))
    assert status == 401


async def test_password_change_over_http(served: Served, http: aiohttp.ClientSession) -> None:
    csrf = await login(http, served.url)
    headers = {"X-CSRF-Token": csrf}
    url = f"{served.url}/api/auth/password"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        await login(other, served.url)
        status, body = await call(
            http, "POST", url, json={"old": PASSWORD, "new": "short"}, headers=headers
        )
        assert status == 400 and body["field"] == "new" and "10" in body["error"]
        status, body = await call(
            http,
            "POST",
            url,
            json={"old": "wrong one!", "new": "a long new password"},
            headers=headers,
        )
        assert status == 403 and body["field"] == "old"
        status, body = await call(
            http, "POST", url, json={"old": PASSWORD, "new": "a long new password"}, headers=headers
        )
        assert (status, body) == (200, {"ok": True})
        assert (await call(http, "GET", f"{served.url}/echo"))[0] == 200  # mine still works
        assert (await call(other, "GET", f"{served.url}/echo"))[0] == 401  # the other one not
    status, _ = await call(
        http,
        "POST",
        f"{served.url}/api/auth/login",
        json={"username": "admin", "password": PASSWORD},
    )
    assert status == 401
    await login(http, served.url, "a long new password")


async def test_reset_password_logs_the_browser_out(
    served: Served, http: aiohttp.ClientSession
) -> None:
    await login(http, served.url)
    assert (await call(http, "GET", f"{served.url}/echo"))[0] == 200
    await served.auth.reset_password()
    assert await call(http, "GET", f"{served.url}/echo") == (401, {"error": "login required"})


async def test_expired_session_is_refused_and_deleted(served: Served) -> None:
    # Same store, shorter sessions: the server's Auth reads the expiry stored at login.
    short = Auth(served.store, session_ttl_s=0.05)
    token, _ = await short.login("admin", PASSWORD, "127.0.0.1")
    async with aiohttp.ClientSession() as plain:
        await asyncio.sleep(0.2)
        status, _ = await call(plain, "GET", f"{served.url}/echo", headers=session_cookie(token))
    assert status == 401
    assert await served.store.get_settings("dashboard_sessions") == {}


async def test_websocket_auth(served: Served, http: aiohttp.ClientSession) -> None:
    csrf = await login(http, served.url)
    _, created = await call(
        http,
        "POST",
        f"{served.url}/api/keys",
        json={"name": "bot", "scopes": ["chat"]},
        headers={"X-CSRF-Token": csrf},
    )
    _, reader = await call(
        http,
        "POST",
        f"{served.url}/api/keys",
        json={"name": "reader", "scopes": ["read"]},
        headers={"X-CSRF-Token": csrf},
    )
    ws_url = served.ws_url("/api/chat/ws")
    async with aiohttp.ClientSession() as plain:
        async with plain.ws_connect(ws_url) as ws:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert (ws.close_code, msg.extra) == (4401, "login required")
        async with plain.ws_connect(ws_url, params={"key": reader["key"]}) as ws:
            msg = await ws.receive()
            assert (ws.close_code, msg.extra) == (4403, "this API key lacks the chat scope")
        async with plain.ws_connect(ws_url, params={"key": created["key"]}) as ws:
            assert await ws.receive_json() == {"user": "key:bot"}
    async with http.ws_connect(ws_url) as ws:  # the cookie, then the CSRF token
        await ws.send_json({"type": "auth", "csrf": csrf})
        assert await ws.receive_json() == {"user": "admin"}
    async with http.ws_connect(ws_url) as ws:
        await ws.send_json({"type": "auth", "csrf": "forged"})
        msg = await ws.receive()
        assert (ws.close_code, msg.extra) == (4403, "missing or wrong CSRF token")


async def test_every_route_has_an_openapi_description(auth: Auth) -> None:
    schema = SchemaGenerator({"openapi": "3.0.0", "info": {"title": "t", "version": "1"}})
    paths = schema.get_schema(auth_routes(auth))["paths"]
    expected = {
        ("/api/auth/login", "post"),
        ("/api/auth/logout", "post"),
        ("/api/auth/me", "get"),
        ("/api/auth/password", "post"),
        ("/api/keys", "get"),
        ("/api/keys", "post"),
        ("/api/keys/{id}", "delete"),
    }
    found = {(path, method) for path, ops in paths.items() for method in ops}
    assert found == expected
    for path, method in expected:
        operation = paths[path][method]
        assert operation["summary"] and operation["responses"], (path, method)
    assert set(paths["/api/auth/login"]["post"]["responses"]) == {200, 400, 401, 413, 429}
