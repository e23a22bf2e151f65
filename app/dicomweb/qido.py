"""QIDO-RS: search for studies, series and instances (PS3.18 10.6).

One handler per resource of PS3.18 Table 10.6.1-2; each parses the query into the
query model (:mod:`app.index.query`), runs it, and answers ``application/dicom+json``
(or ``application/json``) with ``Warning: 299`` headers for what the client should know:
more results beyond the limit, a matching feature applied partly.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from litestar import Litestar, Request, get
from litestar.response import Response
from litestar.types import ASGIApp

from app.asgi import header, send_error, send_whole, warning_header
from app.auth.principal import confined_study
from app.dicom.uids import uid_problem
from app.dicomweb.negotiation import SEARCH_MEDIA_TYPES, choose
from app.dicomweb.urls import DICOMWEB_PREFIX, request_base_url, scope_base_url
from app.errors import BadRequest, PictorError
from app.index.query import MAX_PARAMETERS, Level, confine, parse_query
from app.index.search import search
from app.observability import ROUTE_KEY

T = TypeVar("T")


def _check_uid(value: str | None, what: str) -> None:
    if value is not None and (problem := uid_problem(value)) is not None:
        raise BadRequest(f"the {what} in the URL {problem}")


@dataclass(frozen=True)
class Answer:
    body: bytes
    media_type: str
    warning: str | None


def query_parameters(query_string: str) -> list[tuple[str, str]]:
    """The decoded ``key=value`` pairs of a query string; 400 when there are more than
    the parser takes, or a percent-escape is not UTF-8 (RFC 3986 2.5)."""
    try:
        return parse_qsl(
            query_string, keep_blank_values=True, max_num_fields=MAX_PARAMETERS, errors="strict"
        )
    except UnicodeDecodeError:
        raise BadRequest("the query string is not UTF-8 (RFC 3986 2.5)") from None
    except ValueError:
        raise BadRequest(f"more than {MAX_PARAMETERS} query parameters") from None


async def answer(
    state: Any,
    level: Level,
    study: str | None,
    series: str | None,
    query_string: str,
    accept: str | None,
    base: str,
    confined: str | None = None,
) -> Answer:
    """The answer to one search (both ways in: the routes below and :class:`SearchFastPath`).
    ``confined``: the one study the caller may see (a study link), applied to the parsed
    query. Raises :class:`~app.errors.PictorError` for what PS3.18 answers with an error."""
    media = choose(accept, SEARCH_MEDIA_TYPES)
    _check_uid(study, "Study Instance UID")
    _check_uid(series, "Series Instance UID")
    query = parse_query(level, query_parameters(query_string), study_uid=study, series_uid=series)
    if confined is not None:
        query = confine(query, confined)
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
    query_string = request.scope.get("query_string", b"").decode("latin-1")
    found = await answer(
        state, level, study, series, query_string, accept, base, confined_study(request.scope)
    )
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
    The same :func:`answer` as the routes, and errors through the same renderer
    (:func:`app.asgi.send_error`): a search runs once, whatever its outcome. A client
    that hangs up cancels its search, and the database query with it."""

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
                scope[ROUTE_KEY] = route
                try:
                    found = await until_disconnect(
                        self._answer(scope, level, list(match.groups())), receive
                    )
                except PictorError as exc:
                    await send_error(send, exc)
                    return
                except ClientGone:
                    return
                headers = [(b"content-type", found.media_type.encode())]
                if found.warning:
                    headers.append((b"warning", found.warning.encode()))
                await send_whole(send, 200, found.body, headers)
                return
        await self.inner(scope, receive, send)

    async def _answer(self, scope: Any, level: Level, uids: list[str]) -> Answer:
        state = self.app.state
        base = scope_base_url(state.settings.public_base_url, scope)
        study, series = (uids + [None, None])[:2]
        try:
            query_string = scope["query_string"].decode()
        except UnicodeDecodeError:
            raise BadRequest("the query string is not UTF-8 (RFC 3986 2.5)") from None
        accept = header(scope, b"accept")
        confined = confined_study(scope)
        return await answer(state, level, study, series, query_string, accept, base, confined)


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def until_disconnect(work: Coroutine[Any, Any, T], receive: Any) -> T:
    """``work``'s result, or :class:`ClientGone` (with ``work`` cancelled: asyncpg
    then cancels the query on the server) once the client has hung up."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task not in done:
        task.cancel()
        raise ClientGone
    return task.result()


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


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
