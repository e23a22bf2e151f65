"""Decoding stored frames to native pixel data (PS3.5 8.2, Explicit VR Little Endian).

Runs in worker processes (:mod:`app.codec.pool`). pydicom 3 decodes with the installed
plugins: pylibjpeg-libjpeg (JPEG, JPEG-LS), pylibjpeg-openjpeg (JPEG 2000, HTJ2K),
pylibjpeg-rle / pydicom (RLE), and its own code for deflate and big endian.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array

_NATIVE = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
}


def can_decode(transfer_syntax: str) -> bool:
    """Whether frames of this transfer syntax can be decoded here."""
    if transfer_syntax in _NATIVE:
        return True
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def decode_frame(path: str, index: int) -> bytes:
    """Frame ``index`` (0-based) of the stored file as native little endian pixel bytes.

    Colour frames stored as YCbCr in JPEG come out as RGB (pydicom's default), as a
    decoder would show them; native colour keeps its Planar Configuration (0028,0006).
    """
    try:
        array = pixel_array(path, index=index)
    except (AttributeError, ValueError, NotImplementedError):
        # e.g. a deflated data set: read it whole first
        array = pixel_array(pydicom.dcmread(Path(path)), index=index)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if array.ndim == 3 and _planar(path):
        array = array.transpose(2, 0, 1)  # colour-by-plane, as the metadata says
    return np.ascontiguousarray(array).tobytes()


def _planar(path: str) -> bool:
    ds = pydicom.dcmread(Path(path), stop_before_pixels=True)
    syntax = ds.file_meta.TransferSyntaxUID
    return not syntax.is_compressed and ds.get("PlanarConfiguration", 0) == 1


def to_explicit_le(path: str) -> bytes:
    """The stored instance re-encoded as Explicit VR Little Endian, pixel data native
    (PS3.18 8.7.3.5.2: the default transfer syntax of application/dicom)."""
    import io

    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(Path(path))
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        ds.decompress()  # native pixels; photometric interpretation updated (e.g. to RGB)
    elif not syntax.is_little_endian and "PixelData" in ds:
        array = ds.pixel_array  # colour comes out interleaved (R1 G1 B1 R2 ...)
        ds.PixelData = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"))).tobytes()
        if "PlanarConfiguration" in ds:
            ds.PlanarConfiguration = 0
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    return out.getvalue()
