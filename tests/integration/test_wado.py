"""WADO-RS against a real server (PS3.18 10.4): metadata from the stored JSON, bulk data,
frames and instances as stored, and decoded to the default syntax. (Encoding to
compressed syntaxes, ZIP and Range: test_transcode.py; rendered: test_rendered.py.)"""

from __future__ import annotations

import email
import email.policy

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.filebase import DicomBytesIO

from conftest import Archive
from corpus import expected_frames

STAR = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def parts(response) -> list[tuple[str, bytes]]:  # type: ignore[no-untyped-def]
    """Split a multipart/related body with the standard library's MIME parser."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + response.content, policy=email.policy.HTTP)
    return [
        (p.get_content_type() + _params(p), p.get_payload(decode=True))
        for p in message.iter_parts()
    ]


def _params(part) -> str:  # type: ignore[no-untyped-def]
    ts = part.get_param("transfer-syntax")
    return f"; transfer-syntax={ts}" if ts else ""


def test_study_metadata_is_the_stored_json(archive: Archive, stored: dict) -> None:
    r = archive.http.get(f"/studies/{stored['study']}/metadata")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"
    items = r.json()
    assert [i["00080018"]["Value"][0] for i in items] == [
        d.SOPInstanceUID for d in stored["datasets"]
    ]
    first, ds = items[0], stored["datasets"][0]
    assert first["00100010"]["Value"] == [{"Alphabetic": str(ds.PatientName)}]
    assert first["00280010"]["Value"] == [ds.Rows]
    uri = first["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"{archive.url}/studies/{stored['study']}/series/")  # absolute, this host
    # the BulkDataURI resolves to the pixel data (PS3.18 10.4.1.1.5)
    bulk = archive.http.get(uri[len(archive.url) :])
    assert bulk.status_code == 200
    ((ctype, value),) = parts(bulk)
    assert ctype.startswith("application/octet-stream") and value == ds.PixelData


def test_metadata_levels_etag_gzip_and_proxy_headers(archive: Archive, stored: dict) -> None:
    ds = stored["datasets"][1]
    path = f"/studies/{stored['study']}/series/{stored['series']}/instances/{ds.SOPInstanceUID}/metadata"
    r = archive.http.get(path)
    assert len(r.json()) == 1 and r.json()[0]["00080018"]["Value"] == [ds.SOPInstanceUID]
    assert (
        len(
            archive.http.get(
                f"/studies/{stored['study']}/series/{stored['series']}/metadata"
            ).json()
        )
        == 3
    )
    etag = r.headers["ETag"]
    again = archive.http.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    raw = archive.http.get(path, headers={"Accept-Encoding": "gzip"})
    assert raw.headers.get("content-encoding") == "gzip" and raw.json() == r.json()
    proxied = archive.http.get(
        path,
        headers={
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "pacs.example",
            "X-Forwarded-Prefix": "/img",
        },
    )
    assert proxied.json()[0]["7FE00010"]["BulkDataURI"].startswith(
        "https://pacs.example/img/dicom-web/studies/"
    )
    assert proxied.headers["ETag"] != etag


def test_instances_as_stored_byte_for_byte(archive: Archive, stored: dict) -> None:
    r = archive.http.get(
        f"/studies/{stored['study']}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert r.status_code == 200
    assert [body for _, body in parts(r)] == stored["files"]  # byte for byte


def test_frames_as_stored_equal_the_stored_fragments(archive: Archive, stored: dict) -> None:
    for ref in stored["corpus"]:
        ds = pydicom.dcmread(ref.path, stop_before_pixels=True)
        base = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        numbers = ",".join(str(n) for n in range(1, ref.number_of_frames + 1))
        r = archive.http.get(f"{base}/frames/{numbers}", headers={"Accept": STAR})
        assert r.status_code == 200, (ref.name, r.text)
        got = parts(r)
        expected = expected_frames(ref.path)
        assert len(got) == len(expected), ref.name
        for (ctype, body), want in zip(got, expected):
            assert body == want or (len(want) == len(body) + 1 and want[:-1] == body), ref.name
            ts = ds.file_meta.TransferSyntaxUID
            assert (
                f"transfer-syntax={ts if ts != '1.2.840.10008.1.2' else '1.2.840.10008.1.2.1'}"
                in ctype
            )


@pytest.mark.parametrize(
    "suffix, status, fragment",
    [
        ("/frames/2", 404, "has 1 frame"),
        ("/frames/0", 400, "frame number"),
        ("/frames/1,x", 400, "frame number"),
        ("/bulk/00100010", 404, "no bulk data"),
    ],
)
def test_frame_and_bulk_errors(
    archive: Archive, stored: dict, suffix: str, status: int, fragment: str
) -> None:
    ds = stored["datasets"][0]
    r = archive.http.get(
        f"/studies/{stored['study']}/series/{stored['series']}/instances/{ds.SOPInstanceUID}{suffix}"
    )
    assert r.status_code == status and fragment in r.json()["message"]


def test_unknown_and_malformed_targets(archive: Archive, stored: dict) -> None:
    assert archive.http.get("/studies/1.2.3.4.5.6.7.8.9/metadata").status_code == 404
    assert archive.http.get("/studies/1.2.3.4.5.6.7.8.9").status_code == 404
    r = archive.http.get("/studies/1.2.x/metadata")
    assert r.status_code == 400 and "Study Instance UID" in r.json()["message"]
    r = archive.http.get(
        f"/studies/{stored['study']}/series/{stored['series']}/instances/1.2.3/metadata"
    )
    assert r.status_code == 404


def test_what_needs_transcoding_is_406_with_what_is_offered(archive: Archive, stored: dict) -> None:
    jpeg = next(r for r in stored["corpus"] if r.transfer_syntax == "1.2.840.10008.1.2.4.50")
    ds = pydicom.dcmread(jpeg.path, stop_before_pixels=True)
    base = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    # JPEG 2000 Part 2 cannot be written here: 406, naming what can be sent (the stored
    # JPEG first)
    r = archive.http.get(
        f"{base}/frames/1", headers={"Accept": 'multipart/related; type="image/jpx"'}
    )
    assert r.status_code == 406 and "image/jpeg" in r.json()["message"]
    assert "image/jls" in r.json()["message"]
    # image/jpeg without a parameter means JPEG Lossless SV1 (PS3.18 Table 8.7.3-5), but
    # an archive that holds only the lossy original sends that (PS3.18 8.7.3)
    r = archive.http.get(
        f"{base}/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'}
    )
    assert r.status_code == 200
    assert parts(r)[0][0] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    r = archive.http.get(
        base,
        headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.70'
        },
    )
    assert r.status_code == 406 and "1.2.840.10008.1.2.4.50" in r.json()["message"]


def test_frames_decoded_to_native_equal_pydicoms_decoding(archive: Archive, stored: dict) -> None:
    """Frames of every compressed (and big endian, deflated) syntax, asked for as native
    application/octet-stream (the default, Explicit VR Little Endian), equal pydicom's own
    decoding (lossless: bit for bit)."""
    import numpy as np
    from pydicom.pixels import pixel_array

    accept = 'multipart/related; type="application/octet-stream"'
    checked = 0
    for ref in stored["corpus"]:
        if ref.transfer_syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
            continue
        ds = pydicom.dcmread(ref.path)
        base = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        last = ref.number_of_frames
        indices = sorted({0, last - 1})  # a frame listed twice is sent once (issue #13)
        r = archive.http.get(f"{base}/frames/1,{last}", headers={"Accept": accept})
        assert r.status_code == 200, (ref.name, r.text)
        got = parts(r)
        assert [c for c, _ in got] == [
            "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        ] * len(indices)
        for (_, body), index in zip(got, indices, strict=True):
            want = pixel_array(ds, index=index)
            want = want.astype(want.dtype.newbyteorder("<"))
            native = not ds.file_meta.TransferSyntaxUID.is_compressed
            if want.ndim == 3 and native and ds.get("PlanarConfiguration", 0) == 1:
                want = want.transpose(2, 0, 1)  # native colour keeps its planar layout
            assert body == np.ascontiguousarray(want).tobytes(), ref.name
        checked += 1
    assert checked >= 10


def test_instances_default_to_explicit_vr_little_endian(archive: Archive, stored: dict) -> None:
    """No transfer-syntax parameter: Explicit VR Little Endian (PS3.18 8.7.3.5.2), decoded
    from whatever is stored; dicomweb-client's default retrieve reads it."""
    import numpy as np

    client = DICOMwebClient(url=archive.url)
    for ref in stored["corpus"]:
        if ref.transfer_syntax in ("1.2.840.10008.1.2.1",):
            continue
        original = pydicom.dcmread(ref.path)
        r = archive.http.get(
            f"/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}/instances/{original.SOPInstanceUID}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        assert r.status_code == 200, (ref.name, r.text)
        ((ctype, body),) = parts(r)
        assert ctype == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
        got = pydicom.dcmread(DicomBytesIO(body))
        assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        # decoded, not a new object: the same SOP Instance UID
        assert got.SOPInstanceUID == original.SOPInstanceUID, ref.name
        assert got.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID, ref.name
        assert np.array_equal(got.pixel_array, original.pixel_array), ref.name
    jpeg = next(r for r in stored["corpus"] if r.transfer_syntax == "1.2.840.10008.1.2.4.50")
    original = pydicom.dcmread(jpeg.path)
    got = client.retrieve_instance(
        original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID
    )
    assert got.SOPInstanceUID == original.SOPInstanceUID
