"""WADO-RS: retrieve instances, metadata, frames and bulk data (PS3.18 10.4).

Metadata comes from the DICOM JSON stored at ingest, never from the files; frames and
bulk data are read from the byte ranges recorded at ingest; instances are sent as
stored. Responses stream: memory does not grow with the size of a study.

Instances and frames can also be decoded on the fly to native Explicit VR Little Endian,
the default syntax (in worker processes). Not yet here (issue #4): encoding to
compressed syntaxes, rendered images, thumbnails and ZIP archives. A request that needs
them gets 406 naming what is offered.
"""

from __future__ import annotations

import gzip
import hashlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, get
from litestar.response import Response, Stream

from app.codec import pool
from app.codec.transcode import can_decode, decode_frame, to_explicit_le
from app.dicom.json_model import BASE_MARKER
from app.dicom.uids import uid_problem
from app.dicomweb.media import (
    EXPLICIT_VR_LE,
    FRAME_MEDIA_TYPES,
    Offer,
    native_pixel_syntax,
    negotiate_multipart,
)
from app.dicomweb.negotiation import SEARCH_MEDIA_TYPES, choose
from app.dicomweb.urls import request_base_url
from app.errors import BadRequest, NotAcceptable, NotFound
from app.index import retrieve
from app.index.retrieve import Scope, StoredInstance
from app.storage import FileBlobStore

#: with no transfer-syntax parameter these types mean Explicit VR Little Endian (PS3.18 8.7.3.5)
DEFAULT_SYNTAX = {"application/dicom": EXPLICIT_VR_LE, "application/octet-stream": EXPLICIT_VR_LE}


def target_scope(request: Request[Any, Any, Any]) -> Scope:
    params = request.path_params
    scope = Scope(params["study"], params.get("series"), params.get("instance"))
    for value, what in ((scope.study, "Study"), (scope.series, "Series"), (scope.instance, "SOP")):
        if value is not None and (problem := uid_problem(value)) is not None:
            raise BadRequest(f"the {what} Instance UID in the URL {problem}")
    return scope


# -- metadata -------------------------------------------------------------------------


async def _metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Retrieve metadata (PS3.18 10.4.1.1.2): the stored DICOM JSON of each instance."""
    media = choose(request.headers.get("accept"), SEARCH_MEDIA_TYPES)
    scope = target_scope(request)
    state = request.app.state
    rows = await retrieve.metadata(state.pool, scope)
    base = request_base_url(state.settings.public_base_url, request.headers, request.url)
    tag = hashlib.sha1(base.encode())
    for _, sha in rows:
        tag.update(sha.encode())
    etag = f'"{tag.hexdigest()}"'
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(b"", status_code=304, headers={"ETag": etag})
    marker, replacement = f'"{BASE_MARKER}/'.encode(), f'"{base}/'.encode()
    body = b"[" + b",".join(meta.replace(marker, replacement) for meta, _ in rows) + b"]"
    headers = {"ETag": etag, "Vary": "Accept, Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", "") and len(body) > 1024:
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=media, headers=headers)


@get("/studies/{study:str}/metadata", name="wado-study-metadata")
async def study_metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _metadata(request)


@get("/studies/{study:str}/series/{series:str}/metadata", name="wado-series-metadata")
async def series_metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _metadata(request)


@get(
    "/studies/{study:str}/series/{series:str}/instances/{instance:str}/metadata",
    name="wado-instance-metadata",
)
async def instance_metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _metadata(request)


# -- multipart streaming ----------------------------------------------------------------


async def multipart_body(
    parts: AsyncIterator[tuple[str, AsyncIterator[bytes]]], boundary: str
) -> AsyncIterator[bytes]:
    """multipart/related framing (RFC 2387) around parts that stream themselves."""
    async for content_type, chunks in parts:
        yield f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        async for chunk in chunks:
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def multipart_stream(
    parts: AsyncIterator[tuple[str, AsyncIterator[bytes]]], part_type: str
) -> Stream:
    boundary = secrets.token_hex(16)
    return Stream(
        multipart_body(parts, boundary),
        media_type=f'multipart/related; type="{part_type}"; boundary={boundary}',
    )


# -- instances --------------------------------------------------------------------------


async def _instances(request: Request[Any, Any, Any]) -> Stream:
    """Retrieve instances (PS3.18 10.4.1.1.1) in multipart/related: as stored, or, where
    the client asks for the default Explicit VR Little Endian, re-encoded in a worker."""
    scope = target_scope(request)
    state = request.app.state
    stored = await retrieve.instances(state.pool, scope)
    accept = request.headers.get("accept")
    chosen = {}
    for inst in stored:
        offers = [Offer("application/dicom", inst.transfer_syntax)]
        if inst.transfer_syntax != EXPLICIT_VR_LE and can_decode(inst.transfer_syntax):
            offers.append(Offer("application/dicom", EXPLICIT_VR_LE))
        chosen[inst.sop_instance_uid] = negotiate_multipart(accept, offers, DEFAULT_SYNTAX)
    store: FileBlobStore = state.store

    async def converted(path: str) -> AsyncIterator[bytes]:
        yield await pool.run(to_explicit_le, path)

    async def parts() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        for inst in stored:
            offer = chosen[inst.sop_instance_uid]
            if offer.transfer_syntax == inst.transfer_syntax:
                yield offer.header(), store.read_range(inst.file_key)
            else:
                yield offer.header(), converted(str(store.path(inst.file_key)))

    return multipart_stream(parts(), "application/dicom")


@get("/studies/{study:str}", name="wado-study")
async def retrieve_study(request: Request[Any, Any, Any]) -> Stream:
    return await _instances(request)


@get("/studies/{study:str}/series/{series:str}", name="wado-series")
async def retrieve_series(request: Request[Any, Any, Any]) -> Stream:
    return await _instances(request)


@get("/studies/{study:str}/series/{series:str}/instances/{instance:str}", name="wado-instance")
async def retrieve_instance(request: Request[Any, Any, Any]) -> Stream:
    return await _instances(request)


# -- frames -----------------------------------------------------------------------------


def parse_frame_list(text: str, count: int) -> list[int]:
    """``1,3,5`` (PS3.18 10.4.1.1.4): 1-based frame numbers; 400 if malformed, 404 if out
    of range."""
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise BadRequest(f"frame list {text!r}: {item!r} is not a frame number (1, 2, ...)")
        numbers.append(int(item))
    for n in numbers:
        if n > count:
            raise NotFound(f"frame {n} does not exist: the instance has {count} frame(s)")
    return numbers


@get(
    "/studies/{study:str}/series/{series:str}/instances/{instance:str}/frames/{frames:str}",
    name="wado-frames",
)
async def retrieve_frames(request: Request[Any, Any, Any]) -> Stream:
    """Retrieve frames (PS3.18 10.4.1.1.4): each frame as one part, as stored (byte
    ranges recorded at ingest) or decoded to native Explicit VR Little Endian."""
    scope = target_scope(request)
    state = request.app.state
    (inst,) = await retrieve.instances(state.pool, scope)
    if not inst.number_of_frames:
        raise NotFound(f"{scope.describe()} has no pixel data frames")
    numbers = parse_frame_list(request.path_params["frames"], inst.number_of_frames)
    # frames lie in the stored file unless the data set is deflated (or oddly encoded)
    addressable = inst.frame_offsets is not None
    stored = native_pixel_syntax(inst.transfer_syntax)
    offers = []
    if addressable and inst.transfer_syntax in FRAME_MEDIA_TYPES:
        offers.append(Offer(FRAME_MEDIA_TYPES[inst.transfer_syntax], stored))
    if (not addressable or stored != EXPLICIT_VR_LE) and can_decode(inst.transfer_syntax):
        # decoded on the fly to the default syntax (PS3.18 8.7.3.5)
        offers.append(Offer("application/octet-stream", EXPLICIT_VR_LE))
    if not offers:
        raise NotAcceptable(f"frames in transfer syntax {inst.transfer_syntax} cannot be served")
    chosen = negotiate_multipart(request.headers.get("accept"), offers, DEFAULT_SYNTAX)
    store: FileBlobStore = state.store
    path = str(store.path(inst.file_key))
    as_stored = addressable and chosen.transfer_syntax == stored

    async def frame(number: int) -> AsyncIterator[bytes]:
        if not as_stored:
            yield await pool.run(decode_frame, path, number - 1)
            return
        for offset, length in inst.frame_ranges(number):
            async for chunk in store.read_range(inst.file_key, offset, length):
                yield chunk

    async def parts() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        for number in numbers:
            yield chosen.header(), frame(number)

    return multipart_stream(parts(), chosen.media_type)


# -- bulk data --------------------------------------------------------------------------


def _bulk_range(inst: StoredInstance, path: str) -> tuple[int, int]:
    for item_path, offset, length in msgspec.json.decode(inst.bulk):
        if item_path == path:
            return int(offset), int(length)
    raise NotFound(f"no bulk data {path!r} in instance {inst.sop_instance_uid}")


@get(
    "/studies/{study:str}/series/{series:str}/instances/{instance:str}/bulk/{path:path}",
    name="wado-bulk",
)
async def retrieve_bulk(request: Request[Any, Any, Any]) -> Stream:
    """Retrieve bulk data (PS3.18 10.4.1.1.5): the value a BulkDataURI in the metadata
    points at, as application/octet-stream in multipart/related."""
    scope = target_scope(request)
    state = request.app.state
    (inst,) = await retrieve.instances(state.pool, scope)
    path = request.path_params["path"].strip("/")
    offset, length = _bulk_range(inst, path)
    negotiate_multipart(
        request.headers.get("accept"),
        [Offer("application/octet-stream", native_pixel_syntax(inst.transfer_syntax))],
        {},
    )
    store: FileBlobStore = state.store

    async def parts() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        yield "application/octet-stream", store.read_range(inst.file_key, offset, length)

    return multipart_stream(parts(), "application/octet-stream")


ROUTES = [
    study_metadata,
    series_metadata,
    instance_metadata,
    retrieve_study,
    retrieve_series,
    retrieve_instance,
    retrieve_frames,
    retrieve_bulk,
]
