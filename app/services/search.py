"""Search: the one way QIDO-RS (PS3.18 10.6), IHE Invoke Image Display and C-FIND
(PS3.4 C.4.1) look for studies, series and instances.

Parameters become the typed query model (:func:`app.index.query.parse_query`, PS3.4
C.2.2.2 matching), a caller confined to one study (a study link) has that study ANDed
in after every key is normalised, and :mod:`app.index.search` runs it. What the client
should be told beyond the results (more beyond the limit, fuzzy matching applied
partly) comes back as warnings for the transport to render (PS3.18 8.4.4: Warning 299).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.index import search as index_search
from app.index.database import Pool
from app.index.query import DEFAULT_LIMIT, MAX_PARAMETERS, Level, Query, confine, parse_query

__all__ = ["MAX_PARAMETERS", "Found", "Level", "Query", "build_query", "run"]


@dataclass(frozen=True)
class Found:
    #: a DICOM JSON array (PS3.18 F.2), ready to send
    body: bytes
    count: int
    #: more results exist beyond the limit
    more: bool
    warnings: tuple[str, ...]


def build_query(
    level: Level,
    params: list[tuple[str, str]],
    *,
    study: str | None = None,
    series: str | None = None,
    confined: str | None = None,
    default_limit: int = DEFAULT_LIMIT,
) -> Query:
    """The query ``params`` ask for, scoped by the path's UIDs and by ``confined`` (the
    one study the caller may see). Raises BadRequest naming a bad parameter."""
    query = parse_query(
        level, params, study_uid=study, series_uid=series, default_limit=default_limit
    )
    return query if confined is None else confine(query, confined)


async def run(pool: Pool, query: Query, base_url: str) -> Found:
    """The results of ``query``, their RetrieveURLs under ``base_url``."""
    result = await index_search.search(pool, query, base_url)
    warnings = list(query.warnings)
    if result.more:
        warnings.append(
            f"There are additional results that can be requested: the limit is {query.limit}; "
            f"use offset={query.offset + query.limit} for the next page"
        )
    return Found(result.body, result.count, result.more, tuple(warnings))
