"""Study links: signed, expiring grants to read one study, for EMR embedding.

A link token is ``pl_`` + base64url(``STUDY_UID`` NUL ``expiry``) + ``.`` +
base64url(HMAC-SHA256(secret, that payload)). Anyone holding it may read that study
(the viewer, DICOMweb metadata, frames, rendered images) until it expires; it names no
person, so the audit trail records it as ``link:STUDY_UID``.

The secret is ``PICTOR_LINK_SECRET``, else the archive's own, kept in the index
(``archive_secret``) so that every node of the archive signs and verifies with the
same key (issue #16: a per-node file made a link from one node fail on the other). The
first start writes it, taking an existing ``<data_dir>/link-secret`` file's value so
that links issued before keep working. Changing the secret invalidates every link.

The link URL (``/link/TOKEN``) is answered by :mod:`app.auth.middleware`: it sets an
``HttpOnly; SameSite=Strict`` cookie carrying the token and redirects to the viewer, since
a browser (and OHIF) will not add an ``Authorization`` header by itself.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import secrets
import time
from hashlib import sha256
from typing import Any

from app.config import Settings
from app.errors import ServiceUnavailable
from app.index import access
from app.index.database import INDEX_ERRORS
from app.text import ascii_int

log = logging.getLogger("pictor")

PREFIX = "pl_"
COOKIE = "pictor_link"
#: longest a link may live
MAX_TTL = 30 * 86400


class LinkError(ValueError):
    """A link token that is malformed, tampered with or expired."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_SECRET_NAME = "link-secret"


async def load_secret(settings: Settings, pool: Any) -> bytes:
    """The link signing secret: configured, else the archive's (see the module's
    docstring). The index must answer (ServiceUnavailable otherwise)."""
    if settings.link_secret:
        return settings.link_secret.encode()
    path = settings.link_secret_path
    try:
        earlier = (await asyncio.to_thread(path.read_bytes)).strip().decode("ascii")
    except (FileNotFoundError, UnicodeDecodeError):
        earlier = ""
    try:
        value = await access.archive_secret(pool, _SECRET_NAME, earlier or secrets.token_hex(32))
    except INDEX_ERRORS as exc:
        raise ServiceUnavailable("the index does not answer; try again shortly") from exc
    if earlier and value != earlier:
        log.warning(
            "%s differs from the archive's link secret, which is used (links signed with "
            "the file's no longer open)",
            path,
        )
    return value.encode()


class LinkSecret:
    """The secret, read from the index on first use: a server process that starts
    while the database is down serves (503) and reads it once the index answers."""

    def __init__(self, settings: Settings, pool: Any) -> None:
        self._settings = settings
        self._pool = pool
        self._value: bytes | None = None

    async def get(self) -> bytes:
        if self._value is None:
            self._value = await load_secret(self._settings, self._pool)
        return self._value


def sign(secret: bytes, study: str, ttl: float, now: float | None = None) -> tuple[str, int]:
    """A link token for ``study`` valid ``ttl`` seconds; returns (token, expiry epoch)."""
    if not 0 < ttl <= MAX_TTL:
        raise LinkError(f"a link lives between 1 second and {MAX_TTL // 86400} days")
    expires = int((time.time() if now is None else now) + ttl)
    payload = f"{study}\0{expires}".encode()
    mac = hmac.new(secret, payload, sha256).digest()
    return f"{PREFIX}{_b64(payload)}.{_b64(mac)}", expires


def verify(secret: bytes, token: str, now: float | None = None) -> tuple[str, int]:
    """(study UID, expiry) of a valid link token; :class:`LinkError` otherwise."""
    if not token.startswith(PREFIX) or token.count(".") != 1:
        raise LinkError("not a study link")
    body, _, mac_text = token[len(PREFIX) :].partition(".")
    try:
        payload, mac = _unb64(body), _unb64(mac_text)
    except (ValueError, TypeError) as exc:
        raise LinkError("malformed study link") from exc
    if not hmac.compare_digest(mac, hmac.new(secret, payload, sha256).digest()):
        raise LinkError("the study link's signature does not match")
    study, _, expires_text = payload.decode("utf-8", "replace").partition("\0")
    expires = ascii_int(expires_text)
    if expires is None:
        raise LinkError("malformed study link")
    if expires <= (time.time() if now is None else now):
        raise LinkError("the study link has expired")
    return study, expires


def parse_ttl(text: str) -> int:
    """``90s``, ``30m``, ``1h``, ``7d`` or plain seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    factor = units.get(text[-1:], 0)
    number = text[:-1] if factor else text
    count = ascii_int(number, 9)
    if count is None:
        raise LinkError(f"TTL {text[:40]!r} is not a duration such as 30m, 1h or 7d")
    return count * (factor or 1)
