"""WADO-RS transcoding, ZIP archives and byte ranges against a real server.

Frames and instances are asked for in each compressed transfer syntax the archive can
write (PS3.18 8.7.3, Table 8.7.3-5: RLE, JPEG-LS, JPEG 2000, HTJ2K, JPEG Baseline), then
decoded here by pydicom, independently of the server (HTJ2K is written with OpenJPH and
read back with OpenJPEG): lossless syntaxes give back pydicom's own decoding of the
original bit for bit; lossy ones stay within their bounds.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.pixels import pixel_array
from test_wado import parts

from app.index.database import create_pool
from app.index.retrieve import Scope, StoredInstance, instance
from app.services.retrieve import pixel_info

from conftest import Archive, Pictor, embedded_dsn, multipart
from synth import big_multiframe, ct_slice, new_uids

RLE = "1.2.840.10008.1.2.5"
JLS = "1.2.840.10008.1.2.4.80"
JLS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"

#: requested media type (no transfer-syntax parameter: the type's default, PS3.18 Table
#: 8.7.3-5) -> the syntax that must come back
LOSSLESS_BY_DEFAULT = {
    "image/x-dicom-rle": RLE,
    "image/jls": JLS,
    "image/jp2": J2K_LOSSLESS,
    "image/jphc": HTJ2K_LOSSLESS,
}
LOSSY_STORED = {"image/jls": (JLS_NEAR,), "image/jp2": (J2K,)}
#: openjpeg and CharLS refuse images this small (3 x 3 pixels): the archive says so (406);
#: OpenJPH (HTJ2K) and RLE take them
TOO_SMALL = {"SC_rgb_small_odd.dcm", "SC_rgb_small_odd_jpeg.dcm"}


def instance_path(ds: Dataset) -> str:
    return (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def decode_part(header: Dataset, body: bytes, syntax: str, photometric: str) -> np.ndarray:
    """Decode one returned frame with pydicom, as a client would: an encapsulated
    single-frame data set with the instance's Image Pixel attributes."""
    ds = Dataset()
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored"):
        setattr(ds, keyword, header.get(keyword, header.BitsAllocated))
    ds.PixelRepresentation = header.get("PixelRepresentation", 0)
    ds.HighBit = ds.BitsStored - 1
    ds.PhotometricInterpretation = photometric
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.NumberOfFrames = 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([body])
    ds["PixelData"].VR = "OB"
    return pixel_array(ds, index=0, as_rgb=False)


def encodable(header: Dataset) -> bool:
    """What every one of RLE, JPEG-LS and JPEG 2000 lossless accepts (PS3.5 8.2)."""
    return header.get("SamplesPerPixel", 1) in (1, 3) and header.BitsAllocated in (8, 16)


def test_instances_indexed_before_the_pixel_columns_still_decode_from_their_frames(
    archive: Archive,
) -> None:
    """Rows stored before schemas/007 have no Pixel Representation / Planar
    Configuration columns: the index reads them from the stored metadata, and a
    frame is decoded from its own bytes as for a new row."""
    study, series = new_uids()
    ds = pydicom.dcmread(DicomBytesIO(ct_slice(study, series, 0, rows=64, cols=64)))
    ds.compress(J2K_LOSSLESS, generate_instance_uid=False)
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert archive.stow(multipart([out.getvalue()])).status_code == 200
    archive.query(
        "UPDATE instance SET pixel_representation = NULL, planar_configuration = NULL"
        " WHERE sop_instance_uid = $1",
        ds.SOPInstanceUID,
    )
    base = f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}"
    r = archive.http.get(
        f"{base}/frames/1", headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    assert r.status_code == 200
    ((_, body),) = parts(r)
    assert body == np.ascontiguousarray(ds.pixel_array).tobytes()
    row = archive.query(
        "SELECT pixel_representation FROM instance WHERE sop_instance_uid = $1", ds.SOPInstanceUID
    )
    assert row[0][0] is None  # the row itself was not rewritten

    async def lookup() -> StoredInstance:
        pool = await create_pool(embedded_dsn(archive.data_dir), min_size=1, max_size=1)
        try:
            return await instance(pool, Scope(study, series, ds.SOPInstanceUID))
        finally:
            await pool.close()

    found = asyncio.run(lookup())
    assert (found.pixel_representation, found.planar_configuration) == (
        ds.PixelRepresentation,
        None,
    )
    assert pixel_info(found) is not None  # so the frame is decoded from its own bytes


def test_frames_in_every_lossless_syntax_decode_to_the_original(
    archive: Archive, stored: dict
) -> None:
    """Every decodable reference file, frame 1 and the last frame, as RLE, JPEG-LS and
    JPEG 2000 lossless and HTJ2K lossless (each asked for by media type alone): bit for bit pydicom's own
    decoding of the stored original."""
    checked = refused = 0
    for ref in stored["corpus"]:
        header = pydicom.dcmread(ref.path, stop_before_pixels=True)
        if not encodable(header):
            continue
        base = instance_path(header)
        last = ref.number_of_frames
        photometric = header.PhotometricInterpretation
        if header.SamplesPerPixel == 3 and photometric.startswith("YBR"):
            photometric = "RGB"  # the archive sends decoded YCbCr as RGB, like pydicom
        # a frame listed twice is sent once (issue #13: frame lists are de-duplicated)
        indices = sorted({0, last - 1})
        for media, syntax in LOSSLESS_BY_DEFAULT.items():
            r = archive.http.get(
                f"{base}/frames/1,{last}", headers={"Accept": f'multipart/related; type="{media}"'}
            )
            if ref.name in TOO_SMALL and syntax in (JLS, J2K_LOSSLESS):
                assert r.status_code == 406 and "cannot encode" in r.json()["message"]
                refused += 1
                continue
            assert r.status_code == 200, (ref.name, media, r.text)
            got = parts(r)
            if ref.transfer_syntax in LOSSY_STORED.get(media, ()):
                # held only in lossy form: sent as stored (PS3.18 8.7.3)
                assert got[0][0] == f"{media}; transfer-syntax={ref.transfer_syntax}"
                continue
            assert [c for c, _ in got] == [f"{media}; transfer-syntax={syntax}"] * len(indices)
            for (_, body), index in zip(got, indices, strict=True):
                want = pixel_array(ref.path, index=index)
                have = decode_part(header, body, syntax, photometric)
                assert np.array_equal(have, want), (ref.name, syntax, index)
            checked += 1
    assert checked >= 45 and refused == 4


def test_lossy_frames_stay_within_their_bounds(archive: Archive, stored: dict) -> None:
    """JPEG-LS near-lossless keeps every sample within its error bound (2); JPEG 2000 at
    10:1 and JPEG Baseline (8-bit only) stay close to the original."""
    ct = pydicom.dcmread(DicomBytesIO(stored["files"][0]))
    want = ct.pixel_array.astype(np.float64)
    for syntax, media in ((JLS_NEAR, "image/jls"), (J2K, "image/jp2")):
        accept = f'multipart/related; type="{media}"; transfer-syntax={syntax}'
        r = archive.http.get(f"{instance_path(ct)}/frames/1", headers={"Accept": accept})
        assert r.status_code == 200, r.text
        ((ctype, body),) = parts(r)
        assert ctype == f"{media}; transfer-syntax={syntax}"
        have = decode_part(ct, body, syntax, "MONOCHROME2").astype(np.float64)
        error = np.abs(have - want)
        if syntax == JLS_NEAR:
            assert error.max() <= 2 and error.max() > 0
        else:
            assert 0 < error.mean() < 0.02 * (want.max() - want.min())
            assert len(body) < ct.Rows * ct.Columns * 2 / 5
    # JPEG Baseline: not for 16-bit CT (406 naming the offers), fine for 8-bit colour
    accept = f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}'
    r = archive.http.get(f"{instance_path(ct)}/frames/1", headers={"Accept": accept})
    assert r.status_code == 406 and "image/jp2" in r.json()["message"]
    rgb = next(r for r in stored["corpus"] if r.name == "examples_rgb_color.dcm")
    header = pydicom.dcmread(rgb.path, stop_before_pixels=True)
    r = archive.http.get(f"{instance_path(header)}/frames/1", headers={"Accept": accept})
    ((ctype, body),) = parts(r)
    assert ctype == f"image/jpeg; transfer-syntax={JPEG_BASELINE}" and body[:2] == b"\xff\xd8"
    have = decode_part(header, body, JPEG_BASELINE, "YBR_FULL_422")
    from pydicom.pixels import convert_color_space

    have = convert_color_space(have, "YBR_FULL_422", "RGB")
    error = np.abs(have.astype(np.int16) - pixel_array(rgb.path, index=0).astype(np.int16))
    assert error.mean() < 4


@pytest.mark.parametrize(
    "syntax", [RLE, JLS, J2K_LOSSLESS, J2K, JLS_NEAR, HTJ2K_LOSSLESS, HTJ2K_RPCL]
)
def test_instances_transcoded_to_each_syntax(archive: Archive, stored: dict, syntax: str) -> None:
    """application/dicom with a transfer-syntax parameter: a Part 10 file in that syntax,
    same SOP Instance UID; lossless ones keep every pixel of every frame, lossy ones say
    so (Lossy Image Compression "01", PS3.3 C.7.6.1.1.5)."""
    names = ("CT_small.dcm", "SC_rgb_rle_16bit_2frame.dcm", "emri_small_jpeg_ls_lossless.dcm")
    refs = [r for r in stored["corpus"] if r.name in names]
    assert len(refs) == 3
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={syntax}'
    for ref in refs:
        original = pydicom.dcmread(ref.path)
        r = archive.http.get(instance_path(original), headers={"Accept": accept})
        assert r.status_code == 200, (ref.name, r.text)
        ((ctype, body),) = parts(r)
        assert ctype == f"application/dicom; transfer-syntax={syntax}"
        got = pydicom.dcmread(DicomBytesIO(body))
        assert got.file_meta.TransferSyntaxUID == syntax
        assert got.SOPInstanceUID == original.SOPInstanceUID
        assert got.get("NumberOfFrames", 1) == original.get("NumberOfFrames", 1)
        if syntax in (JLS_NEAR, J2K):
            assert got.LossyImageCompression == "01"
            continue
        assert "LossyImageCompression" not in got or original.get("LossyImageCompression")
        assert np.array_equal(got.pixel_array, original.pixel_array), ref.name


def test_dicomweb_client_retrieves_in_a_chosen_syntax(archive: Archive, stored: dict) -> None:
    client = DICOMwebClient(url=archive.url)
    ct = pydicom.dcmread(DicomBytesIO(stored["files"][1]))
    uids = (ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    got = client.retrieve_instance(*uids, media_types=(("application/dicom", J2K_LOSSLESS),))
    assert got.file_meta.TransferSyntaxUID == J2K_LOSSLESS
    assert np.array_equal(got.pixel_array, ct.pixel_array)
    (frame,) = client.retrieve_instance_frames(
        *uids, frame_numbers=[1], media_types=(("image/jp2", J2K_LOSSLESS),)
    )
    assert np.array_equal(decode_part(ct, frame, J2K_LOSSLESS, "MONOCHROME2"), ct.pixel_array)


def test_zip_of_a_study_and_a_series_holds_the_files_as_stored(
    archive: Archive, stored: dict
) -> None:
    """Accept: application/zip (PS3.18 Table 8.7.4-1): one archive, streamed, with each
    instance byte for byte as stored, named study/series/sop.dcm."""
    study, series = stored["study"], stored["series"]
    expected = {}
    for data in stored["files"]:
        ds = pydicom.dcmread(DicomBytesIO(data), stop_before_pixels=True)
        expected[f"{study}/{series}/{ds.SOPInstanceUID}.dcm"] = data
    for path in (f"/studies/{study}", f"/studies/{study}/series/{series}"):
        r = archive.http.get(path, headers={"Accept": "application/zip"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        assert "attachment" in r.headers["content-disposition"]
        with zipfile.ZipFile(io.BytesIO(r.content)) as archive_file:
            assert archive_file.testzip() is None  # every CRC right
            assert {n: archive_file.read(n) for n in archive_file.namelist()} == expected
    # multipart preferred by q-value: no ZIP
    r = archive.http.get(
        f"/studies/{study}",
        headers={"Accept": 'multipart/related; type="application/dicom", application/zip;q=0.5'},
    )
    assert r.headers["content-type"].startswith("multipart/related")


def _bulk_uri(archive: Archive, stored: dict) -> tuple[str, bytes]:
    ct = pydicom.dcmread(DicomBytesIO(stored["files"][2]))
    meta = archive.http.get(f"{instance_path(ct)}/metadata").json()[0]
    return meta["7FE00010"]["BulkDataURI"][len(archive.url) :], ct.PixelData


def test_bulk_data_byte_ranges(archive: Archive, stored: dict) -> None:
    """Range: bytes=... on a BulkDataURI (RFC 9110 14): 206 with Content-Range, single
    part or inside the multipart part; 416 outside the value; several ranges: all."""
    uri, value = _bulk_uri(archive, stored)
    size = len(value)
    single = {"Accept": "application/octet-stream"}
    r = archive.http.get(uri, headers=single)
    assert r.status_code == 200 and r.content == value and r.headers["accept-ranges"] == "bytes"
    for spec, start, end in (("0-99", 0, 100), ("1000-", 1000, size), ("-10", size - 10, size)):
        r = archive.http.get(uri, headers={**single, "Range": f"bytes={spec}"})
        assert r.status_code == 206, spec
        assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
        assert r.content == value[start:end]
    r = archive.http.get(uri, headers={"Range": "bytes=100-199"})  # default: multipart
    assert r.status_code == 206 and parts(r) == [("application/octet-stream", value[100:200])]
    r = archive.http.get(uri, headers={**single, "Range": f"bytes={size}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
    r = archive.http.get(uri, headers={**single, "Range": "bytes=abc"})
    assert r.status_code == 416
    r = archive.http.get(uri, headers={**single, "Range": "bytes=0-1,5-6"})
    assert r.status_code == 200 and r.content == value
    # digits that are not ASCII ("²".isdigit() is true, int() refuses it), and more
    # digits than int() reads: 416, never a 500
    for spec in ("\u00b2-", "0-\u00b3", "-\u00b9", "0-" + "9" * 5000, "9" * 5000 + "-"):
        r = archive.http.get(uri, headers={**single, "Range": f"bytes={spec}".encode("latin-1")})
        assert r.status_code == 416, spec[:20]


def test_search_answers_while_workers_transcode(archive: Archive, tmp_path: Path) -> None:
    """Codec work runs in worker processes: a QIDO request made while several large
    instances are being encoded as JPEG 2000 is answered before any of them is done."""
    big = big_multiframe(tmp_path / "big.dcm", 200 * 512 * 512 * 2)
    data = big.read_bytes()
    assert archive.stow(multipart([data])).status_code == 200
    ds = pydicom.dcmread(big, stop_before_pixels=True)
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={J2K_LOSSLESS}'
    finished: list[float] = []

    def transcode() -> None:
        r = archive.http.get(instance_path(ds), headers={"Accept": accept})
        assert r.status_code == 200
        finished.append(time.monotonic())

    threads = [threading.Thread(target=transcode) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)  # the transcodes are under way
    r = archive.http.get("/studies", params={"PatientID": "PATBIG01"})
    answered = time.monotonic()
    for t in threads:
        t.join()
    assert r.status_code == 200 and len(finished) == 4
    assert answered < min(finished)


def test_a_replaced_instance_is_never_served_from_the_old_file(
    tmp_path: Path, pictor: Pictor
) -> None:
    """The frames fast path reuses a looked-up instance for later frames; after the
    instance is replaced (PICTOR_ON_DUPLICATE=replace) the next frame is the new one."""

    server = pictor(tmp_path / "data", env={"PICTOR_ON_DUPLICATE": "replace"})
    http = httpx.Client(base_url=server.dicomweb, timeout=60)
    study, series = new_uids()
    first = ct_slice(study, series, 0, rows=32, cols=32, seed=1)
    second = ct_slice(study, series, 0, rows=32, cols=32, seed=2)
    ds = pydicom.dcmread(DicomBytesIO(first))
    star = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    ctype = 'multipart/related; type="application/dicom"; boundary=pictor-test-boundary'
    assert (
        http.post(
            "/studies", content=multipart([first]), headers={"Content-Type": ctype}
        ).status_code
        == 200
    )
    for _ in range(3):  # every server process has it now
        r = http.get(f"{instance_path(ds)}/frames/1", headers={"Accept": star})
        assert parts(r)[0][1] == ds.PixelData
    assert (
        http.post(
            "/studies", content=multipart([second]), headers={"Content-Type": ctype}
        ).status_code
        == 200
    )
    new = pydicom.dcmread(DicomBytesIO(second)).PixelData
    assert new != ds.PixelData
    for _ in range(3):
        r = http.get(f"{instance_path(ds)}/frames/1", headers={"Accept": star})
        assert parts(r)[0][1] == new
    http.close()


def _markers(codestream: bytes) -> dict[int, bytes]:
    """The main header's marker segments of a JPEG 2000 codestream (ISO/IEC 15444-1
    A.2), by marker code, up to the first tile-part (SOT)."""
    assert codestream[:2] == b"\xff\x4f", "no SOC"
    found: dict[int, bytes] = {}
    at = 2
    while codestream[at] == 0xFF and codestream[at + 1] != 0x90:
        code = codestream[at + 1]
        length = int.from_bytes(codestream[at + 2 : at + 4], "big")
        found[code] = codestream[at + 4 : at + 2 + length]
        at += 2 + length
    return found


def test_htj2k_frames_are_high_throughput_codestreams(archive: Archive, stored: dict) -> None:
    """image/jphc (PS3.18 Table 8.7.3-5): an HTJ2K codestream (ISO/IEC 15444-15: a CAP
    marker saying Part 15) that is reversible; asked for as HTJ2K Lossless RPCL
    (1.2.840.10008.1.2.4.202, PS3.5 8.2.14), in RPCL progression order with TLM marker
    segments, so a viewer can draw a low resolution first. Both decode to the stored
    pixels, and are a fraction of the native size."""
    ct = pydicom.dcmread(DicomBytesIO(stored["files"][0]))
    for syntax in (HTJ2K_LOSSLESS, HTJ2K_RPCL):
        accept = f'multipart/related; type="image/jphc"; transfer-syntax={syntax}'
        r = archive.http.get(f"{instance_path(ct)}/frames/1", headers={"Accept": accept})
        assert r.status_code == 200, r.text
        ((ctype, body),) = parts(r)
        assert ctype == f"image/jphc; transfer-syntax={syntax}"
        markers = _markers(body)
        assert 0x50 in markers  # CAP
        pcap = int.from_bytes(markers[0x50][:4], "big")
        assert pcap & (1 << (32 - 15)), "CAP does not name Part 15 (HTJ2K)"
        cod = markers[0x52]
        assert cod[1] == 2, "progression order is not RPCL"
        assert cod[9] == 1, "the wavelet transform is not the reversible 5-3"
        if syntax == HTJ2K_RPCL:
            assert 0x55 in markers, "no TLM marker segment"
        have = decode_part(ct, body, syntax, "MONOCHROME2")
        assert np.array_equal(have, ct.pixel_array)
        assert len(body) < ct.Rows * ct.Columns * 2 * 0.6
