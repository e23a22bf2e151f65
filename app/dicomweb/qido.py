"""QIDO-RS: search for studies, series and instances (PS3.18 10.6).

One handler per resource of PS3.18 Table 10.6.1-2; each parses the query into the
query model (:mod:`app.index.query`), runs it, and answers ``application/dicom+json``
(or ``application/json``) with ``Warning: 299`` headers for what the client should know:
more results beyond the limit, a matching feature applied partly.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from litestar import Request, get
from litestar.response import Response

from app.asgi import warning_header
from app.dicom.uids import uid_problem
from app.dicomweb.negotiation import SEARCH_MEDIA_TYPES, choose
from app.dicomweb.urls import request_base_url
from app.errors import BadRequest
from app.index.query import Level, parse_query
from app.index.search import search


def _check_uid(value: str | None, what: str) -> None:
    if value is not None and (problem := uid_problem(value)) is not None:
        raise BadRequest(f"the {what} in the URL {problem}")


async def _search(
    request: Request[Any, Any, Any],
    level: Level,
    study: str | None = None,
    series: str | None = None,
) -> Response[bytes]:
    media = choose(request.headers.get("accept"), SEARCH_MEDIA_TYPES)
    _check_uid(study, "Study Instance UID")
    _check_uid(series, "Series Instance UID")
    params = parse_qsl(request.url.query or "", keep_blank_values=True)
    query = parse_query(level, params, study_uid=study, series_uid=series)
    state = request.app.state
    base = request_base_url(state.settings.public_base_url, request.headers, request.url)
    result = await search(state.pool, query, base)
    warnings = list(query.warnings)
    if result.more:
        warnings.append(
            f"There are additional results that can be requested: the limit is {query.limit}; "
            f"use offset={query.offset + query.limit} for the next page"
        )
    headers = {"Warning": warning_header(warnings)} if warnings else {}
    return Response(result.body, media_type=media, headers=headers)


@get("/studies", name="qido-studies")
async def search_studies(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Search for studies (PS3.18 10.6.1, resource "All Studies")."""
    return await _search(request, Level.STUDY)


@get("/studies/{study:str}/series", name="qido-study-series")
async def search_study_series(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Search for the series of a study (resource "Study's Series")."""
    return await _search(request, Level.SERIES, request.path_params["study"])


@get("/series", name="qido-series")
async def search_series(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Search for series in all studies (resource "All Series")."""
    return await _search(request, Level.SERIES)


@get("/studies/{study:str}/instances", name="qido-study-instances")
async def search_study_instances(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Search for the instances of a study (resource "Study's Instances")."""
    return await _search(request, Level.INSTANCE, request.path_params["study"])


@get("/studies/{study:str}/series/{series:str}/instances", name="qido-series-instances")
async def search_series_instances(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Search for the instances of a series (resource "Study Series' Instances")."""
    params = request.path_params
    return await _search(request, Level.INSTANCE, params["study"], params["series"])


@get("/instances", name="qido-instances")
async def search_instances(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Search for instances in all studies (resource "All Instances")."""
    return await _search(request, Level.INSTANCE)


ROUTES = [
    search_studies,
    search_study_series,
    search_series,
    search_study_instances,
    search_series_instances,
    search_instances,
]
