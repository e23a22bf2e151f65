"""Lifecycle (issue #15) against a real server: delete at three levels with
dicomweb-client, the trash (list, restore byte for byte, empty, the background purge),
IOCM rejection notes for each CID 7011 code, corrections seen through QIDO, metadata and
a retrieved Part 10 file, undo, patient merge, the audit trail, and hostile input."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from conftest import Archive, Pictor, multipart
from synth import ct_slice, new_uids, rejection_note, sop_instance_uid

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def server(pictor_module: Pictor, tmp_path_factory: pytest.TempPathFactory) -> Archive:
    process = pictor_module(tmp_path_factory.mktemp("lifecycle") / "data", workers=2)
    return Archive(process)


def _study(archive: Archive, count: int = 3, series_count: int = 1, **kw: Any) -> dict[str, Any]:
    study, _ = new_uids()
    series = [new_uids()[1] for _ in range(series_count)]
    files = {
        s: [ct_slice(study, s, i, rows=32, cols=32, **kw) for i in range(count)] for s in series
    }
    r = archive.stow(multipart([f for fs in files.values() for f in fs]))
    assert r.status_code == 200, r.text
    return {"study": study, "series": series, "files": files}


def _studies(archive: Archive, **params: str) -> list[dict[str, Any]]:
    r = archive.http.get("/studies", params=params)
    assert r.status_code in (200, 204), r.text
    return r.json() if r.status_code == 200 else []


def _value(entry: dict[str, Any], tag: str) -> Any:
    values = entry.get(tag, {}).get("Value") or [None]
    return values[0]


def _client(archive: Archive) -> DICOMwebClient:
    return DICOMwebClient(url=archive.url)


def _cli(archive: Archive, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PICTOR_DATA_DIR": str(archive.data_dir), "PATH": "/usr/bin:/bin", "HOME": "/root"}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


# -- delete ------------------------------------------------------------------------------


def test_delete_instance_with_dicomweb_client(server: Archive) -> None:
    s = _study(server, count=3)
    study, series = s["study"], s["series"][0]
    gone = sop_instance_uid(series, 1)
    frame = f"/studies/{study}/series/{series}/instances/{gone}/frames/1"
    raw = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
    for _ in range(3):  # now in every server process's instance cache
        assert server.http.get(frame, headers=raw).status_code == 200
    _client(server).delete_instance(study, series, gone)
    for _ in range(3):  # the delete's NOTIFY dropped it from every cache
        assert server.http.get(frame, headers=raw).status_code == 404
    [entry] = _studies(server, StudyInstanceUID=study)
    assert _value(entry, "00201208") == 2  # NumberOfStudyRelatedInstances (PS3.18 10.6.3.3)
    left = server.http.get(f"/studies/{study}/instances").json()
    assert gone not in {_value(i, "00080018") for i in left}
    assert server.http.get(f"/studies/{study}/series/{series}/instances/{gone}").status_code == 404
    meta = server.http.get(f"/studies/{study}/series/{series}/instances/{gone}/metadata")
    assert meta.status_code == 404
    frames = server.http.get(f"/studies/{study}/series/{series}/instances/{gone}/frames/1")
    assert frames.status_code == 404
    # the others are untouched
    assert len(server.http.get(f"/studies/{study}/metadata").json()) == 2


def test_delete_series_updates_study_aggregates(server: Archive) -> None:
    s = _study(server, count=2, series_count=2)
    study, (first, second) = s["study"], s["series"]
    _client(server).delete_series(study, first)
    [entry] = _studies(server, StudyInstanceUID=study)
    assert _value(entry, "00201206") == 1  # NumberOfStudyRelatedSeries
    assert _value(entry, "00201208") == 2
    series = server.http.get(f"/studies/{study}/series").json()
    assert [_value(x, "0020000E") for x in series] == [second]
    assert server.http.get(f"/studies/{study}/series/{first}").status_code == 404


def test_delete_study_with_dicomweb_client_then_404(server: Archive) -> None:
    s = _study(server)
    _client(server).delete_study(s["study"])
    assert _studies(server, StudyInstanceUID=s["study"]) == []
    assert server.http.get(f"/studies/{s['study']}").status_code == 404
    assert server.http.get(f"/studies/{s['study']}/metadata").status_code == 404
    again = server.http.delete(f"/studies/{s['study']}")
    assert again.status_code == 404
    assert "no study" in again.json()["message"]


def test_modalities_in_study_follow_a_deleted_series(server: Archive) -> None:
    study, ct_series = new_uids()
    mr_series = new_uids()[1]
    ct = ct_slice(study, ct_series, 0, rows=16, cols=16)
    ds = pydicom.dcmread(io.BytesIO(ct_slice(study, mr_series, 0, rows=16, cols=16)))
    ds.Modality = "MR"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert server.stow(multipart([ct, out.getvalue()])).status_code == 200
    [entry] = _studies(server, StudyInstanceUID=study)
    assert entry["00080061"]["Value"] == ["CT", "MR"]
    assert server.http.delete(f"/studies/{study}/series/{mr_series}").status_code == 204
    [entry] = _studies(server, StudyInstanceUID=study)
    assert entry["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy
    assert _studies(server, ModalitiesInStudy="MR", StudyInstanceUID=study) == []


def test_delete_refuses_bad_and_unknown_uids_and_changes_nothing(server: Archive) -> None:
    s = _study(server, count=2)
    study, series = s["study"], s["series"][0]
    before = server.query("SELECT count(*) FROM instance")[0][0]
    for path, status in [
        ("/studies/1.2.3.abc", 400),
        (f"/studies/{study}/series/1..2", 400),
        ("/studies/1.2.999999", 404),
        (f"/studies/{study}/series/1.2.999999", 404),
        (f"/studies/{study}/series/{series}/instances/1.2.999999", 404),
        # an instance that exists, under the wrong series
        (f"/studies/{study}/series/1.2.999999/instances/{sop_instance_uid(series, 0)}", 404),
    ]:
        r = server.http.delete(path)
        assert r.status_code == status, (path, r.text)
        assert "Traceback" not in r.text
    assert server.query("SELECT count(*) FROM instance")[0][0] == before
    # the trailing resources are not deletable (405 with Allow), e.g. metadata
    r = server.http.delete(f"/studies/{study}/metadata")
    assert r.status_code == 405
    assert "GET" in r.headers["allow"]


# -- the trash ---------------------------------------------------------------------------


def _files_of(archive: Archive, study: str) -> dict[str, bytes]:
    r = archive.http.get(
        f"/studies/{study}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert r.status_code == 200, r.text
    boundary = r.headers["content-type"].split("boundary=")[1].strip('"')
    out = {}
    for part in r.content.split(b"--" + boundary.encode())[1:-1]:
        body = part.split(b"\r\n\r\n", 1)[1][:-2]
        ds = pydicom.dcmread(io.BytesIO(body))
        out[ds.SOPInstanceUID] = body
    return out


def test_restore_from_the_trash_is_byte_identical(server: Archive) -> None:
    s = _study(server, count=3, series_count=2)
    study = s["study"]
    originals = {
        pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID: f for fs in s["files"].values() for f in fs
    }
    assert server.http.delete(f"/studies/{study}").status_code == 204
    trash = httpx.get(server.process.base + "/admin/trash")
    assert trash.status_code == 200
    [listed] = [t for t in trash.json() if t["study_uid"] == study]
    assert listed["instances"] == 6 and listed["series"] == 2
    assert listed["reasons"] == ["deleted"]
    r = httpx.post(server.process.base + "/admin/trash/restore", json={"study": study})
    assert r.status_code == 200, r.text
    assert r.json()["instances"] == 6
    assert _files_of(server, study) == originals
    [entry] = _studies(server, StudyInstanceUID=study)
    assert _value(entry, "00201206") == 2 and _value(entry, "00201208") == 6
    assert not [
        t for t in httpx.get(server.process.base + "/admin/trash").json() if t["study_uid"] == study
    ]


def test_restore_one_series_of_a_deleted_study(server: Archive) -> None:
    s = _study(server, count=2, series_count=2)
    study, second = s["study"], s["series"][1]
    assert server.http.delete(f"/studies/{study}").status_code == 204
    r = httpx.post(
        server.process.base + "/admin/trash/restore", json={"study": study, "series": [second]}
    )
    assert r.status_code == 200 and r.json()["instances"] == 2
    series = server.http.get(f"/studies/{study}/series").json()
    assert [_value(x, "0020000E") for x in series] == [second]
    # the other series is still in the trash and comes back on its own
    r = httpx.post(server.process.base + "/admin/trash/restore", json={"study": study})
    assert r.json()["instances"] == 2
    assert len(server.http.get(f"/studies/{study}/series").json()) == 2


def test_restore_leaves_an_instance_stored_again_meanwhile(server: Archive) -> None:
    s = _study(server, count=2)
    study, series = s["study"], s["series"][0]
    sop = sop_instance_uid(series, 0)
    assert (
        server.http.delete(f"/studies/{study}/series/{series}/instances/{sop}").status_code == 204
    )
    # the modality sends it again (a new copy under the same UID)
    assert server.stow(multipart([s["files"][series][0]])).status_code == 200
    r = httpx.post(server.process.base + "/admin/trash/restore", json={"study": study})
    assert r.status_code == 200
    assert r.json()["conflicts"] == [sop] and r.json()["instances"] == 0
    assert _value(_studies(server, StudyInstanceUID=study)[0], "00201208") == 2


def test_trash_requests_are_checked(server: Archive) -> None:
    base = server.process.base
    assert httpx.post(base + "/admin/trash/restore", json={"study": "1.2.999"}).status_code == 404
    bad = httpx.post(base + "/admin/trash/restore", json={"study": "x.y"})
    assert bad.status_code == 400 and "study" in bad.json()["message"]
    extra = httpx.post(base + "/admin/trash/restore", json={"study": "1.2", "force": True})
    assert extra.status_code == 400
    wrong_type = httpx.post(
        base + "/admin/trash/restore", content=b"study=1.2", headers={"Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 415
    huge = httpx.post(
        base + "/admin/trash/restore",
        content=b'{"study": "' + b"1" * (2 << 20) + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert huge.status_code == 413
    assert httpx.delete(base + "/admin/trash", params={"older-than": "soon"}).status_code == 400
    assert httpx.delete(base + "/admin/trash", params={"older": "1d"}).status_code == 400
    twice = httpx.delete(base + "/admin/trash?older-than=30d&older-than=0s")
    assert twice.status_code == 400 and "more than once" in twice.json()["message"]


def test_empty_the_trash_removes_files_and_rows(server: Archive) -> None:
    s = _study(server, count=2)
    study = s["study"]
    keys = [
        r[0]
        for r in server.query(
            "SELECT file_key FROM instance i JOIN study s ON s.pk = i.study_pk WHERE s.study_uid = $1",
            study,
        )
    ]
    assert server.http.delete(f"/studies/{study}").status_code == 204
    storage = server.data_dir / "storage"
    assert all((storage / k).exists() for k in keys)  # kept while in the trash
    kept = httpx.delete(server.process.base + "/admin/trash", params={"older-than": "1d"})
    assert kept.status_code == 200 and kept.json()["purged"] == 0
    purged = httpx.delete(server.process.base + "/admin/trash")
    assert purged.status_code == 200 and purged.json()["purged"] >= 2
    assert not any((storage / k).exists() for k in keys)
    assert not server.query("SELECT 1 FROM trash_instance WHERE study_uid = $1", study)
    r = httpx.post(server.process.base + "/admin/trash/restore", json={"study": study})
    assert r.status_code == 404


def test_two_purges_at_once_purge_each_row_once(pictor: Pictor, tmp_path: Path) -> None:
    """Purges on two processes claim different rows (FOR UPDATE SKIP LOCKED): together
    they purge everything, each row and file once."""
    import threading

    archive = Archive(pictor(tmp_path / "data", workers=2))
    s = _study(archive, count=40)
    assert archive.http.delete(f"/studies/{s['study']}").status_code == 204
    counts: list[int] = []

    def purge() -> None:
        with httpx.Client(timeout=60) as client:
            r = client.delete(archive.process.base + "/admin/trash")
            assert r.status_code == 200, r.text
            counts.append(r.json()["purged"])

    threads = [threading.Thread(target=purge) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(counts) == 40, counts
    assert archive.storage_files() == set()
    assert archive.query("SELECT count(*) FROM trash_instance")[0][0] == 0
    events = archive.query("SELECT detail::text FROM audit_event WHERE action = 'purge'")
    assert sum(json.loads(e[0])["instances"] for e in events) == 40


def test_trash_table_carries_every_instance_column(server: Archive) -> None:
    """schemas/008: a migration adding a column to instance must add it to the trash."""

    def cols(table: str) -> list[str]:
        return [
            r[0]
            for r in server.query(
                "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass"
                " AND attnum > 0 AND NOT attisdropped",
                table,
            )
        ]

    assert set(cols("instance")) <= set(cols("trash_instance"))
    assert set(cols("study")) <= set(cols("trash_study"))
    assert set(cols("series")) <= set(cols("trash_series"))


def test_zero_trash_days_deletes_at_once(pictor: Pictor, tmp_path: Path) -> None:
    archive = Archive(pictor(tmp_path / "data", workers=1, env={"PICTOR_TRASH_DAYS": "0"}))
    s = _study(archive, count=2)
    assert archive.http.delete(f"/studies/{s['study']}").status_code == 204
    assert archive.storage_files() == set()
    assert archive.query("SELECT count(*) FROM trash_instance")[0][0] == 0
    assert archive.query("SELECT count(*) FROM instance")[0][0] == 0
    assert [n for n in archive.tmp_files() if n.endswith(".intent")] == []


def test_background_purge_removes_expired_trash(pictor: Pictor, tmp_path: Path) -> None:
    env = {"PICTOR_TRASH_DAYS": "0.00002", "PICTOR_PURGE_INTERVAL": "1"}  # ~1.7 s
    archive = Archive(pictor(tmp_path / "data", workers=1, env=env))
    s = _study(archive, count=2)
    assert archive.http.delete(f"/studies/{s['study']}").status_code == 204
    assert archive.query("SELECT count(*) FROM trash_instance")[0][0] == 2
    deadline = time.monotonic() + 30
    while (
        archive.query("SELECT count(*) FROM trash_instance")[0][0] and time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert archive.query("SELECT count(*) FROM trash_instance")[0][0] == 0
    assert archive.storage_files() == set()
    purge = archive.query("SELECT who FROM audit_event WHERE action = 'purge'")
    assert [r[0] for r in purge] == ["system:purge"]


# -- IOCM rejection ----------------------------------------------------------------------


@pytest.mark.parametrize("code", ["113001", "113037", "113038", "113039"])
def test_rejection_note_hides_what_it_references(server: Archive, code: str) -> None:
    s = _study(server, count=3)
    study, series = s["study"], s["series"][0]
    rejected = sop_instance_uid(series, 1)
    key = server.query("SELECT file_key FROM instance WHERE sop_instance_uid = $1", rejected)[0][0]
    note_series = new_uids()[1]
    note = rejection_note(study, note_series, [(series, rejected)], code)
    r = server.stow(multipart([note]))
    assert r.status_code == 200, r.text
    # hidden from QIDO and WADO; the note itself stays
    listed = {_value(i, "00080018") for i in server.http.get(f"/studies/{study}/instances").json()}
    assert rejected not in listed and len(listed) == 3  # two images and the note
    assert (
        server.http.get(f"/studies/{study}/series/{series}/instances/{rejected}").status_code == 404
    )
    assert _value(_studies(server, StudyInstanceUID=study)[0], "00201208") == 3
    # storing it again is refused, saying why
    again = server.stow(multipart([s["files"][series][1]]))
    assert again.status_code == 409, again.text
    failed = again.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xC771]
    # 113039: purged at once; the others wait in the trash
    in_trash = server.query(
        "SELECT reason FROM trash_instance WHERE sop_instance_uid = $1", rejected
    )
    if code == "113039":
        assert in_trash == [] and not (server.data_dir / "storage" / key).exists()
    else:
        assert [r[0] for r in in_trash] == [f"rejected:{code}"]
        # deleting the note revokes the rejection: the instance is back
        note_uid = pydicom.dcmread(io.BytesIO(note)).SOPInstanceUID
        gone = server.http.delete(f"/studies/{study}/series/{note_series}/instances/{note_uid}")
        assert gone.status_code == 204
        back = {
            _value(i, "00080018") for i in server.http.get(f"/studies/{study}/instances").json()
        }
        assert rejected in back and note_uid not in back
        assert server.stow(multipart([s["files"][series][1]])).status_code == 200  # already stored


def test_rejection_before_the_instance_arrives(server: Archive) -> None:
    study, series = new_uids()
    future = sop_instance_uid(series, 0)
    note = rejection_note(study, new_uids()[1], [(series, future)], "113001")
    assert server.stow(multipart([note])).status_code == 200
    r = server.stow(multipart([ct_slice(study, series, 0, rows=16, cols=16)]))
    assert r.status_code == 409
    [failed] = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC771]
    assert failed["00081150"]["Value"] == [CT]


def test_restoring_a_rejected_instance_revokes_its_rejection(server: Archive) -> None:
    s = _study(server, count=2)
    study, series = s["study"], s["series"][0]
    rejected = sop_instance_uid(series, 0)
    assert (
        server.stow(
            multipart([rejection_note(study, new_uids()[1], [(series, rejected)])])
        ).status_code
        == 200
    )
    r = httpx.post(server.process.base + "/admin/trash/restore", json={"study": study})
    assert r.status_code == 200 and r.json()["instances"] == 1
    assert not server.query("SELECT 1 FROM rejection WHERE sop_instance_uid = $1", rejected)
    assert (
        server.http.get(
            f"/studies/{study}/series/{series}/instances/{rejected}/metadata"
        ).status_code
        == 200
    )


# -- corrections -------------------------------------------------------------------------


def _update(archive: Archive, study: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(f"{archive.process.base}/admin/studies/{study}/update", json=body, **kw)


def test_update_is_seen_by_qido_metadata_and_retrieved_files(server: Archive) -> None:
    s = _study(server, count=2, patient_id="WRONG1", patient_name="DOE^JOHN")
    study, series = s["study"], s["series"][0]
    r = _update(
        server,
        study,
        {
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "MÜLLER^JANE"}]},
            "PatientID": {"vr": "LO", "Value": ["RIGHT1"]},
            "AccessionNumber": {"vr": "SH", "Value": ["ACC-FIXED"]},
        },
    )
    assert r.status_code == 200, r.text
    entry = r.json()
    assert _value(entry, "00100010") == {"Alphabetic": "MÜLLER^JANE"}
    assert _value(entry, "00100020") == "RIGHT1"
    # QIDO matching uses the new values; the old ones match nothing
    assert len(_studies(server, PatientID="RIGHT1")) == 1
    assert _studies(server, PatientID="WRONG1") == []
    assert len(_studies(server, PatientName="MÜLLER*")) == 1
    assert len(_studies(server, PatientName="muller", fuzzymatching="true")) == 1
    assert len(_studies(server, AccessionNumber="ACC-FIXED")) == 1
    # instance-level searches (PS3.18 10.6.3.3.3: the study's attributes with them)
    listed = server.http.get(f"/studies/{study}/instances", params={"includefield": "all"})
    assert {_value(i, "00100020") for i in listed.json()} == {"RIGHT1"}
    found = server.http.get(
        "/instances", params={"PatientID": "RIGHT1", "includefield": "00100010"}
    )
    assert len(found.json()) == 2
    assert {_value(i, "00100010")["Alphabetic"] for i in found.json()} == {"MÜLLER^JANE"}
    # metadata
    meta = server.http.get(f"/studies/{study}/metadata").json()
    assert {_value(m, "00100020") for m in meta} == {"RIGHT1"}
    # retrieved Part 10 files: new header, pixel data as stored
    files = _files_of(server, study)
    for sop, data in files.items():
        ds = pydicom.dcmread(io.BytesIO(data))
        assert str(ds.PatientName) == "MÜLLER^JANE" and ds.PatientID == "RIGHT1"
        original = next(
            pydicom.dcmread(io.BytesIO(f)) for f in s["files"][series] if sop in f.decode("latin-1")
        )
        assert ds.PixelData == original.PixelData
    # the stored files themselves are not rewritten
    keys = server.query(
        "SELECT file_key, file_sha256 FROM instance i JOIN study st ON st.pk = i.study_pk WHERE st.study_uid = $1",
        study,
    )
    for key, sha in keys:
        assert hashlib.sha256((server.data_dir / "storage" / key).read_bytes()).hexdigest() == sha
    # transcoded retrieval carries the correction too
    r = server.http.get(
        f"/studies/{study}/series/{series}/instances/{sop_instance_uid(series, 0)}",
        headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5'
        },
    )
    assert r.status_code == 200, r.text
    assert b"1.2.840.10008.1.2.5" in r.content  # RLE Lossless, re-encoded
    assert b"RIGHT1" in r.content and b"WRONG1" not in r.content


def test_update_changes_the_metadata_etag(server: Archive) -> None:
    s = _study(server, count=1)
    first = server.http.get(f"/studies/{s['study']}/metadata")
    etag = first.headers["etag"]
    assert (
        _update(
            server, s["study"], {"StudyDescription": {"vr": "LO", "Value": ["CT HEAD"]}}
        ).status_code
        == 200
    )
    again = server.http.get(f"/studies/{s['study']}/metadata", headers={"If-None-Match": etag})
    assert again.status_code == 200
    assert _value(again.json()[0], "00081030") == "CT HEAD"


def test_instances_stored_after_a_correction_carry_it(server: Archive) -> None:
    study, series = new_uids()
    assert (
        server.stow(
            multipart([ct_slice(study, series, 0, rows=16, cols=16, patient_id="OLD")])
        ).status_code
        == 200
    )
    assert _update(server, study, {"PatientID": {"vr": "LO", "Value": ["NEW"]}}).status_code == 200
    late = ct_slice(study, series, 1, rows=16, cols=16, patient_id="OLD")  # from the modality
    assert server.stow(multipart([late])).status_code == 200
    meta = server.http.get(f"/studies/{study}/metadata").json()
    assert [_value(m, "00100020") for m in meta] == ["NEW", "NEW"]
    assert {
        pydicom.dcmread(io.BytesIO(f)).PatientID for f in _files_of(server, study).values()
    } == {"NEW"}


def test_update_refuses_other_levels_uids_and_bad_values(server: Archive) -> None:
    s = _study(server, count=1)
    study = s["study"]
    before = server.query("SELECT attrs::text FROM study WHERE study_uid = $1", study)
    cases = [
        ({"00080060": {"vr": "CS", "Value": ["MR"]}}, "Modality"),
        ({"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}, "StudyInstanceUID"),
        ({"SeriesDescription": {"vr": "LO", "Value": ["x"]}}, "SeriesDescription"),
        ({"PatientBirthDate": {"vr": "DA", "Value": ["1970-01-01"]}}, "PatientBirthDate"),
        ({"PatientID": {"vr": "LO", "Value": ["x" * 65]}}, "PatientID"),
        ({"PatientID": {"vr": "PN", "Value": ["x"]}}, "PatientID"),
        ({"NoSuchKeyword": {"vr": "LO", "Value": ["x"]}}, "NoSuchKeyword"),
        ({"PatientName": {"vr": "PN", "Value": [{"Alphabetic": "A\u0000B"}]}}, "PatientName"),
        ({"PatientComments": {"vr": "LT", "Value": ["line\u0007bell"]}}, "PatientComments"),
        ({"OtherPatientIDsSequence": {"vr": "SQ", "Value": [{}]}}, "sequences"),
        ({f"0010{n:04X}": {"vr": "LO", "Value": ["x"]} for n in range(0x1000, 0x1041)}, "at most"),
        ({"PatientID": {"vr": "LO", "Value": ["x"], "InlineBinary": "AA=="}}, "unexpected"),
        ({"PatientID": "x"}, "element object"),
        ({}, "non-empty"),
        ([], "non-empty"),
    ]
    for body, named in cases:
        r = _update(server, study, body)
        assert r.status_code == 400, (body, r.text)
        assert named in r.json()["message"], (body, r.text)
    assert (
        httpx.post(f"{server.process.base}/admin/studies/{study}/update", content=b"{").status_code
        == 400
    )
    assert (
        _update(server, "1.2.999999", {"PatientID": {"vr": "LO", "Value": ["X"]}}).status_code
        == 404
    )
    assert _update(server, "1.2.x", {"PatientID": {"vr": "LO", "Value": ["X"]}}).status_code == 400
    assert server.query("SELECT attrs::text FROM study WHERE study_uid = $1", study) == before


def test_undo_with_the_cli_brings_the_old_values_back(server: Archive) -> None:
    s = _study(server, count=1, patient_name="OLD^NAME")
    study = s["study"]
    assert (
        _update(
            server, study, {"PatientName": {"vr": "PN", "Value": [{"Alphabetic": "NEW^NAME"}]}}
        ).status_code
        == 200
    )
    run = _cli(server, "update", study, "--undo")
    assert run.returncode == 0, run.stderr
    [entry] = _studies(server, StudyInstanceUID=study)
    assert _value(entry, "00100010") == {"Alphabetic": "OLD^NAME"}
    ds = pydicom.dcmread(io.BytesIO(next(iter(_files_of(server, study).values()))))
    assert str(ds.PatientName) == "OLD^NAME"
    history = httpx.get(f"{server.process.base}/admin/studies/{study}/updates").json()
    assert [h["kind"] for h in history] == ["update", "undo"]
    assert history[0]["undone"] is True
    # the CLI sets values too
    run = _cli(server, "update", study, "--set", "PatientID=CLI42", "--set", "PatientSex=M")
    assert run.returncode == 0, run.stderr
    assert _value(_studies(server, StudyInstanceUID=study)[0], "00100020") == "CLI42"


def test_delete_and_trash_from_the_cli(server: Archive) -> None:
    s = _study(server, count=2, series_count=2, patient_id="CLI-TRASH")
    study, (first, _) = s["study"], s["series"]
    done = _cli(server, "delete", study, "--series", first)
    assert done.returncode == 0, done.stderr
    assert "deleted 2 instances" in done.stdout
    listed = _cli(server, "trash", "list")
    assert listed.returncode == 0, listed.stderr
    [line] = [row for row in listed.stdout.splitlines() if row.startswith(study)]
    assert line.split("\t")[1:2] == ["CLI-TRASH"] and line.split("\t")[4] == "2"
    kept = _cli(server, "trash", "empty", "--older-than", "1d")
    assert kept.returncode == 0 and "purged 0" in kept.stdout
    back = _cli(server, "trash", "restore", study)
    assert back.returncode == 0 and "restored 2 instances" in back.stdout, back.stderr
    assert _value(_studies(server, StudyInstanceUID=study)[0], "00201208") == 4
    for bad, says in [
        (("delete", "1.2.x"), "UID"),
        (("delete", study, "--instance", "1.2.3"), "--series"),
        (("delete", "1.2.999999"), "no study"),
        (("trash", "restore", "1.2.999999"), "nothing of study"),
        (("trash", "empty", "--older-than", "soon"), "not an age"),
        (("update", study), "--set"),
        (("update", study, "--set", "Modality=MR"), "Modality"),
        (("update", study, "--set", "PatientID"), "KEYWORD=VALUE"),
    ]:
        refused = _cli(server, *bad)
        assert refused.returncode != 0, bad
        assert says in refused.stderr, (bad, refused.stderr)
        assert "Traceback" not in refused.stderr


def test_merge_patients(server: Archive) -> None:
    a1 = _study(server, count=1, patient_id="MRG-A", patient_name="A^ONE")
    a2 = _study(server, count=1, patient_id="MRG-A", patient_name="A^ONE")
    b = _study(server, count=1, patient_id="MRG-B", patient_name="B^TWO")
    r = httpx.post(
        f"{server.process.base}/admin/patients/merge",
        json={"source": {"PatientID": "MRG-A"}, "target": {"PatientID": "MRG-B"}},
    )
    assert r.status_code == 200, r.text
    assert sorted(r.json()["studies"]) == sorted([a1["study"], a2["study"]])
    assert _studies(server, PatientID="MRG-A") == []
    merged = _studies(server, PatientID="MRG-B")
    assert len(merged) == 3
    assert {_value(e, "00100010")["Alphabetic"] for e in merged} == {"B^TWO"}
    assert b["study"] in {_value(e, "0020000D") for e in merged}
    # nothing to merge, malformed
    again = httpx.post(
        f"{server.process.base}/admin/patients/merge",
        json={"source": {"PatientID": "MRG-A"}, "target": {"PatientID": "MRG-B"}},
    )
    assert again.status_code == 404
    for body in [
        {"source": {}, "target": {"PatientID": "X"}},
        {"source": {"PatientID": "X"}},
        {"source": {"PatientID": "X", "Modality": "CT"}, "target": {"PatientID": "Y"}},
        {"source": {"PatientID": "S"}, "target": {"PatientID": "S"}},
    ]:
        assert (
            httpx.post(f"{server.process.base}/admin/patients/merge", json=body).status_code == 400
        ), body


def test_every_change_is_in_the_audit_trail(server: Archive) -> None:
    s = _study(server, count=1, patient_id="AUD1")
    study = s["study"]
    assert _update(server, study, {"PatientID": {"vr": "LO", "Value": ["AUD2"]}}).status_code == 200
    assert server.http.delete(f"/studies/{study}").status_code == 204
    assert (
        httpx.post(server.process.base + "/admin/trash/restore", json={"study": study}).status_code
        == 200
    )
    rows = server.query(
        "SELECT action, who, detail::text FROM audit_event WHERE $1 = ANY(study_uids)"
        " AND detail IS NOT NULL ORDER BY id",
        study,
    )
    assert [r[0] for r in rows] == ["update", "delete", "restore"]
    assert all(r[1] == "anonymous" for r in rows)
    assert '"AUD1"' in rows[0][2] and '"AUD2"' in rows[0][2]  # old and new values
