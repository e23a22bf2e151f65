"""The index side of access control: API tokens and the audit trail (``schemas/006``).

Tokens are looked up by the SHA-256 of the presented secret; audit events are appended
in batches with one ``COPY`` (``copy_records_to_table``), never updated.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.errors import Conflict, NotFound

AUDIT_COLUMNS = (
    "at",
    "who",
    "client",
    "action",
    "method",
    "outcome",
    "status",
    "study_uids",
    "series_uids",
    "sop_instance_uids",
    "query",
)


@dataclass(frozen=True)
class TokenRow:
    name: str
    scopes: tuple[str, ...]
    created_at: dt.datetime
    revoked_at: dt.datetime | None


async def create_token(conn: Any, name: str, token_hash: bytes, scopes: Sequence[str]) -> None:
    try:
        await conn.execute(
            "INSERT INTO api_token (name, token_hash, scopes) VALUES ($1, $2, $3)",
            name,
            token_hash,
            list(scopes),
        )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"a token named {name!r} exists (or existed): choose another name") from exc


async def list_tokens(conn: Any) -> list[TokenRow]:
    rows = await conn.fetch(
        "SELECT name, scopes, created_at, revoked_at FROM api_token ORDER BY name"
    )
    return [TokenRow(r["name"], tuple(r["scopes"]), r["created_at"], r["revoked_at"]) for r in rows]


async def revoke_token(conn: Any, name: str) -> None:
    """Revocation keeps the row (the audit trail names tokens; a name is never reused)
    and marks it revoked."""
    done = await conn.execute(
        "UPDATE api_token SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
    )
    if done.endswith(" 0"):
        raise NotFound(f"no active token named {name!r}")


async def token_by_hash(pool: Any, token_hash: bytes) -> tuple[str, tuple[str, ...]] | None:
    row = await pool.fetchrow(
        "SELECT name, scopes FROM api_token WHERE token_hash = $1 AND revoked_at IS NULL",
        token_hash,
    )
    return None if row is None else (row["name"], tuple(row["scopes"]))


async def archive_secret(pool: Any, name: str, candidate: str) -> str:
    """The archive's secret ``name``: ``candidate`` if no node has written one yet, else
    the one written first (several nodes may start at once; all get the same)."""
    async with pool.acquire() as conn:
        value = await conn.fetchval(
            """INSERT INTO archive_secret (name, value) VALUES ($1, $2)
               ON CONFLICT (name) DO NOTHING RETURNING value""",
            name,
            candidate,
        )
        if value is None:
            value = await conn.fetchval("SELECT value FROM archive_secret WHERE name = $1", name)
    return str(value)


_DATA_ERRORS = (asyncpg.DataError, asyncpg.exceptions._base.DataError)


async def append_audit(pool: Any, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Append audit events (tuples in :data:`AUDIT_COLUMNS` order) with one COPY; the
    events the database refuses as data (SQLSTATE class 22, or values the driver cannot
    encode) are written one by one and those still refused are returned, so that one
    hostile value cannot hold back the whole trail. Other failures raise."""
    async with pool.acquire() as conn:
        try:
            await conn.copy_records_to_table("audit_event", records=rows, columns=AUDIT_COLUMNS)
            return []
        except _DATA_ERRORS:
            pass
        refused = []
        for row in rows:
            try:
                await conn.copy_records_to_table(
                    "audit_event", records=[row], columns=AUDIT_COLUMNS
                )
            except _DATA_ERRORS:
                refused.append(row)
        return refused


async def query_audit(
    conn: Any,
    *,
    patient: str | None = None,
    study: str | None = None,
    user: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Audit events, oldest first, with the patient of each study touched (from the
    study table; events of studies not stored have no patient)."""
    where, args = [], []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if study:
        where.append(f"{arg(study)} = ANY(e.study_uids)")
    if user:
        where.append(f"e.who = {arg(user)}")
    if since:
        where.append(f"e.at >= {arg(since)}")
    if until:
        where.append(f"e.at < {arg(until)}")
    if patient:
        where.append(
            "EXISTS (SELECT 1 FROM study s WHERE s.study_uid = ANY(e.study_uids)"
            f" AND s.patient_id = {arg(patient)})"
        )
    sql = (
        "SELECT e.id, e.at, e.who, e.client, e.action, e.method, e.outcome, e.status,"
        " e.study_uids, e.series_uids, e.sop_instance_uids, e.query,"
        " (SELECT coalesce(array_agg(DISTINCT s.patient_id) FILTER"
        "   (WHERE s.patient_id IS NOT NULL), '{}')"
        "  FROM study s WHERE s.study_uid = ANY(e.study_uids)) AS patient_ids"
        " FROM audit_event e"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY e.at, e.id LIMIT {arg(limit)}"
    )
    return [dict(r) for r in await conn.fetch(sql, *args)]
