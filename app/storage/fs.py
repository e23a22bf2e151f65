"""Filesystem blob store with a crash-safe two-phase publish.

Layout under the data directory::

    storage/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   stored files
    tmp/<host>-<pid>-<token>.part                                         uploads in flight
    tmp/<host>-<pid>-<token>.intent -> storage/...                        publish intents

A file is published in this order (DESIGN.md, decision 2):

1. the upload streams into ``tmp/*.part``; once complete, the part is fsynced (in an
   I/O thread, while the next part streams in);
2. an *intent* (a small file listing each part and its final key, one per batch) is
   written and fsynced, with ``tmp/``;
3. the part is hard-linked to its final name and the directory fsynced;
4. the caller commits the index row, then :meth:`FileBlobStore.release` drops the part and
   the intent.

After a crash, :meth:`FileBlobStore.sweep` finds each intent left by a process that is
gone and deletes its target unless an index row references it, so a file is visible
only with its row, and no half-written file ever has a final name. Replacing a file
uses the same mechanism: the old file gets an intent before the row moves away from it.

The fsyncs of a batch's intent and directories are issued once per batch; acknowledged
instances are durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from app.storage.base import Publication, Upload, of_this_store

_HOST = socket.gethostname().replace("-", "_")
_PART_BUFFER = 4 << 20  # one in-memory buffer per part being received
_BLOCK = 4096  # direct I/O alignment (covers 512-byte and 4K logical blocks)
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_STALE_FOREIGN_PART_SECONDS = 24 * 3600


def copy_durably(source: Path | IO[bytes], target: Path) -> str:
    """Copy ``source`` (a file, or what a file object reads) to ``target`` through a
    temporary name beside it (fsynced, then renamed, the directory fsynced): ``target``
    is complete or absent. The SHA-256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    digest = hashlib.sha256()
    try:
        with contextlib.ExitStack() as files:
            src = (
                files.enter_context(open(source, "rb", buffering=0))
                if isinstance(source, Path)
                else source
            )
            dst = files.enter_context(open(temp, "wb", buffering=0))
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
            os.fsync(dst.fileno())
        os.replace(temp, target)
    except BaseException:
        _unlink_quietly(temp)
        raise
    _fsync_path(target.parent, directory=True)
    return digest.hexdigest()


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _AlignedBuffers:
    """Reusable page-aligned buffers for direct I/O (kept faulted-in between uploads)."""

    def __init__(self, size: int, keep: int = 16) -> None:
        self.size = size
        self.keep = keep
        self._free: list[mmap.mmap] = []

    def take(self) -> mmap.mmap:
        return self._free.pop() if self._free else mmap.mmap(-1, self.size)

    def give(self, buf: mmap.mmap) -> None:
        if len(self._free) < self.keep:
            self._free.append(buf)
            return
        try:
            buf.close()
        except BufferError:
            pass  # a view is still alive somewhere; the GC frees the map later


_BUFFERS = _AlignedBuffers(_PART_BUFFER)


class TempBlob:
    """An upload being written to ``tmp/``; becomes a stored file through publish.

    Data is gathered in a page-aligned buffer and written with ``O_DIRECT`` from a
    thread, a buffer at a time: the archive's incoming stream does not churn the page
    cache (on this class of machine, copying into fresh page-cache pages was the largest
    single cost of ingest), and a part that fits in the buffer (most instances) can be
    analysed from memory. Where the filesystem refuses ``O_DIRECT``, writes are
    ordinary. The SHA-256 of the content is computed as it streams.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._hash = hashlib.sha256()
        self._buf: mmap.mmap | None = _BUFFERS.take()
        self._used = 0  # bytes in the buffer not yet written
        self._fd: int | None = None  # opened by the first write, in the I/O thread
        self._direct = _O_DIRECT != 0
        self._pending: asyncio.Future[None] | None = None  # a full buffer being written
        self._spilled = False  # some content left the buffer for the file

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def in_memory(self) -> memoryview | None:
        """The whole content while it is still in the buffer (it fit; not released)."""
        if self._buf is None or self._spilled:
            return None
        return memoryview(self._buf)[: self.size]

    async def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        view = memoryview(data)
        while view:
            assert self._buf is not None
            n = min(len(view), _PART_BUFFER - self._used)
            self._buf[self._used : self._used + n] = view[:n]
            self._used += n
            view = view[n:]
            if self._used == _PART_BUFFER:
                # double buffering: a full buffer is written in the I/O thread while the
                # next one fills; at most one write is in flight, so order is kept
                if self._pending is not None:
                    await self._pending
                full, self._buf, self._used = self._buf, _BUFFERS.take(), 0
                self._spilled = True
                self._pending = asyncio.ensure_future(
                    asyncio.to_thread(self._write_out, full, _PART_BUFFER, final=False)
                )

    async def finish(self) -> None:
        """All bytes received: write what is buffered, fsync and close the file."""
        if self._pending is not None:
            await self._pending
            self._pending = None
        assert self._buf is not None
        await asyncio.to_thread(self._write_out, self._buf, self._used, final=True)
        self._used = 0

    def _write_out(self, buf: mmap.mmap, used: int, *, final: bool) -> None:
        """In an I/O thread: hash and write ``used`` bytes of ``buf`` (and finish the file).

        Creating the file, hashing (hashlib releases the GIL), writing, truncating and
        fsyncing all happen here, off the event loop and in parallel with it.
        """
        if self._fd is None:
            try:
                self._fd = os.open(self.path, _CREATE | _O_DIRECT, 0o640)
            except OSError:
                self._fd = os.open(self.path, _CREATE, 0o640)
                self._direct = False
        out = memoryview(buf)
        try:
            self._hash.update(out[:used])
            length = used
            if final and self._direct and used % _BLOCK:
                # direct I/O writes whole blocks: pad the last one, then cut the file
                length = -(-used // _BLOCK) * _BLOCK
                out[used:length] = bytes(length - used)
            done = 0
            while done < length:
                try:
                    done += os.write(self._fd, out[done:length])
                except OSError as exc:
                    if not self._direct or exc.errno != errno.EINVAL:
                        raise
                    # the filesystem took O_DIRECT at open but refuses it for writes
                    flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
                    fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
                    self._direct = False
                    length = used
        finally:
            out.release()
        if not final:
            _BUFFERS.give(buf)
            return
        if length != used:
            os.ftruncate(self._fd, self.size)
        # durable now, while the next part streams in, rather than at publish
        os.fsync(self._fd)
        self._close()

    @contextmanager
    def content(self) -> Iterator[memoryview]:
        """The whole content (after :meth:`finish`): the buffer when it all fit, else the
        file mapped read-only."""
        if (view := self.in_memory) is not None:
            yield view
            return
        with open(self.path, "rb") as f:
            if self.size == 0:
                yield memoryview(b"")
                return
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            view = memoryview(mapped)
            try:
                yield view
            finally:
                # an exception raised while the content was read (a rejected instance)
                # keeps slices of it alive in its traceback: then the map is unmapped
                # when they go, and the exception, not a BufferError, is what surfaces
                for close in (view.release, mapped.close):
                    try:
                        close()
                    except BufferError:
                        pass

    def release(self) -> None:
        """Give the buffer back; the content is then read from the file."""
        if self._buf is not None:
            _BUFFERS.give(self._buf)
            self._buf = None

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Delete the temp file (no write may be in flight: see :meth:`abort`)."""
        self._close()
        self.release()
        _unlink_quietly(self.path)

    async def abort(self) -> None:
        """Abandon an upload mid-way: let an in-flight write end, then delete the file."""
        if self._pending is not None:
            try:
                await self._pending
            except OSError:
                pass  # the file is being thrown away anyway
            self._pending = None
        self.discard()


class FilePublication:
    """The outcome of publishing one temp file under one key."""

    __slots__ = ("temp", "key", "linked", "intent")

    def __init__(self, temp: TempBlob, key: str) -> None:
        self.temp = temp
        self.key = key
        self.linked = False  # False: the key already existed (see FileBlobStore.publish)
        self.intent: Path | None = None


def _own(upload: Upload) -> TempBlob:
    return of_this_store(upload, TempBlob, "an upload")


def _published(pub: Publication) -> FilePublication:
    return of_this_store(pub, FilePublication, "a publication")


def _intent(intent: object) -> Path | None:
    assert intent is None or isinstance(intent, Path)
    return intent


_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)


class FileBlobStore:
    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self._root = str(root)
        self.tmp = tmp
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)

    async def probe(self) -> int:
        """Raises OSError unless a new file can be created, synced and removed in the
        temporary directory and the storage directory is writable; the free bytes."""
        return await asyncio.to_thread(self._probe)

    def _probe(self) -> int:
        probe = self.tmp / f"{_HEALTH_PREFIX}{os.getpid()}"
        try:
            with open(probe, "wb") as f:
                f.write(b"ok")
                os.fsync(f.fileno())
        finally:  # a probe that failed half-way (disk full) leaves nothing behind
            _unlink_quietly(probe)
        if not os.access(self.root, os.W_OK):
            raise OSError(f"{self.root} is not writable")
        return self.free_bytes()

    def free_bytes(self) -> int:
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def open_blob(self, key: str) -> IO[bytes]:
        return open(self.path(key), "rb", buffering=0)  # noqa: SIM115 - the caller closes

    def import_blob(self, key: str, source: Path | IO[bytes]) -> str:
        return copy_durably(source, self.path(key))

    def hash_blob(self, key: str) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        with open(self.path(key), "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key

    def create_temp(self) -> TempBlob:
        return TempBlob(self._temp_name("part"))

    def _temp_name(self, kind: str) -> Path:
        # owner host and pid in the name: the sweep leaves a live process's files alone
        return self.tmp / f"{_HOST}-{os.getpid()}-{secrets.token_hex(8)}.{kind}"

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, items: Iterable[tuple[Upload, str]]) -> list[FilePublication]:
        """Make each temp file durable and visible under its key (steps 1-3 above).

        A key that already exists is left alone and reported with ``linked=False``; the
        caller decides (identical duplicate, or pick a versioned key and retry).
        """
        pubs = [FilePublication(_own(t), k) for t, k in items]
        if not pubs:
            return pubs
        return await asyncio.to_thread(self._publish_sync, pubs)

    def _publish_sync(self, pubs: list[FilePublication]) -> list[FilePublication]:
        # 1. data durable: each part was fsynced when it was finished (TempBlob.finish)
        # 2. one intent for the batch: "<part>\t<key>" lines, durable before any link
        intent = self._write_intent([(pub.temp.path.name, pub.key) for pub in pubs])
        # 3. link into place, then make the directory entries durable
        dirs: set[Path] = set()
        try:
            for pub in pubs:
                pub.intent = intent
                final = self.path(pub.key)
                final.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(pub.temp.path, final)
                    pub.linked = True
                    dirs.add(final.parent)
                except FileExistsError:
                    pub.linked = False
            for d in dirs:
                # new series/study directories must themselves be durable in their parents
                _fsync_path(d, directory=True)
                _fsync_path(d.parent, directory=True)
        except OSError:
            # a new directory entry can fail too (the disk is full): unpublish the batch
            for pub in pubs:
                if pub.linked:
                    _unlink_quietly(self.path(pub.key))
                    pub.linked = False
            _unlink_quietly(intent)
            raise
        return pubs

    def _write_intent(self, entries: list[tuple[str, str]]) -> Path:
        path = self._temp_name("intent")
        fd = os.open(path, _CREATE, 0o640)
        try:
            data = "".join(f"{part}\t{key}\n" for part, key in entries).encode()
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write of an intent")
            os.fsync(fd)
            _fsync_path(self.tmp, directory=True)
        except OSError:
            _unlink_quietly(path)  # (disk full) no intent half-written
            raise
        finally:
            os.close(fd)
        return path

    async def settle(
        self,
        committed: Iterable[Publication],
        rolled_back: Iterable[Publication] = (),
        intents: Iterable[object] = (),
    ) -> None:
        """After the index transaction: drop temps and intents of committed files, and
        unpublish those whose rows were not committed. ``intents``: more intents to drop
        (of an earlier publish attempt)."""
        await asyncio.to_thread(
            self._settle_sync,
            [_published(p) for p in committed],
            [_published(p) for p in rolled_back],
            {_intent(i) for i in intents},
        )

    def _settle_sync(
        self,
        committed: list[FilePublication],
        rolled_back: list[FilePublication],
        intents: set[Path | None],
    ) -> None:
        for pub in rolled_back:
            if pub.linked:
                _unlink_quietly(self.path(pub.key))
        for pub in committed + rolled_back:
            pub.temp.discard()
            intents.add(pub.intent)
        for intent in intents:
            if intent is not None:
                _unlink_quietly(intent)

    async def retire(self, keys: Iterable[str]) -> Path:
        """Record an intent for files about to lose their index row (replacement)."""
        return await asyncio.to_thread(self._write_intent, [("", key) for key in keys])

    async def delete_retired(self, keys: Iterable[str], intent: object) -> None:
        intent = _intent(intent)

        def run() -> None:
            for key in keys:
                _unlink_quietly(self.path(key))
            if intent is not None:
                _unlink_quietly(intent)

        await asyncio.to_thread(run)

    # -- reading -------------------------------------------------------------------------

    async def read(self, key: str) -> bytes:
        return await asyncio.to_thread(self.read_blocking, key)

    def read_blocking(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    async def size(self, key: str) -> int:
        return (await asyncio.to_thread(os.stat, self.path(key))).st_size

    def _read_into(self, key: str, targets: list[tuple[int, memoryview]], flags: int) -> bool:
        fd = os.open(f"{self._root}/{key}", os.O_RDONLY)  # str: no Path per frame request
        try:
            for offset, view in targets:
                done = 0
                while done < len(view):
                    n = os.preadv(fd, [view[done:]], offset + done, flags)
                    if n == 0:
                        raise OSError(errno.EIO, f"{key}: ends before byte {offset + done}")
                    if flags and n != len(view) - done:
                        return False  # partly cached: the thread reads it all
                    done += n
            return True
        except BlockingIOError:
            return False  # not in the page cache
        finally:
            os.close(fd)

    def read_into_blocking(self, key: str, targets: list[tuple[int, memoryview]]) -> None:
        self._read_into(key, targets, 0)

    async def read_into(self, key: str, targets: list[tuple[int, memoryview]]) -> None:
        """Fill each buffer with the bytes of the file at its offset (frames, straight
        into the response body). In the event loop when the page cache holds them
        (``preadv`` with ``RWF_NOWAIT``, Linux 4.14+, never waits for the disk), else in
        one trip to an I/O thread. Callers keep the total small (a few MB)."""
        if _RWF_NOWAIT:
            try:
                if self._read_into(key, targets, _RWF_NOWAIT):
                    return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._read_into, key, targets, 0)

    async def read_range(
        self, key: str, offset: int = 0, length: int | None = None, chunk: int = 4 << 20
    ) -> AsyncIterator[bytes]:
        """The file's bytes from ``offset`` (``length`` of them, or to the end) in chunks:
        each read in the event loop when the page cache holds it (``RWF_NOWAIT``), else in
        an I/O thread. One descriptor for the whole range."""
        loop = asyncio.get_running_loop()
        fd = await loop.run_in_executor(None, os.open, self.path(key), os.O_RDONLY)
        try:
            # to the end: the file's size bounds the buffers (a 4 MB buffer for a 300 KB
            # file cost a 4 MB memset, a partial non-blocking read and a thread trip)
            end = os.fstat(fd).st_size if length is None else offset + length
            position = offset
            while position < end:
                size = min(chunk, end - position)
                buffer = bytearray(size)
                n = self._nowait_read(fd, buffer, position)
                if n is None:
                    n = await loop.run_in_executor(None, os.preadv, fd, [buffer], position)
                if n == 0:
                    break
                position += n
                yield bytes(buffer) if n == size else bytes(buffer[:n])
        finally:
            os.close(fd)

    @staticmethod
    def _nowait_read(fd: int, buffer: bytearray, position: int) -> int | None:
        """Bytes read without waiting for the disk, or None (not cached, or only part)."""
        if not _RWF_NOWAIT:
            return None
        try:
            n = os.preadv(fd, [buffer], position, _RWF_NOWAIT)
        except OSError:
            return None
        return n if n == len(buffer) else None

    # -- recovery ------------------------------------------------------------------------

    async def sweep(self, referenced: Callable[[list[str]], Awaitable[set[str]]]) -> dict[str, int]:
        """Start-up recovery: undo every publish that a process which is gone left open.

        An intent line names a part and the key it was linked to. The key's file is
        deleted when no index row references it and it is that part's file (same inode),
        or, for retired files (no part), whenever no row references it.
        """
        now = time.time()
        candidates: list[tuple[Path, Path | None, str]] = []
        intents: list[Path] = []
        parts: list[Path] = []
        health_files = 0
        for entry in os.scandir(self.tmp):
            if entry.name.startswith(_HEALTH_PREFIX):
                pid = entry.name[len(_HEALTH_PREFIX) :]
                if pid.isdigit() and _process_is_gone(int(pid)):
                    health_files += _unlink_quietly(Path(entry.path))
                continue
            if not _owner_is_gone(entry, now):
                continue
            path = Path(entry.path)
            if entry.name.endswith(".intent"):
                intents.append(path)
                for line in path.read_text(errors="replace").splitlines():
                    part, _, key = line.partition("\t")
                    if key and ".." not in key:
                        candidates.append((path, self.tmp / part if part else None, key))
            elif entry.name.endswith(".part"):
                parts.append(path)
        removed_files = 0
        if candidates:
            keep = await referenced(sorted({key for _, _, key in candidates}))
            for _, part_path, key in candidates:
                final = self.path(key)
                if key in keep or not final.exists():
                    continue
                if part_path is not None and not (
                    part_path.exists() and os.path.samefile(part_path, final)
                ):
                    continue  # linked by someone else, or already settled
                if _unlink_quietly(final):
                    removed_files += 1
        for path in parts + intents:
            _unlink_quietly(path)
        return {
            "parts": len(parts),
            "intents": len(intents),
            "unreferenced_files": removed_files,
            "health_probes": health_files,
        }


#: the readiness probe's file, ``.health-<pid>``
_HEALTH_PREFIX = ".health-"


def _owner_is_gone(entry: os.DirEntry[str], now: float) -> bool:
    host, _, rest = entry.name.partition("-")
    pid_text = rest.partition("-")[0]
    if host != _HOST or not pid_text.isdigit():
        # another node's upload (shared storage): only when clearly stale
        return now - entry.stat().st_mtime > _STALE_FOREIGN_PART_SECONDS
    return _process_is_gone(int(pid_text))


def _process_is_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)  # a killed process nobody has reaped yet is gone too


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _unlink_quietly(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
