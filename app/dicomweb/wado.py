"""WADO-RS instances (PS3.18 10.4.1.1.1): studies, series and instances as stored (byte
for byte), or transcoded on the fly in the codec workers (decoded to native Explicit VR
Little Endian, the default, or encoded again as RLE, JPEG-LS, JPEG 2000 or JPEG
Baseline); studies and series also as one ``application/zip`` archive, streamed. A
request for something that cannot be produced gets 406 naming what is offered.
Memory does not grow with the size of a study."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request
from litestar.response import Stream

from app.codec.transcode import (
    TranscodeError,
)
from app.dicom import deidentify
from app.dicomweb.media import (
    DEFAULT_SYNTAX,
    Offer,
    negotiate_multipart,
)
from app.dicomweb.negotiation import parse_accept
from app.dicomweb.responses import (
    multipart_stream,
    target_scope,
    transcode_targets,
)
from app.errors import BadRequest, NotAcceptable
from app.services import retrieve
from app.services.retrieve import StoredInstance
from app.storage import BlobStore

# -- instances --------------------------------------------------------------------------


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
    """The instances as stored (corrections applied), in a ZIP archive (stored entries,
    ZIP64 where needed), named ``study/series/sop.dcm``; memory holds one chunk at a time."""

    async def entries() -> AsyncIterator[tuple[str, int, AsyncIterator[bytes]]]:
        for inst in stored:
            name = f"{inst.file_key.rsplit('/', 1)[0]}/{inst.sop_instance_uid}.dcm"
            yield name, inst.file_size, retrieve.part10(store, inst)

    async for chunk in _zip(entries()):
        yield chunk


async def _zip(
    entries: AsyncIterator[tuple[str, int, AsyncIterator[bytes]]],
) -> AsyncIterator[bytes]:
    sink = _Sink()
    now = time.localtime()[:6]
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        async for name, size, chunks in entries:
            entry = zipfile.ZipInfo(name, now)
            entry.file_size = size  # a hint (ZIP64 or not); corrections add bytes
            with archive.open(entry, "w") as out:
                async for chunk in chunks:
                    out.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _deidentified(request: Request[Any, Any, Any], text: str) -> Stream:
    """``?deidentify=basic[,retain-dates][,clean-descriptors]`` (issue #17): the
    instances de-identified by PS3.15 Annex E (app.dicom.deidentify), in their stored
    transfer syntax, as multipart/related or one ZIP archive named by the new UIDs."""
    try:
        options = deidentify.parse_options(text)
    except ValueError as exc:
        raise BadRequest(f"query parameter 'deidentify': {exc}") from None
    scope = target_scope(request)
    state = request.app.state
    stored = await retrieve.instances(state.pool, scope)
    store: BlobStore = state.store
    key = deidentify.archive_key(await state.link_secret.get())
    # the first one is made before the response starts: a failure gets a status code
    first = await retrieve.deidentified(store, stored[0], key, options)

    async def made() -> AsyncIterator[tuple[StoredInstance, bytes, str]]:
        yield stored[0], *first
        for inst in stored[1:]:
            yield inst, *await retrieve.deidentified(store, inst, key, options)

    if wants_zip(request.headers.get("accept")):
        study = deidentify.new_uid(key, scope.study)

        async def entries() -> AsyncIterator[tuple[str, int, AsyncIterator[bytes]]]:
            async for inst, data, uid in made():
                series = deidentify.new_uid(key, inst.series_uid)
                yield f"{study}/{series}/{uid}.dcm", len(data), _once(data)

        return Stream(
            _zip(entries()),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{study}.zip"'},
        )

    async def parts() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        async for inst, data, _ in made():
            yield Offer("application/dicom", inst.transfer_syntax).header(), _once(data)

    return multipart_stream(parts(), "application/dicom")


async def _instances(request: Request[Any, Any, Any]) -> Stream:
    """Retrieve instances (PS3.18 10.4.1.1.1) in multipart/related: as stored, or
    transcoded in a worker to the transfer syntax the client asks for (Explicit VR
    Little Endian when it names none); or as one application/zip archive."""
    if (text := request.query_params.get("deidentify")) is not None:
        return await _deidentified(request, text)
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
        offers += [Offer("application/dicom", t) for t in transcode_targets(inst)]
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

    async def parts() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        for i, inst in enumerate(stored):
            offer = chosen[inst.sop_instance_uid]
            if offer.transfer_syntax == inst.transfer_syntax:
                yield offer.header(), retrieve.part10(store, inst)
            elif i == 0 and first is not None:
                yield offer.header(), _once(first)
            else:
                data = await convert(inst, offer.transfer_syntax)
                yield offer.header(), _once(data)

    return multipart_stream(parts(), "application/dicom")


async def retrieve_study(request: Request[Any, Any, Any]) -> Stream:
    return await _instances(request)


async def retrieve_series(request: Request[Any, Any, Any]) -> Stream:
    return await _instances(request)


async def retrieve_instance(request: Request[Any, Any, Any]) -> Stream:
    return await _instances(request)
