"""Run QIDO searches against the index."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

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


async def search(pool: asyncpg.Pool, query: Query, base_url: str) -> SearchResult:
    compiled = compile_query(query, base_url)
    try:
        rows = await pool.fetch(compiled.sql, *compiled.args)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceUnavailable(f"the index could not be searched: {exc}") from exc
    more = len(rows) > query.limit
    if more:
        rows = rows[: query.limit]
    body = b"[" + b",".join(row[0].encode() for row in rows) + b"]"
    return SearchResult(body, len(rows), more)
