"""Transcoded frames decoded from the byte ranges the index recorded
(app.codec.transcode): the same pixels as pydicom decoding the stored file, and the
file itself when the ranges do not hold a decodable frame."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pydicom
import pytest
from pydicom.encaps import get_frame
from pydicom.pixels import pixel_array

from app.codec import pool
from app.codec.transcode import FrameMismatch, PixelInfo, encode_frame, encode_frame_of_instance
from app.dicom.uids import EXPLICIT_VR_LE, J2K_LOSSLESS, RLE_LOSSLESS
from app.services import retrieve
from app.services.retrieve import StoredInstance
from app.storage.memory import MemoryBlobStore

from synth import ct_slice, new_uids


def _instance(syntax: str) -> tuple[bytes, tuple[int, int], PixelInfo]:
    """A stored instance's bytes, where its one frame lies in them, and its pixel
    attributes as the index records them."""
    study, series = new_uids()
    ds = pydicom.dcmread(io.BytesIO(ct_slice(study, series, 1, rows=64, cols=64, seed=3)))
    if syntax != EXPLICIT_VR_LE:
        ds.compress(syntax, generate_instance_uid=False)
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    else:
        frame = ds.PixelData
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    offset = data.find(frame)
    assert offset > 0
    return data, (offset, len(frame)), PixelInfo.of(pydicom.dcmread(io.BytesIO(data)))


@pytest.fixture(params=[J2K_LOSSLESS, RLE_LOSSLESS, EXPLICIT_VR_LE])
def stored(request: pytest.FixtureRequest) -> tuple[bytes, tuple[int, int], PixelInfo]:
    return _instance(request.param)


@pytest.fixture(params=[J2K_LOSSLESS, RLE_LOSSLESS])
def compressed(request: pytest.FixtureRequest) -> tuple[bytes, tuple[int, int], PixelInfo]:
    return _instance(request.param)


def _want(data: bytes) -> bytes:
    return np.ascontiguousarray(pixel_array(pydicom.dcmread(io.BytesIO(data)), index=0)).tobytes()


def test_a_frame_from_its_own_bytes_equals_pydicoms_decoding_of_the_file(
    stored: tuple[bytes, tuple[int, int], PixelInfo],
) -> None:
    data, (offset, length), info = stored
    frame = data[offset : offset + length]
    assert encode_frame(frame, info, EXPLICIT_VR_LE) == _want(data)
    assert encode_frame_of_instance(data, 0, EXPLICIT_VR_LE) == _want(data)


def test_bytes_that_hold_no_frame_say_so(
    compressed: tuple[bytes, tuple[int, int], PixelInfo],
) -> None:
    data, _, info = compressed
    with pytest.raises(FrameMismatch):
        encode_frame(data[:128], info, EXPLICIT_VR_LE)


def test_the_service_falls_back_to_the_whole_instance(
    compressed: tuple[bytes, tuple[int, int], PixelInfo],
) -> None:
    """Ranges that do not hold a decodable frame: the retrieve service decodes the
    instance's whole bytes instead (through a real blob store and codec worker)."""
    data, (offset, length), info = compressed

    async def run() -> bytes:
        store = MemoryBlobStore()
        upload = store.create_temp()
        await upload.write(data)
        await upload.finish()
        await store.settle(await store.publish([(upload, "s/s/i.dcm")]))
        inst = StoredInstance(
            sop_instance_uid="1.2.3",
            series_uid="1.2",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax=info.syntax,
            file_key="s/s/i.dcm",
            file_size=len(data),
            file_sha256="",
            number_of_frames=1,
            frame_offsets=[0],  # the file's first bytes: not the frame
            frame_lengths=[min(128, length)],
            frame_first=[0],
            bits_allocated=info.bits_allocated,
            bulk=b"[]",
            bits_stored=info.bits_stored,
            samples_per_pixel=info.samples,
            photometric=info.photometric,
            rows=info.rows,
            columns=info.columns,
            pixel_representation=info.pixel_representation,
            planar_configuration=int(info.planar),
        )
        try:
            return await retrieve.encoded_frame(store, inst, 1, EXPLICIT_VR_LE)
        finally:
            pool.shutdown()

    assert asyncio.run(run()) == _want(data)


def test_jpeg_2000_on_every_core_only_where_it_gives_what_pydicom_gives() -> None:
    """A JPEG 2000 frame is decoded with a thread per core when its codestream's SIZ
    marker (ISO/IEC 15444-1 A.5.1) agrees with the recorded attributes; where it does
    not (another signedness or precision than Pixel Representation and Bits Stored, a
    JP2 file instead of a codestream), pydicom's decoder and its corrections take it,
    so the answer is always pydicom's."""
    from dataclasses import replace

    from app.codec.transcode import _j2k_on_all_cores, frame_array

    data, (offset, length), info = _instance(J2K_LOSSLESS)
    frame = data[offset : offset + length]
    want = pixel_array(pydicom.dcmread(io.BytesIO(data)), index=0)
    fast = _j2k_on_all_cores(frame, info)
    assert fast is not None and fast.dtype == want.dtype and np.array_equal(fast, want)
    assert np.array_equal(frame_array(frame, info), want)
    for other in (
        replace(info, pixel_representation=1 - info.pixel_representation),
        replace(info, bits_stored=info.bits_stored - 1),
        replace(info, rows=info.rows + 1),
        replace(info, samples=3, photometric="YBR_FULL"),
    ):
        assert _j2k_on_all_cores(frame, other) is None, other
    jp2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + frame
    assert _j2k_on_all_cores(jp2, info) is None
    assert _j2k_on_all_cores(frame[:30], info) is None
