"""QIDO-RS: search for studies, series and instances (PS3.18 10.6).

One handler per resource of PS3.18 Table 10.6.1-2; each parses the query into the
query model (:mod:`app.index.query`), runs it, and answers ``application/dicom+json``
(or ``application/json``) with ``Warning: 299`` headers for what the client should know:
more results beyond the limit, a matching feature applied partly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from litestar import Litestar, Request, get
from litestar.response import Response
from litestar.types import ASGIApp

from app.asgi import header, send_whole, warning_header
from app.dicom.uids import uid_problem
from app.dicomweb.negotiation import SEARCH_MEDIA_TYPES, choose
from app.dicomweb.urls import DICOMWEB_PREFIX, request_base_url, scope_base_url
from app.errors import BadRequest, PictorError
from app.index.query import Level, parse_query
from app.index.search import search
from app.observability import ROUTE_KEY


def _check_uid(value: str | None, what: str) -> None:
    if value is not None and (problem := uid_problem(value)) is not None:
        raise BadRequest(f"the {what} in the URL {problem}")


@dataclass(frozen=True)
class Answer:
    body: bytes
    media_type: str
    warning: str | None


async def answer(
    state: Any,
    level: Level,
    study: str | None,
    series: str | None,
    query_string: str,
    accept: str | None,
    base: str,
) -> Answer:
    """The answer to one search (both ways in: the routes below and :class:`SearchFastPath`).
    Raises :class:`~app.errors.PictorError` for what PS3.18 answers with an error."""
    media = choose(accept, SEARCH_MEDIA_TYPES)
    _check_uid(study, "Study Instance UID")
    _check_uid(series, "Series Instance UID")
    params = parse_qsl(query_string, keep_blank_values=True)
    query = parse_query(level, params, study_uid=study, series_uid=series)
    result = await search(state.pool, query, base)
    warnings = list(query.warnings)
    if result.more:
        warnings.append(
            f"There are additional results that can be requested: the limit is {query.limit}; "
            f"use offset={query.offset + query.limit} for the next page"
        )
    return Answer(result.body, media, warning_header(warnings) if warnings else None)


async def _search(
    request: Request[Any, Any, Any],
    level: Level,
    study: str | None = None,
    series: str | None = None,
) -> Response[bytes]:
    state = request.app.state
    base = request_base_url(state.settings.public_base_url, request.headers, request.url)
    accept = request.headers.get("accept")
    found = await answer(state, level, study, series, request.url.query or "", accept, base)
    headers = {"Warning": found.warning} if found.warning else {}
    return Response(found.body, media_type=found.media_type, headers=headers)


_LEVEL_PATHS = [
    (re.compile(f"^{re.escape(DICOMWEB_PREFIX)}{pattern}$"), level, route)
    for pattern, level, route in [
        ("/studies", Level.STUDY, "qido-studies"),
        ("/studies/([^/]+)/series", Level.SERIES, "qido-study-series"),
        ("/series", Level.SERIES, "qido-series"),
        ("/studies/([^/]+)/instances", Level.INSTANCE, "qido-study-instances"),
        ("/studies/([^/]+)/series/([^/]+)/instances", Level.INSTANCE, "qido-series-instances"),
        ("/instances", Level.INSTANCE, "qido-instances"),
    ]
]


class SearchFastPath:
    """Searches answered below the framework: a study list is a viewer's first request
    and an integration's most frequent one, and on a busy 2-core machine litestar's
    request and response objects cost about as much CPU as the search's own Python.
    The same :func:`answer` as the routes; anything that raises (a bad parameter, a
    media type that cannot be produced, the index unreachable) goes on to the route,
    which answers it with the standard's status and message."""

    def __init__(self, app: Litestar, inner: ASGIApp) -> None:
        self.app = app
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            for pattern, level, route in _LEVEL_PATHS:
                match = pattern.match(path)
                if match is None:
                    continue
                found = await self._answer(scope, level, list(match.groups()))
                if found is not None:
                    scope[ROUTE_KEY] = route
                    headers = [(b"content-type", found.media_type.encode())]
                    if found.warning:
                        headers.append((b"warning", found.warning.encode()))
                    await send_whole(send, 200, found.body, headers)
                    return
                break
        await self.inner(scope, receive, send)

    async def _answer(self, scope: Any, level: Level, uids: list[str]) -> Answer | None:
        state = self.app.state
        base = scope_base_url(state.settings.public_base_url, scope)
        study, series = (uids + [None, None])[:2]
        try:
            query_string = scope["query_string"].decode()
            accept = header(scope, b"accept")
            return await answer(state, level, study, series, query_string, accept, base)
        except (PictorError, UnicodeDecodeError):
            return None  # the route answers it


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
