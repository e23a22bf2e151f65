"""The index side of people who sign in (``schemas/012``): accounts, browser sessions
and the failed sign-ins that lock an account or an address."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.errors import Conflict, NotFound

#: sessions that ended ('s:' + the hex of their hash) and accounts whose sessions ended
#: or changed role ('u:' + name) are announced here, at commit, so that every process
#: of every node stops trusting its cached answer at once
SESSIONS_CHANNEL = "pictor_sessions"


async def _announce(conn: Any, payload: str) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", SESSIONS_CHANNEL, payload)


@dataclass(frozen=True)
class UserRow:
    name: str
    role: str
    created_at: dt.datetime
    password_changed_at: dt.datetime
    disabled_at: dt.datetime | None
    sessions: int = 0


@dataclass(frozen=True)
class SessionRow:
    user: str
    role: str
    expires_at: dt.datetime
    seen_at: dt.datetime


async def add_user(conn: Any, name: str, phc: str, role: str) -> None:
    try:
        await conn.execute(
            "INSERT INTO app_user (name, password_hash, role) VALUES ($1, $2, $3)",
            name,
            phc,
            role,
        )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"a user named {name!r} exists (or existed): choose another name") from exc


async def list_users(conn: Any) -> list[UserRow]:
    rows = await conn.fetch(
        """SELECT u.name, u.role, u.created_at, u.password_changed_at, u.disabled_at,
                  (SELECT count(*) FROM user_session s
                    WHERE s.user_name = u.name AND s.expires_at > now()) AS sessions
             FROM app_user u ORDER BY u.name"""
    )
    return [
        UserRow(
            r["name"],
            r["role"],
            r["created_at"],
            r["password_changed_at"],
            r["disabled_at"],
            r["sessions"],
        )
        for r in rows
    ]


async def set_password(conn: Any, name: str, phc: str) -> None:
    """A new password ends every session of the account."""
    async with conn.transaction():
        done = await conn.execute(
            """UPDATE app_user SET password_hash = $2, password_changed_at = now()
                WHERE name = $1""",
            name,
            phc,
        )
        if done.endswith(" 0"):
            raise NotFound(f"no user named {name!r}")
        await conn.execute("DELETE FROM user_session WHERE user_name = $1", name)
        await _announce(conn, "u:" + name)


async def rehash(pool: Any, name: str, old: str, phc: str) -> None:
    """Stronger parameters for the same password (no session ends)."""
    await pool.execute(
        "UPDATE app_user SET password_hash = $3 WHERE name = $1 AND password_hash = $2",
        name,
        old,
        phc,
    )


async def set_role(conn: Any, name: str, role: str) -> None:
    async with conn.transaction():
        done = await conn.execute("UPDATE app_user SET role = $2 WHERE name = $1", name, role)
        if done.endswith(" 0"):
            raise NotFound(f"no user named {name!r}")
        await _announce(conn, "u:" + name)


async def set_disabled(conn: Any, name: str, disabled: bool) -> None:
    """Disabling ends every session of the account at once."""
    async with conn.transaction():
        done = await conn.execute(
            """UPDATE app_user SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now())
                                                     ELSE NULL END
                WHERE name = $1""",
            name,
            disabled,
        )
        if done.endswith(" 0"):
            raise NotFound(f"no user named {name!r}")
        if disabled:
            await conn.execute("DELETE FROM user_session WHERE user_name = $1", name)
            await _announce(conn, "u:" + name)


async def password_of(pool: Any, name: str) -> tuple[str, str] | None:
    """(PHC string, role) of an enabled account."""
    row = await pool.fetchrow(
        "SELECT password_hash, role FROM app_user WHERE name = $1 AND disabled_at IS NULL", name
    )
    return None if row is None else (row["password_hash"], row["role"])


async def open_session(
    pool: Any, id_hash: bytes, name: str, lifetime: float, client: str | None
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        # ended sessions go once in a while (each sign-in takes the expired ones along)
        await conn.execute("DELETE FROM user_session WHERE expires_at < now() - interval '1 day'")
        await conn.execute(
            """INSERT INTO user_session (id_hash, user_name, expires_at, client)
               VALUES ($1, $2, now() + make_interval(secs => $3), $4)""",
            id_hash,
            name,
            lifetime,
            client,
        )


async def session(pool: Any, id_hash: bytes, idle: float, touch_after: float) -> SessionRow | None:
    """The live session with this hash: not past its absolute timeout, seen within the
    idle timeout, its account enabled. Its ``seen_at`` is moved on when older than
    ``touch_after`` seconds (a write per session every so often, not per request)."""
    row = await pool.fetchrow(
        """SELECT u.name, u.role, s.expires_at, s.seen_at,
                  s.seen_at < now() - make_interval(secs => $3) AS stale
             FROM user_session s JOIN app_user u ON u.name = s.user_name
            WHERE s.id_hash = $1 AND s.expires_at > now() AND u.disabled_at IS NULL
              AND s.seen_at > now() - make_interval(secs => $2)""",
        id_hash,
        idle,
        touch_after,
    )
    if row is None:
        return None
    if row["stale"]:
        await pool.execute("UPDATE user_session SET seen_at = now() WHERE id_hash = $1", id_hash)
    return SessionRow(row["name"], row["role"], row["expires_at"], row["seen_at"])


async def close_session(pool: Any, id_hash: bytes) -> str | None:
    """Ends a session; the name of its user, if it existed."""
    async with pool.acquire() as conn, conn.transaction():
        name: str | None = await conn.fetchval(
            "DELETE FROM user_session WHERE id_hash = $1 RETURNING user_name", id_hash
        )
        await _announce(conn, "s:" + id_hash.hex())
    return name


async def locked_for(pool: Any, keys: list[str]) -> float:
    """Seconds until every one of ``keys`` is unlocked (0: none is locked)."""
    value = await pool.fetchval(
        """SELECT extract(epoch FROM max(locked_until) - now()) FROM login_failure
            WHERE key = ANY($1::text[]) AND locked_until > now()""",
        keys,
    )
    return float(value or 0.0)


async def count_failure(pool: Any, key: str, limit: int, window: float) -> tuple[int, float]:
    """One more failed sign-in for ``key`` in the current window (of ``window``
    seconds); locks ``key`` for ``window`` seconds once there are ``limit``. Returns
    (failures in the window, seconds locked)."""
    row = await pool.fetchrow(
        """INSERT INTO login_failure AS f (key, failures, first_at, locked_until)
           VALUES ($1, 1, now(), CASE WHEN $2 <= 1 THEN now() + make_interval(secs => $3) END)
           ON CONFLICT (key) DO UPDATE SET
               failures = CASE WHEN f.first_at < now() - make_interval(secs => $3)
                               THEN 1 ELSE f.failures + 1 END,
               first_at = CASE WHEN f.first_at < now() - make_interval(secs => $3)
                               THEN now() ELSE f.first_at END,
               locked_until = CASE
                   WHEN (CASE WHEN f.first_at < now() - make_interval(secs => $3)
                              THEN 1 ELSE f.failures + 1 END) >= $2
                   THEN now() + make_interval(secs => $3)
                   ELSE f.locked_until END
           RETURNING failures,
                     coalesce(extract(epoch FROM locked_until - now()), 0) AS locked""",
        key,
        limit,
        window,
    )
    return int(row["failures"]), max(0.0, float(row["locked"]))


async def forget_failures(pool: Any, key: str, window: float) -> None:
    """A successful sign-in clears its account's count; rows of windows long past go."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM login_failure WHERE key = $1", key)
        await conn.execute(
            """DELETE FROM login_failure
                WHERE first_at < now() - make_interval(secs => $1) * 2
                  AND (locked_until IS NULL OR locked_until < now())""",
            window,
        )


async def unlock(pool: Any, key: str) -> bool:
    """Forget the failed sign-ins of ``key`` (``user:NAME`` or ``addr:IP``), lock
    included; whether there were any."""
    done = await pool.execute("DELETE FROM login_failure WHERE key = $1", key)
    return not str(done).endswith(" 0")
