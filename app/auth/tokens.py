"""API tokens: long random secrets handed to scripts and integrations (``pictor token``).

A token is ``pt_`` and 43 URL-safe characters (256 random bits). The index keeps only
its SHA-256: with that much entropy a plain hash cannot be reversed or guessed, and a
lookup stays one indexed equality (no per-token salt or slow KDF is needed, unlike for
passwords). The token is printed once, when it is made.

Verification is cached per process for ``auth_cache_seconds`` (default 5): a token's
requests after the first cost no index round trip, and a revoked token stops working
within that time.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from typing import Any

from app.auth.principal import Principal
from app.index import access

PREFIX = "pt_"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def looks_like_token(token: str) -> bool:
    return token.startswith(PREFIX) and 20 < len(token) < 100


class TokenVerifier:
    """Token -> principal, through a small per-process cache (negative answers too,
    so that a flood of wrong tokens does not become a flood of queries)."""

    SIZE = 4096

    def __init__(self, pool: Any, ttl: float) -> None:
        self.pool = pool
        self.ttl = ttl
        self._cache: OrderedDict[bytes, tuple[float, Principal | None]] = OrderedDict()

    async def verify(self, token: str) -> Principal | None:
        digest = token_hash(token)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        row = await access.token_by_hash(self.pool, digest)
        principal = None if row is None else Principal(f"token:{row[0]}", frozenset(row[1]))
        self._cache[digest] = (now + self.ttl, principal)
        self._cache.move_to_end(digest)
        while len(self._cache) > self.SIZE:
            self._cache.popitem(last=False)
        return principal
