"""Browser sessions of people who signed in (issue #21), and the cross-site request
check that cookies need.

A session is a cookie, :data:`COOKIE` (:data:`SECURE_COOKIE` under HTTPS), carrying
``ps_`` and 43 URL-safe characters (256 random bits); the index keeps its SHA-256 only
(``user_session``, like API tokens). The cookie is ``HttpOnly`` (no script reads it),
``SameSite=Lax`` (another site's pages and scripts do not send it, yet a link from the
EMR opens the viewer signed in), ``Path=/`` and ``Secure`` when the request came over
HTTPS (directly or through a proxy saying so).
It ends, whichever comes first, ``PICTOR_SESSION_IDLE_SECONDS`` after its last request,
``PICTOR_SESSION_MAX_SECONDS`` after sign-in, at sign-out, or when its account is
disabled or its password changes. Verification is cached per process for
``PICTOR_AUTH_CACHE_SECONDS``, like tokens; an ended session, a disabled account and a
changed role are announced through the index (PostgreSQL NOTIFY), so every process of
every node forgets its cached answer at once.

**Cross-site requests** (CSRF; OWASP's "verifying origin with standard headers"): a
browser attaches cookies to requests that another site's page makes it send (a form
POST, a ``fetch`` with ``no-cors``). ``SameSite`` stops other *sites*, but pages on
another port of the same host are the same site. So every state-changing request
(anything but GET, HEAD, OPTIONS) authenticated by a cookie must come from this
server's own origin: its ``Origin`` header (every browser sends one with such
requests; else the ``Referer``'s origin) must be the origin the request was addressed
to, and ``Sec-Fetch-Site``, when sent, must be ``same-origin`` or ``none``. Otherwise:
403, before anything is dispatched. Requests with a bearer token are not concerned: a
browser never adds an ``Authorization`` header by itself.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from app.asgi import header
from app.auth.principal import ROLES, Principal
from app.config import ConfigError, normalize_origin
from app.errors import ServiceUnavailable
from app.index import users
from app.index.database import INDEX_ERRORS, Listener

PREFIX = "ps_"
COOKIE = "pictor_session"
#: the name under HTTPS: a browser takes a ``__Host-`` cookie only from this very host,
#: over HTTPS, for ``Path=/`` (RFC 6265bis 4.1.3.2), so a sibling subdomain cannot
#: plant its own session cookie on a person (cookie tossing)
SECURE_COOKIE = "__Host-" + COOKIE
#: a session's ``seen_at`` is written at most this often (the idle timeout's precision)
TOUCH_SECONDS = 30.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def new_session() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def session_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def looks_like_session(token: str) -> bool:
    return token.startswith(PREFIX) and 20 < len(token) < 100


def cookie_value(scope: Any, name: str) -> str | None:
    """The value of cookie ``name`` in the request (the first, if it is repeated)."""
    raw = header(scope, b"cookie")
    if not raw:
        return None
    for item in raw.split(";"):
        key, _, value = item.strip().partition("=")
        if key == name:
            return value.strip()
    return None


def header_present(scope: Any, name: bytes) -> bool:
    return header(scope, name) is not None


def is_https(scope: Any) -> bool:
    """Whether the browser reached this server over HTTPS (a proxy in front says so
    with ``X-Forwarded-Proto`` or ``Forwarded: proto=``)."""
    if scope.get("scheme") == "https":
        return True
    forwarded = (header(scope, b"x-forwarded-proto") or "").split(",")[0].strip().lower()
    if forwarded:
        return forwarded == "https"
    first = (header(scope, b"forwarded") or "").split(",")[0].lower()
    return any(p.strip() == "proto=https" for p in first.split(";"))


def session_cookie_name(scope: Any) -> str:
    """The session cookie's name for this request (:data:`SECURE_COOKIE` under HTTPS)."""
    return SECURE_COOKIE if is_https(scope) else COOKIE


def session_cookie(scope: Any) -> str | None:
    """The session cookie of the request: under HTTPS only the ``__Host-`` one counts."""
    return cookie_value(scope, session_cookie_name(scope))


def set_cookie(scope: Any, name: str, value: str, max_age: int) -> bytes:
    """A ``Set-Cookie`` value with Pictor's attributes (HttpOnly, SameSite=Lax, Path=/,
    Secure under HTTPS); ``max_age`` 0 removes the cookie."""
    text = f"{name}={value}; Path=/; Max-Age={max(0, max_age)}; HttpOnly; SameSite=Lax"
    return (text + ("; Secure" if is_https(scope) else "")).encode()


# -- cross-site requests -----------------------------------------------------------------


def _own_origins(scope: Any, public_base_url: str) -> set[str]:
    """The origins this request was addressed to: its ``Host`` (with the scheme it came
    by, or the one a proxy names), the proxy's ``X-Forwarded-Host``, the configured
    public URL."""
    scheme = "https" if is_https(scope) else "http"
    hosts = [header(scope, b"host"), (header(scope, b"x-forwarded-host") or "").split(",")[0]]
    out = set()
    for host in hosts:
        host = (host or "").strip()
        if host:
            out.add(_origin_or_empty(f"{scheme}://{host}"))
    if public_base_url:
        out.add(_origin_or_empty(public_base_url))
    out.discard("")
    return out


def _origin_or_empty(url: str) -> str:
    try:
        parts = urlsplit(url)
        return normalize_origin(f"{parts.scheme}://{parts.netloc}")
    except (ValueError, ConfigError):
        return ""


def cross_site(scope: Any, public_base_url: str = "") -> str | None:
    """Why a state-changing request must be refused as cross-site, or None when it came
    from this server's own pages (see the module's docstring)."""
    fetch_site = (header(scope, b"sec-fetch-site") or "").strip().lower()
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return f"a {fetch_site} request (Sec-Fetch-Site) may not use this server's cookies"
    origin = (header(scope, b"origin") or "").strip()
    if not origin or origin == "null":
        referer = (header(scope, b"referer") or "").strip()
        if not referer:
            return (
                "a request authenticated by a cookie must say where it comes from (Origin); "
                "programs send a bearer token instead"
            )
        origin = referer
    if _origin_or_empty(origin) not in _own_origins(scope, public_base_url):
        return "a request from another origin may not use this server's cookies"
    return None


# -- verification ------------------------------------------------------------------------


class SessionVerifier:
    """Session cookie -> principal, through a small per-process cache (negative answers
    too: a flood of made-up cookies does not become a flood of queries). Ended sessions
    and changed accounts are announced by the index (``SESSIONS_CHANNEL``): their cached
    answers go at once, in every process; the cache's lifetime bounds staleness only
    while the announcements cannot be heard."""

    SIZE = 4096

    def __init__(self, pool: Any, ttl: float, idle: float) -> None:
        self.pool = pool
        self.ttl = ttl
        self.idle = idle
        self._cache: OrderedDict[bytes, tuple[float, Principal | None]] = OrderedDict()
        #: counts announcements: a lookup that overlapped one is not kept
        self._changes = 0
        self._listener = Listener(pool, users.SESSIONS_CHANNEL, self._announced, self.forget_all)

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    async def verify(self, token: str) -> Principal | None:
        digest = session_hash(token)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        changes = self._changes
        try:
            row = await users.session(
                self.pool, digest, self.idle, min(TOUCH_SECONDS, self.idle / 4)
            )
        except INDEX_ERRORS as exc:
            raise ServiceUnavailable("the index does not answer; try again shortly") from exc
        principal = None
        until = now + self.ttl
        if row is not None:
            principal = Principal(f"user:{row.user}", ROLES.get(row.role, frozenset()))
            until = min(until, now + max(0.0, row.expires_at.timestamp() - time.time()))
        if changes == self._changes:
            self._cache[digest] = (until, principal)
            self._cache.move_to_end(digest)
            while len(self._cache) > self.SIZE:
                self._cache.popitem(last=False)
        return principal

    def forget(self, token: str) -> None:
        """This process stops accepting ``token`` at once (sign-out)."""
        self._changes += 1
        self._cache.pop(session_hash(token), None)

    def forget_all(self) -> None:
        self._changes += 1
        self._cache.clear()

    def _announced(self, payload: str) -> None:
        self._changes += 1
        kind, _, value = payload.partition(":")
        if kind == "s":
            try:
                self._cache.pop(bytes.fromhex(value), None)
            except ValueError:
                self._cache.clear()
        elif kind == "u":
            who = f"user:{value}"
            for digest in [d for d, (_, p) in self._cache.items() if p and p.who == who]:
                del self._cache[digest]
        else:
            self._cache.clear()
