"""``GET /dicom-web/studies/{study}?deidentify=basic`` (issue #17) on a real server: the
study de-identified by PS3.15 Annex E as multipart/related and as a ZIP archive, read
back with dicomweb-client and pydicom; the same new UIDs on every export; what was
wrong with a bad option said with a 400."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from conftest import Archive, Pictor, multipart
from synth import ct_slice, new_uids


def test_a_study_exported_de_identified(tmp_path: Path, pictor: Pictor) -> None:
    server = pictor(tmp_path / "data", workers=1)
    study, series = new_uids()
    sent = [ct_slice(study, series, i, rows=32, cols=32, patient_name="SMITH^JOHN",
                     patient_id="MRN-778899") for i in range(3)]  # fmt: skip
    archive = Archive(server)
    try:
        assert archive.stow(multipart(sent)).status_code == 200
    finally:
        archive.http.close()
    client = DICOMwebClient(url=server.dicomweb)
    got = client.retrieve_study(study, additional_params={"deidentify": "basic"})
    assert len(got) == 3
    originals = {str(dcmread(io.BytesIO(d)).SOPInstanceUID) for d in sent}
    for ds in got:
        assert ds.PatientIdentityRemoved == "YES"
        assert "SMITH" not in str(ds.PatientName) and "MRN-778899" not in str(ds.PatientID)
        assert ds.StudyInstanceUID != study and ds.SeriesInstanceUID != series
        assert str(ds.SOPInstanceUID) not in originals
        assert "StudyDate" not in ds or not ds.StudyDate
    assert len({ds.StudyInstanceUID for ds in got}) == 1  # still one study, one series
    assert len({ds.SeriesInstanceUID for ds in got}) == 1
    # the same UIDs again: consistent within the archive
    again = client.retrieve_study(study, additional_params={"deidentify": "basic,retain-dates"})
    assert {ds.SOPInstanceUID for ds in again} == {ds.SOPInstanceUID for ds in got}
    assert all(ds.StudyDate for ds in again)  # retained
    # as a ZIP archive, named by the new UIDs only
    r = httpx.get(
        f"{server.dicomweb}/studies/{study}",
        params={"deidentify": "basic"},
        headers={"Accept": "application/zip"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = z.namelist()
        assert len(names) == 3 and not any(study in n or series in n for n in names)
        for name in names:
            data = z.read(name)
            assert b"SMITH" not in data and b"MRN-778899" not in data
            assert name.endswith(f"/{dcmread(io.BytesIO(data)).SOPInstanceUID}.dcm")
    # stored as it was: the export changed nothing
    plain = client.retrieve_study(study)
    assert {str(ds.PatientName) for ds in plain} == {"SMITH^JOHN"}
    for bad, named in [("full", "basic"), ("basic,retain-uids", "unknown"), ("", "basic")]:
        r = httpx.get(f"{server.dicomweb}/studies/{study}", params={"deidentify": bad})
        assert r.status_code == 400 and named in r.json()["message"], (bad, r.text)
    assert (
        httpx.get(f"{server.dicomweb}/studies/1.2.3.4", params={"deidentify": "basic"}).status_code
        == 404
    )
