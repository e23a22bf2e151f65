"""People who sign in (issue #21): local accounts for ``pictor user`` and the sign-in
and sign-out behind ``/login`` (the same rules whichever way in).

Signing in (:func:`sign_in`), in this order:

1. An account or a client address that is locked answers "locked, retry after N s"
   (429) before the password is looked at: a lock cannot be used to test passwords.
2. The password is verified with argon2id (:mod:`app.auth.passwords`); an unknown or
   disabled account costs the same work and gets the same answer as a wrong password,
   so the answer does not tell which accounts exist.
3. A failure counts against the account and the address (``login_failure``, shared by
   every node). The answer is slowed, 0.25 s after the first failure in the window,
   doubling each time up to 4 s; at ``PICTOR_LOGIN_MAX_FAILURES`` for the account (5)
   or ``PICTOR_LOGIN_ADDRESS_MAX_FAILURES`` for the address (20) within
   ``PICTOR_LOGIN_LOCK_SECONDS`` (15 min) that key is locked for as long.
4. A success clears the account's count (not the address's: one good account must
   not reset an attacker's budget for guessing others), upgrades the hash if its
   parameters are outdated, and opens a session (:mod:`app.auth.sessions`).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from app.auth import passwords, sessions
from app.auth.principal import parse_role
from app.config import Settings
from app.errors import BadRequest
from app.index import users as index_users
from app.index.database import INDEX_ERRORS, Pool, index_failure
from app.index.users import UserRow

__all__ = [
    "SignIn",
    "UserRow",
    "add_user",
    "check_name",
    "list_users",
    "set_disabled",
    "set_password",
    "set_role",
    "sign_in",
    "sign_out",
    "unlock",
    "valid_name",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
#: the delay after the first failure in the window; doubled per failure, at most 4 s
FIRST_DELAY = 0.25
MAX_DELAY = 4.0


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def check_name(name: str) -> str:
    """A user name as accounts have them: 1 to 64 letters, digits, ``. _ @ -``."""
    if not _NAME.fullmatch(name):
        raise BadRequest(
            f"user name {name[:70]!r} is not 1 to 64 letters, digits, '.', '_', '@' or '-'"
        )
    return name


async def add_user(pool: Pool, name: str, password: str, role: str) -> None:
    """Conflict if the name exists or existed; BadRequest for a bad name, role or
    password."""
    check_name(name)
    try:
        role = parse_role(role)
        phc = await passwords.hash_password(password)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    async with pool.acquire() as conn:
        await index_users.add_user(conn, name, phc, role)


async def set_password(pool: Pool, name: str, password: str) -> None:
    """A new password; every session of the account ends."""
    try:
        phc = await passwords.hash_password(password)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    async with pool.acquire() as conn:
        await index_users.set_password(conn, name, phc)


async def set_role(pool: Pool, name: str, role: str) -> None:
    """A new role; sessions get it within ``PICTOR_AUTH_CACHE_SECONDS``."""
    try:
        role = parse_role(role)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    async with pool.acquire() as conn:
        await index_users.set_role(conn, name, role)


async def set_disabled(pool: Pool, name: str, disabled: bool) -> None:
    """Disabling ends every session of the account; NotFound for no such account."""
    async with pool.acquire() as conn:
        await index_users.set_disabled(conn, name, disabled)


async def unlock(pool: Pool, *, name: str | None = None, address: str | None = None) -> bool:
    """Lift the lock of an account or a client address (an attacker can lock an
    account by failing on purpose; the lock ends by itself too)."""
    key = f"user:{name}" if name is not None else f"addr:{address}"
    return await index_users.unlock(pool, key)


async def list_users(pool: Pool) -> list[UserRow]:
    async with pool.acquire() as conn:
        return await index_users.list_users(conn)


@dataclass(frozen=True)
class SignIn:
    """What a sign-in attempt came to: ``session`` (the cookie's value) on success;
    ``retry_after`` seconds when locked; else a wrong name or password."""

    user: str
    session: str | None = None
    retry_after: int = 0


def _delay(failures: int) -> float:
    return float(min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, failures - 1)))


async def sign_in(
    pool: Pool, settings: Settings, name: str, password: str, client: str | None
) -> SignIn:
    """See the module's docstring. ServiceUnavailable when the index does not answer."""
    name = name.strip()
    valid = bool(_NAME.fullmatch(name))
    account = f"user:{name}" if valid else None
    address = f"addr:{client or '?'}"
    keys = [k for k in (account, address) if k]
    window = float(settings.login_lock_seconds)
    try:
        locked = await index_users.locked_for(pool, keys)
        if locked > 0:
            return SignIn(name, retry_after=max(1, round(locked)))
        found = await index_users.password_of(pool, name) if valid else None
        if found is not None and await passwords.verify(found[0], password):
            if account is not None:
                await index_users.forget_failures(pool, account, window)
            if passwords.needs_rehash(found[0]):
                phc = await passwords.hash_password(password)
                await index_users.rehash(pool, name, found[0], phc)
            token = sessions.new_session()
            await index_users.open_session(
                pool, sessions.session_hash(token), name, settings.session_max_seconds, client
            )
            return SignIn(name, session=token)
        if found is None:
            await passwords.verify(None, password)  # the same work as for an account
        failures, locked = 0, 0.0
        if account is not None:
            failures, locked = await index_users.count_failure(
                pool, account, settings.login_max_failures, window
            )
        by_address, address_locked = await index_users.count_failure(
            pool, address, settings.login_address_max_failures, window
        )
    except INDEX_ERRORS as exc:
        raise index_failure("signing in failed", exc, client_values=False) from exc
    locked = max(locked, address_locked)
    await asyncio.sleep(_delay(failures if account is not None else by_address))
    return SignIn(name, retry_after=max(1, round(locked)) if locked > 0 else 0)


async def sign_out(pool: Pool, token: str) -> str | None:
    """Ends the session; its user's name, if it was one."""
    if not sessions.looks_like_session(token):
        return None
    try:
        return await index_users.close_session(pool, sessions.session_hash(token))
    except INDEX_ERRORS as exc:
        raise index_failure("signing out failed", exc, client_values=False) from exc
