"""WADO-RS bulk data (PS3.18 10.4.1.1.5): the value behind a BulkDataURI of the
metadata, read from the byte range recorded at ingest; ``Range`` (RFC 9110 14) and a
bare ``application/octet-stream`` answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request
from litestar.response import Stream

from app.dicomweb.media import (
    Offer,
    native_pixel_syntax,
    negotiate_multipart,
)
from app.dicomweb.negotiation import parse_accept
from app.dicomweb.responses import (
    multipart_stream,
    target_scope,
)
from app.errors import NotFound, RangeNotSatisfiable
from app.services import retrieve
from app.services.retrieve import StoredInstance
from app.storage import BlobStore
from app.text import ascii_int

# -- bulk data --------------------------------------------------------------------------


def _bulk_range(inst: StoredInstance, path: str) -> tuple[int, int]:
    for item_path, offset, length in msgspec.json.decode(inst.bulk):
        if item_path == path:
            return int(offset), int(length)
    raise NotFound(f"no bulk data {path!r} in instance {inst.sop_instance_uid}")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single ``bytes=first-last`` / ``bytes=first-`` / ``bytes=-suffix`` range (RFC 9110
    14.1.2) as (offset, length); None to send everything (no header, or several ranges,
    which RFC 9110 14.2 lets a server ignore). 416 when it lies outside the value."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    first = ascii_int(first_text) if first_text else None
    last_given = ascii_int(last_text) if last_text else None
    if (
        not dash
        or (first_text and first is None)
        or (last_text and last_given is None)
        or (first is None and last_given is None)
    ):
        raise RangeNotSatisfiable(f"malformed Range header {header[:100]!r}", size)
    if first is None:  # suffix: the last N bytes
        assert last_given is not None
        length = min(last_given, size)
        if length == 0:
            raise RangeNotSatisfiable(f"Range {header!r} selects nothing", size)
        return size - length, length
    last = min(last_given, size - 1) if last_given is not None else size - 1
    if first >= size or last < first:
        raise RangeNotSatisfiable(f"Range {header!r} is outside the {size}-byte value", size)
    return first, last - first + 1


async def retrieve_bulk(request: Request[Any, Any, Any]) -> Stream:
    """Retrieve bulk data (PS3.18 10.4.1.1.5): the value a BulkDataURI in the metadata
    points at, in multipart/related, or as a single ``application/octet-stream`` body
    when that is what Accept names. ``Range: bytes=...`` selects part of the value
    (206 Partial Content, with Content-Range), for large values such as video."""
    scope = target_scope(request)
    state = request.app.state
    (inst,) = await retrieve.instances(state.pool, scope)
    path = request.path_params["path"].strip("/")
    offset, length = _bulk_range(inst, path)
    accept = request.headers.get("accept")
    offer = negotiate_multipart(
        accept,
        [Offer("application/octet-stream", native_pixel_syntax(inst.transfer_syntax))],
        {},
    )
    named = {media for media, _, q in parse_accept(accept) if q > 0}
    single = "application/octet-stream" in named and "multipart/related" not in named
    wanted = parse_range(request.headers.get("range"), length)
    headers = {"Accept-Ranges": "bytes"}
    status = 200
    if wanted is not None:
        start, size = wanted
        headers["Content-Range"] = f"bytes {start}-{start + size - 1}/{length}"
        offset, length, status = offset + start, size, 206
    store: BlobStore = state.store
    if single:
        headers["Content-Length"] = str(length)
        return Stream(
            store.read_range(inst.file_key, offset, length),
            media_type=offer.media_type,
            status_code=status,
            headers=headers,
        )

    async def parts() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        yield "application/octet-stream", store.read_range(inst.file_key, offset, length)

    response = multipart_stream(parts(), "application/octet-stream")
    response.status_code = status
    response.headers.update(headers)
    return response
