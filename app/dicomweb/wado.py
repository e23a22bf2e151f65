"""WADO-RS: retrieve instances, metadata, frames and bulk data (PS3.18 10.4).

Metadata comes from the DICOM JSON stored at ingest, never from the files; frames and
bulk data are read from the byte ranges recorded at ingest; instances are sent as
stored. Responses stream: memory does not grow with the size of a study.

Instances and frames can also be transcoded on the fly (in worker processes): decoded
to native Explicit VR Little Endian, the default syntax, or encoded again as RLE,
JPEG-LS, JPEG 2000 or JPEG Baseline (:mod:`app.codec.transcode`). A request for
something that cannot be produced gets 406 naming what is offered. Studies and series
also come as one ``application/zip`` archive, streamed.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import itertools
import secrets
import time
import zipfile
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
from litestar import Request
from litestar.response import Response, Stream

from app.asgi import header, send_error, send_whole
from app.codec.transcode import (
    ENCODABLE,
    TranscodeError,
    can_decode,
    can_encode,
)
from app.dicom.json_model import BASE_MARKER
from app.dicom.uids import EXPLICIT_VR_LE, uid_problem
from app.dicomweb.media import (
    DEFAULT_SYNTAX,
    FRAME_MEDIA_TYPES,
    Offer,
    frame_offers,
    native_pixel_syntax,
    negotiate_multipart,
)
from app.dicomweb.negotiation import SEARCH_MEDIA_TYPES, choose, parse_accept
from app.dicomweb.urls import request_base_url
from app.errors import BadRequest, NotAcceptable, NotFound, PictorError, RangeNotSatisfiable
from app.services import retrieve
from app.services.retrieve import InstanceCache, Scope, StoredInstance
from app.storage import BlobStore


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


async def study_metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _metadata(request)


async def series_metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _metadata(request)


async def instance_metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _metadata(request)


# -- multipart streaming ----------------------------------------------------------------


def _part_head(boundary: str, content_type: str) -> bytes:
    """The delimiter and header of one part (RFC 2046 5.1.1; RFC 2387)."""
    return f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()


def _close(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()


async def multipart_body(
    parts: AsyncIterator[tuple[str, AsyncIterator[bytes]]], boundary: str
) -> AsyncIterator[bytes]:
    """multipart/related framing (RFC 2387) around parts that stream themselves."""
    async for content_type, chunks in parts:
        yield _part_head(boundary, content_type)
        async for chunk in chunks:
            yield chunk
    yield _close(boundary)


_BOUNDARY_PREFIX = secrets.token_hex(12)
_BOUNDARY_COUNTER = itertools.count()

#: responses up to this size are built whole and sent with a Content-Length (one send,
#: no chunked framing); larger ones stream
SMALL_RESPONSE = 8 << 20


def _boundary() -> str:
    """Random per process, unique per response: cheaper than fresh randomness each time
    and as unlikely to occur inside a part."""
    return f"{_BOUNDARY_PREFIX}{next(_BOUNDARY_COUNTER):x}"


def multipart_stream(
    parts: AsyncIterator[tuple[str, AsyncIterator[bytes]]], part_type: str
) -> Stream:
    boundary = _boundary()
    return Stream(
        multipart_body(parts, boundary),
        media_type=f'multipart/related; type="{part_type}"; boundary={boundary}',
    )


def multipart_response(parts: list[tuple[str, bytes]], part_type: str) -> Response[bytes]:
    """multipart/related built whole, for small answers (a frame or a few)."""
    boundary = _boundary()
    pieces = []
    for content_type, body in parts:
        pieces.append(_part_head(boundary, content_type))
        pieces.append(body)
    pieces.append(_close(boundary))
    return Response(
        b"".join(pieces),
        media_type=f'multipart/related; type="{part_type}"; boundary={boundary}',
    )


# -- instances --------------------------------------------------------------------------


def _targets(inst: StoredInstance) -> tuple[str, ...]:
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


def wants_zip(accept: str | None) -> bool:
    """Whether Accept prefers ``application/zip`` (PS3.18 10.4.1.1.1, Table 8.7.4-1) over
    multipart/related: it is named, with a q-value no lower than any named DICOM type."""
    zip_q = other_q = 0.0
    for media, _, q in parse_accept(accept):
        if media == "application/zip":
            zip_q = max(zip_q, q)
        elif media in ("multipart/related", "application/dicom"):
            other_q = max(other_q, q)
    return zip_q > 0 and zip_q >= other_q


class _Sink(io.RawIOBase):
    """A write-only, unseekable file: zipfile then writes data descriptors and never
    goes back, so the archive can be sent while it is written."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


async def zip_body(store: BlobStore, stored: list[StoredInstance]) -> AsyncIterator[bytes]:
    """The instances as stored, in a ZIP archive (stored entries, ZIP64 where needed),
    named ``study/series/sop.dcm``; memory holds one chunk at a time."""
    sink = _Sink()
    now = time.localtime()[:6]
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for inst in stored:
            entry = zipfile.ZipInfo(
                f"{inst.file_key.rsplit('/', 1)[0]}/{inst.sop_instance_uid}.dcm", now
            )
            entry.file_size = inst.file_size
            with archive.open(entry, "w") as out:
                async for chunk in store.read_range(inst.file_key):
                    out.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


async def _instances(request: Request[Any, Any, Any]) -> Stream:
    """Retrieve instances (PS3.18 10.4.1.1.1) in multipart/related: as stored, or
    transcoded in a worker to the transfer syntax the client asks for (Explicit VR
    Little Endian when it names none); or as one application/zip archive."""
    scope = target_scope(request)
    state = request.app.state
    stored = await retrieve.instances(state.pool, scope)
    accept = request.headers.get("accept")
    store: BlobStore = state.store
    if wants_zip(accept):
        name = (scope.series or scope.study) + ".zip"
        return Stream(
            zip_body(store, stored),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    chosen = {}
    for inst in stored:
        # no only_lossy here: application/dicom without a parameter gets Explicit VR
        # Little Endian even for lossy originals, which every reader can decode
        offers = [Offer("application/dicom", inst.transfer_syntax)]
        offers += [Offer("application/dicom", t) for t in _targets(inst)]
        chosen[inst.sop_instance_uid] = negotiate_multipart(accept, offers, DEFAULT_SYNTAX)

    async def convert(inst: StoredInstance, target: str) -> bytes:
        try:
            return await retrieve.transcoded(store, inst, target)
        except TranscodeError as exc:
            raise NotAcceptable(str(exc)) from exc

    # the first conversion runs before the response starts, so that an instance the
    # codecs cannot handle gets a status code; a later failure ends the stream early
    first: bytes | None = None
    head = stored[0]
    if chosen[head.sop_instance_uid].transfer_syntax != head.transfer_syntax:
        target = chosen[head.sop_instance_uid].transfer_syntax
        first = await convert(head, target)

    async def once(data: bytes) -> AsyncIterator[bytes]:
        yield data

    async def parts() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        for i, inst in enumerate(stored):
            offer = chosen[inst.sop_instance_uid]
            if offer.transfer_syntax == inst.transfer_syntax:
                yield offer.header(), store.read_range(inst.file_key)
            elif i == 0 and first is not None:
                yield offer.header(), once(first)
            else:
                data = await convert(inst, offer.transfer_syntax)
                yield offer.header(), once(data)

    return multipart_stream(parts(), "application/dicom")


async def retrieve_study(request: Request[Any, Any, Any]) -> Stream:
    return await _instances(request)


async def retrieve_series(request: Request[Any, Any, Any]) -> Stream:
    return await _instances(request)


async def retrieve_instance(request: Request[Any, Any, Any]) -> Stream:
    return await _instances(request)


# -- frames -----------------------------------------------------------------------------


#: frame numbers one request may list (each may cost a decode and an encode)
MAX_FRAMES = 1000


def parse_frame_list(text: str, count: int) -> list[int]:
    """``1,3,5`` (PS3.18 10.4.1.1.4): 1-based frame numbers, each once, in the order
    first given (a frame listed again is the same resource: it is sent once); 400 if
    malformed or longer than :data:`MAX_FRAMES`, 404 if out of range."""
    items = text.split(",")
    if len(items) > MAX_FRAMES:
        raise BadRequest(f"the frame list names more than {MAX_FRAMES} frames")
    numbers: dict[int, None] = {}
    for item in items:
        item = item.strip()
        if not (item.isascii() and item.isdigit()) or len(item) > 9 or int(item) < 1:
            shown = item if len(item) <= 20 else item[:20] + "..."
            raise BadRequest(f"frame list: {shown!r} is not a frame number (1, 2, ...)")
        numbers[int(item)] = None
    for n in numbers:
        if n > count:
            raise NotFound(f"frame {n} does not exist: the instance has {count} frame(s)")
    return list(numbers)


def _frame_choice(inst: StoredInstance, accept: str | None) -> tuple[Offer, bool]:
    """What to send for frames of ``inst`` (PS3.18 8.7.3-5, 8.7.4), and whether that is
    the stored bytes themselves."""
    return _frame_choice_for(
        accept,
        inst.transfer_syntax,
        # frames lie in the stored file unless the data set is deflated (or oddly encoded)
        inst.frame_offsets is not None,
        _targets(inst),
    )


@functools.lru_cache(maxsize=1024)
def _frame_choice_for(
    accept: str | None, syntax: str, addressable: bool, targets: tuple[str, ...]
) -> tuple[Offer, bool]:
    # a viewer sends the same Accept for every frame of a series: negotiated once
    stored = native_pixel_syntax(syntax)
    offers = []
    if addressable and syntax in FRAME_MEDIA_TYPES:
        offers += frame_offers(syntax, stored=True)
    for target in targets:
        if target != stored or not addressable:
            offers += frame_offers(target)
    if not offers:
        raise NotAcceptable(f"frames in transfer syntax {syntax} cannot be served")
    chosen = negotiate_multipart(accept, offers, DEFAULT_SYNTAX)
    return chosen, addressable and chosen.transfer_syntax == stored


async def _stored_frames(
    store: BlobStore, inst: StoredInstance, numbers: list[int], chosen: Offer
) -> tuple[str, bytearray] | None:
    """Stored frames as one multipart body (its media type and bytes), read straight into
    it; None when they are too large to build whole (they are streamed then)."""
    ranges = [inst.frame_ranges(number) for number in numbers]
    size = sum(length for r in ranges for _, length in r)
    if size > SMALL_RESPONSE:
        return None
    boundary = _boundary()
    head = _part_head(boundary, chosen.header())
    tail = _close(boundary)
    body = bytearray(size + len(head) * len(ranges) + len(tail))
    view = memoryview(body)
    targets = []
    at = 0
    for r in ranges:
        view[at : at + len(head)] = head
        at += len(head)
        for offset, length in r:
            targets.append((offset, view[at : at + length]))
            at += length
    view[at:] = tail
    await store.read_into(inst.file_key, targets)
    return f'multipart/related; type="{chosen.media_type}"; boundary={boundary}', body


async def retrieve_frames(request: Request[Any, Any, Any]) -> Stream | Response[bytes]:
    """Retrieve frames (PS3.18 10.4.1.1.4): each frame as one part, as stored (byte
    ranges recorded at ingest), or transcoded in a worker: decoded to native Explicit VR
    Little Endian, or encoded as RLE, JPEG-LS, JPEG 2000 or JPEG Baseline, with the
    media type of PS3.18 Table 8.7.3-5. (Stored frames usually leave through
    :func:`hot_frames` before reaching this handler.)"""
    scope = target_scope(request)
    state = request.app.state
    inst = await retrieve.instance(state.pool, scope)
    if not inst.number_of_frames:
        raise NotFound(f"{scope.describe()} has no pixel data frames")
    numbers = parse_frame_list(request.path_params["frames"], inst.number_of_frames)
    chosen, as_stored = _frame_choice(inst, request.headers.get("accept"))
    store: BlobStore = state.store
    header = chosen.header()

    async def encoded(number: int) -> bytes:
        try:
            return await retrieve.encoded_frame(store, inst, number, chosen.transfer_syntax)
        except TranscodeError as exc:
            raise NotAcceptable(f"frame {number}: {exc}") from exc

    if as_stored:
        whole = await _stored_frames(store, inst, numbers, chosen)
        if whole is not None:
            return Response(bytes(whole[1]), media_type=whole[0])
    else:
        # the first frame is transcoded before the response starts: a failure gets a
        # status; a single frame goes out whole
        first = await encoded(numbers[0])
        if len(numbers) == 1:
            return multipart_response([(header, first)], chosen.media_type)

    async def frame(i: int, number: int) -> AsyncIterator[bytes]:
        if not as_stored:
            yield first if i == 0 else await encoded(number)
            return
        for offset, length in inst.frame_ranges(number):
            async for chunk in store.read_range(inst.file_key, offset, length):
                yield chunk

    async def parts() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        for i, number in enumerate(numbers):
            yield header, frame(i, number)

    return multipart_stream(parts(), chosen.media_type)


async def hot_frames(
    state: Any, scope: Any, receive: Any, send: Any, params: Mapping[str, str]
) -> bool:
    """The request a viewer makes most (one per frame: OHIF's ``transfer-syntax=*``),
    answered below the framework: a stored frame is one (cached) index probe, one read
    and one send. Errors are answered here too, through the same renderer as the
    framework's (:func:`app.asgi.send_error`), so nothing is looked up twice.
    Transcoding and answers too large to build whole go on to the ``wado-frames``
    route (False)."""
    if scope["method"] != "GET":
        return False
    try:
        answer = await _stored_answer(state, scope, params)
    except PictorError as exc:
        await send_error(send, exc)
        return True
    if answer is None:
        return False
    media_type, body = answer
    await send_whole(send, 200, body, [(b"content-type", media_type.encode())])
    return True


async def _stored_answer(
    state: Any, scope: Any, params: Mapping[str, str]
) -> tuple[str, bytearray] | None:
    """The stored frames' answer; None for what the route does (transcoding, large
    answers, a file replaced since it was looked up)."""
    cache: InstanceCache = state.instances
    study, series, sop = params["study"], params["series"], params["instance"]
    found = cache.peek(study, series, sop)  # a viewer's next frame: no check, no I/O
    target = Scope(study, series, sop) if found else checked_scope(study, series, sop)
    inst = found or await cache.instance(target)
    if not inst.number_of_frames:
        raise NotFound(f"{target.describe()} has no pixel data frames")
    numbers = parse_frame_list(params["frames"], inst.number_of_frames)
    chosen, as_stored = _frame_choice(inst, header(scope, b"accept"))
    if not as_stored:
        return None
    try:
        return await _stored_frames(state.store, inst, numbers, chosen)
    except FileNotFoundError:
        cache.forget(target.instance or "")  # replaced meanwhile: the route looks again
        return None


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
    if not dash or not (first_text + last_text).isdigit():
        raise RangeNotSatisfiable(f"malformed Range header {header!r}", size)
    if not first_text:  # suffix: the last N bytes
        length = min(int(last_text), size)
        if length == 0:
            raise RangeNotSatisfiable(f"Range {header!r} selects nothing", size)
        return size - length, length
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text else size - 1
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
