"""Run QIDO searches against the index."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from app.dicom.json_model import BASE_MARKER
from app.errors import ServiceUnavailable
from app.index.compiler import compile_query
from app.index.query import Query


@dataclass(frozen=True)
class SearchResult:
    #: a DICOM JSON array (PS3.18 F.2), ready to send
    body: bytes
    count: int
    #: more results exist beyond the limit
    more: bool


_MARKER = f'"{BASE_MARKER}/'.encode()


async def search(pool: asyncpg.Pool, query: Query, base_url: str) -> SearchResult:
    compiled = compile_query(query, base_url)
    try:
        if compiled.custom_plan:
            # a generic plan cannot use a prefix index for "LIKE $1": plan this one with
            # its values (only here; other searches and UID lookups keep cached plans)
            async with pool.acquire() as conn, conn.transaction(readonly=True):
                await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                rows = await conn.fetch(compiled.sql, *compiled.args)
        else:
            rows = await pool.fetch(compiled.sql, *compiled.args)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceUnavailable(f"the index could not be searched: {exc}") from exc
    more = len(rows) > query.limit
    if more:
        rows = rows[: query.limit]
    body = b"[" + b",".join(row[0].encode() for row in rows) + b"]"
    # precomputed study answers carry RetrieveURL under the base marker
    body = body.replace(_MARKER, b'"' + base_url.encode() + b"/")
    return SearchResult(body, len(rows), more)
