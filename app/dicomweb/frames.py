"""WADO-RS frames (PS3.18 10.4.1.1.4): each frame as one part, as stored (the byte
ranges recorded at ingest) or transcoded by a codec worker, with the media type of
PS3.18 Table 8.7.3-5; the hot path that answers stored frames below the framework."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping
from typing import Any

from litestar import Request
from litestar.response import Response, Stream

from app.asgi import header, send_error, send_whole
from app.codec.transcode import (
    TranscodeError,
)
from app.dicomweb.media import (
    DEFAULT_SYNTAX,
    FRAME_MEDIA_TYPES,
    Offer,
    frame_offers,
    native_pixel_syntax,
    negotiate_multipart,
)
from app.dicomweb.responses import (
    SMALL_RESPONSE,
    checked_scope,
    close_delimiter,
    multipart_response,
    multipart_stream,
    new_boundary,
    part_head,
    target_scope,
    transcode_targets,
)
from app.errors import BadRequest, NotAcceptable, NotFound, PictorError
from app.services import retrieve
from app.services.retrieve import InstanceCache, Scope, StoredInstance
from app.storage import BlobStore

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
        transcode_targets(inst),
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
    boundary = new_boundary()
    head = part_head(boundary, chosen.header())
    tail = close_delimiter(boundary)
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
