"""What every WADO-RS resource shares: the UIDs of its path, checked (PS3.5 9.1), and
multipart/related answers (PS3.18 8.7.5, RFC 2387), built whole when small and
streamed otherwise."""

from __future__ import annotations

import functools
import itertools
import secrets
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request
from litestar.response import Response, Stream

from app.codec.transcode import ENCODABLE, can_decode, can_encode
from app.dicom.uids import EXPLICIT_VR_LE, uid_problem
from app.errors import BadRequest
from app.services.retrieve import Scope, StoredInstance


def target_scope(request: Request[Any, Any, Any]) -> Scope:
    params = request.path_params
    return checked_scope(params["study"], params.get("series"), params.get("instance"))


def checked_scope(study: str, series: str | None, instance: str | None) -> Scope:
    """The UIDs of a WADO-RS path, each a valid UID (PS3.5 9.1) or a 400 naming it."""
    scope = Scope(study, series, instance)
    for value, what in ((scope.study, "Study"), (scope.series, "Series"), (scope.instance, "SOP")):
        if value is not None and (problem := uid_problem(value)) is not None:
            raise BadRequest(f"the {what} Instance UID in the URL {problem}")
    return scope


# -- multipart streaming ----------------------------------------------------------------


def part_head(boundary: str, content_type: str) -> bytes:
    """The delimiter and header of one part (RFC 2046 5.1.1; RFC 2387)."""
    return f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()


def close_delimiter(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()


async def multipart_body(
    parts: AsyncIterator[tuple[str, AsyncIterator[bytes]]], boundary: str
) -> AsyncIterator[bytes]:
    """multipart/related framing (RFC 2387) around parts that stream themselves."""
    async for content_type, chunks in parts:
        yield part_head(boundary, content_type)
        async for chunk in chunks:
            yield chunk
    yield close_delimiter(boundary)


_BOUNDARY_PREFIX = secrets.token_hex(12)
_BOUNDARY_COUNTER = itertools.count()

#: responses up to this size are built whole and sent with a Content-Length (one send,
#: no chunked framing); larger ones stream
SMALL_RESPONSE = 8 << 20


def new_boundary() -> str:
    """Random per process, unique per response: cheaper than fresh randomness each time
    and as unlikely to occur inside a part."""
    return f"{_BOUNDARY_PREFIX}{next(_BOUNDARY_COUNTER):x}"


def multipart_stream(
    parts: AsyncIterator[tuple[str, AsyncIterator[bytes]]], part_type: str
) -> Stream:
    boundary = new_boundary()
    return Stream(
        multipart_body(parts, boundary),
        media_type=f'multipart/related; type="{part_type}"; boundary={boundary}',
    )


def multipart_response(parts: list[tuple[str, bytes]], part_type: str) -> Response[bytes]:
    """multipart/related built whole, for small answers (a frame or a few)."""
    boundary = new_boundary()
    pieces = []
    for content_type, body in parts:
        pieces.append(part_head(boundary, content_type))
        pieces.append(body)
    pieces.append(close_delimiter(boundary))
    return Response(
        b"".join(pieces),
        media_type=f'multipart/related; type="{part_type}"; boundary={boundary}',
    )


def transcode_targets(inst: StoredInstance) -> tuple[str, ...]:
    """Transfer syntaxes this instance can be transcoded to, default syntax first."""
    return _targets_for(
        inst.transfer_syntax,
        bool(inst.number_of_frames),
        inst.bits_allocated,
        inst.bits_stored,
        inst.samples_per_pixel,
        inst.photometric,
    )


@functools.lru_cache(maxsize=1024)
def _targets_for(
    syntax: str,
    frames: bool,
    bits_allocated: int | None,
    bits_stored: int | None,
    samples: int | None,
    photometric: str | None,
) -> tuple[str, ...]:
    if not can_decode(syntax):
        return ()
    targets = [EXPLICIT_VR_LE] if syntax != EXPLICIT_VR_LE else []
    if frames:
        targets += [
            t
            for t in ENCODABLE
            if t != syntax
            and can_encode(
                t,
                bits_allocated=bits_allocated,
                bits_stored=bits_stored,
                samples=samples,
                photometric=photometric,
            )
        ]
    return tuple(targets)
