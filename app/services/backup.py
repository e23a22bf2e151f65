"""Backup and restore of a whole archive (issue #19): the index at one point in time
(PostgreSQL's own dump, app.index.backup) and the stored files it references, to a
directory; again and again, each time copying only the files the destination lacks.

A destination holds::

    files/<key>                          every stored file, as in the storage (kept
                                         while any backup references it)
    backups/<UTC time>/index.dump        pg_dump, custom format
    backups/<UTC time>/manifest.json     time, version, schema, [key, size, SHA-256]...
    backups/<UTC time>/link-secret       the study-link signing secret, if generated

Tokens, the audit trail, the trash, rejections and corrections are in the index. A
backup is complete once its manifest exists (written last); a restore takes the
latest complete one (or the one asked for) onto an empty data directory, checks each
file's SHA-256 on the way and then applies any newer migrations.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import shutil
from pathlib import Path

import msgspec

from app import __version__
from app.config import Settings
from app.index import backup as index
from app.index.database import Pool
from app.storage import BlobStore

log = logging.getLogger(__name__)

FORMAT = 1
#: files copied at once (reading, hashing and writing overlap)
PARALLEL = 4


class Manifest(msgspec.Struct, kw_only=True):
    format: int
    created: str
    pictor: str
    files: list[index.StoredFile]
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


def backups(dest: Path) -> list[str]:
    """The complete backups in ``dest``, oldest first."""
    root = dest / "backups"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file())


async def backup(settings: Settings, pool: Pool, store: BlobStore, dest: Path) -> BackupReport:
    """Back the archive up into ``dest`` while it serves."""
    name = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    folder = dest / "backups" / name
    folder.mkdir(parents=True)
    files_dir = dest / "files"
    corrupt: list[str] = []
    limit = asyncio.Semaphore(PARALLEL)

    async def copy(f: index.StoredFile) -> bool:
        """Copy one file unless an earlier backup did (files never change); whether."""
        target = files_dir / f.key
        if target.is_file() and target.stat().st_size == f.size:
            return False
        async with limit:
            digest = await asyncio.to_thread(store.export_blob, f.key, target)
        if digest != f.sha256:
            log.error("backup: %s does not have the SHA-256 recorded at ingest", f.key)
            corrupt.append(f.key)
        return True

    async with index.snapshot(pool) as snap:
        dumping = asyncio.ensure_future(
            index.dump(settings.database_url, snap.id, folder / "index.dump")
        )
        done = await asyncio.gather(*(copy(f) for f in snap.files))
        await dumping
        files = snap.files
    copied = sum(done)
    bytes_copied = sum(f.size for f, d in zip(files, done) if d)
    secret = settings.link_secret_path
    if not settings.link_secret and secret.is_file():
        shutil.copy2(secret, folder / "link-secret")
    manifest = Manifest(
        format=FORMAT,
        created=name,
        pictor=__version__,
        files=files,
        link_secret=(folder / "link-secret").is_file(),
    )
    _write_durably(folder / "manifest.json", msgspec.json.encode(manifest))  # complete now
    return BackupReport(
        name=name, files=len(files), copied=copied, bytes_copied=bytes_copied, corrupt=corrupt
    )


def _write_durably(path: Path, data: bytes) -> None:
    temp = path.with_name(path.name + ".part")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def choose(src: Path, at: str | None) -> tuple[str, Manifest]:
    """The backup to restore: ``at`` (a name, or a prefix of one), else the latest."""
    names = backups(src)
    if not names:
        raise BackupError(f"{src} holds no complete backup (no backups/*/manifest.json)")
    if at:
        names = [n for n in names if n.startswith(at)]
        if not names:
            raise BackupError(f"{src} holds no backup named {at!r} (see pictor backup --list)")
    name = names[-1]
    manifest = _manifest.decode((src / "backups" / name / "manifest.json").read_bytes())
    if manifest.format != FORMAT:
        raise BackupError(f"backup {name} has format {manifest.format}; this Pictor reads {FORMAT}")
    return name, manifest


def check_empty(data_dir: Path) -> None:
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(
            f"the data directory {data_dir} is not empty: a restore goes onto an empty one "
            "(give another --data-dir)"
        )


async def restore_index(pool: Pool, dsn: str, src: Path, name: str) -> None:
    if not await index.is_empty(pool):
        raise BackupError("the database already holds an archive: a restore needs an empty one")
    await index.restore(dsn, src / "backups" / name / "index.dump")


async def restore_files(
    settings: Settings, store: BlobStore, src: Path, name: str, manifest: Manifest
) -> RestoreReport:
    limit = asyncio.Semaphore(PARALLEL)

    async def put(f: index.StoredFile) -> None:
        source = src / "files" / f.key
        if not source.is_file():
            raise BackupError(f"the backup lacks the file {f.key}")
        async with limit:
            digest = await asyncio.to_thread(store.import_blob, f.key, source)
        if digest != f.sha256:
            raise BackupError(f"the backup's copy of {f.key} is damaged (SHA-256 differs)")

    await asyncio.gather(*(put(f) for f in manifest.files))
    total = sum(f.size for f in manifest.files)
    if manifest.link_secret:
        target = settings.link_secret_path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "backups" / name / "link-secret", target)
        os.chmod(target, 0o600)
    return RestoreReport(name=name, files=len(manifest.files), bytes=total)
