"""Grayscale rendering through one lookup table per frame (app.codec.render) gives the
display levels that the Modality LUT, VOI LUT and Presentation steps of PS3.3 C.11.1,
C.11.2 and C.7.6.3.1.2 give pixel by pixel; the references here are written from those
formulas, not from the code under test. Also: a frame is rendered from its own bytes and
the header alone, as from the whole file."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian

from app.codec.render import RenderOptions, render_frame, render_frame_bytes
from app.codec.transcode import PixelInfo

PNG = RenderOptions(media_type="image/png")


def dataset(values: np.ndarray, *, bits_stored: int = 12, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "2.25.1"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 * values.dtype.itemsize
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(values.dtype.kind == "i")
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = values.astype(values.dtype.newbyteorder("<")).tobytes()
    return ds


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def rendered(ds: Dataset, options: RenderOptions = PNG) -> np.ndarray:
    with Image.open(io.BytesIO(render_frame(part10(ds), 0, options))) as im:
        return np.asarray(im).astype(np.int32)


def window_linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """C.11.2.1.2.1, to 0..255."""
    return np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255, 0, 255)


def window_exact(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """C.11.2.1.3.2."""
    return np.clip((x - (c - w / 2)) / w * 255, 0, 255)


def window_sigmoid(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """C.11.2.1.3.1."""
    return 255 / (1 + np.exp(-4 * (x - c) / w))


def close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - np.round(want)).max() <= 1


RNG = np.random.default_rng(20)
SIGNED = RNG.integers(-2048, 2048, (37, 53)).astype(np.int16)
UNSIGNED = RNG.integers(0, 4096, (37, 53)).astype(np.uint16)


@pytest.mark.parametrize(
    ("function", "reference"),
    [("LINEAR", window_linear), ("LINEAR_EXACT", window_exact), ("SIGMOID", window_sigmoid)],
)
def test_signed_ct_rescale_then_the_datasets_window(function: str, reference: object) -> None:
    ds = dataset(
        SIGNED,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=[40, 300],
        WindowWidth=[400, 1500],
        VOILUTFunction=function,
    )
    hu = SIGNED.astype(float) * 2 - 1024
    close(rendered(ds), reference(hu, 40, 400))  # type: ignore[operator]


def test_the_requests_window_wins_and_monochrome1_is_inverted() -> None:
    ds = dataset(UNSIGNED, PhotometricInterpretation="MONOCHROME1", WindowCenter=100)
    ds.WindowWidth = 50
    got = rendered(ds, RenderOptions(media_type="image/png", window=(2000.0, 1000.0, "LINEAR")))
    close(got, 255 - window_linear(UNSIGNED.astype(float), 2000, 1000))


def test_without_a_window_the_frame_spans_its_own_range() -> None:
    ds = dataset(SIGNED, RescaleSlope=-1, RescaleIntercept=5)  # a decreasing rescale
    values = SIGNED.astype(float) * -1 + 5
    want = (values - values.min()) / (values.max() - values.min()) * 255
    close(rendered(ds), want)


def test_modality_lut_sequence_then_window() -> None:
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    table = (np.arange(4096) * 3 % 5000).astype(np.uint16)  # not monotonic
    lut.LUTData = table.tobytes()
    lut["LUTData"].VR = "OW"
    lut.ModalityLUTType = "HU"
    ds = dataset(UNSIGNED, ModalityLUTSequence=[lut])
    mapped = table[UNSIGNED].astype(float)
    close(
        rendered(ds, RenderOptions(media_type="image/png", window=(2500.0, 5000.0, "LINEAR"))),
        window_linear(mapped, 2500, 5000),
    )
    # no window: the range of the mapped values present in the frame
    want = (mapped - mapped.min()) / (mapped.max() - mapped.min()) * 255
    close(rendered(ds), want)


def test_voi_lut_sequence_without_a_window() -> None:
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    table = (np.sqrt(np.arange(4096) / 4095) * 20000).astype(np.uint16)
    lut.LUTData = table.tobytes()
    lut["LUTData"].VR = "OW"
    ds = dataset(UNSIGNED, VOILUTSequence=[lut])
    mapped = table[UNSIGNED].astype(float)
    close(rendered(ds), (mapped - mapped.min()) / (mapped.max() - mapped.min()) * 255)


def test_eight_bit_and_high_bits_outside_bits_stored() -> None:
    eight = RNG.integers(0, 256, (20, 30)).astype(np.uint8)
    ds = dataset(eight, bits_stored=8, WindowCenter=128, WindowWidth=256)
    close(rendered(ds), window_linear(eight.astype(float), 128, 256))
    # a 12-bit signed frame whose container holds bits above High Bit (an overlay, say):
    # the stored values are what pydicom reads (PS3.5 8.1.1), whatever sits above them
    noisy = (SIGNED.view(np.uint16) & 0x0FFF) | 0xA000
    ds = dataset(noisy.astype(np.uint16), PixelRepresentation=1, WindowCenter=0, WindowWidth=800)
    stored = pixel_array(ds).astype(float)
    assert stored.min() >= -2048 and stored.max() <= 2047
    close(rendered(ds), window_linear(stored, 0, 800))


def test_a_frame_from_its_bytes_and_the_header_as_from_the_whole_file() -> None:
    frames = [RNG.integers(-1000, 1000, (16, 24)).astype(np.int16) for _ in range(3)]
    ds = dataset(frames[0], RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=40)
    ds.WindowWidth = 400
    ds.NumberOfFrames = 3
    ds.PixelData = b"".join(f.tobytes() for f in frames)
    data = part10(ds)
    start = data.index(b"\xe0\x7f\x10\x00") + 12  # Pixel Data's value, explicit VR OW
    info = PixelInfo.of(pydicom.dcmread(io.BytesIO(data)))
    size = 16 * 24 * 2
    for index in range(3):
        frame = data[start + index * size : start + (index + 1) * size]
        assert render_frame_bytes(data[:start], frame, info, PNG) == render_frame(data, index, PNG)


def test_a_32_bit_frame_takes_the_per_pixel_path() -> None:
    values = RNG.integers(-100_000, 100_000, (10, 12)).astype(np.int32)
    ds = dataset(values, bits_stored=32, WindowCenter=0, WindowWidth=100_000)
    close(rendered(ds), window_linear(values.astype(float), 0, 100_000))
