"""An in-memory :class:`~app.storage.base.BlobStore`, for unit tests: the same contract
as the file system's (``tests/unit/storage/test_storage.py`` runs both), nothing durable."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from app.storage.base import Publication, Upload


class MemoryUpload:
    def __init__(self, store: MemoryBlobStore) -> None:
        self.store = store
        self.size = 0
        self._data = bytearray()
        self._hash = hashlib.sha256()
        self.finished = False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def in_memory(self) -> memoryview | None:
        return memoryview(self._data)

    async def write(self, data: bytes | memoryview) -> None:
        self._data += data
        self._hash.update(data)
        self.size += len(data)

    async def finish(self) -> None:
        self.finished = True

    @contextmanager
    def content(self) -> Iterator[memoryview]:
        with memoryview(self._data) as view:
            yield view

    def release(self) -> None:
        pass

    def discard(self) -> None:
        self.store.uploads.discard(self)

    async def abort(self) -> None:
        self.discard()


class MemoryPublication:
    def __init__(self, upload: MemoryUpload, key: str) -> None:
        self.upload = upload
        self.key = key
        self.linked = False
        self.intent: object = None


class MemoryBlobStore:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.uploads: set[MemoryUpload] = set()
        #: keys published but not yet settled, and keys retired: what a sweep decides on
        self.pending: set[str] = set()

    def create_temp(self) -> MemoryUpload:
        upload = MemoryUpload(self)
        self.uploads.add(upload)
        return upload

    async def publish(self, items: Iterable[tuple[Upload, str]]) -> list[MemoryPublication]:
        pubs = []
        for any_upload, key in items:
            assert isinstance(any_upload, MemoryUpload), "an upload of another store"
            upload = any_upload
            pub = MemoryPublication(upload, key)
            if key not in self.blobs:
                assert upload.finished, "publish before finish"
                self.blobs[key] = bytes(upload._data)
                self.pending.add(key)
                pub.linked = True
            pubs.append(pub)
        return pubs

    async def settle(
        self,
        committed: Iterable[Publication],
        rolled_back: Iterable[Publication] = (),
        intents: Iterable[object] = (),
    ) -> None:
        done = [*committed, *rolled_back]
        assert all(isinstance(p, MemoryPublication) for p in done)
        for pub in rolled_back:
            if pub.linked:
                self.blobs.pop(pub.key, None)
        for pub in done:
            assert isinstance(pub, MemoryPublication)
            self.pending.discard(pub.key)
            pub.upload.discard()

    async def retire(self, keys: Iterable[str]) -> object:
        retired = set(keys)
        self.pending |= retired
        return retired

    async def delete_retired(self, keys: Iterable[str], intent: object) -> None:
        for key in keys:
            self.blobs.pop(key, None)
            self.pending.discard(key)
        if isinstance(intent, set):
            self.pending -= intent

    def _blob(self, key: str) -> bytes:
        try:
            return self.blobs[key]
        except KeyError:
            raise FileNotFoundError(key) from None

    async def read_into(self, key: str, targets: list[tuple[int, memoryview]]) -> None:
        self.read_into_blocking(key, targets)

    def read_into_blocking(self, key: str, targets: list[tuple[int, memoryview]]) -> None:
        blob = self._blob(key)
        for offset, view in targets:
            if offset + len(view) > len(blob):
                raise OSError(f"{key}: ends before byte {len(blob)}")
            view[:] = blob[offset : offset + len(view)]

    async def read_range(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        blob = self._blob(key)
        end = len(blob) if length is None else offset + length
        yield blob[offset:end]

    async def read(self, key: str) -> bytes:
        return self._blob(key)

    def read_blocking(self, key: str) -> bytes:
        return self._blob(key)

    async def size(self, key: str) -> int:
        return len(self._blob(key))

    async def sweep(self, referenced: Callable[[list[str]], Awaitable[set[str]]]) -> dict[str, int]:
        keys = sorted(self.pending)
        keep = await referenced(keys) if keys else set()
        removed = 0
        for key in keys:
            if key not in keep and self.blobs.pop(key, None) is not None:
                removed += 1
        self.pending.clear()
        stale = len(self.uploads)
        self.uploads.clear()
        return {"files": removed, "parts": stale}

    async def probe(self) -> int:
        return self.free_bytes()

    def free_bytes(self) -> int:
        return 1 << 40

    def open_blob(self, key: str) -> IO[bytes]:
        if key not in self.blobs:
            raise FileNotFoundError(key)
        return io.BytesIO(self.blobs[key])

    def hash_blob(self, key: str) -> tuple[int, str]:
        if key not in self.blobs:
            raise FileNotFoundError(key)
        return len(self.blobs[key]), hashlib.sha256(self.blobs[key]).hexdigest()

    def import_blob(self, key: str, source: Path | IO[bytes]) -> str:
        data = source.read_bytes() if isinstance(source, Path) else source.read()
        self.blobs[key] = data
        return hashlib.sha256(data).hexdigest()
