"""Backup and restore of a whole archive (issue #19): the index at one point in time
(PostgreSQL's own dump, app.index.backup) and the stored files it references, to a
directory or an S3-compatible bucket (app.storage.targets); again and again, each
time copying only the files the destination lacks.

A destination holds::

    files/<key>                          every stored file, as in the storage (kept
                                         while any backup references it)
    backups/<UTC time>/index.dump        pg_dump, custom format
    backups/<UTC time>/manifest.json     time, version, schema, [key, size, SHA-256]...
    backups/<UTC time>/link-secret       (backups made before schema 10 only) the
                                         study-link signing secret

Tokens, the study-link secret, the audit trail, the trash, rejections and corrections
are in the index. A
backup is complete once its manifest exists (written last); a restore takes the
latest complete one (or the one asked for) onto an empty data directory, checks each
file's SHA-256 on the way and then applies any newer migrations.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, Any

import msgspec

from app import __version__
from app.config import Settings
from app.index import backup as index
from app.index import tiering as index_tiering
from app.index.database import Pool
from app.storage import BlobStore, is_instance_key
from app.storage.targets import BackupTarget

log = logging.getLogger(__name__)

FORMAT = 1
#: files copied at once (reading, hashing and writing overlap)
PARALLEL = 4


class Manifest(msgspec.Struct, kw_only=True):
    format: int
    created: str
    pictor: str
    files: list[index.StoredFile]
    #: the backup has a ``link-secret`` file (made before the secret moved to the index)
    link_secret: bool = False


class BackupReport(msgspec.Struct, kw_only=True):
    name: str
    files: int
    copied: int
    bytes_copied: int
    #: files whose SHA-256 was not the one recorded at ingest (copied all the same)
    corrupt: list[str]


class RestoreReport(msgspec.Struct, kw_only=True):
    name: str
    files: int
    bytes: int


class BackupError(Exception):
    """A backup or restore that cannot be done, with the reason for the operator."""


_manifest = msgspec.json.Decoder(Manifest)


def backups(target: BackupTarget) -> list[str]:
    """The complete backups in ``target`` (those with a manifest), oldest first."""
    suffix = "/manifest.json"
    return sorted(
        n[len("backups/") : -len(suffix)]
        for n in target.listing("backups/")
        if n.endswith(suffix) and n.count("/") == 2
    )


class _Hashing:
    """A file object read through, its SHA-256 computed on the way."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data


def _copy_out(store: BlobStore, target: BackupTarget, key: str) -> str:
    with store.open_blob(key) as raw:
        reader = _Hashing(raw)
        target.put(f"files/{key}", reader)  # type: ignore[arg-type]
    return reader.digest.hexdigest()


async def _cancel(tasks: list[asyncio.Future[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def backup(
    settings: Settings, pool: Pool, store: BlobStore, target: BackupTarget
) -> BackupReport:
    """Back the archive up into ``target`` while it serves."""
    name = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    folder = f"backups/{name}/"
    corrupt: list[str] = []
    limit = asyncio.Semaphore(PARALLEL)

    async def copy(f: index.StoredFile) -> bool:
        """Copy one file unless an earlier backup did (files never change); whether."""
        if await asyncio.to_thread(target.has, f"files/{f.key}", f.size):
            return False
        async with limit:
            digest = await asyncio.to_thread(_copy_out, store, target, f.key)
        if digest != f.sha256:
            log.error("backup: %s does not have the SHA-256 recorded at ingest", f.key)
            corrupt.append(f.key)
        return True

    with tempfile.TemporaryDirectory(prefix=".backup-", dir=settings.data_dir) as work:
        dump = Path(work) / "index.dump"
        async with index.snapshot(pool) as snap:
            dumping = asyncio.ensure_future(index.dump(settings.database_url, snap.id, dump))
            copies = [asyncio.ensure_future(copy(f)) for f in snap.files]
            try:
                done = await asyncio.gather(*copies)
                await dumping
            except BaseException:
                # one copy failed (a missing bucket, say): the rest and the dump end
                # before the snapshot and the database they read go away
                await _cancel([dumping, *copies])
                raise
            files = snap.files
        with open(dump, "rb") as f:
            await asyncio.to_thread(target.put, folder + "index.dump", f)
    # the study-link secret is in the index (archive_secret) since schema 10
    manifest = Manifest(format=FORMAT, created=name, pictor=__version__, files=files)
    encoded = io.BytesIO(msgspec.json.encode(manifest))
    await asyncio.to_thread(target.put, folder + "manifest.json", encoded)  # complete now
    return BackupReport(
        name=name,
        files=len(files),
        copied=sum(done),
        bytes_copied=sum(f.size for f, d in zip(files, done) if d),
        corrupt=corrupt,
    )


def choose(target: BackupTarget, at: str | None) -> tuple[str, Manifest]:
    """The backup to restore: ``at`` (a name, or a prefix of one), else the latest."""
    names = backups(target)
    where = target.describe()
    if not names:
        raise BackupError(f"{where} holds no complete backup (no backups/*/manifest.json)")
    if at:
        names = [n for n in names if n.startswith(at)]
        if not names:
            raise BackupError(f"{where} holds no backup named {at!r} (see pictor backup --list)")
    name = names[-1]
    try:
        manifest = _manifest.decode(target.read(f"backups/{name}/manifest.json"))
    except msgspec.DecodeError as exc:
        raise BackupError(f"backup {name} has a damaged manifest: {exc}") from None
    if manifest.format != FORMAT:
        raise BackupError(f"backup {name} has format {manifest.format}; this Pictor reads {FORMAT}")
    bad = next((f.key for f in manifest.files if not is_instance_key(f.key)), None)
    if bad is not None:  # it would become a file name in the new data directory
        raise BackupError(f"backup {name} lists a file that is not a stored instance's: {bad!r}")
    return name, manifest


def check_empty(data_dir: Path) -> None:
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(
            f"the data directory {data_dir} is not empty: a restore goes onto an empty one "
            "(give another --data-dir)"
        )


async def restore_index(pool: Pool, dsn: str, target: BackupTarget, name: str) -> None:
    if not await index.is_empty(pool):
        raise BackupError("the database already holds an archive: a restore needs an empty one")
    # (a command of its own: blocking the loop while the dump downloads stalls nothing)
    with target.local(f"backups/{name}/index.dump") as path:
        await index.restore(dsn, path)


async def files_restored_hot(pool: Pool) -> None:
    """A restore puts every file into the hot storage tier: the rows say so (issue #16;
    once the migrations brought the index to this version)."""
    async with pool.acquire() as conn:
        await index_tiering.all_hot(conn)


def _copy_in(store: BlobStore, target: BackupTarget, f: index.StoredFile) -> str:
    try:
        with target.local(f"files/{f.key}") as source:
            return store.import_blob(f.key, source)
    except FileNotFoundError:
        raise BackupError(f"the backup lacks the file {f.key}") from None


async def restore_files(
    settings: Settings, store: BlobStore, target: BackupTarget, name: str, manifest: Manifest
) -> RestoreReport:
    limit = asyncio.Semaphore(PARALLEL)

    async def put(f: index.StoredFile) -> None:
        async with limit:
            digest = await asyncio.to_thread(_copy_in, store, target, f)
        if digest != f.sha256:
            raise BackupError(f"the backup's copy of {f.key} is damaged (SHA-256 differs)")

    await asyncio.gather(*(put(f) for f in manifest.files))
    if manifest.link_secret:
        data = await asyncio.to_thread(target.read, f"backups/{name}/link-secret")
        path = settings.link_secret_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    total = sum(f.size for f in manifest.files)
    return RestoreReport(name=name, files=len(manifest.files), bytes=total)
