"""The change feed over HTTP (issue #17), in the shape of Microsoft's DICOM service so
that tools written for it (DICOM Cast, its client's ``GetChangeFeed``) work here.

* ``GET /dicom-web/changefeed?offset=N&limit=L&includemetadata=true|false
  &startTime=T&endTime=T``: the entries after Sequence ``N`` (default 0), oldest first,
  at most ``L`` (default 10, at most 1000), within ``[startTime, endTime)`` when given
  (ISO 8601; without a zone: UTC);
* ``GET /dicom-web/changefeed/latest[?includemetadata=...]``: the newest entry, or 204
  when the feed is empty.

An entry: ``Sequence``, ``StudyInstanceUid``, ``SeriesInstanceUid``, ``SopInstanceUid``,
``Action`` (``create``, ``update``, ``delete``), ``Timestamp`` (UTC), ``State``
(``current``: the instance is as this entry left it; ``replaced``: a later entry
changed it; ``deleted``: it is not in the archive any more) and, unless
``includemetadata=false``, ``Metadata``: the instance's DICOM JSON now (PS3.18 F), for
entries of an instance still stored. Parameter names are matched without regard to
case (Microsoft's client sends ``includeMetadata``); any other parameter, or a value
out of range, is a 400 naming it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from litestar import Request
from litestar.response import Response

from app.dicom.json_model import BASE_MARKER
from app.dicomweb.urls import request_base_url
from app.errors import BadRequest
from app.services import events
from app.text import ascii_int

DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
_KNOWN = ("offset", "limit", "includemetadata", "starttime", "endtime")


def _params(request: Request[Any, Any, Any], allowed: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in request.query_params.items():
        name = key.lower()
        if name not in allowed:
            raise BadRequest(
                f"unknown parameter {key[:64]!r}; the change feed takes {', '.join(allowed)}"
            )
        if name in found:
            raise BadRequest(f"{key[:64]!r} is given more than once")
        found[name] = value
    return found


def _int(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    if name not in params:
        return default
    value = ascii_int(params[name].strip(), 19)
    if value is None or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return value


def _bool(params: dict[str, str], name: str) -> bool:
    value = params.get(name, "true").strip().lower()
    if value not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false")
    return value == "true"


def _time(params: dict[str, str], name: str) -> dt.datetime | None:
    if name not in params:
        return None
    text = params[name].strip()
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"{name} {text[:40]!r} is not an ISO 8601 date and time") from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _timestamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _encode(entry: events.Entry, base: str) -> bytes:
    head = {
        "Sequence": entry.seq,
        "StudyInstanceUid": entry.study,
        "SeriesInstanceUid": entry.series,
        "SopInstanceUid": entry.sop,
        "Action": entry.action,
        "Timestamp": _timestamp(entry.at),
        "State": entry.state,
    }
    body = msgspec.json.encode(head)
    if entry.metadata is None:
        return body
    metadata = entry.metadata.replace(f'"{BASE_MARKER}/'.encode(), f'"{base}/'.encode())
    return body[:-1] + b',"Metadata":' + metadata + b"}"


def _base(request: Request[Any, Any, Any]) -> str:
    settings = request.app.state.settings
    return request_base_url(settings.public_base_url, request.headers, request.url)


async def read_feed(request: Request[Any, Any, Any]) -> Response[bytes]:
    params = _params(request, _KNOWN)
    after = _int(params, "offset", 0, 0, 2**62)
    limit = _int(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    metadata = _bool(params, "includemetadata")
    start, end = _time(params, "starttime"), _time(params, "endtime")
    if start is not None and end is not None and end <= start:
        raise BadRequest("endTime must be after startTime")
    found = await events.read(
        request.app.state.pool, after, limit, metadata=metadata, start=start, end=end
    )
    base = _base(request)
    body = b"[" + b",".join(_encode(e, base) for e in found) + b"]"
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


async def latest_entry(request: Request[Any, Any, Any]) -> Response[bytes]:
    params = _params(request, ("includemetadata",))
    found = await events.latest(request.app.state.pool, metadata=_bool(params, "includemetadata"))
    if found is None:
        return Response(b"", status_code=204, headers={"Cache-Control": "no-store"})
    return Response(
        _encode(found, _base(request)),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
