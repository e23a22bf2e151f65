"""Run QIDO searches against the index."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import msgspec

from app.dicom.json_model import BASE_MARKER
from app.index.compiler import compile_query
from app.index.database import INDEX_ERRORS, index_failure
from app.index.query import Query


@dataclass(frozen=True)
class SearchResult:
    #: a DICOM JSON array (PS3.18 F.2), ready to send
    body: bytes
    count: int
    #: more results exist beyond the limit
    more: bool


_MARKER = f'"{BASE_MARKER}/'.encode()
_ATTRIBUTES = msgspec.json.Decoder(dict[str, msgspec.Raw])
# PS3.18 F.2.2: attribute objects in ascending order of their tags
_SORTED = msgspec.json.Encoder(order="sorted")


def _merged(stored: bytes, extra: bytes) -> bytes:
    """One result: the stored default answer plus the included fields built for this
    search. Values are copied as they are (msgspec.Raw); only the members are sorted."""
    if extra == b"{}":
        return stored
    attributes = _ATTRIBUTES.decode(stored)
    attributes.update(_ATTRIBUTES.decode(extra))
    return _SORTED.encode(attributes)


async def search(pool: asyncpg.Pool, query: Query, base_url: str) -> SearchResult:
    compiled = compile_query(query, base_url)
    try:
        rows = await pool.fetch(compiled.sql, *compiled.args)
    except INDEX_ERRORS as exc:
        raise index_failure("the index could not be searched", exc) from exc
    more = len(rows) > query.limit
    if more:
        rows = rows[: query.limit]
    if compiled.merge:
        objects = [_merged(row[0], row[1]) for row in rows]
    else:
        objects = [row[0] for row in rows]
    body = b"[" + b",".join(objects) + b"]"
    # precomputed study answers carry RetrieveURL under the base marker (split and join:
    # cheaper than bytes.replace on a page of answers)
    body = (b'"' + base_url.encode() + b"/").join(body.split(_MARKER))
    return SearchResult(body, len(rows), more)
