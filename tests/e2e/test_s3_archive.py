"""A whole archive on S3-compatible storage (issue #16): ``pictor serve`` with
``PICTOR_STORAGE_URL=s3://bucket/prefix`` against moto's S3 server on loopback, used by
dicomweb-client (nobody here wrote either). The objects are checked with boto3: the
readable key layout, bytes exactly as sent; nothing lands in the data directory's
storage; retrieval (instances, frames, metadata, transcoding and rendering in the codec
workers) works from the bucket; a delete removes the object; a SIGKILL under STOW load
leaves no object without its row and no row without its object (PS3.18 10.5: an
acknowledged instance is stored)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.filebase import DicomBytesIO

from conftest import Archive, content_type, multipart, pictor_cli
from corpus import get_ref
from s3server import MotoServer
from server import PictorProcess, stop_postgres
from synth import big_multiframe, ct_slice, new_uids

PREFIX = "hospital-a/archive"


def _s3_env(moto: MotoServer, bucket: str) -> dict[str, str]:
    return {
        **moto.env,
        "PICTOR_STORAGE_URL": f"s3://{bucket}/{PREFIX}",
        "PICTOR_TRASH_DAYS": "0",
    }


def _instances(moto: MotoServer, bucket: str) -> dict[str, bytes]:
    """The bucket's instances (not Pictor's intents), by key under the prefix."""
    return {
        key.removeprefix(PREFIX + "/"): data
        for key, data in moto.objects(bucket, PREFIX + "/").items()
        if "/.pictor/" not in key
    }


def check_bucket_matches_index(archive: Archive, moto: MotoServer, bucket: str) -> None:
    """Every row (stored or in the trash) has its complete object, and every object a
    row; no intent and no multipart upload is left open."""
    rows = archive.query(
        "SELECT file_key, file_size, file_sha256 FROM instance"
        " UNION ALL SELECT file_key, file_size, file_sha256 FROM trash_instance"
    )
    objects = _instances(moto, bucket)
    for row in rows:
        data = objects.get(row["file_key"])
        assert data is not None, f"index row without object: {row['file_key']}"
        assert len(data) == row["file_size"], row["file_key"]
        assert hashlib.sha256(data).hexdigest() == row["file_sha256"], row["file_key"]
    orphans = set(objects) - {row["file_key"] for row in rows}
    assert not orphans, f"objects without index rows: {sorted(orphans)[:5]}"
    s3 = moto.client()
    assert not [k for k in moto.keys(bucket) if "/.pictor/intents/" in k]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_an_archive_on_s3_stores_byte_for_byte_and_serves_everything(
    tmp_path: Path, moto: MotoServer
) -> None:
    bucket = moto.new_bucket()
    data = tmp_path / "data"
    server = PictorProcess(data, workers=1, env=_s3_env(moto, bucket)).start()
    archive = Archive(server)
    try:
        study, series = new_uids()
        sent = {}
        for i in range(3):
            blob = ct_slice(study, series, i, rows=64, cols=64)
            sent[pydicom.dcmread(DicomBytesIO(blob)).SOPInstanceUID] = blob
        j2k = get_ref("RG3_J2KI.dcm").path.read_bytes()
        client = DICOMwebClient(url=archive.url)
        result = client.store_instances(
            datasets=[pydicom.dcmread(DicomBytesIO(b)) for b in sent.values()]
        )
        assert len(result.ReferencedSOPSequence) == 3
        assert archive.stow(multipart([j2k])).status_code == 200
        j2k_ds = pydicom.dcmread(DicomBytesIO(j2k))

        # the layout a person can read, bytes as received (dicomweb-client re-encodes
        # the datasets it sends, so what it sent is what is compared: the row's hash)
        objects = _instances(moto, bucket)
        rows = {
            r["sop_instance_uid"]: r
            for r in archive.query("SELECT sop_instance_uid, file_key, file_sha256 FROM instance")
        }
        for sop in sent:
            key = f"{study}/{series}/{sop}.dcm"
            assert rows[sop]["file_key"] == key and key in objects
            assert hashlib.sha256(objects[key]).hexdigest() == rows[sop]["file_sha256"]
        j2k_key = rows[j2k_ds.SOPInstanceUID]["file_key"]
        assert objects[j2k_key] == j2k  # STOW: exactly the bytes of the part
        head = moto.client().head_object(Bucket=bucket, Key=f"{PREFIX}/{j2k_key}")
        assert head["ContentType"] == "application/dicom"
        assert not list((data / "storage").rglob("*.dcm"))  # nothing on the local disk

        # reads: search, metadata (index only), instance, frames, transcoding, rendering
        assert len(client.search_for_instances(study_instance_uid=study)) == 3
        assert len(client.retrieve_series_metadata(study, series)) == 3
        sop = next(iter(sent))
        got = client.retrieve_instance(study, series, sop)
        assert got.PixelData == pydicom.dcmread(DicomBytesIO(sent[sop])).PixelData
        (frame,) = client.retrieve_instance_frames(
            study, series, sop, frame_numbers=[1],
            media_types=(("application/octet-stream", "*"),),
        )  # fmt: skip
        assert frame == pydicom.dcmread(DicomBytesIO(sent[sop])).PixelData
        whole = archive.http.get(
            f"/studies/{j2k_ds.StudyInstanceUID}", headers={"Accept": "application/zip"}
        )
        assert whole.status_code == 200 and whole.content[:2] == b"PK"
        native = archive.http.get(
            f"/studies/{j2k_ds.StudyInstanceUID}/series/{j2k_ds.SeriesInstanceUID}"
            f"/instances/{j2k_ds.SOPInstanceUID}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"; '
                     "transfer-syntax=1.2.840.10008.1.2.1"},
        )  # fmt: skip
        assert native.status_code == 200, native.text
        expected = j2k_ds.Rows * j2k_ds.Columns * j2k_ds.SamplesPerPixel * j2k_ds.BitsAllocated // 8
        assert expected <= len(native.content) < expected + 1000
        rendered = archive.http.get(
            f"/studies/{study}/series/{series}/instances/{sop}/rendered",
            headers={"Accept": "image/jpeg"},
        )
        assert rendered.status_code == 200 and rendered.content[:2] == b"\xff\xd8"

        # a delete with PICTOR_TRASH_DAYS=0 removes the object
        client.delete_instance(study, series, sop)
        deadline = time.monotonic() + 20
        while f"{study}/{series}/{sop}.dcm" in _instances(moto, bucket):
            assert time.monotonic() < deadline, "the deleted instance's object stayed"
            time.sleep(0.2)
        check_bucket_matches_index(archive, moto, bucket)

        # the operator's tools work on the bucket too
        verify = pictor_cli("verify", data_dir=data, env=_s3_env(moto, bucket))
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        archive.http.close()
        server.stop()
        stop_postgres(data)


def test_a_storage_url_that_is_not_one_is_refused_at_start(tmp_path: Path) -> None:
    for url, part in (
        ("s3://", "s3://bucket"),
        ("s3://Bad_Bucket/x", "bucket name"),
        ("ftp://host/x", "file:///absolute/path"),
        ("file://relative/x", "file:///absolute/path"),
        ("s3://pacs/a/../b", "s3://bucket"),
        ("s3://pacs/a?versionId=1", "s3://bucket"),
        ("s3://ab/x", "bucket name"),
    ):
        run = pictor_cli("serve", data_dir=tmp_path / "d", env={"PICTOR_STORAGE_URL": url})
        assert run.returncode != 0
        assert f"PICTOR_STORAGE_URL={url!r}" in run.stderr and part in run.stderr, run.stderr
        assert "Traceback" not in run.stderr


def _uploader(url: str, stop: threading.Event, acknowledged: list[str], big: bytes) -> None:
    study, series = new_uids()
    index = 0
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            parts = [ct_slice(study, series, index + i, rows=64, cols=64) for i in range(6)]
            parts.insert(3, big)  # past the memory part: a multipart upload
            index += 6
            try:
                r = client.post(
                    f"{url}/studies", content=multipart(parts),
                    headers={"Content-Type": content_type()},
                )  # fmt: skip
            except httpx.HTTPError:
                return
            if r.status_code in (200, 202):
                acknowledged.extend(
                    i["00081155"]["Value"][0] for i in r.json().get("00081199", {}).get("Value", [])
                )


@pytest.mark.slow
def test_sigkill_under_stow_load_leaves_the_bucket_and_the_index_in_step(
    tmp_path: Path, moto: MotoServer
) -> None:
    bucket = moto.new_bucket()
    data = tmp_path / "data"
    env = _s3_env(moto, bucket)
    big = big_multiframe(tmp_path / "big.dcm", 20_000_000, rows=256, cols=256).read_bytes()
    server = PictorProcess(data, workers=2, env=env).start()
    archive = Archive(server)
    acknowledged: list[str] = []
    stop = threading.Event()
    try:
        threads = [
            threading.Thread(target=_uploader, args=(server.dicomweb, stop, acknowledged, big))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        time.sleep(4.0)
        server.kill()  # SIGKILL of every server process, mid-upload
        stop.set()
        for t in threads:
            t.join(120)
        archive.http.close()
        assert _instances(moto, bucket), "nothing reached the bucket before the kill"

        server = PictorProcess(data, port=server.port, workers=2, env=env).start()  # sweep
        archive = Archive(server)
        check_bucket_matches_index(archive, moto, bucket)
        present = {
            r["sop_instance_uid"] for r in archive.query("SELECT sop_instance_uid FROM instance")
        }
        missing = set(acknowledged) - present
        assert not missing, f"acknowledged but lost: {sorted(missing)[:5]}"
        assert not list((data / "tmp").glob("*.part"))
        s2, r2 = new_uids()
        assert archive.stow(multipart([ct_slice(s2, r2, 0)])).status_code == 200
    finally:
        stop.set()
        archive.http.close()
        server.stop()
        stop_postgres(data)
