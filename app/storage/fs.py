"""Filesystem blob store with a crash-safe two-phase publish.

Layout under the data directory::

    storage/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   stored files
    tmp/<host>-<pid>-<token>.part                                         uploads in flight
    tmp/<token>.intent -> storage/...                                     publish intents

A file is published in this order (DESIGN.md, decision 2):

1. the upload streams into ``tmp/*.part``; the part is fsynced;
2. an *intent* (a symlink naming the final path) is created and ``tmp/`` fsynced;
3. the part is hard-linked to its final name and the directory fsynced;
4. the caller commits the index row, then :meth:`FileBlobStore.release` drops the part and
   the intent.

After a crash, :meth:`FileBlobStore.sweep` finds each remaining intent and deletes its
target unless an index row references it, so a file is visible only with its row, and no
half-written file ever has a final name. Replacing a file uses the same mechanism: the
old file gets an intent before the row moves away from it.

The fsyncs of a batch are issued together so the filesystem can commit them as one
journal transaction; acknowledged instances are durable.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiofiles
import aiofiles.os

_HOST = socket.gethostname().replace("-", "_")
_WRITE_BUFFER = 1 << 20
_STALE_FOREIGN_PART_SECONDS = 24 * 3600


def instance_key(study_uid: str, series_uid: str, sop_uid: str, version: str = "") -> str:
    """The storage key of an instance: a path a person can find by UID.

    UIDs are validated (digits and dots only, PS3.5 9.1) before they reach this function,
    so they are safe path components.
    """
    suffix = f".{version}" if version else ""
    return f"{study_uid}/{series_uid}/{sop_uid}{suffix}.dcm"


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TempBlob:
    """An upload being written to ``tmp/``; becomes a stored file through publish."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._file: object | None = None
        self._buffer = bytearray()

    async def open(self) -> None:
        self._file = await aiofiles.open(self.path, "wb", buffering=0)

    async def write(self, data: bytes | memoryview) -> None:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= _WRITE_BUFFER:
            await self._flush()

    async def _flush(self) -> None:
        if self._buffer:
            await self._file.write(bytes(self._buffer))  # type: ignore[attr-defined]
            self._buffer.clear()

    async def finish(self) -> None:
        """All bytes written: flush and close (fsync happens at publish, batched)."""
        await self._flush()
        await self._file.close()  # type: ignore[attr-defined]
        self._file = None

    async def discard(self) -> None:
        if self._file is not None:
            try:
                await self._file.close()  # type: ignore[attr-defined]
            finally:
                self._file = None
        try:
            await aiofiles.os.remove(self.path)
        except FileNotFoundError:
            pass


class Publication:
    """The outcome of publishing one temp file under one key."""

    __slots__ = ("temp", "key", "linked", "intent")

    def __init__(self, temp: TempBlob, key: str) -> None:
        self.temp = temp
        self.key = key
        self.linked = False  # False: the key already existed (see FileBlobStore.publish)
        self.intent: Path | None = None


class FileBlobStore:
    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key

    async def create_temp(self) -> TempBlob:
        temp = TempBlob(self.tmp / f"{_HOST}-{os.getpid()}-{secrets.token_hex(8)}.part")
        await temp.open()
        return temp

    async def adopt_file(self, source: Path) -> TempBlob:
        """A temp copy of an existing file (for import), made without reading it in Python."""
        temp = TempBlob(self.tmp / f"{_HOST}-{os.getpid()}-{secrets.token_hex(8)}.part")
        await asyncio.to_thread(_copy_file, source, temp.path)
        temp.size = temp.path.stat().st_size
        return temp

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, items: Iterable[tuple[TempBlob, str]]) -> list[Publication]:
        """Make each temp file durable and visible under its key (steps 1-3 above).

        A key that already exists is left alone and reported with ``linked=False``; the
        caller decides (identical duplicate, or pick a versioned key and retry).
        """
        pubs = [Publication(t, k) for t, k in items]
        if not pubs:
            return pubs
        return await asyncio.to_thread(self._publish_sync, pubs)

    def _publish_sync(self, pubs: list[Publication]) -> list[Publication]:
        # 1. data durable: fsync the parts (one journal commit for the whole batch)
        _parallel(lambda p: _fsync_path(p.temp.path), pubs)
        # 2. intents durable
        for pub in pubs:
            pub.intent = self.tmp / f"{secrets.token_hex(8)}.intent"
            os.symlink(self.path(pub.key), pub.intent)
        _fsync_path(self.tmp, directory=True)
        # 3. link into place, then make the directory entries durable
        dirs: set[Path] = set()
        for pub in pubs:
            final = self.path(pub.key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(pub.temp.path, final)
                pub.linked = True
                dirs.add(final.parent)
            except FileExistsError:
                pub.linked = False
                os.unlink(pub.intent)
                pub.intent = None
        for d in dirs:
            # new series/study directories must themselves be durable in their parents
            _fsync_path(d, directory=True)
            _fsync_path(d.parent, directory=True)
        return pubs

    async def release(self, pubs: Iterable[Publication]) -> None:
        """After the index commit: the files are referenced; drop temps and intents."""
        await asyncio.to_thread(self._release_sync, list(pubs))

    def _release_sync(self, pubs: list[Publication]) -> None:
        for pub in pubs:
            _unlink_quietly(pub.temp.path)
            if pub.intent is not None:
                _unlink_quietly(pub.intent)

    async def rollback(self, pubs: Iterable[Publication]) -> None:
        """The index commit failed: unpublish what this batch linked."""
        await asyncio.to_thread(self._rollback_sync, list(pubs))

    def _rollback_sync(self, pubs: list[Publication]) -> None:
        for pub in pubs:
            if pub.linked:
                _unlink_quietly(self.path(pub.key))
            _unlink_quietly(pub.temp.path)
            if pub.intent is not None:
                _unlink_quietly(pub.intent)

    async def retire(self, keys: Iterable[str]) -> list[Path]:
        """Record intents for files about to lose their index row (replacement)."""
        return await asyncio.to_thread(self._retire_sync, list(keys))

    def _retire_sync(self, keys: list[str]) -> list[Path]:
        intents = []
        for key in keys:
            intent = self.tmp / f"{secrets.token_hex(8)}.intent"
            os.symlink(self.path(key), intent)
            intents.append(intent)
        if intents:
            _fsync_path(self.tmp, directory=True)
        return intents

    async def delete_retired(self, keys: Iterable[str], intents: Iterable[Path]) -> None:
        def run() -> None:
            for key in keys:
                _unlink_quietly(self.path(key))
            for intent in intents:
                _unlink_quietly(intent)

        await asyncio.to_thread(run)

    # -- reading -------------------------------------------------------------------------

    async def read_range(
        self, key: str, offset: int = 0, length: int | None = None, chunk: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        async with aiofiles.open(self.path(key), "rb") as f:
            await f.seek(offset)
            remaining = length
            while remaining is None or remaining > 0:
                n = chunk if remaining is None else min(chunk, remaining)
                data = await f.read(n)
                if not data:
                    break
                if remaining is not None:
                    remaining -= len(data)
                yield data

    # -- recovery ------------------------------------------------------------------------

    async def sweep(self, referenced: Callable[[list[str]], Awaitable[set[str]]]) -> dict[str, int]:
        """Start-up recovery: finish or undo every publish a crash interrupted."""
        intents: list[tuple[Path, str]] = []
        removed_parts = 0
        now = time.time()
        for entry in os.scandir(self.tmp):
            path = Path(entry.path)
            if entry.name.endswith(".intent"):
                try:
                    target = Path(os.readlink(path))
                    key = str(target.relative_to(self.root))
                except (OSError, ValueError):
                    _unlink_quietly(path)
                    continue
                intents.append((path, key))
            elif entry.name.endswith(".part") and _part_is_abandoned(entry, now):
                _unlink_quietly(path)
                removed_parts += 1
        removed_files = 0
        if intents:
            keep = await referenced([k for _, k in intents])
            for intent, key in intents:
                if key not in keep:
                    if _unlink_quietly(self.path(key)):
                        removed_files += 1
                _unlink_quietly(intent)
        return {"parts": removed_parts, "unreferenced_files": removed_files}


def _part_is_abandoned(entry: os.DirEntry[str], now: float) -> bool:
    host, _, rest = entry.name.partition("-")
    pid_text = rest.partition("-")[0]
    if host != _HOST or not pid_text.isdigit():
        # another node's upload (shared storage): only when clearly stale
        return now - entry.stat().st_mtime > _STALE_FOREIGN_PART_SECONDS
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _unlink_quietly(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _copy_file(source: Path, dest: Path) -> None:
    with open(source, "rb") as src, open(dest, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        copied = 0
        while copied < size:
            try:
                n = os.copy_file_range(src.fileno(), dst.fileno(), size - copied)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                src.seek(copied)
                dst.seek(copied)
                while data := src.read(1 << 20):
                    dst.write(data)
                return
            if n == 0:
                break
            copied += n


def _parallel(fn: Callable[[Publication], None], items: list[Publication]) -> None:
    """Run blocking calls (fsyncs) side by side so the kernel can group them."""
    if len(items) == 1:
        fn(items[0])
        return
    list(_FSYNC_POOL.map(fn, items))


_FSYNC_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pictor-fsync")
