"""Transcoded frames decoded from the byte ranges the index recorded
(app.codec.transcode): the same pixels as pydicom decoding the stored file, and the
file itself when the ranges do not hold a decodable frame."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import get_frame
from pydicom.pixels import pixel_array

from app.codec.transcode import encode_frame
from app.dicom.uids import EXPLICIT_VR_LE, J2K_LOSSLESS, RLE_LOSSLESS

from synth import ct_slice, new_uids


@pytest.fixture(params=[J2K_LOSSLESS, RLE_LOSSLESS])
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, tuple[tuple[int, int]]]:
    study, series = new_uids()
    ds = pydicom.dcmread(io.BytesIO(ct_slice(study, series, 1, rows=64, cols=64, seed=3)))
    ds.compress(request.param, generate_instance_uid=False)
    path = tmp_path / "frame.dcm"
    ds.save_as(path, enforce_file_format=True)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    offset = path.read_bytes().find(frame)
    assert offset > 0
    return str(path), ((offset, len(frame)),)


def test_a_frame_from_its_ranges_equals_pydicoms_decoding_of_the_file(
    stored: tuple[str, tuple[tuple[int, int]]],
) -> None:
    path, ranges = stored
    want = np.ascontiguousarray(pixel_array(path, index=0)).tobytes()
    assert encode_frame(path, 0, EXPLICIT_VR_LE, ranges) == want


def test_ranges_that_hold_no_frame_fall_back_to_the_file(
    stored: tuple[str, tuple[tuple[int, int]]],
) -> None:
    path, ranges = stored
    want = np.ascontiguousarray(pixel_array(path, index=0)).tobytes()
    assert encode_frame(path, 0, EXPLICIT_VR_LE, ((0, 128),)) == want
