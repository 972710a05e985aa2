"""Dashboard authentication: the admin password, login sessions, API keys, a login limit.

Everything lives in the store's ``settings`` table, so every process that opens the
store (the dashboard actor, ``astr-ray password``) sees the same state::

    scope "dashboard"            "admin_password" -> "scrypt$16384$8$1$<salt b64>$<hash b64>"
                                 "key:<id>"       -> {"name", "scopes", "sha256", "created"}
                                 "used:<id>"      -> last use of key <id> (epoch seconds)
    scope "dashboard_sessions"   sha256(token)    -> {"user", "csrf", "expires"}

Contracts:

- No password, session token or API key is stored or logged in clear. Passwords are
  scrypt hashes; tokens and keys are 256-bit random strings, stored as their SHA-256
  (a slow hash adds nothing to a secret that cannot be guessed).
- Nothing is cached: each check reads the store, so a password reset from the CLI or a
  deleted key takes effect on the very next request, in every process.
- ``login`` takes the same time for an unknown user, a missing admin password and a
  wrong password (the scrypt hash always runs), and refuses a client with
  ``RateLimited`` once it has failed ``attempts_per_minute`` times in the last minute.
  The count is kept in this process's memory (the dashboard is one actor); successes
  do not count.
- Scopes: ``read`` (every GET), ``chat`` (the chat endpoints), ``admin`` (everything,
  implying the other two). A cookie login is always ``admin``.

Hashing is CPU work (~50 ms): ``Auth`` runs it in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from astr_ray.errors import AstrRayError
from astr_ray.store import Store

__all__ = [
    "ADMIN_USER",
    "MIN_PASSWORD_LENGTH",
    "SCOPES",
    "Auth",
    "AuthError",
    "PasswordPolicyError",
    "Principal",
    "RateLimited",
    "hash_password",
    "normalize_scopes",
    "verify_password",
]

log = logging.getLogger(__name__)

SCOPES = ("read", "chat", "admin")
ADMIN_USER = "admin"
MIN_PASSWORD_LENGTH = 10
# Longer inputs are refused before hashing: nobody types 1 KiB, and hashing it is waste.
_MAX_PASSWORD_LENGTH = 1024

_SCOPE = "dashboard"
_SESSIONS = "dashboard_sessions"
_ADMIN_KEY = "admin_password"
_KEY_PREFIX = "key:"
_USED_PREFIX = "used:"
_KEY_NAME = re.compile(r"^[\w .-]{1,64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{12}$")
_LAST_USED_EVERY_S = 60.0

# scrypt parameters for new hashes (RFC 7914's interactive-login sizes: 16 MiB, ~50 ms).
_N, _R, _P = 2**14, 8, 1
_SALT_BYTES = 16
_HASH_BYTES = 32
# A stored hash with bigger parameters than this is treated as malformed: a tampered
# row must not make every login allocate gigabytes.
_MAX_SCRYPT_MEMORY = 64 * 1024 * 1024


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin (cookie login) or an API key, with its scopes."""

    user: str  # "admin" or "key:<name>"
    scopes: frozenset[str]
    via: Literal["cookie", "key"]
    csrf: str | None  # the session's CSRF token (cookie logins only)

    def allows(self, scope: str) -> bool:
        """``True`` if this principal has ``scope`` (``admin`` implies every scope)."""
        return "admin" in self.scopes or scope in self.scopes


class AuthError(AstrRayError):
    """Wrong credentials, or a request the auth layer refuses (a bad key name...).

    ``context["field"]``, when present, names the request field at fault.
    """


class PasswordPolicyError(AuthError):
    """A new password that is too short (under ``MIN_PASSWORD_LENGTH``) or too long."""


class RateLimited(AuthError):
    """Too many failed attempts from this client; ``retry_after`` seconds to wait."""

    def __init__(self, message: str, *, retry_after: float, **context: Any) -> None:
        super().__init__(message, retry_after=retry_after, **context)
        self.retry_after = retry_after


# -- password hashing --------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password``: ``scrypt$n$r$p$salt_b64$hash_b64``."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_HASH_BYTES, maxmem=_maxmem(_N, _R)
    )
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """``True`` if ``password`` matches the ``hash_password`` output ``encoded``.

    Compares in constant time. A malformed or implausible ``encoded`` (wrong field
    count, bad base64, parameters beyond 64 MiB of memory) is ``False``, never an error.
    """
    parts = encoded.split("$") if isinstance(encoded, str) else []
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        return False
    plausible = (
        n > 1
        and n & (n - 1) == 0
        and 1 <= r <= 32
        and 1 <= p <= 16
        and _maxmem(n, r) <= _MAX_SCRYPT_MEMORY
        and len(salt) >= 8
        and 16 <= len(expected) <= 64
    )
    if not plausible:
        return False
    try:
        digest = hashlib.scrypt(
            password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=_maxmem(n, r)
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, expected)


def _maxmem(n: int, r: int) -> int:
    # scrypt needs 128 * r * n bytes for its table, plus a little for the blocks.
    return 128 * r * n + 1024 * 1024


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(
            f"the new password must be at least {MIN_PASSWORD_LENGTH} characters", field="new"
        )
    if len(password) > _MAX_PASSWORD_LENGTH:
        raise PasswordPolicyError(
            f"the new password must be at most {_MAX_PASSWORD_LENGTH} characters", field="new"
        )


def normalize_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes without duplicates, in ``SCOPES`` order; ``AuthError`` for an unknown
    or empty list."""
    wanted = list(scopes)
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown:
        raise AuthError(
            f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}", field="scopes"
        )
    if not wanted:
        raise AuthError(f"a key needs at least one scope of {', '.join(SCOPES)}", field="scopes")
    return [s for s in SCOPES if s in wanted]


# -- the login rate limit ------------------------------------------------------------------


class _FailureWindow:
    """Failed attempts per client in a sliding window, for at most ``max_clients``
    clients (the oldest is forgotten first, so a flood of addresses cannot grow it)."""

    def __init__(self, limit: int, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self._limit = limit
        self._window_s = window_s
        self._max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self._window_s:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or ``None`` if it may now."""
        now = time.monotonic()
        times = self._recent(client, now)
        if times is None or len(times) < self._limit:
            return None
        return max(times[-self._limit] + self._window_s - now, 0.0)

    def failed(self, client: str) -> None:
        now = time.monotonic()
        times = self._recent(client, now) or deque()
        times.append(now)
        # Re-inserted at the end: the dict's order is the order of last failure.
        self._failures.pop(client, None)
        self._failures[client] = times
        while len(self._failures) > self._max_clients:
            del self._failures[next(iter(self._failures))]


# -- Auth ------------------------------------------------------------------------------------


class Auth:
    """The dashboard's credentials, kept in ``store``.

    ``session_ttl_s`` is how long a login lasts (fixed, not sliding);
    ``attempts_per_minute`` is how many failed logins a client gets per minute.
    """

    def __init__(
        self, store: Store, *, session_ttl_s: float = 7 * 86400, attempts_per_minute: int = 5
    ) -> None:
        if session_ttl_s <= 0 or attempts_per_minute < 1:
            raise ValueError("session_ttl_s must be > 0 and attempts_per_minute >= 1")
        self._store = store
        self.session_ttl_s = session_ttl_s
        self._failures = _FailureWindow(attempts_per_minute)
        self._dummy_hash: str | None = None

    # -- the admin password ----------------------------------------------------------------

    async def ensure_admin(self) -> str | None:
        """Give the admin a generated password if none is stored, and return it (the
        only time it is seen in clear); ``None`` when one is stored already."""
        if isinstance(await self._store.get_setting(_SCOPE, _ADMIN_KEY), str):
            return None
        password = secrets.token_urlsafe(12)
        await self._set_password(password)
        return password

    async def reset_password(self, new: str | None = None) -> str:
        """Set the admin password to ``new`` (or a generated one) and log every session
        out. Returns the password. ``PasswordPolicyError`` for a ``new`` that is too short."""
        password = secrets.token_urlsafe(12) if new is None else new
        _check_new_password(password)
        await self._set_password(password)
        await self._drop_sessions()
        return password

    async def change_password(
        self, old: str, new: str, *, client: str | None = None, keep_token: str | None = None
    ) -> None:
        """Change the admin password, knowing the ``old`` one.

        ``PasswordPolicyError`` if ``new`` is too short (checked first), ``AuthError`` if
        ``old`` is wrong: with a ``client``, that failure counts towards its login limit
        and a limited client gets ``RateLimited``. Every session except ``keep_token``'s
        (the caller's own) is logged out.
        """
        _check_new_password(new)
        self._check_limit(client)
        stored = await self._store.get_setting(_SCOPE, _ADMIN_KEY)
        if not await self._verify(old, stored):
            if client is not None:
                self._failures.failed(client)
            raise AuthError("the old password is wrong", field="old")
        await self._set_password(new)
        await self._drop_sessions(keep=keep_token)

    async def _set_password(self, password: str) -> None:
        encoded = await asyncio.to_thread(hash_password, password)
        await self._store.set_setting(_SCOPE, _ADMIN_KEY, encoded)

    async def _verify(self, password: str, stored: Any) -> bool:
        """Check ``password`` against ``stored``, running the hash even when there is
        nothing stored so that the time taken does not tell."""
        if len(password) > _MAX_PASSWORD_LENGTH:
            return False
        if not isinstance(stored, str):
            if self._dummy_hash is None:
                self._dummy_hash = await asyncio.to_thread(hash_password, secrets.token_hex(16))
            await asyncio.to_thread(verify_password, password, self._dummy_hash)
            return False
        return await asyncio.to_thread(verify_password, password, stored)

    def _check_limit(self, client: str | None) -> None:
        if client is None:
            return
        wait = self._failures.retry_after(client)
        if wait is not None:
            raise RateLimited("too many failed attempts", retry_after=wait, client=client)

    # -- sessions ------------------------------------------------------------------------------

    async def login(self, username: str, password: str, client: str) -> tuple[str, str]:
        """Check the credentials and open a session: ``(session token, csrf token)``.

        ``AuthError`` for a wrong user name or password (the same error for both);
        ``RateLimited`` when ``client`` has failed too often in the last minute (checked
        before the password, so a limited client learns nothing).
        """
        self._check_limit(client)
        stored = await self._store.get_setting(_SCOPE, _ADMIN_KEY)
        ok = await self._verify(password, stored)
        if not (ok and hmac.compare_digest(username.encode(), ADMIN_USER.encode())):
            self._failures.failed(client)
            log.info("dashboard login failed (client %s)", client)
            raise AuthError("wrong username or password", client=client)
        await self._drop_expired()
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        record = {"user": ADMIN_USER, "csrf": csrf, "expires": time.time() + self.session_ttl_s}
        await self._store.set_setting(_SESSIONS, _sha256(token), record)
        log.info("dashboard login (client %s)", client)
        return token, csrf

    async def logout(self, token: str) -> None:
        """End the session of ``token``. Idempotent."""
        await self._store.set_setting(_SESSIONS, _sha256(token), None)

    async def session(self, token: str) -> Principal | None:
        """The principal of a live session token; ``None`` for an unknown or expired one
        (an expired one is deleted)."""
        if not token or len(token) > 256:
            return None
        key = _sha256(token)
        record = await self._store.get_setting(_SESSIONS, key)
        if not isinstance(record, dict):
            return None
        if float(record.get("expires", 0)) <= time.time():
            await self._store.set_setting(_SESSIONS, key, None)
            return None
        return Principal(
            user=str(record.get("user", ADMIN_USER)),
            scopes=frozenset({"admin"}),
            via="cookie",
            csrf=str(record["csrf"]),
        )

    async def _drop_sessions(self, keep: str | None = None) -> None:
        kept = None if keep is None else _sha256(keep)
        for key in await self._store.get_settings(_SESSIONS):
            if key != kept:
                await self._store.set_setting(_SESSIONS, key, None)

    async def _drop_expired(self) -> None:
        now = time.time()
        for key, record in (await self._store.get_settings(_SESSIONS)).items():
            if not isinstance(record, dict) or float(record.get("expires", 0)) <= now:
                await self._store.set_setting(_SESSIONS, key, None)

    # -- API keys ------------------------------------------------------------------------------

    async def create_key(self, name: str, scopes: list[str]) -> tuple[str, str]:
        """A new API key: ``(id, key)``. The key (``ar_...``) is returned this once; only
        its SHA-256 is stored. ``AuthError`` (with ``field``) for a name that is not 1-64
        of letters, digits, ``_ .-``, a name in use, or an unknown scope."""
        if not isinstance(name, str) or not _KEY_NAME.match(name) or not name.strip():
            raise AuthError(
                "a key name is 1-64 letters, digits, spaces, '_', '.' or '-'", field="name"
            )
        normalized = normalize_scopes(scopes)
        if any(k["name"] == name for k in await self.list_keys()):
            raise AuthError(f"a key named {name!r} exists already", field="name")
        key_id = secrets.token_hex(6)
        key = "ar_" + secrets.token_urlsafe(32)
        record = {
            "name": name,
            "scopes": normalized,
            "sha256": _sha256(key),
            "created": time.time(),
        }
        await self._store.set_setting(_SCOPE, _KEY_PREFIX + key_id, record)
        log.info("dashboard API key %r created (id %s, scopes %s)", name, key_id, normalized)
        return key_id, key

    async def list_keys(self) -> list[dict[str, Any]]:
        """Every key, oldest first: ``id, name, scopes, created, last_used`` (``None``
        until first used). Never the key or its hash."""
        rows = await self._store.get_settings(_SCOPE)
        keys = []
        for setting, record in rows.items():
            if not setting.startswith(_KEY_PREFIX) or not isinstance(record, dict):
                continue
            key_id = setting.removeprefix(_KEY_PREFIX)
            keys.append(
                {
                    "id": key_id,
                    "name": record.get("name"),
                    "scopes": list(record.get("scopes", [])),
                    "created": record.get("created"),
                    "last_used": rows.get(_USED_PREFIX + key_id),
                }
            )
        keys.sort(key=lambda k: (k["created"] or 0, k["id"]))
        return keys

    async def delete_key(self, key_id: str) -> bool:
        """Revoke a key; ``True`` if it existed. Idempotent."""
        if not _KEY_ID.match(key_id):
            return False
        existed = await self._store.get_setting(_SCOPE, _KEY_PREFIX + key_id) is not None
        await self._store.set_setting(_SCOPE, _KEY_PREFIX + key_id, None)
        await self._store.set_setting(_SCOPE, _USED_PREFIX + key_id, None)
        if existed:
            log.info("dashboard API key %s deleted", key_id)
        return existed

    async def key_principal(self, key: str) -> Principal | None:
        """The principal of an API key, or ``None`` for an unknown (or deleted) one.

        Records the key's last use, at most once a minute. The last use is a row of its
        own so that this write can never bring back a key deleted meanwhile.
        """
        if not key.startswith("ar_") or len(key) > 128:
            return None
        digest = _sha256(key).encode()
        rows = await self._store.get_settings(_SCOPE)
        for setting, record in rows.items():
            if not setting.startswith(_KEY_PREFIX) or not isinstance(record, dict):
                continue
            if not hmac.compare_digest(str(record.get("sha256", "")).encode(), digest):
                continue
            key_id = setting.removeprefix(_KEY_PREFIX)
            last = rows.get(_USED_PREFIX + key_id)
            now = time.time()
            if not isinstance(last, int | float) or now - last >= _LAST_USED_EVERY_S:
                await self._store.set_setting(_SCOPE, _USED_PREFIX + key_id, now)
            return Principal(
                user=f"key:{record.get('name')}",
                scopes=frozenset(record.get("scopes", [])),
                via="key",
                csrf=None,
            )
        return None
