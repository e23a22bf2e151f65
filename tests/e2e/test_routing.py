"""Routing (issue #17) to archives nobody here wrote: Orthanc (Debian) over DICOMweb
(STOW-RS, PS3.18 10.5) and over DIMSE (C-STORE, PS3.4 B), and dcmtk's storescp, which
keeps every C-STORE it receives as a file of its own, so that what was sent twice shows.

Each test runs in a private network namespace (tests/netns.py) with its peers: they
listen on every address, and there nothing outside can reach them."""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from conftest import Archive, multipart, pictor_cli, until
from netns import isolated, outside_is_unreachable
from orthanc import Orthanc
from server import PictorProcess, free_port
from synth import ct_slice, new_uids

FAST = {
    "PICTOR_STABLE_SECONDS": "1",
    "PICTOR_ROUTE_BACKOFF_SECONDS": "0.5",
    "PICTOR_LOG_LEVEL": "info",
}


def _cli(data: Path, *args: str, stdin: str | None = None) -> str:
    done = pictor_cli("route", *args, data_dir=data, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _status(data: Path, *name: str) -> Any:
    return json.loads(_cli(data, "status", *name, "--json"))


def _as(data: bytes, **changes: str) -> bytes:
    ds = dcmread(io.BytesIO(data))
    for key, value in changes.items():
        setattr(ds, key, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _rle(data: bytes) -> bytes:
    ds = dcmread(io.BytesIO(data))
    ds.compress(RLELossless)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _to_orthanc(tmp: Path) -> None:
    # A: DICOMweb, takes everything; B: DIMSE, refuses RLE, so Pictor must transcode
    web = Orthanc(tmp / "orthanc-a", "ARCHIVEA").start()
    dimse = Orthanc(tmp / "orthanc-b", "ARCHIVEB", RleTransferSyntaxAccepted=False).start()
    data = tmp / "data"
    server = PictorProcess(data, workers=1, env=FAST)
    try:
        assert outside_is_unreachable("10.255.255.1", 80)  # no way out of the namespace
        server.start()
        _cli(data, "add", "ct-web", "--when", "Modality=CT", "--to", f"dicomweb:{web.dicomweb}")
        _cli(
            data, "add", "all-dimse", "--on", "instance.created",
            "--to", f"dimse:{dimse.aet}@127.0.0.1:{dimse.dicom_port}",
        )  # fmt: skip
        # de-identified copies (PS3.15 E) of the same studies, to both archives
        _cli(data, "add", "research", "--when", "Modality=CT", "--deidentify", "basic",
             "--to", f"dicomweb:{web.dicomweb}")  # fmt: skip
        _cli(
            data, "add", "research-dimse", "--on", "instance.created",
            "--deidentify", "basic,retain-dates",
            "--to", f"dimse:{dimse.aet}@127.0.0.1:{dimse.dicom_port}",
        )  # fmt: skip
        ct_study, ct_series = new_uids()
        ct = [ct_slice(ct_study, ct_series, i, rows=64, cols=64) for i in range(3)]
        ct[2] = _rle(ct[2])
        mr_study, mr_series = new_uids()
        mr = [
            _as(ct_slice(mr_study, mr_series, i, rows=64, cols=64), Modality="MR") for i in range(2)
        ]
        archive = Archive(server)
        assert archive.stow(multipart(ct)).status_code == 200
        assert archive.stow(multipart(mr)).status_code == 200

        # over DICOMweb: the CT study once stable, byte for byte as stored; not the MR one
        got = until(lambda: len(web.instances_of(ct_study)) == 3 and web.instances_of(ct_study),
                     what="the CT study on Orthanc A")  # fmt: skip
        sent = {dcmread(io.BytesIO(d)).SOPInstanceUID: d for d in ct}
        for uid, orthanc_id in got.items():
            assert web.file(orthanc_id) == sent[uid]
        # over DIMSE: every instance as it came; the RLE one decoded, pixels unchanged
        until(lambda: len(dimse.instances_of(ct_study)) == 3, what="the CT study on B")
        until(lambda: len(dimse.instances_of(mr_study)) == 2, what="the MR study on B")
        time.sleep(2)  # the MR study is stable now too: the CT route still leaves it out
        assert web.instances_of(mr_study) == {}
        rle_uid = dcmread(io.BytesIO(ct[2])).SOPInstanceUID
        there = dcmread(io.BytesIO(dimse.file(dimse.instances_of(ct_study)[rle_uid])))
        assert there.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert there.SOPInstanceUID == rle_uid
        assert (there.pixel_array == dcmread(io.BytesIO(ct[2])).pixel_array).all()

        # the de-identified copies: new UIDs, one study each, no name, pixels unchanged
        pixels = sorted(dcmread(io.BytesIO(d)).pixel_array.tobytes() for d in ct)
        for peer, count in ((web, 3), (dimse, 5)):
            found = until(lambda p=peer, c=count: len(_others(p, {ct_study, mr_study})) == c
                           and _others(p, {ct_study, mr_study}), what="de-identified copies")  # fmt: skip
            copies = [dcmread(io.BytesIO(peer.file(i))) for i in found]
            assert all(c.PatientIdentityRemoved == "YES" for c in copies)
            assert all(c.PatientName != "DOE^JANE" and c.PatientID != "PAT0001" for c in copies)
            cts = [c for c in copies if c.Modality == "CT"]
            assert len({c.StudyInstanceUID for c in cts}) == 1
            assert sorted(c.pixel_array.tobytes() for c in cts) == pixels
            if peer is dimse:  # retain-dates; the RLE instance decoded, then de-identified
                assert all(c.StudyDate == dcmread(io.BytesIO(ct[0])).StudyDate for c in cts)
                assert {c.file_meta.TransferSyntaxUID for c in cts} == {ExplicitVRLittleEndian}
            else:
                assert all(not c.get("StudyDate") for c in cts)
        routes = {r["name"]: r for r in _status(data)}
        assert routes["ct-web"]["sent"] == 3 and routes["all-dimse"]["sent"] == 5
        assert routes["ct-web"]["to"] == f"dicomweb:{web.dicomweb}"
        assert routes["ct-web"]["when"][0]["keyword"] == "Modality"
        studies = _status(data, "ct-web")
        assert [(s["study"], s["state"], s["sent"]) for s in studies] == [(ct_study, "done", 3)]

        # a manual export sends the study again, whatever was acknowledged
        admin = httpx.post(f"{server.base}/admin/studies/{ct_study}/export/ct-web", timeout=30)
        assert admin.status_code == 202, admin.text
        again = until(lambda: (s := _status(data, "ct-web")[0])["cause"] == "manual"
                       and s["state"] == "done" and s, what="the export")  # fmt: skip
        assert again["sent"] == 3
        archive.http.close()
    finally:
        server.stop()
        web.stop()
        dimse.stop()


def _others(peer: Orthanc, known: set[str]) -> list[str]:
    """Orthanc's ids of the instances it holds outside the ``known`` studies."""
    found = httpx.post(
        f"{peer.url}/tools/find", json={"Level": "Instance", "Query": {}, "Expand": True},
        timeout=30,
    ).json()  # fmt: skip
    studies = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"] for s in peer.get("/studies?expand")}
    return [i["ID"] for i in found if studies.get(_study_of(peer, i)) not in known]


def _study_of(peer: Orthanc, instance: dict[str, Any]) -> str:
    return str(peer.get(f"/series/{instance['ParentSeries']}")["ParentStudy"])


@pytest.mark.slow
def test_routes_forward_to_orthanc_over_dicomweb_and_dimse(tmp_path: Path) -> None:
    isolated(_to_orthanc, tmp_path)


def _storescp(folder: Path, port: int) -> subprocess.Popen[bytes]:
    folder.mkdir(exist_ok=True)
    # --unique-filenames: a second C-STORE of an instance is a second file
    # (dcmtk's: pynetdicom installs a storescp of its own earlier on the PATH)
    return subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(folder), "-uf", "+xa", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _outage_and_restart(tmp: Path) -> None:
    data = tmp / "data"
    received = tmp / "received"
    port = free_port()
    server = PictorProcess(data, workers=1, env=FAST).start()
    peer = None
    try:
        _cli(data, "add", "to-scp", "--on", "instance.created",
             "--to", f"dimse:STORESCP@127.0.0.1:{port}")  # fmt: skip
        study, series = new_uids()
        archive = Archive(server)
        assert archive.stow(multipart([ct_slice(study, series, i, rows=32, cols=32)
                                       for i in range(3)])).status_code == 200  # fmt: skip
        # nobody listens: the job fails, says why, and waits to be tried again
        failing = until(lambda: (s := _status(data, "to-scp")) and s[0]["lastError"] and s,
                         what="a failed attempt")  # fmt: skip
        assert failing[0]["state"] == "waiting" and failing[0]["sent"] == 0
        assert "STORESCP@127.0.0.1" in failing[0]["lastError"]
        archive.http.close()
        server.stop()  # the queue is in PostgreSQL: a restart resumes it
        peer = _storescp(received, port)
        server = PictorProcess(data, port=server.port, workers=1, env=FAST).start()
        until(lambda: _status(data, "to-scp")[0]["state"] == "done", what="the retry")
        assert len(list(received.iterdir())) == 3
        # two more instances: only they are sent, the acknowledged three never again
        archive = Archive(server)
        assert archive.stow(multipart([ct_slice(study, series, i, rows=32, cols=32)
                                       for i in range(3, 5)])).status_code == 200  # fmt: skip
        until(lambda: _status(data)[0]["sent"] == 5, what="the two new instances")
        time.sleep(1.5)
        names = sorted(p.name for p in received.iterdir())
        assert len(names) == 5, names
        archive.http.close()
    finally:
        server.stop()
        if peer is not None:
            peer.terminate()
            peer.wait(10)


@pytest.mark.slow
def test_a_dead_destination_is_retried_across_a_restart_and_nothing_goes_twice(
    tmp_path: Path,
) -> None:
    isolated(_outage_and_restart, tmp_path)
