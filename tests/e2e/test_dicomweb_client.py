"""dicomweb-client, a DICOMweb client nobody here wrote, against a real server: it
stores (STOW-RS, PS3.18 10.5), retrieves instances, metadata and frames (WADO-RS,
10.4). Searches by it are in tests/integration/test_qido.py and retrieval in a chosen
transfer syntax in tests/integration/test_transcode.py, beside the fixtures they share.
"""

from __future__ import annotations

import pydicom
from dicomweb_client.api import DICOMwebClient

from conftest import Archive
from synth import ct_slice, new_uids


def test_dicomweb_client_store_instances(archive: Archive) -> None:
    """The real client nobody here wrote (dicomweb-client) stores a series."""
    study, series = new_uids()
    datasets = [
        pydicom.dcmread(pydicom.filebase.DicomBytesIO(ct_slice(study, series, i))) for i in range(3)
    ]
    client = DICOMwebClient(url=archive.url)
    result = client.store_instances(datasets=datasets)
    assert len(result.ReferencedSOPSequence) == 3
    assert result.RetrieveURL == f"{archive.url}/studies/{study}"
    rows = archive.query(
        "SELECT num_instances, num_series, modalities FROM study WHERE study_uid = $1", study
    )
    assert rows[0]["num_instances"] == 3 and rows[0]["num_series"] == 1
    assert rows[0]["modalities"] == ["CT"]


def test_dicomweb_client_retrieves_instances_and_metadata(archive: Archive, stored: dict) -> None:
    client = DICOMwebClient(url=archive.url)
    ds = stored["datasets"][2]
    got = client.retrieve_instance(stored["study"], stored["series"], ds.SOPInstanceUID)
    assert got.SOPInstanceUID == ds.SOPInstanceUID and got.PixelData == ds.PixelData
    meta = client.retrieve_series_metadata(stored["study"], stored["series"])
    assert len(meta) == 3


def test_frames_with_dicomweb_client(archive: Archive, stored: dict) -> None:
    ds = stored["datasets"][0]
    client = DICOMwebClient(url=archive.url)
    (frame,) = client.retrieve_instance_frames(
        stored["study"],
        stored["series"],
        ds.SOPInstanceUID,
        frame_numbers=[1],
        media_types=(("application/octet-stream", "*"),),
    )
    assert frame == ds.PixelData
