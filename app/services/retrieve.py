"""Retrieve: what WADO-RS (PS3.18 10.4), rendered images and C-MOVE / C-GET read of
the stored instances: their index rows (metadata stored at ingest, frame byte ranges)
and their bytes, through the blob store.

:class:`InstanceCache` keeps recently looked-up instances for the hottest request (one
frame after another of one instance), and is safe with several server processes on
several machines: every change of an instance is announced with PostgreSQL NOTIFY in
the transaction that makes it (:func:`app.index.instances.notify_changed`), and each
process drops its entry when that transaction commits. A short time-to-live bounds
staleness even if the listening connection is lost.

Delivery takes a moment after the commit, so a change a client waits for (a delete, a
correction) answers only once :meth:`InstanceCache.settle` has heard a marker sent after
it: every listening process was told of the change when this one was, and has had the
marker's round trip to act on it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

from app.codec import pool
from app.codec.render import RenderOptions, render_animation, render_frame, render_frame_bytes
from app.codec.transcode import (
    FrameMismatch,
    PixelInfo,
    encode_frame,
    encode_frame_of_instance,
    transcode_instance,
)
from app.dicom.deidentify import deidentify_part10
from app.dicom.patch import head_end, patch_head, patch_part10
from app.dicom.uids import NATIVE_SYNTAXES
from app.index import retrieve as index_retrieve
from app.index.database import INDEX_ERRORS, Listener, Pool
from app.index.instances import CHANGED_CHANNEL, STUDY_PREFIX
from app.index.retrieve import Scope, StoredInstance
from app.services.tiering import READS
from app.storage import BlobStore

#: seconds a looked-up instance serves further requests without another index probe (a
#: cine loop, a slide's tiles), and how many are kept per server process
CACHE_SECONDS = 2.0
CACHE_SIZE = 2048

#: a payload on CHANGED_CHANNEL that is not a change: :meth:`InstanceCache.settle`'s marker
SETTLE_PREFIX = "settle:"
#: seconds :meth:`InstanceCache.settle` waits for its marker at most
SETTLE_SECONDS = 1.0

__all__ = [
    "InstanceCache",
    "PixelInfo",
    "Scope",
    "StoredInstance",
    "animated",
    "deidentified",
    "encoded_frame",
    "frame_bytes",
    "instance",
    "instance_bytes",
    "instances",
    "metadata",
    "part10",
    "pixel_info",
    "rendered",
    "transcoded",
]


async def instance(pool: Pool, scope: Scope) -> StoredInstance:
    """One stored instance (404 if none)."""
    READS.note(scope.study)  # a read keeps the study in the hot tier (issue #16)
    return await index_retrieve.instance(pool, scope)


async def instances(pool: Pool, scope: Scope) -> list[StoredInstance]:
    """The stored instances of a study, series or instance, in PS3.18 10.4 order."""
    READS.note(scope.study)
    return await index_retrieve.instances(pool, scope)


async def metadata(pool: Pool, scope: Scope) -> list[tuple[bytes, str]]:
    """The DICOM JSON stored at ingest for each instance of ``scope``."""
    READS.note(scope.study)
    return await index_retrieve.metadata(pool, scope)


class InstanceCache:
    """Instances by (study, series, SOP Instance UID), for ``ttl`` seconds at most and
    until a change of the instance is announced."""

    def __init__(self, pool: Pool, ttl: float = CACHE_SECONDS, size: int = CACHE_SIZE) -> None:
        self.pool = pool
        self.ttl = ttl
        self.size = size
        self._recent: OrderedDict[tuple[str, str, str], tuple[float, StoredInstance]] = (
            OrderedDict()
        )
        self._keys: dict[str, tuple[str, str, str]] = {}
        #: counts announced changes: a lookup that overlapped one is not kept
        self._changes = 0
        self._settling: dict[str, asyncio.Future[None]] = {}
        self._listener = Listener(pool, CHANGED_CHANNEL, self.forget, on_gap=self.forget_all)

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    def forget(self, payload: str) -> None:
        """Drop what is cached of this instance, or of every instance of a study
        (``study:<UID>``): a change was announced."""
        if payload.startswith(SETTLE_PREFIX):
            waiting = self._settling.get(payload)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
            return  # another process's marker, or one given up on
        self._changes += 1
        if payload.startswith(STUDY_PREFIX):
            study = payload[len(STUDY_PREFIX) :]
            for cached in [k for k in self._recent if k[0] == study]:
                del self._recent[cached]
                self._keys.pop(cached[2], None)
            return
        key = self._keys.pop(payload, None)
        if key is not None:
            self._recent.pop(key, None)

    def forget_all(self) -> None:
        """Drop everything: announcements may have been missed (the listening
        connection was lost)."""
        self._changes += 1
        self._recent.clear()
        self._keys.clear()

    async def settle(self, timeout: float = SETTLE_SECONDS) -> bool:
        """Return once this process has heard a marker announced after the changes
        its caller committed: True then; False after ``timeout`` seconds, or at once
        when nothing is being heard (the index does not answer: then the time-to-live
        is what bounds staleness)."""
        if not self._listener.listening:
            return False
        marker = SETTLE_PREFIX + secrets.token_hex(8)
        heard = self._settling[marker] = asyncio.get_running_loop().create_future()
        try:
            await self.pool.execute("SELECT pg_notify($1, $2)", CHANGED_CHANNEL, marker)
            await asyncio.wait_for(heard, timeout)
        except (*INDEX_ERRORS, TimeoutError):
            return False
        finally:
            del self._settling[marker]
        return True

    def peek(self, study: str, series: str, instance: str) -> StoredInstance | None:
        """The cached instance, if it is (no I/O; the key was validated when cached)."""
        hit = self._recent.get((study, series, instance))
        if hit is not None and hit[0] > time.monotonic():
            READS.note(study)
            return hit[1]
        return None

    async def instance(self, scope: Scope) -> StoredInstance:
        assert scope.series is not None and scope.instance is not None
        key = (scope.study, scope.series, scope.instance)
        now = time.monotonic()
        READS.note(scope.study)
        hit = self._recent.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        changes = self._changes
        inst = await index_retrieve.instance(self.pool, scope)
        if changes != self._changes:
            return inst  # a change was announced meanwhile: this row may predate it
        self._recent[key] = (now + self.ttl, inst)
        self._keys[scope.instance] = key
        self._recent.move_to_end(key)
        while len(self._recent) > self.size:
            old, _ = self._recent.popitem(last=False)
            self._keys.pop(old[2], None)
        return inst


# -- pixels: bytes from the blob store, work in the codec pool --------------------------


def pixel_info(inst: StoredInstance) -> PixelInfo | None:
    """The image pixel attributes the index recorded at ingest (PS3.3 C.7.6.3), or
    None where one is missing (an instance indexed before they were recorded)."""
    needed = (inst.rows, inst.columns, inst.bits_allocated, inst.pixel_representation)
    if any(v is None for v in needed) or inst.photometric is None:
        return None
    assert inst.rows is not None and inst.columns is not None
    assert inst.bits_allocated is not None and inst.pixel_representation is not None
    return PixelInfo(
        rows=inst.rows,
        columns=inst.columns,
        samples=inst.samples_per_pixel or 1,
        bits_allocated=inst.bits_allocated,
        bits_stored=inst.bits_stored or inst.bits_allocated,
        pixel_representation=inst.pixel_representation,
        photometric=inst.photometric,
        planar=inst.planar_configuration == 1,
        syntax=inst.transfer_syntax,
    )


async def frame_bytes(store: BlobStore, inst: StoredInstance, number: int) -> bytes:
    """Frame ``number``'s bytes as stored: its fragments' ranges, read in one go."""
    return await frame_bytes_of(store, inst.file_key, inst.frame_ranges(number))


def _targets(ranges: list[tuple[int, int]]) -> tuple[bytearray, list[tuple[int, memoryview]]]:
    """One buffer for ``ranges`` of a blob, one after another, and where each goes in it."""
    buffer = bytearray(sum(length for _, length in ranges))
    view = memoryview(buffer)
    targets, at = [], 0
    for offset, length in ranges:
        targets.append((offset, view[at : at + length]))
        at += length
    return buffer, targets


async def frame_bytes_of(store: BlobStore, key: str, ranges: list[tuple[int, int]]) -> bytes:
    """The bytes of ``ranges`` of a blob, one after another, read in one go."""
    buffer, targets = _targets(ranges)
    await store.read_into(key, targets)
    return bytes(buffer)


async def encoded_frame(store: BlobStore, inst: StoredInstance, number: int, target: str) -> bytes:
    """Frame ``number`` (1-based) decoded and encoded in ``target`` by a codec worker,
    from the frame's own bytes and the recorded attributes; from the whole instance
    when those do not hold a decodable frame (or are not recorded)."""
    info = pixel_info(inst)
    if info is not None and inst.frame_offsets is not None:
        frame = await frame_bytes(store, inst, number)
        try:
            return await pool.run(encode_frame, frame, info, target)
        except FrameMismatch:
            pass
    return await pool.run(_encode_stored, store, inst.file_key, number - 1, target)


# Whole-instance work runs in a codec worker that reads the instance's bytes itself
# (BlobStore.read_blocking): the bytes do not cross a pipe, and the server process,
# which also answers every other request, neither reads nor copies them.


def _transcode_stored(store: BlobStore, key: str, target: str, patch: bytes | None) -> bytes:
    data = transcode_instance(store.read_blocking(key), target)
    return data if patch is None else patch_part10(data, patch)


def _patch_stored(store: BlobStore, key: str, patch: bytes) -> bytes:
    return patch_part10(store.read_blocking(key), patch)


def _render_stored(store: BlobStore, key: str, index: int, options: RenderOptions) -> bytes:
    return render_frame(store.read_blocking(key), index, options)


def _read_parts_blocking(store: BlobStore, key: str, ranges: list[tuple[int, int]]) -> bytes:
    """The bytes of ``ranges`` of a blob, one after another, read in the calling thread."""
    buffer, targets = _targets(ranges)
    store.read_into_blocking(key, targets)
    return bytes(buffer)


def _render_frame_of(
    store: BlobStore,
    key: str,
    head: int,
    ranges: list[tuple[int, int]],
    info: PixelInfo,
    index: int,
    options: RenderOptions,
) -> bytes:
    """Frame ``index`` rendered from the file's first ``head`` bytes (the header) and
    the frame's own ``ranges``; from the whole file if they do not decode as recorded."""
    both = _read_parts_blocking(store, key, [(0, head), *ranges])  # one open, one GET
    try:
        return render_frame_bytes(both[:head], both[head:], info, options)
    except FrameMismatch:
        return render_frame(store.read_blocking(key), index, options)


def _animate_stored(
    store: BlobStore, key: str, indices: list[int], options: RenderOptions
) -> bytes:
    return render_animation(store.read_blocking(key), indices, options)


def _encode_stored(store: BlobStore, key: str, index: int, target: str) -> bytes:
    return encode_frame_of_instance(store.read_blocking(key), index, target)


async def transcoded(store: BlobStore, inst: StoredInstance, target: str) -> bytes:
    """The whole instance re-encoded in ``target`` (a Part 10 file, corrections applied)."""
    return await pool.run(_transcode_stored, store, inst.file_key, target, inst.patch)


#: a native frame of at most this many pixels (a CT slice, an ultrasound frame) is
#: rendered in the server process: 0.5-1.5 ms, about what handing it to a codec worker
#: and back costs (benchmarks/README.md, rendered)
RENDER_HERE_PIXELS = 640 * 512

#: a corrected instance's header is read from this much of its file: headers are a few
#: KB; a longer one (or a deflated data set) is rewritten from the whole file
HEAD_BYTES = 256 << 10


async def part10(store: BlobStore, inst: StoredInstance) -> AsyncIterator[bytes]:
    """The instance as a Part 10 file in its stored transfer syntax: the stored bytes,
    or, for a corrected instance, its header rewritten with the corrections (in a codec
    worker) followed by the rest of the stored file (app.dicom.patch)."""
    if inst.patch is None:
        async for chunk in store.read_range(inst.file_key):
            yield chunk
        return
    length = min(inst.file_size, HEAD_BYTES)
    head = b"".join([c async for c in store.read_range(inst.file_key, 0, length)])
    end = head_end(head, whole=length == inst.file_size)
    if end is None:
        yield await pool.run(_patch_stored, store, inst.file_key, inst.patch)
        return
    yield await pool.run(patch_head, head[:end], inst.patch)
    if end < inst.file_size:
        async for chunk in store.read_range(inst.file_key, end):
            yield chunk


async def instance_bytes(store: BlobStore, inst: StoredInstance) -> bytes:
    """The whole Part 10 file :func:`part10` streams (C-MOVE / C-GET send it whole)."""
    if inst.patch is None:
        return await store.read(inst.file_key)
    return await pool.run(_patch_stored, store, inst.file_key, inst.patch)


async def deidentified(
    store: BlobStore, inst: StoredInstance, key: bytes, options: tuple[str, ...]
) -> tuple[bytes, str]:
    """The instance de-identified (PS3.15 E, app.dicom.deidentify) in a codec worker:
    the Part 10 file and its new SOP Instance UID."""
    return await pool.run(deidentify_part10, await instance_bytes(store, inst), key, options)


async def rendered(
    store: BlobStore, inst: StoredInstance, index: int, options: RenderOptions
) -> bytes:
    """Frame ``index`` (0-based) rendered for people (PS3.18 8.3.5), from the header and
    that frame's bytes only (a frame of a 2 GB multi-frame costs what a frame costs):
    a small native frame here, in the event loop (:data:`RENDER_HERE_PIXELS`), others
    by a codec worker that reads them itself; where the index has no frame ranges, or
    they do not decode as recorded, from the whole file."""
    info = pixel_info(inst)
    if info is None or not inst.frame_offsets or not 0 < inst.frame_offsets[0] <= HEAD_BYTES:
        return await pool.run(_render_stored, store, inst.file_key, index, options)
    ranges = inst.frame_ranges(index + 1)
    head = inst.frame_offsets[0]
    if info.syntax not in NATIVE_SYNTAXES or info.rows * info.columns > RENDER_HERE_PIXELS:
        return await pool.run(
            _render_frame_of, store, inst.file_key, head, ranges, info, index, options
        )
    both = await frame_bytes_of(store, inst.file_key, [(0, head), *ranges])
    try:
        return render_frame_bytes(both[:head], both[head:], info, options)
    except FrameMismatch:
        return await pool.run(_render_stored, store, inst.file_key, index, options)


async def animated(
    store: BlobStore, inst: StoredInstance, indices: list[int], options: RenderOptions
) -> bytes:
    """Frames (0-based) of a multi-frame instance as one animated GIF."""
    return await pool.run(_animate_stored, store, inst.file_key, indices, options)
