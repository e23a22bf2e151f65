"""STOW-RS against a real server, real PostgreSQL and real files (PS3.18 10.5)."""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import msgspec
import pydicom
import pytest

from conftest import BOUNDARY, Archive, content_type, multipart
from corpus import expected_frames, make_encapsulated_pdf, make_patched_copy, reference_files
from synth import ct_slice, new_uids


def referenced(response_json: dict) -> list[str]:
    return [i["00081155"]["Value"][0] for i in response_json.get("00081199", {}).get("Value", [])]


def failed(response_json: dict) -> list[tuple[str, int, str]]:
    out = []
    for item in response_json.get("00081198", {}).get("Value", []):
        sop = item["00081155"].get("Value", [""])[0]
        out.append(
            (sop, item["00081197"]["Value"][0], item.get("00000902", {}).get("Value", [""])[0])
        )
    return out


def instance_row(archive: Archive, sop: str) -> dict | None:
    rows = archive.query("SELECT * FROM instance WHERE sop_instance_uid = $1", sop)
    return dict(rows[0]) if rows else None


# -- content types and multipart forms ---------------------------------------------------


@pytest.mark.parametrize(
    "ctype",
    [
        'multipart/related; type="application/dicom"; boundary={b}',
        "multipart/related; type=application/dicom; boundary={b}",
        'multipart/related; boundary="{b}"; type="application/dicom"',
        "Multipart/Related; Boundary={b}",  # type omitted: application/dicom assumed
    ],
)
def test_quoted_and_unquoted_parameters(archive: Archive, ctype: str) -> None:
    study, series = new_uids()
    body = multipart([ct_slice(study, series, i) for i in range(2)])
    r = archive.stow(body, ctype.format(b=BOUNDARY))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    assert len(referenced(r.json())) == 2


def test_preamble_epilogue_and_parts_without_headers(archive: Archive) -> None:
    study, series = new_uids()
    files = [ct_slice(study, series, i) for i in range(2)]
    body = (
        b"preamble to be ignored\r\n"
        + multipart(files, part_type=None)
        + b"epilogue to be ignored\r\n"
    )
    r = archive.stow(body)
    assert r.status_code == 200, r.text
    assert len(referenced(r.json())) == 2


def test_single_part_application_dicom(archive: Archive) -> None:
    study, series = new_uids()
    data = ct_slice(study, series, 0)
    r = archive.stow(data, "application/dicom")
    assert r.status_code == 200, r.text
    (sop,) = referenced(r.json())
    row = instance_row(archive, sop)
    assert row is not None
    stored = archive.data_dir / "storage" / row["file_key"]
    assert stored.read_bytes() == data  # byte for byte, as received
    assert row["file_key"] == f"{study}/{series}/{sop}.dcm"  # findable by UID
    assert row["file_sha256"] == hashlib.sha256(data).hexdigest()


def test_wrong_media_type_is_415_before_the_body_is_read(archive: Archive) -> None:
    """PS3.18 10.5.3.1: the server answers 415 without waiting for a body it won't take."""
    with socket.create_connection(("127.0.0.1", archive.process.port), timeout=10) as sock:
        sock.sendall(
            b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        start = time.monotonic()
        answer = sock.recv(4096)
        assert time.monotonic() - start < 5
    assert answer.startswith(b"HTTP/1.1 415")
    assert b"application/dicom" in answer  # says what is accepted


def test_stow_rs_with_json_metadata_is_415(archive: Archive) -> None:
    r = archive.stow(b"{}", 'multipart/related; type="application/dicom+json"; boundary=x')
    assert r.status_code == 415
    assert "application/dicom" in r.json()["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"--"
        + BOUNDARY.encode()
        + b"\r\nContent-Type: application/dicom\r\n\r\nDICM-ish but never closed",
        b"this body has no boundary at all",
        b"",
    ],
)
def test_malformed_body_is_400_and_stores_nothing(archive: Archive, body: bytes) -> None:
    before = archive.query("SELECT count(*) AS n FROM instance")[0]["n"]
    r = archive.stow(body)
    assert r.status_code == 400
    assert r.json()["message"]
    assert archive.query("SELECT count(*) AS n FROM instance")[0]["n"] == before


@pytest.mark.parametrize(
    ("tail", "whole"),
    [
        (b"--" + BOUNDARY.encode() + b"\r\nbroken", 40),  # a 41st part that never ends
        (b"", 39),  # no delimiter after the 40th part: it may be truncated, so not whole
    ],
)
def test_a_body_that_breaks_after_40_parts_lists_every_complete_part(
    archive: Archive, tail: bytes, whole: int
) -> None:
    """Issue #19: 40 valid parts then a malformed part kept the first 32 (one committed
    batch) and dropped 8 from both sequences. Every part received whole (ended by a
    delimiter) is stored and listed; the fault is in the Warning; 202."""
    study, series = new_uids()
    complete = multipart([ct_slice(study, series, i, rows=16, cols=16) for i in range(40)])
    body = complete[: -len(f"--{BOUNDARY}--\r\n")] + tail
    r = archive.stow(body)
    assert r.status_code == 202, r.text
    referenced = r.json()["00081199"]["Value"]
    assert len(referenced) == whole
    assert "00081198" not in r.json()
    assert f"malformed multipart body after {whole} complete parts" in r.headers["warning"]
    stored = archive.query(
        "SELECT count(*) AS n FROM instance i JOIN study s ON s.pk = i.study_pk"
        " WHERE s.study_uid = $1",
        study,
    )[0]["n"]
    assert stored == whole
    assert not [n for n in archive.tmp_files() if n.endswith((".part", ".intent"))]


def test_bad_study_uid_in_url_is_400(archive: Archive) -> None:
    r = archive.stow(multipart([b"x"]), study="1.2.abc")
    assert r.status_code == 400
    assert "not a UID" in r.json()["message"]


# -- per-part failures -------------------------------------------------------------------


def _modified(study: str, series: str, index: int, **changes: object) -> bytes:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(ct_slice(study, series, index)))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = pydicom.filebase.DicomBytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def test_each_bad_part_fails_alone_with_its_reason(archive: Archive) -> None:
    study, series = new_uids()
    good = [ct_slice(study, series, i) for i in range(3)]
    parts = [
        good[0],
        b"this is not DICOM at all" * 10,  # not DICOM
        good[1][: len(good[1]) // 2],  # truncated in the pixel data
        _modified(study, series, 10, SOPInstanceUID=None),  # missing SOP Instance UID
        _modified(study, series, 11, SeriesInstanceUID="1.2.3.04"),  # malformed UID
        _modified(study, series, 12, StudyInstanceUID=None),  # missing Study UID
        good[2],
    ]
    r = archive.stow(multipart(parts))
    assert r.status_code == 202, r.text
    body = r.json()
    assert len(referenced(body)) == 2
    reasons = [(code, text) for _, code, text in failed(body)]
    assert [code for code, _ in reasons] == [0xC000, 0xC000, 0xA900, 0xA900, 0xA900]
    assert "DICM" in reasons[0][1] and "truncated" in reasons[1][1]
    assert "SOP Instance UID" in reasons[2][1] and "not a UID" in reasons[3][1]
    assert "Warning" in r.headers and r.headers["Warning"].startswith("299 pictor")
    # the good parts are really there; nothing of the bad ones is
    assert (
        archive.query(
            "SELECT count(*) AS n FROM instance i JOIN study s ON s.pk = i.study_pk"
            " WHERE s.study_uid = $1",
            study,
        )[0]["n"]
        == 2
    )
    assert not [n for n in archive.tmp_files() if n.endswith(".part")]


def test_study_uid_mismatch_ps3_18_10_5_1(archive: Archive) -> None:
    study, series = new_uids()
    other, other_series = new_uids()
    parts = [ct_slice(study, series, 0), ct_slice(other, other_series, 0)]
    r = archive.stow(multipart(parts), study=study)
    assert r.status_code == 202
    ((sop, code, text),) = failed(r.json())
    assert code == 0xA901 and text.startswith("Study Instance UID")  # ErrorComment is LO (64)
    assert other in r.headers["Warning"] and "PS3.18 10.5.1" in r.headers["Warning"]
    assert r.json()["00081190"]["Value"] == [f"{archive.url}/studies/{study}"]
    r = archive.stow(multipart([ct_slice(other, other_series, 1)]), study=study)
    assert r.status_code == 409  # none stored: conflict (PS3.18 Table 10.5.3-1)


def test_wrong_part_content_type_fails_that_part(archive: Archive) -> None:
    study, series = new_uids()
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.4\r\n".encode()
        + multipart([ct_slice(study, series, 0)])
    )
    r = archive.stow(body)
    assert r.status_code == 202
    assert "application/pdf" in failed(r.json())[0][2] or "application/pdf" in r.headers["Warning"]


# -- duplicates ---------------------------------------------------------------------------


def test_restore_identical_is_idempotent(archive: Archive) -> None:
    study, series = new_uids()
    files = [ct_slice(study, series, i) for i in range(4)]
    first = archive.stow(multipart(files))
    assert first.status_code == 200
    files_before = archive.storage_files()
    again = archive.stow(multipart(files + files[:1]))  # also twice in one request
    assert again.status_code == 200, again.text
    assert sorted(referenced(again.json())) == sorted(
        referenced(first.json()) + referenced(first.json())[:1]
    )
    row = archive.query("SELECT num_instances, num_series FROM study WHERE study_uid = $1", study)[
        0
    ]
    assert (row["num_instances"], row["num_series"]) == (4, 1)
    assert archive.storage_files() == files_before


def test_different_object_under_existing_uid_is_refused(archive: Archive) -> None:
    study, series = new_uids()
    original = ct_slice(study, series, 0)
    assert archive.stow(multipart([original])).status_code == 200
    changed = _modified(study, series, 0, PatientName="OTHER^PATIENT")
    r = archive.stow(multipart([changed]))
    assert r.status_code == 409
    ((sop, code, text),) = failed(r.json())
    assert code == 0x0111 and "already stored" in text
    row = instance_row(archive, sop)
    assert row is not None
    assert (archive.data_dir / "storage" / row["file_key"]).read_bytes() == original


def test_replace_setting_replaces(tmp_path: Path) -> None:
    from server import PictorProcess

    process = PictorProcess(
        tmp_path / "data", workers=1, env={"PICTOR_ON_DUPLICATE": "replace"}
    ).start()
    archive = Archive(process)
    try:
        study, series = new_uids()
        assert (
            archive.stow(multipart([ct_slice(study, series, i) for i in range(2)])).status_code
            == 200
        )
        changed = _modified(study, series, 0, PatientName="OTHER^PATIENT")
        r = archive.stow(multipart([changed]))
        assert r.status_code == 200, r.text
        (sop,) = referenced(r.json())
        row = instance_row(archive, sop)
        assert row is not None
        assert (archive.data_dir / "storage" / row["file_key"]).read_bytes() == changed
        assert len(archive.storage_files()) == 2  # the replaced file is gone
        counts = archive.query("SELECT num_instances FROM study WHERE study_uid = $1", study)
        assert counts[0]["num_instances"] == 2
    finally:
        archive.http.close()
        process.stop()


# -- reference corpus ---------------------------------------------------------------------


def test_reference_corpus_all_stored_with_frame_ranges(archive: Archive, tmp_path: Path) -> None:
    """Every transfer syntax in the corpus (plus JPEG-LS near-lossless copies, SR, SEG,
    encapsulated PDF): stored byte for byte, metadata ready, frame ranges exact."""
    refs = [r.path for r in reference_files()]
    refs.append(make_encapsulated_pdf(tmp_path))
    refs.append(make_patched_copy("JPEGLSNearLossless_16.dcm", tmp_path))
    body = multipart([p.read_bytes() for p in refs])
    r = archive.stow(body)
    assert r.status_code == 200, r.text
    assert len(referenced(r.json())) == len(refs)
    for path in refs:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = instance_row(archive, ds.SOPInstanceUID)
        assert row is not None, path.name
        stored = (archive.data_dir / "storage" / row["file_key"]).read_bytes()
        assert stored == path.read_bytes(), path.name
        assert row["transfer_syntax_uid"] == ds.file_meta.TransferSyntaxUID
        meta = msgspec.json.decode(row["metadata"])
        assert meta["00080018"]["Value"] == [ds.SOPInstanceUID]
        if "PixelData" not in pydicom.dcmread(path) or row["frame_offsets"] is None:
            assert row[
                "transfer_syntax_uid"
            ] == "1.2.840.10008.1.2.1.99" or "PixelData" not in pydicom.dcmread(path)
            continue
        firsts = list(row["frame_first"]) + [len(row["frame_offsets"])]
        frames = [
            b"".join(
                stored[o : o + n]
                for o, n in zip(
                    row["frame_offsets"][firsts[i] : firsts[i + 1]],
                    row["frame_lengths"][firsts[i] : firsts[i + 1]],
                )
            )
            for i in range(len(firsts) - 1)
        ]
        expected = expected_frames(path)
        assert len(frames) == len(expected), path.name
        for got, want in zip(frames, expected):
            assert got == want or (len(want) == len(got) + 1 and want[:-1] == got), path.name


def test_client_hanging_up_mid_upload_leaves_nothing(archive: Archive) -> None:
    study, series = new_uids()
    files = [ct_slice(study, series, i) for i in range(6)]
    body = multipart(files)
    with socket.create_connection(("127.0.0.1", archive.process.port), timeout=10) as sock:
        sock.sendall(
            (
                "POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: {content_type()}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
        )
        sock.sendall(body[: len(body) * 2 // 3])
        time.sleep(0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(n.endswith(".part") for n in archive.tmp_files()):
        time.sleep(0.1)
    assert not any(n.endswith(".part") for n in archive.tmp_files())
    assert archive.query("SELECT count(*) AS n FROM study WHERE study_uid = $1", study)[0]["n"] == 0
    assert not [f for f in archive.storage_files() if f.startswith(study)]


def test_concurrent_stores_of_the_same_instances(archive: Archive) -> None:
    """Several clients storing the same new instances at once: every request succeeds,
    each instance is stored once, and no stray file is left (the unique SOP Instance UID
    in the index decides who wins; the loser's file is removed)."""
    import threading

    import httpx

    study, series = new_uids()
    body = multipart([ct_slice(study, series, i) for i in range(6)])
    statuses: list[int] = []

    def send() -> None:
        with httpx.Client(timeout=60) as client:
            r = client.post(
                f"{archive.url}/studies", content=body, headers={"Content-Type": content_type()}
            )
            statuses.append(r.status_code)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 4
    rows = archive.query(
        "SELECT i.file_key FROM instance i JOIN study s ON s.pk = i.study_pk WHERE s.study_uid = $1",
        study,
    )
    assert len(rows) == 6
    on_disk = {f for f in archive.storage_files() if f.startswith(study)}
    assert on_disk == {r["file_key"] for r in rows}
    assert archive.query("SELECT num_instances FROM study WHERE study_uid = $1", study)[0][0] == 6


def test_concurrent_requests_that_share_new_studies_all_succeed(archive: Archive) -> None:
    """Four clients storing instances of the same new studies, interleaved (each request
    holds instances of ten studies, each study spread over all four clients), as
    several associations or upload threads of one modality do. Found by a benchmark: two
    index commits locked the studies they found and the ones they created in different
    orders and deadlocked, and one request got 503. Every request must succeed and every
    study count its instances."""
    import threading

    import httpx

    plan = [new_uids() for _ in range(25)]  # odd: each study reaches every client
    files = [
        ct_slice(study, series, i, rows=16, cols=16) for i in range(8) for study, series in plan
    ]
    per_client = [files[k::4] for k in range(4)]  # instance i of every study, round robin
    statuses: list[int] = []
    log = archive.data_dir / "pg" / "log"  # the embedded PostgreSQL's

    def deadlocks() -> int:
        return log.read_text(errors="replace").count("deadlock detected")

    before = deadlocks()

    def send(mine: list[bytes]) -> None:
        with httpx.Client(timeout=120) as client:
            for at in range(0, len(mine), 10):
                r = client.post(
                    f"{archive.url}/studies",
                    content=multipart(mine[at : at + 10]),
                    headers={"Content-Type": content_type()},
                )
                statuses.append(r.status_code)

    for _ in range(8):  # rounds of new studies: the race is not won every time
        threads = [threading.Thread(target=send, args=(p,)) for p in per_client]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(statuses) == {200}, statuses
        counts = archive.query(
            "SELECT num_instances FROM study WHERE study_uid = ANY($1::text[])",
            [study for study, _ in plan],
        )
        assert sorted(c[0] for c in counts) == [8] * len(plan)
        plan = [new_uids() for _ in range(25)]  # odd: each study reaches every client
        files = [
            ct_slice(study, series, i, rows=16, cols=16) for i in range(8) for study, series in plan
        ]
        per_client = [files[k::4] for k in range(4)]
    # not merely retried: the commits take their studies in one order, so none waits
    # for a deadlock to be detected (a second each)
    assert deadlocks() == before
