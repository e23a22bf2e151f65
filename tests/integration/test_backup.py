"""Backup and restore (issue #19): the drill a PACS administrator runs, with the real
server, its embedded PostgreSQL and PostgreSQL's own pg_dump / pg_restore."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from app.bootstrap import prepare
from app.config import load_settings
from app.index.backup import snapshot
from app.index.database import EmbeddedPostgres, create_pool
from app.services.lifecycle import Lifecycle
from app.storage import FileBlobStore

from conftest import Archive, multipart, pictor_cli
from s3server import MotoServer
from server import PictorProcess
from synth import ct_slice, new_uids


def _state(archive: Archive) -> dict[str, Any]:
    """What a restore must give back: QIDO at every level, every study's metadata, every
    stored file's bytes (stored and in the trash), tokens and the audit trail."""
    http = archive.http
    studies = http.get("/studies", params={"includefield": "all"}).json()
    state: dict[str, Any] = {"studies": studies, "metadata": {}, "series": {}, "instances": {}}
    for study in studies:
        uid = study["0020000D"]["Value"][0]
        state["metadata"][uid] = http.get(f"/studies/{uid}/metadata").json()
        state["series"][uid] = http.get(f"/studies/{uid}/series").json()
        state["instances"][uid] = http.get(f"/studies/{uid}/instances").json()
    rows = archive.query(
        "SELECT file_key FROM instance UNION ALL SELECT file_key FROM trash_instance"
    )
    state["files"] = {
        r[0]: hashlib.sha256((archive.data_dir / "storage" / r[0]).read_bytes()).hexdigest()
        for r in rows
    }
    state["trash"] = sorted(
        r[0] for r in archive.query("SELECT sop_instance_uid FROM trash_instance")
    )
    state["tokens"] = sorted(tuple(r) for r in archive.query("SELECT name, scopes FROM api_token"))
    state["link_secret"] = [
        tuple(r) for r in archive.query("SELECT name, value FROM archive_secret")
    ]
    return state


@pytest.mark.slow
def test_backup_drill_store_back_up_change_back_up_wipe_restore(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dest = tmp_path / "backup"
    server = PictorProcess(data, workers=2, env={"PICTOR_AUDIT": "true"}).start()
    archive = Archive(server)
    try:
        first, first_series = new_uids()
        assert (
            archive.stow(
                multipart([ct_slice(first, first_series, i) for i in range(4)])
            ).status_code
            == 200
        )
        assert pictor_cli("token", "create", "--name", "viewer", data_dir=data).returncode == 0
        one = pictor_cli("backup", str(dest), data_dir=data)
        assert one.returncode == 0, one.stderr
        assert "4 files, 4 copied" in one.stdout
        # more, deleted, corrected, while serving
        second, second_series = new_uids()
        assert (
            archive.stow(
                multipart([ct_slice(second, second_series, i) for i in range(3)])
            ).status_code
            == 200
        )
        gone, gone_series = new_uids()
        assert archive.stow(multipart([ct_slice(gone, gone_series, 0)])).status_code == 200
        assert archive.http.delete(f"/studies/{gone}").status_code == 204  # into the trash
        fixed = archive.http.post(
            f"{server.base}/admin/studies/{first}/update",
            json={"00100010": {"vr": "PN", "Value": [{"Alphabetic": "RESTORED^ONE"}]}},
        )
        assert fixed.status_code == 200, fixed.text
        time.sleep(1.5)  # the audit writer's batch
        two = pictor_cli("backup", str(dest), data_dir=data)
        assert two.returncode == 0, two.stderr
        assert "8 files, 4 copied" in two.stdout  # incremental: the first 4 were there
        assert len(pictor_cli("backup", str(dest), "--list", data_dir=data).stdout.split()) == 2
        before = _state(archive)
        audited = archive.query("SELECT count(*) FROM audit_event WHERE action = 'stow'")[0][0]
        # after the last backup: not in it
        later, later_series = new_uids()
        assert archive.stow(multipart([ct_slice(later, later_series, 0)])).status_code == 200
    finally:
        archive.http.close()
        server.stop()
    shutil.rmtree(data)  # the disk is lost

    restored = pictor_cli("restore", str(dest), data_dir=data)
    assert restored.returncode == 0, restored.stderr
    assert "8 files" in restored.stdout
    server = PictorProcess(data, port=server.port, workers=1).start()
    archive = Archive(server)
    try:
        after = _state(archive)
        assert after == before  # QIDO, metadata, files byte for byte, trash, tokens, secret
        names = [s["00100010"]["Value"][0]["Alphabetic"] for s in after["studies"]]
        assert "RESTORED^ONE" in names and later not in str(after["studies"])
        assert (
            archive.query("SELECT count(*) FROM audit_event WHERE action = 'stow'")[0][0] >= audited
        )
        assert (
            archive.http.get(f"/studies/{first}/series/{first_series}/instances").status_code == 200
        )
    finally:
        archive.http.close()
        server.stop()
    # a restore never goes onto a data directory in use
    again = pictor_cli("restore", str(dest), data_dir=data)
    assert again.returncode != 0 and "is not empty" in again.stderr
    assert "Traceback" not in again.stderr


def test_an_older_backup_is_restored_with_at_and_damage_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dest = tmp_path / "backup"
    server = PictorProcess(data, workers=1).start()
    archive = Archive(server)
    try:
        study, series = new_uids()
        assert (
            archive.stow(multipart([ct_slice(study, series, 0, rows=32, cols=32)])).status_code
            == 200
        )
        assert pictor_cli("backup", str(dest), data_dir=data).returncode == 0
        assert (
            archive.stow(multipart([ct_slice(study, series, 1, rows=32, cols=32)])).status_code
            == 200
        )
        assert pictor_cli("backup", str(dest), data_dir=data).returncode == 0
    finally:
        archive.http.close()
        server.stop()
    first = pictor_cli("backup", str(dest), "--list", data_dir=data).stdout.split()[0]
    old = pictor_cli("restore", str(dest), "--at", first, data_dir=tmp_path / "old")
    assert old.returncode == 0 and "1 files" in old.stdout, old.stderr
    # a damaged copy in the backup is found, and nothing half-restored is left
    damaged = next((dest / "files").rglob("*.dcm"))
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"X")
    bad = pictor_cli("restore", str(dest), data_dir=tmp_path / "bad")
    assert bad.returncode != 0 and "damaged" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
    # a tampered manifest: a key that would be a file name outside the storage
    hostile = tmp_path / "hostile"
    shutil.copytree(dest, hostile)
    last = sorted((hostile / "backups").iterdir())[-1] / "manifest.json"
    for key in ("../../../../outside.dcm", "/etc/passwd", "1.2/3.4/..dcm", "a/b/c.dcm"):
        manifest = json.loads(last.read_text())
        manifest["files"][0][0] = key
        last.write_text(json.dumps(manifest))
        refused = pictor_cli("restore", str(hostile), data_dir=tmp_path / "h")
        assert refused.returncode != 0, key
        assert "not a stored instance's" in refused.stderr and "Traceback" not in refused.stderr
        assert not (tmp_path / "h").exists() and not (tmp_path / "outside.dcm").exists()
    last.write_text("{not json")
    broken = pictor_cli("restore", str(hostile), data_dir=tmp_path / "h")
    assert broken.returncode != 0 and "damaged manifest" in broken.stderr
    missing = pictor_cli("restore", str(tmp_path / "nothing"), data_dir=tmp_path / "none")
    assert missing.returncode != 0 and "no complete backup" in missing.stderr


def test_the_purge_waits_while_a_backup_copies(tmp_path: Path) -> None:
    """A purge deleting files a running backup listed would leave the backup with rows
    and no files: it defers to its next run (app.index.backup.BACKUP_LOCK)."""

    async def scenario() -> None:
        pg = EmbeddedPostgres(tmp_path / "pg")
        dsn = await asyncio.to_thread(pg.start)
        settings = load_settings({"data_dir": str(tmp_path / "data")}, environ={})
        await prepare(settings, dsn)
        pool = await create_pool(dsn, min_size=1, max_size=4)
        store = FileBlobStore(settings.storage_dir, settings.tmp_dir)
        lifecycle = Lifecycle(settings, pool, store)
        from app.services.ingest import Ingest

        ingest = Ingest(settings, pool, store, lifecycle)
        study, series = new_uids()
        temp = ingest.new_part()
        await temp.write(ct_slice(study, series, 0, rows=16, cols=16))
        await ingest.commit([await ingest.complete(temp)])
        await lifecycle.delete(study, who="test")
        async with snapshot(pool) as snap:
            assert len(snap.files) == 1
            assert await lifecycle.empty(who="test") == 0  # deferred
            assert store.path(snap.files[0].key).exists()
        assert await lifecycle.empty(who="test") == 1  # and done once the backup is over
        await pool.close()
        await asyncio.to_thread(pg.stop)

    asyncio.run(scenario())


@pytest.fixture
def s3(moto: MotoServer) -> dict[str, str]:
    """An S3 protocol server on loopback (moto in server mode, which nobody here wrote)
    with one bucket; the environment a backup to it needs."""
    moto.new_bucket("pacs-backup")
    return moto.env


def test_backup_to_s3_and_restore_from_it(tmp_path: Path, s3: dict[str, str]) -> None:
    """The same drill against an S3-compatible bucket: incremental, complete, restored
    byte for byte."""
    data = tmp_path / "data"
    url = "s3://pacs-backup/site-a"
    server = PictorProcess(data, workers=1).start()
    archive = Archive(server)
    try:
        study, series = new_uids()
        parts = [ct_slice(study, series, i, rows=64, cols=64) for i in range(3)]
        assert archive.stow(multipart(parts)).status_code == 200
        one = pictor_cli("backup", url, data_dir=data, env=s3)
        assert one.returncode == 0, one.stderr
        assert "in s3://pacs-backup/site-a/: 3 files, 3 copied" in one.stdout
        assert (
            archive.stow(multipart([ct_slice(study, series, 3, rows=64, cols=64)])).status_code
            == 200
        )
        two = pictor_cli("backup", url, data_dir=data, env=s3)
        assert two.returncode == 0 and "4 files, 1 copied" in two.stdout, two.stdout + two.stderr
        before = _state(archive)
    finally:
        archive.http.close()
        server.stop()
    shutil.rmtree(data)
    restored = pictor_cli("restore", url, data_dir=data, env=s3)
    assert restored.returncode == 0, restored.stderr
    server = PictorProcess(data, port=server.port, workers=1).start()
    archive = Archive(server)
    try:
        assert _state(archive) == before
    finally:
        archive.http.close()
        server.stop()
    wrong = pictor_cli("backup", "s3://no-such-bucket/x", data_dir=data, env=s3)
    assert wrong.returncode != 0 and "NoSuchBucket" in wrong.stderr
    # the dump that ran beside the failed copies was ended with them, not left to fail
    # against a database that had gone away
    assert "Traceback" not in wrong.stderr and "never retrieved" not in wrong.stderr
    assert subprocess.run(["pgrep", "-x", "pg_dump"], check=False).returncode == 1
