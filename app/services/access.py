"""Access administration: API tokens and the audit trail, for ``pictor token``,
``pictor audit`` and ``/admin/tokens`` alike (the same rules whichever way in)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from app.auth import tokens
from app.index import access as index_access
from app.index.access import TokenRow
from app.index.database import Pool

__all__ = ["TokenRow", "audit_events", "create_token", "list_tokens", "revoke_token"]


async def create_token(pool: Pool, name: str, scopes: Sequence[str]) -> str:
    """A new API token named ``name``; its secret is returned once and stored only as
    its SHA-256. Conflict if the name exists or existed."""
    secret = tokens.new_token()
    async with pool.acquire() as conn:
        await index_access.create_token(conn, name, tokens.token_hash(secret), scopes)
    return secret


async def list_tokens(pool: Pool) -> list[TokenRow]:
    async with pool.acquire() as conn:
        return await index_access.list_tokens(conn)


async def revoke_token(pool: Pool, name: str) -> None:
    """NotFound if no active token has that name."""
    async with pool.acquire() as conn:
        await index_access.revoke_token(conn, name)


async def audit_events(
    pool: Pool,
    *,
    patient: str | None = None,
    study: str | None = None,
    user: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Audit events, oldest first, each with the patients of the studies it touched."""
    async with pool.acquire() as conn:
        return await index_access.query_audit(
            conn, patient=patient, study=study, user=user, since=since, until=until, limit=limit
        )
