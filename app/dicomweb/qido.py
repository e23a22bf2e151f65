"""QIDO-RS: search for studies, series and instances (PS3.18 10.6).

One handler per resource of PS3.18 Table 10.6.1-2; each parses the query into the
query model (:mod:`app.index.query`), runs it, and answers ``application/dicom+json``
(or ``application/json``) with ``Warning: 299`` headers for what the client should know:
more results beyond the limit, a matching feature applied partly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from litestar import Request
from litestar.response import Response

from app.asgi import header, send_error, send_whole, warning_header
from app.auth.principal import confined_study
from app.dicom.uids import uid_problem
from app.dicomweb.negotiation import SEARCH_MEDIA_TYPES, choose
from app.dicomweb.urls import scope_base_url
from app.errors import BadRequest, PictorError
from app.services.search import MAX_PARAMETERS, Level, build_query, run

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
    """The answer to one search (both ways in: the framework routes and :func:`hot_search`).
    ``confined``: the one study the caller may see (a study link), applied to the parsed
    query. Raises :class:`~app.errors.PictorError` for what PS3.18 answers with an error."""
    media = choose(accept, SEARCH_MEDIA_TYPES)
    _check_uid(study, "Study Instance UID")
    _check_uid(series, "Series Instance UID")
    params = query_parameters(query_string)
    query = build_query(level, params, study=study, series=series, confined=confined)
    found = await run(state.pool, query, base)
    warnings = found.warnings
    return Answer(found.body, media, warning_header(list(warnings)) if warnings else None)


def _query_string(scope: Any) -> str:
    try:
        return bytes(scope.get("query_string", b"")).decode()
    except UnicodeDecodeError:
        raise BadRequest("the query string is not UTF-8 (RFC 3986 2.5)") from None


async def respond(state: Any, scope: Any, level: Level, params: Mapping[str, str]) -> Answer:
    """The answer to the search ``scope`` asks for, whichever door it came in by: the
    framework route or the hot dispatcher (:func:`hot_search`)."""
    base = scope_base_url(state.settings.public_base_url, scope)
    return await answer(
        state,
        level,
        params.get("study"),
        params.get("series"),
        _query_string(scope),
        header(scope, b"accept"),
        base,
        confined_study(scope),
    )


async def _search(request: Request[Any, Any, Any], level: Level) -> Response[bytes]:
    found = await respond(request.app.state, request.scope, level, request.path_params)
    headers = {"Warning": found.warning} if found.warning else {}
    return Response(found.body, media_type=found.media_type, headers=headers)


async def hot_search(
    level: Level, state: Any, scope: Any, receive: Any, send: Any, params: Mapping[str, str]
) -> bool:
    """A search answered below the framework (the route table marks QIDO hot): a study
    list is a viewer's first request and an integration's most frequent one, and on a
    busy 2-core machine litestar's request and response objects cost about as much CPU
    as the search's own Python. The same :func:`respond` as the route, and errors
    through the same renderer (:func:`app.asgi.send_error`): a search runs once,
    whatever its outcome. A client that hangs up cancels its search, and the database
    query with it."""
    try:
        found = await until_disconnect(respond(state, scope, level, params), receive)
    except PictorError as exc:
        await send_error(send, exc)
        return True
    except ClientGone:
        return True
    headers = [(b"content-type", found.media_type.encode())]
    if found.warning:
        headers.append((b"warning", found.warning.encode()))
    await send_whole(send, 200, found.body, headers)
    return True


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def until_disconnect(work: Coroutine[Any, Any, T], receive: Any) -> T:
    """``work``'s result, or :class:`ClientGone` (with ``work`` cancelled: asyncpg
    then cancels the query on the server) once the client has hung up. ``work`` runs
    in the calling task; one watcher task waits for ``http.disconnect``."""
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(receive)
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        current.uncancel()  # our own cancellation: it ends here
        raise ClientGone from None
    finally:
        watcher.cancel()


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def search_studies(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Search for studies (PS3.18 10.6.1, resource "All Studies")."""
    return await _search(request, Level.STUDY)


async def search_study_series(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Search for the series of a study (resource "Study's Series")."""
    return await _search(request, Level.SERIES)


async def search_series(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Search for series in all studies (resource "All Series")."""
    return await _search(request, Level.SERIES)


async def search_study_instances(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Search for the instances of a study (resource "Study's Instances")."""
    return await _search(request, Level.INSTANCE)


async def search_series_instances(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Search for the instances of a series (resource "Study Series' Instances")."""
    return await _search(request, Level.INSTANCE)


async def search_instances(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Search for instances in all studies (resource "All Instances")."""
    return await _search(request, Level.INSTANCE)
