"""S3-compatible object storage behind the blob-store port (issue #16).

Objects are the stored instances, bytes exactly as received, under the key layout of
:func:`app.storage.base.instance_key` below an optional prefix::

    <prefix>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   instances
    <prefix>/.pictor/intents/<host>-<pid>-<token>                          publish intents
    <prefix>/.pictor/health/<host>-<pid>                                   readiness probe

**Client.** obstore (Rust's ``object_store`` with a native async API) does every
request on the hot path: conditional PUTs of instances, ranged GETs of frames (several
ranges of one object in one call), streamed GETs of whole instances. Measured against
the same S3 server on loopback it spent 1.0 ms of client CPU per ranged GET where boto3
spent 3.2 ms (``benchmarks/s3_storage.py --clients``), and it needs no thread per
request. One request it cannot make is a *conditional* multipart upload (with a mode
other than overwrite it sends the whole body in one PUT, from memory), so instances too
large for memory are uploaded with boto3's multipart API in an I/O thread, completed
with ``If-None-Match: *``; those are few and large, where per-request cost is noise.

**Two-phase publish without rename.** An object cannot be renamed into place as a file
is, and an S3 object is visible as soon as its PUT (or its multipart upload's
completion) succeeds. So (DESIGN.md decision 2):

1. the upload is received into memory (most instances) or, past a size or the
   process's memory budget, into a local spool file of the node's temporary directory;
   it is analysed from there;
2. an *intent* object listing each key of the batch and the batch's token is written;
3. each object is created with ``If-None-Match: *`` (an existing key is never
   overwritten: ``linked`` False, the caller picks a versioned key) and carries the
   token in its metadata (``x-amz-meta-pictor-upload``);
4. the caller commits the index rows, then :meth:`S3BlobStore.settle` deletes the
   intent (and the objects of rows that were not committed).

After a crash, :meth:`S3BlobStore.sweep` reads each intent whose owner is gone and
deletes each listed object that no index row references and that carries the intent's
token, so an object is never left without its row for longer than until the next start,
and an object another writer created is never touched. Multipart uploads a dead process
left open are aborted. An acknowledged instance is durable: S3 acknowledges a PUT only
once the object is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import mmap
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, cast

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, NotFoundError, PreconditionError
from obstore.store import S3Store

from app.storage.base import Publication, Upload, is_instance_key, of_this_store
from app.storage.fs import _HOST, _owner_is_gone, _process_is_gone, _unlink_quietly

#: an upload up to this size is kept in memory and sent in one PUT; larger ones are
#: spooled to a local file and sent as a multipart upload of parts this size
_MEMORY_PART = 8 << 20
#: bytes of uploads one process keeps in memory until they are published; past it new
#: uploads spool to disk (memory does not grow with the number of parts in flight)
_MEMORY_BUDGET = 256 << 20
_SPOOL_CHUNK = 1 << 20
#: requests a publish or a settle has in flight at once
_CONCURRENCY = 16
_META = "pictor-upload"
_CONTENT_TYPE = "application/dicom"
_INTENTS = ".pictor/intents"
_HEALTH = ".pictor/health"
_STALE_FOREIGN_SECONDS = 24 * 3600
# obstore raises the builtin FileNotFoundError for a missing object (its NotFoundError
# class is not what a HEAD or GET of an absent key raises); both are caught
_MISSING = (NotFoundError, FileNotFoundError)


def storage_error(exc: BaseException, what: str) -> OSError:
    """An object-store error as the OSError the port's callers handle: FileNotFoundError
    for a missing object, else EIO with the first line of the client's message."""
    if isinstance(exc, FileNotFoundError):
        return exc
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OSError(errno.EIO, f"object storage: {what}: {first[:300]}")


class _Budget:
    """Bytes of in-memory uploads in this process (one event loop per process)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


_BUDGET = _Budget(_MEMORY_BUDGET)


class SpoolUpload:
    """An instance being received for object storage: in memory while it is small,
    else in a local spool file (not fsynced: durability is the object store's, at
    publish). Unlike a file upload, the bytes are kept until they are published
    (:meth:`release` keeps them); :meth:`discard` frees them."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self.size = 0
        self._hash = hashlib.sha256()
        self._memory: bytearray | None = bytearray()
        self._held = 0  # bytes taken from the budget
        self.path: Path | None = None
        self._file: IO[bytes] | None = None
        self._pending = bytearray()  # spool mode: bytes not yet written

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def in_memory(self) -> memoryview | None:
        return None if self._memory is None else memoryview(self._memory)

    async def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self._memory is not None:
            if len(self._memory) + len(data) <= _MEMORY_PART and _BUDGET.take(len(data)):
                self._held += len(data)
                self._memory += data
                return
            await self._spill()
        self._pending += data
        if len(self._pending) >= _SPOOL_CHUNK:
            chunk, self._pending = self._pending, bytearray()
            await asyncio.to_thread(self._write_out, chunk)

    async def _spill(self) -> None:
        """Move what is in memory to a spool file; from now on, bytes go there."""
        assert self._memory is not None
        self.path = self._tmp / f"{_HOST}-{os.getpid()}-{secrets.token_hex(8)}.part"
        self._file = await asyncio.to_thread(open, self.path, "xb")
        chunk, self._memory = self._memory, None
        _BUDGET.give(self._held)
        self._held = 0
        await asyncio.to_thread(self._write_out, chunk)

    def _write_out(self, chunk: bytearray) -> None:
        assert self._file is not None
        self._hash.update(chunk)  # hashlib releases the GIL: off the loop, in parallel
        self._file.write(chunk)

    async def finish(self) -> None:
        if self._memory is not None:
            await asyncio.to_thread(self._hash.update, self._memory)
            return
        chunk, self._pending = self._pending, bytearray()
        await asyncio.to_thread(self._close_spool, chunk)

    def _close_spool(self, chunk: bytearray) -> None:
        self._write_out(chunk)
        assert self._file is not None
        self._file.close()
        self._file = None

    @contextmanager
    def content(self) -> Iterator[memoryview]:
        if self._memory is not None:
            view = memoryview(self._memory)
            try:
                yield view
            finally:
                view.release()
            return
        assert self.path is not None
        if self.size == 0:
            yield memoryview(b"")
            return
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                yield view
            finally:
                view.release()

    def release(self) -> None:
        """Nothing: the bytes are still to be published (see :meth:`discard`)."""

    def discard(self) -> None:
        if self._held:
            _BUDGET.give(self._held)
            self._held = 0
        self._memory = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None:
            _unlink_quietly(self.path)

    async def abort(self) -> None:
        self.discard()


class S3Publication:
    __slots__ = ("upload", "key", "linked", "intent")

    def __init__(self, upload: SpoolUpload, key: str) -> None:
        self.upload = upload
        self.key = key
        self.linked = False
        self.intent: str | None = None


def _own(upload: Upload) -> SpoolUpload:
    return of_this_store(upload, SpoolUpload, "an upload")


def _published(pub: Publication) -> S3Publication:
    return of_this_store(pub, S3Publication, "a publication")


class S3BlobStore:
    """Instances in an S3-compatible bucket (see the module's docstring).

    ``endpoint``: the S3 API's URL (MinIO, Ceph, Garage, moto, ...), empty for AWS.
    Credentials and region come from the standard ``AWS_*`` variables, which both
    clients read themselves. The object is sent to codec worker processes
    (:meth:`read_blocking`): it holds only its settings, and each process makes its own
    clients.
    """

    def __init__(self, bucket: str, prefix: str, endpoint: str, tmp: Path) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self._clients: dict[str, Any] = {}
        self._pid = 0

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_clients"] = {}
        state["_pid"] = 0
        return state

    def _client(self, kind: str) -> Any:
        if self._pid != os.getpid():  # a new process (a codec worker): clients of its own
            self._clients = {}
            self._pid = os.getpid()
        client = self._clients.get(kind)
        if client is None:
            client = self._clients[kind] = self._make(kind)
        return client

    def _make(self, kind: str) -> Any:
        if kind == "boto3":
            import boto3  # large uploads only

            return boto3.client("s3", endpoint_url=self.endpoint or None)
        options = {"allow_http": True} if self.endpoint.startswith("http://") else {}
        return S3Store(
            self.bucket,
            prefix=self.prefix or None,
            endpoint=self.endpoint or None,
            client_options=options,  # type: ignore[arg-type]
            retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=30)},
        )

    @property
    def _store(self) -> S3Store:
        return cast(S3Store, self._client("obstore"))

    def _full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def create_temp(self) -> SpoolUpload:
        return SpoolUpload(self.tmp)

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, items: Iterable[tuple[Upload, str]]) -> list[S3Publication]:
        """Steps 2 and 3 of the module's docstring; an existing key is left alone
        (``linked`` False). On a failure nothing of the batch stays published."""
        pubs = [S3Publication(_own(u), k) for u, k in items]
        if not pubs:
            return pubs
        token = self._token()
        intent = f"{_INTENTS}/{token}"
        await self._write_intent(intent, [(p.key, token) for p in pubs])
        for pub in pubs:
            pub.intent = intent
        limit = asyncio.Semaphore(_CONCURRENCY)

        async def one(pub: S3Publication) -> None:
            async with limit:
                pub.linked = await self._create(pub, token)

        results = await asyncio.gather(*(one(p) for p in pubs), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await self._delete_all([p.key for p in pubs if p.linked] + [intent])
            for pub in pubs:
                pub.linked = False
            if isinstance(failure, OSError):
                raise failure
            raise storage_error(failure, "publish") from failure
        return pubs

    def _token(self) -> str:
        # owner host and pid in the name: the sweep leaves a live process's intents alone
        return f"{_HOST}-{os.getpid()}-{secrets.token_hex(8)}"

    async def _write_intent(self, name: str, entries: list[tuple[str, str]]) -> None:
        body = "".join(f"{key}\t{token}\n" for key, token in entries).encode()
        try:
            await obstore.put_async(self._store, name, body, use_multipart=False)
        except BaseError as exc:
            raise storage_error(exc, "writing an intent") from exc

    async def _create(self, pub: S3Publication, token: str) -> bool:
        """Create the object unless its key exists; whether it was created."""
        upload = pub.upload
        if upload.in_memory is not None:
            try:
                await obstore.put_async(
                    self._store,
                    pub.key,
                    upload.in_memory,
                    mode="create",
                    use_multipart=False,
                    attributes={"Content-Type": _CONTENT_TYPE, _META: token},
                )
            except (AlreadyExistsError, PreconditionError):
                return False
            except BaseError as exc:
                raise storage_error(exc, f"storing {pub.key}") from exc
            return True
        assert upload.path is not None
        return await asyncio.to_thread(self._multipart, upload.path, pub.key, token)

    def _multipart(self, path: Path, key: str, token: str) -> bool:
        """In an I/O thread: a multipart upload of the spool file, completed only if the
        key does not exist (``If-None-Match: *``); parts are read one at a time."""
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = self._client("boto3")
        full = self._full_key(key)
        try:
            upload_id = s3.create_multipart_upload(
                Bucket=self.bucket, Key=full, ContentType=_CONTENT_TYPE, Metadata={_META: token}
            )["UploadId"]
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(exc, f"storing {key}") from exc
        try:
            parts = []
            with open(path, "rb", buffering=0) as f:
                number = 1
                while chunk := f.read(_MEMORY_PART):
                    etag = s3.upload_part(
                        Bucket=self.bucket, Key=full, UploadId=upload_id,
                        PartNumber=number, Body=chunk,
                    )["ETag"]  # fmt: skip
                    parts.append({"ETag": etag, "PartNumber": number})
                    number += 1
            s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
            return True
        except ClientError as exc:
            self._abort_quietly(full, upload_id)
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                return False
            raise storage_error(exc, f"storing {key}") from exc
        except BaseException as exc:
            self._abort_quietly(full, upload_id)
            if isinstance(exc, BotoCoreError):
                raise storage_error(exc, f"storing {key}") from exc
            raise

    def _abort_quietly(self, full_key: str, upload_id: str) -> None:
        try:
            self._client("boto3").abort_multipart_upload(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id
            )
        except Exception:  # noqa: BLE001, S110 - the sweep aborts what is left
            pass

    async def settle(
        self,
        committed: Iterable[Publication],
        rolled_back: Iterable[Publication] = (),
        intents: Iterable[object] = (),
    ) -> None:
        """After the index transaction: delete the objects of rows that were not
        committed, then the intents; the uploads' bytes are freed."""
        kept = [_published(p) for p in committed]
        undone = [_published(p) for p in rolled_back]
        names = {str(i) for i in intents if i is not None}
        names |= {p.intent for p in kept + undone if p.intent is not None}
        await self._delete_all([p.key for p in undone if p.linked])
        for pub in kept + undone:
            pub.upload.discard()
        await self._delete_all(sorted(names))

    async def _delete_all(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            await obstore.delete_async(self._store, keys)
        except _MISSING:
            pass
        except BaseError as exc:
            raise storage_error(exc, "deleting") from exc

    async def retire(self, keys: Iterable[str]) -> str:
        """An intent for objects about to lose their index row (no token: the sweep
        deletes them whenever no row references them)."""
        name = f"{_INTENTS}/{self._token()}"
        await self._write_intent(name, [(key, "") for key in keys])
        return name

    async def delete_retired(self, keys: Iterable[str], intent: object) -> None:
        await self._delete_all(list(keys))
        if intent is not None:
            await self._delete_all([str(intent)])

    # -- reading -------------------------------------------------------------------------

    async def read_into(self, key: str, targets: list[tuple[int, memoryview]]) -> None:
        """Each buffer filled with the object's bytes at its offset: one call, ranged
        GETs of exactly those bytes (adjacent ranges are coalesced by the client)."""
        if not targets:
            return
        starts, ends = self._ranges(targets)
        try:
            chunks = await obstore.get_ranges_async(self._store, key, starts=starts, ends=ends)
        except BaseError as exc:
            raise storage_error(exc, f"reading {key}") from exc
        self._fill(key, targets, chunks)

    def read_into_blocking(self, key: str, targets: list[tuple[int, memoryview]]) -> None:
        if not targets:
            return
        starts, ends = self._ranges(targets)
        try:
            chunks = obstore.get_ranges(self._store, key, starts=starts, ends=ends)
        except BaseError as exc:
            raise storage_error(exc, f"reading {key}") from exc
        self._fill(key, targets, chunks)

    @staticmethod
    def _ranges(targets: list[tuple[int, memoryview]]) -> tuple[list[int], list[int]]:
        return [o for o, _ in targets], [o + len(view) for o, view in targets]

    @staticmethod
    def _fill(key: str, targets: list[tuple[int, memoryview]], chunks: Sequence[Any]) -> None:
        for (offset, view), chunk in zip(targets, chunks, strict=True):
            if len(chunk) != len(view):
                raise OSError(errno.EIO, f"{key}: ends before byte {offset + len(chunk)}")
            view[:] = memoryview(chunk)

    async def read_range(
        self, key: str, offset: int = 0, length: int | None = None, chunk: int = 4 << 20
    ) -> AsyncIterator[bytes]:
        """The object's bytes from ``offset`` in chunks, streamed (one GET)."""
        if length == 0:
            return
        options: dict[str, Any] = {}
        if length is not None:
            options["range"] = (offset, offset + length)
        elif offset:
            options["range"] = {"offset": offset}
        try:
            result = await obstore.get_async(self._store, key, options=options)  # type: ignore[arg-type]
            async for part in result.stream(min_chunk_size=chunk):
                yield bytes(part)
        except BaseError as exc:
            raise storage_error(exc, f"reading {key}") from exc

    async def read(self, key: str) -> bytes:
        try:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except BaseError as exc:
            raise storage_error(exc, f"reading {key}") from exc

    def read_blocking(self, key: str) -> bytes:
        try:
            return bytes(obstore.get(self._store, key).bytes())
        except BaseError as exc:
            raise storage_error(exc, f"reading {key}") from exc

    async def size(self, key: str) -> int:
        try:
            return int((await obstore.head_async(self._store, key))["size"])
        except BaseError as exc:
            raise storage_error(exc, f"reading {key}") from exc

    def open_blob(self, key: str) -> IO[bytes]:
        try:
            return cast(IO[bytes], _Reader(obstore.open_reader(self._store, key)))
        except BaseError as exc:
            raise storage_error(exc, f"reading {key}") from exc

    def import_blob(self, key: str, source: Path | IO[bytes]) -> str:
        """A restore's file or a tier move's stream, uploaded (multipart past 8 MiB,
        parts read one at a time) and hashed on the way."""
        with contextlib.ExitStack() as files:
            stream = (
                files.enter_context(open(source, "rb", buffering=0))
                if isinstance(source, Path)
                else source
            )
            digest = hashlib.sha256()

            def chunks() -> Iterator[bytes]:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
                    yield chunk

            try:
                obstore.put(
                    self._store,
                    key,
                    chunks(),
                    attributes={"Content-Type": _CONTENT_TYPE},
                    chunk_size=_MEMORY_PART,
                    max_concurrency=4,
                )
            except BaseError as exc:
                raise storage_error(exc, f"storing {key}") from exc
        return digest.hexdigest()

    def hash_blob(self, key: str) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        try:
            for part in obstore.get(self._store, key).stream(min_chunk_size=1 << 20):
                digest.update(part)
                size += len(part)
        except BaseError as exc:
            raise storage_error(exc, f"reading {key}") from exc
        return size, digest.hexdigest()

    # -- health --------------------------------------------------------------------------

    async def probe(self) -> int:
        """Raise OSError unless an object can be written and deleted in the bucket and
        the local spool directory takes files; the spool's free bytes."""
        name = f"{_HEALTH}/{_HOST}-{os.getpid()}"
        try:
            await obstore.put_async(self._store, name, b"ok", use_multipart=False)
            await obstore.delete_async(self._store, name)
        except BaseError as exc:
            raise storage_error(exc, "probe") from exc
        if not os.access(self.tmp, os.W_OK):
            raise OSError(f"{self.tmp} is not writable")
        return self.free_bytes()

    def free_bytes(self) -> int:
        """The local spool's free bytes: the bucket shows Pictor no capacity, and large
        uploads pass through the node's temporary directory."""
        stat = os.statvfs(self.tmp)
        return stat.f_bavail * stat.f_frsize

    # -- recovery ------------------------------------------------------------------------

    async def sweep(self, referenced: Callable[[list[str]], Awaitable[set[str]]]) -> dict[str, int]:
        """Start-up recovery: undo what publishes of processes that are gone left.

        Each intent of a gone owner (this host and a dead pid; another host's only after
        a day) lists keys with the token its objects carry. A listed object that no index
        row references is deleted if it carries that token (ours) or if it was retired
        (no token). Then the intents go, the node's dead spool files, and multipart
        uploads that were left open.
        """
        now = time.time()
        spools = 0
        for entry in os.scandir(self.tmp):
            if entry.name.endswith(".part") and _owner_is_gone(entry, now):
                spools += _unlink_quietly(Path(entry.path))
        intents: list[str] = []
        candidates: list[tuple[str, str]] = []
        try:
            async for batch in obstore.list(self._store, prefix=_INTENTS):
                for meta in batch:
                    name = str(meta["path"])
                    if not self._intent_is_orphan(name.rpartition("/")[2], meta, now):
                        continue
                    intents.append(name)
                    body = await (await obstore.get_async(self._store, name)).bytes_async()
                    for line in bytes(body).decode(errors="replace").splitlines():
                        key, _, token = line.partition("\t")
                        if is_instance_key(key):  # what the bucket says is input
                            candidates.append((key, token))
        except BaseError as exc:
            raise storage_error(exc, "sweep") from exc
        removed = 0
        if candidates:
            keep = await referenced(sorted({key for key, _ in candidates}))
            for key, token in candidates:
                if key in keep:
                    continue
                if token:
                    try:
                        head = await obstore.get_async(self._store, key, options={"head": True})
                    except _MISSING:
                        continue
                    except BaseError as exc:
                        raise storage_error(exc, "sweep") from exc
                    if head.attributes.get(_META) != token:
                        continue  # another writer's object under that key
                try:
                    await obstore.delete_async(self._store, key)
                    removed += 1
                except _MISSING:
                    pass
                except BaseError as exc:
                    raise storage_error(exc, "sweep") from exc
        aborted = await asyncio.to_thread(self._abort_left_uploads, {key for key, _ in candidates})
        await self._delete_all(intents)
        return {
            "parts": spools,
            "intents": len(intents),
            "unreferenced_files": removed,
            "multipart_uploads": aborted,
        }

    @staticmethod
    def _intent_is_orphan(name: str, meta: Any, now: float) -> bool:
        host, _, rest = name.partition("-")
        pid = rest.partition("-")[0]
        if host == _HOST and pid.isdigit():
            return int(pid) != os.getpid() and _process_is_gone(int(pid))
        modified = meta.get("last_modified")
        age = now - modified.timestamp() if isinstance(modified, datetime) else 0.0
        return age > _STALE_FOREIGN_SECONDS

    def _abort_left_uploads(self, keys: set[str]) -> int:
        """Abort multipart uploads to the keys of dead intents, and any older than a day
        (a bucket lifecycle rule AbortIncompleteMultipartUpload does the same)."""
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = self._client("boto3")
        wanted = {self._full_key(k) for k in keys}
        aborted = 0
        try:
            pages = s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else ""
            )
            for page in pages:
                for up in page.get("Uploads", []):
                    initiated = up.get("Initiated")
                    age = (
                        (datetime.now(UTC) - initiated).total_seconds()
                        if isinstance(initiated, datetime)
                        else 0.0
                    )
                    if up["Key"] in wanted or age > _STALE_FOREIGN_SECONDS:
                        self._abort_quietly(up["Key"], up["UploadId"])
                        aborted += 1
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(exc, "sweep") from exc
        return aborted


class _Reader:
    """obstore's readable file as the file object a backup copies from."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def read(self, size: int = -1) -> bytes:
        return bytes(self._inner.read(size if size >= 0 else None))

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
