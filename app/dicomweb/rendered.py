"""WADO-RS rendered resources and thumbnails (PS3.18 10.4.1.1.3, 10.4.1.1.6 and 8.3.5).

``/rendered`` returns consumer images (``image/jpeg`` by default, ``image/png``,
``image/gif``) with the query parameters of PS3.18 8.3.5.1: ``window=center,width[,
function]``, ``viewport=vw,vh`` and ``quality``. Study and series targets return each
instance rendered, as parts of a multipart/related body; a frame list returns each frame.
``/thumbnail`` returns one small image of a representative frame (the middle instance of
the first series; the middle frame), cached on disk. Rendering runs in worker processes.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from litestar import Request
from litestar.response import Response, Stream

from app.asgi import header, send_error, send_whole
from app.codec.render import FORMATS, RenderOptions
from app.dicomweb.frames import parse_frame_list
from app.dicomweb.negotiation import choose
from app.dicomweb.responses import checked_scope, multipart_stream, target_scope
from app.errors import BadRequest, NotFound, PictorError
from app.services import retrieve
from app.services.retrieve import InstanceCache, Scope, StoredInstance

log = logging.getLogger("pictor")

RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")
THUMBNAIL_SIZE = (128, 128)


def render_options(request: Request[Any, Any, Any], *, thumbnail: bool = False) -> RenderOptions:
    """The request's rendering options (:func:`options_of`)."""
    return options_of(request.query_params, request.headers.get("accept"), thumbnail=thumbnail)


def options_of(
    query: Mapping[str, str], accept: str | None, *, thumbnail: bool = False
) -> RenderOptions:
    """PS3.18 8.3.5.1 query parameters; 400 naming a malformed one. An ``accept`` query
    parameter takes precedence over the Accept header (PS3.18 8.3.3.1): OHIF asks for
    thumbnails with ``?accept=image/jpeg`` and a multipart Accept header."""
    media = choose(query.get("accept") or accept, RENDERED_TYPES)
    window = None
    if "window" in query:
        parts = query["window"].split(",")
        try:
            center, width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise BadRequest("query parameter 'window' must be center,width[,function]") from None
        if not (math.isfinite(center) and math.isfinite(width)):
            raise BadRequest("query parameter 'window': center and width must be finite numbers")
        function = parts[2].strip().upper() if len(parts) > 2 else "LINEAR"
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or width <= 0:
            raise BadRequest(
                "query parameter 'window': width > 0; function LINEAR, LINEAR_EXACT or SIGMOID"
            )
        window = (center, width, function)
    viewport = THUMBNAIL_SIZE if thumbnail else None
    if "viewport" in query:
        try:
            vw, vh = (int(v) for v in query["viewport"].split(",")[:2])
        except ValueError:
            raise BadRequest("query parameter 'viewport' must be width,height in pixels") from None
        if not (0 < vw <= 8192 and 0 < vh <= 8192):
            raise BadRequest("query parameter 'viewport': width and height from 1 to 8192")
        viewport = (vw, vh)
    quality = 90
    if "quality" in query:
        try:
            quality = int(query["quality"])
        except ValueError:
            quality = 0
        if not 1 <= quality <= 100:
            raise BadRequest("query parameter 'quality' must be an integer from 1 to 100")
    return RenderOptions(media, window, viewport, quality)


#: rendered images may be kept by the client that asked (not by shared caches: access
#: control may differ between people)
CACHE_CONTROL = "private, max-age=3600"


def _image(data: bytes, media: str) -> Response[bytes]:
    return Response(data, media_type=media, headers={"Cache-Control": CACHE_CONTROL})


def _query(scope: Any) -> dict[str, str]:
    """The query string's parameters, the first value of each (as the framework's
    ``query_params.get`` gives it)."""
    found: dict[str, str] = {}
    for key, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        found.setdefault(key, value)
    return found


async def hot_rendered(
    state: Any, scope: Any, receive: Any, send: Any, params: Mapping[str, str]
) -> bool:
    """One instance or one frame rendered, below the framework: what a viewer's
    thumbnails and an EMR's image links ask for one image at a time. The instance comes
    from the per-process cache the frames use; the answer is the route's, and so are
    errors (:func:`app.asgi.send_error`). Animations and frame lists go on to the
    route (False)."""
    if scope["method"] != "GET":
        return False
    cache: InstanceCache = state.instances
    study, series, sop = params["study"], params["series"], params["instance"]
    try:
        options = options_of(_query(scope), header(scope, b"accept"))
        if options.media_type == "image/gif":
            return False  # a multi-frame instance is one animated GIF: the route's
        found = cache.peek(study, series, sop)
        target = Scope(study, series, sop) if found else checked_scope(study, series, sop)
        inst = found or await cache.instance(target)
        if not inst.number_of_frames:
            raise NotFound(f"{target.describe()} has no image to render")
        index = 0
        if "frames" in params:
            numbers = parse_frame_list(params["frames"], inst.number_of_frames)
            if len(numbers) != 1:
                return False  # several frames: a multipart answer, the route's
            index = numbers[0] - 1
        data = await retrieve.rendered(state.store, inst, index, options)
    except PictorError as exc:
        await send_error(send, exc)
        return True
    except FileNotFoundError:
        cache.forget(sop)  # replaced meanwhile: the route looks again
        return False
    except Exception as exc:  # noqa: BLE001 - answered as the framework answers a bug
        log.error("unexpected error rendering %s", scope["path"], exc_info=exc)
        await send_error(send, PictorError("internal error; the archive logged it"))
        return True
    headers = [
        (b"content-type", options.media_type.encode()),
        (b"cache-control", CACHE_CONTROL.encode()),
    ]
    await send_whole(send, 200, data, headers)
    return True


async def _pixel_instances(request: Request[Any, Any, Any]) -> list[StoredInstance]:
    """The instances of the request's target that have frames (404 if none)."""
    scope = target_scope(request)
    stored = [
        i for i in await retrieve.instances(request.app.state.pool, scope) if i.number_of_frames
    ]
    if not stored:
        raise NotFound(f"{scope.describe()} has no image to render")
    return stored


async def _render_all(
    request: Request[Any, Any, Any], stored: list[StoredInstance], frames: list[int] | None = None
) -> Response[bytes] | Stream:
    options = render_options(request)
    if options.media_type == "image/gif" and len(stored) == 1:
        # a multi-frame instance (or several of its frames) as one animated GIF
        count = stored[0].number_of_frames or 1
        indices = [n - 1 for n in frames] if frames else list(range(count))
        if len(indices) > 1:
            data = await retrieve.animated(request.app.state.store, stored[0], indices, options)
            return _image(data, options.media_type)
    targets = [(inst, n - 1) for inst in stored for n in (frames or [1])]
    if len(targets) == 1:
        inst, index = targets[0]
        data = await retrieve.rendered(request.app.state.store, inst, index, options)
        return _image(data, options.media_type)

    async def parts() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        for inst, index in targets:
            data = await retrieve.rendered(request.app.state.store, inst, index, options)
            yield options.media_type, _one(data)

    return multipart_stream(parts(), options.media_type)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def study_rendered(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return await _render_all(request, await _pixel_instances(request))


async def series_rendered(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return await _render_all(request, await _pixel_instances(request))


async def instance_rendered(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return await _render_all(request, await _pixel_instances(request))


async def frames_rendered(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    stored = await _pixel_instances(request)
    frames = parse_frame_list(request.path_params["frames"], stored[0].number_of_frames or 0)
    return await _render_all(request, stored, frames)


# -- thumbnails ---------------------------------------------------------------------------


async def _thumbnail(
    request: Request[Any, Any, Any], stored: list[StoredInstance], frame: int | None = None
) -> Response[bytes]:
    options = render_options(request, thumbnail=True)
    first_series = [i for i in stored if i.series_uid == stored[0].series_uid]
    inst = first_series[len(first_series) // 2]  # the middle image of the first series
    count = inst.number_of_frames or 1
    index = (frame - 1) if frame is not None else count // 2
    if options.window is not None or options.viewport != THUMBNAIL_SIZE or options.quality != 90:
        # only the default thumbnail is cached: a cache keyed by whatever parameters a
        # client sends would let it fill the disk (issue #13, bounded request dimensions)
        data = await retrieve.rendered(request.app.state.store, inst, index, options)
        return _image(data, options.media_type)
    settings = request.app.state.settings
    cache = Path(settings.data_dir) / "cache" / "thumbnails"
    extension = FORMATS[options.media_type].lower()
    # keyed by the stored bytes too: an instance deleted and stored again under its
    # UID with other pixels never shows the old thumbnail
    name = f"{inst.sop_instance_uid}-{inst.file_sha256[:16]}-{index}.{extension}"
    path = cache / name
    try:
        return _image(path.read_bytes(), options.media_type)
    except OSError:
        pass
    data = await retrieve.rendered(request.app.state.store, inst, index, options)
    cache.mkdir(parents=True, exist_ok=True)
    temp = cache / f".{name}.{secrets.token_hex(4)}"
    temp.write_bytes(data)
    os.replace(temp, path)  # readers see a whole thumbnail or none
    return _image(data, options.media_type)


async def study_thumbnail(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _thumbnail(request, await _pixel_instances(request))


async def series_thumbnail(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _thumbnail(request, await _pixel_instances(request))


async def instance_thumbnail(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _thumbnail(request, await _pixel_instances(request))


async def frame_thumbnail(request: Request[Any, Any, Any]) -> Response[bytes]:
    stored = await _pixel_instances(request)
    frames = parse_frame_list(request.path_params["frames"], stored[0].number_of_frames or 0)
    return await _thumbnail(request, stored, frames[0])
