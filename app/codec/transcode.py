"""Transcoding stored pixel data between transfer syntaxes (PS3.5 8 and Annex A).

Runs in worker processes (:mod:`app.codec.pool`). pydicom 3 decodes with the installed
plugins: pylibjpeg-libjpeg (JPEG, JPEG-LS), pylibjpeg-openjpeg (JPEG 2000, HTJ2K),
pylibjpeg-rle / pydicom (RLE), and its own code for deflate and big endian. It encodes
RLE Lossless (pylibjpeg-rle or its own), JPEG-LS (pyjpegls) and JPEG 2000
(pylibjpeg-openjpeg); JPEG Baseline for 8-bit data is written with Pillow's libjpeg, and
HTJ2K lossless (PS3.5 8.2.14, A.4.11) with OpenJPH through imagecodecs.

The functions that the server process calls before it starts a response
(:func:`can_decode`, :func:`can_encode`) only look at what the index knows. The rest
run in a worker and take bytes, never a file: one frame's bytes (as the index recorded
their ranges at ingest) with the image pixel attributes the index recorded
(:class:`PixelInfo`), or a whole instance's bytes where a whole instance is needed
(re-encoding one, or a frame the recorded ranges do not hold whole).
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from app.dicom.uids import (
    EXPLICIT_VR_LE,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    J2K,
    J2K_LOSSLESS,
    JPEG_BASELINE,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    NATIVE_SYNTAXES,
    RLE_LOSSLESS,
)

#: Compressed syntaxes this archive can produce. Lossy ones use fixed, documented
#: settings: JPEG-LS near-lossless with an error bound of 2 (PS3.5 A.4.3), JPEG 2000 at
#: 10:1, JPEG Baseline at quality 90.
ENCODABLE = (
    RLE_LOSSLESS,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    J2K_LOSSLESS,
    J2K,
    JPEG_BASELINE,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
)
#: High-Throughput JPEG 2000, lossless: written by OpenJPH (imagecodecs), not pydicom
HTJ2K_TARGETS = (HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL)
LOSSY = {JPEG_LS_NEAR_LOSSLESS: "ISO_14495_1", J2K: "ISO_15444_1", JPEG_BASELINE: "ISO_10918_1"}
JLS_ERROR = 2
J2K_RATIO = 10.0
JPEG_QUALITY = 90


class TranscodeError(ValueError):
    """The pixel data cannot be converted as asked (and nothing was sent yet)."""


@functools.cache
def can_decode(transfer_syntax: str) -> bool:
    """Whether frames of this transfer syntax can be decoded here."""
    if transfer_syntax in NATIVE_SYNTAXES:
        return True
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


@functools.cache
def _encoder_available(target: str) -> bool:
    if target == JPEG_BASELINE:
        return True  # Pillow
    if target in HTJ2K_TARGETS:
        codecs = _imagecodecs()
        return codecs is not None and bool(codecs.HTJ2K.available)
    try:
        return bool(get_encoder(target).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_encode(
    target: str,
    *,
    bits_allocated: int | None,
    bits_stored: int | None,
    samples: int | None,
    photometric: str | None,
) -> bool:
    """Whether pixel data with these attributes can be encoded in ``target`` here.

    The limits are the transfer syntaxes' (PS3.5 8.2) and the encoders': RLE 8 or 16
    bits, JPEG-LS 2 to 16 bits, JPEG 2000 up to 16 here, JPEG Baseline 8 bits only; one
    or three samples per pixel; no lossy compression of palette indices.
    """
    if target not in ENCODABLE or not _encoder_available(target):
        return False
    if samples not in (1, 3) or bits_allocated is None:
        return False
    if target in LOSSY and photometric == "PALETTE COLOR":
        return False
    stored = bits_stored or bits_allocated
    if target == RLE_LOSSLESS:
        return bits_allocated in (8, 16)
    if target == JPEG_BASELINE:
        return bits_allocated == 8 and stored == 8
    if target in (JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS):
        return bits_allocated in (8, 16) and 2 <= stored <= 16
    return bits_allocated in (8, 16) and stored <= 16  # JPEG 2000, HTJ2K


@dataclass(frozen=True)
class PixelInfo:
    """The Image Pixel module (PS3.3 C.7.6.3) of a stored file, as a decoder leaves it."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    planar: bool
    syntax: str

    @property
    def decoded_photometric(self) -> str:
        """What decoded frames are: pydicom turns YCbCr (YBR_*) into RGB."""
        if self.samples == 3 and self.photometric.startswith("YBR"):
            return "RGB"
        return self.photometric

    @classmethod
    def of(cls, ds: pydicom.Dataset) -> PixelInfo:
        """The attributes of a parsed data set (a whole instance's bytes)."""
        return cls(
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            samples=int(ds.get("SamplesPerPixel", 1)),
            bits_allocated=int(ds.BitsAllocated),
            bits_stored=int(ds.get("BitsStored", ds.BitsAllocated)),
            pixel_representation=int(ds.get("PixelRepresentation", 0)),
            photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
            planar=int(ds.get("PlanarConfiguration", 0)) == 1,
            syntax=str(ds.file_meta.TransferSyntaxUID),
        )


class FrameMismatch(ValueError):
    """A frame's own bytes do not decode with the recorded attributes: the caller
    decodes the whole instance instead."""


def _options(info: PixelInfo) -> dict[str, Any]:
    return {
        "number_of_frames": 1,
        "rows": info.rows,
        "columns": info.columns,
        "samples_per_pixel": info.samples,
        "bits_allocated": info.bits_allocated,
        "bits_stored": info.bits_stored,
        "pixel_representation": info.pixel_representation,
        "photometric_interpretation": info.photometric,
        "planar_configuration": int(info.planar),
    }


def _little_endian(array: np.ndarray) -> np.ndarray:
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array


#: JPEG 2000 Part 1 syntaxes, decoded on every core (:func:`_j2k_on_all_cores`)
J2K_SYNTAXES = (J2K_LOSSLESS, J2K)
#: colour a JPEG 2000 decoder hands back as RGB (the multi-component transform undone)
_J2K_RGB = ("RGB", "YBR_ICT", "YBR_RCT")


def _j2k_on_all_cores(frame: bytes, info: PixelInfo) -> np.ndarray | None:
    """A JPEG 2000 codestream decoded by OpenJPEG with one thread per core when the
    machine is not busy (:func:`_threads`; imagecodecs), so one frame's latency is not
    one core's: pylibjpeg-openjpeg decodes on one thread. Only where the codestream's
    own header (SIZ, ISO/IEC 15444-1 A.5.1) agrees with the recorded attributes (size,
    components, precision = Bits Stored, signedness = Pixel Representation, no
    subsampling) and the decoder's output is what pydicom would give (grey, or colour
    that the decoder turns into RGB); None otherwise, and pydicom decodes it, with its
    corrections."""
    if len(frame) < 42 or frame[:4] != b"\xff\x4f\xff\x51":
        return None  # a JP2 file, or not a codestream
    width = int.from_bytes(frame[8:12], "big") - int.from_bytes(frame[16:20], "big")
    height = int.from_bytes(frame[12:16], "big") - int.from_bytes(frame[20:24], "big")
    components = int.from_bytes(frame[40:42], "big")
    if (width, height, components) != (info.columns, info.rows, info.samples):
        return None
    if len(frame) < 42 + 3 * components or (info.samples == 3 and info.photometric not in _J2K_RGB):
        return None
    for c in range(components):
        ssiz, dx, dy = frame[42 + 3 * c : 45 + 3 * c]
        signed, precision = bool(ssiz & 0x80), (ssiz & 0x7F) + 1
        if (dx, dy) != (1, 1) or signed != (info.pixel_representation == 1):
            return None
        if precision != info.bits_stored or info.bits_allocated not in (8, 16):
            return None
    codecs = _imagecodecs()
    if codecs is None or not codecs.JPEG2K.available:
        return None
    try:
        array = codecs.jpeg2k_decode(frame, numthreads=_threads())
    except Exception:  # noqa: BLE001 - whatever OpenJPEG says, pydicom decodes it instead
        return None
    kind = "i" if info.pixel_representation == 1 else "u"
    return np.asarray(array).astype(f"<{kind}{info.bits_allocated // 8}", copy=False)


_CORES = os.cpu_count() or 1


def _threads() -> int:
    """Threads for one decode: every core while no more tasks than cores are running
    (/proc/loadavg's fourth field, this one included: one client's frame), one when
    more are (several clients: the cores are busy already, and sharing them out
    further cost 4 % of throughput; benchmarks/README.md)."""
    try:
        with open("/proc/loadavg", "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return _CORES
    return _CORES if running <= _CORES else 1


@functools.cache
def _imagecodecs() -> Any:
    """imagecodecs (OpenJPEG with threads, OpenJPH), or None where it is not installed."""
    try:
        import imagecodecs
    except ImportError:
        return None
    return imagecodecs


def frame_array(frame: bytes, info: PixelInfo) -> np.ndarray:
    """One frame decoded from its own bytes (the compressed codestream of an
    encapsulated syntax, or the native pixel bytes), with pydicom's decoder and
    corrections, as :func:`pixel_array` on the file would give it (JPEG 2000 on every
    core where that gives the same, :func:`_j2k_on_all_cores`). Raises
    :class:`FrameMismatch` when the bytes and the attributes disagree."""
    if info.syntax in J2K_SYNTAXES:
        fast = _j2k_on_all_cores(frame, info)
        if fast is not None:
            return fast
    options = _options(info)
    if info.syntax in NATIVE_SYNTAXES:
        source, options["pixel_keyword"] = frame, "PixelData"
    else:
        source = encapsulate([frame])
    try:
        array, _ = get_decoder(info.syntax).as_array(source, index=0, **options)
    except (AttributeError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise FrameMismatch(str(exc)) from exc
    return _little_endian(array)


def _native_bytes(array: np.ndarray, info: PixelInfo) -> bytes:
    """Colour frames stored as YCbCr in JPEG come out as RGB (pydicom's default), as a
    decoder would show them; native colour keeps its Planar Configuration (0028,0006)."""
    if array.ndim == 3 and info.planar and info.syntax in NATIVE_SYNTAXES:
        array = array.transpose(2, 0, 1)  # colour-by-plane, as the metadata says
    return np.ascontiguousarray(array).tobytes()


def _file_frame(ds: pydicom.Dataset, index: int) -> np.ndarray:
    return _little_endian(pixel_array(ds, index=index))


def _parse(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _jpeg_baseline(array: np.ndarray) -> bytes:
    """One grayscale or RGB frame as a JPEG Baseline (ISO 10918-1 process 1) codestream.
    Colour is stored as YCbCr 4:2:2 (PS3.5 8.2.1: YBR_FULL_422)."""
    if array.dtype != np.uint8:
        raise TranscodeError("JPEG Baseline needs unsigned 8-bit pixel data")
    out = io.BytesIO()
    if array.ndim == 2:
        Image.fromarray(array, mode="L").save(out, "JPEG", quality=JPEG_QUALITY)
    else:  # subsampling 1 = 4:2:2
        Image.fromarray(array, mode="RGB").save(out, "JPEG", quality=JPEG_QUALITY, subsampling=1)
    return out.getvalue()


def _encode_options(info: PixelInfo, photometric: str, target: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "rows": info.rows,
        "columns": info.columns,
        "number_of_frames": 1,
        "samples_per_pixel": info.samples,
        "bits_allocated": info.bits_allocated,
        "bits_stored": info.bits_stored,
        "pixel_representation": info.pixel_representation,
        "photometric_interpretation": photometric,
        "planar_configuration": 0,
    }
    if target == JPEG_LS_NEAR_LOSSLESS:
        options["jls_error"] = JLS_ERROR
    elif target == J2K:
        options["j2k_cr"] = [J2K_RATIO]
    if target in (J2K, J2K_LOSSLESS):
        options["use_mct"] = False  # colour stays RGB: what the metadata's readers expect
    return options


def encoded_photometric(info: PixelInfo, target: str) -> str:
    """Photometric Interpretation of frames encoded in ``target`` (PS3.5 8.2): the
    decoded one, except that JPEG Baseline colour is YCbCr 4:2:2."""
    if target == JPEG_BASELINE and info.samples == 3:
        return "YBR_FULL_422"
    return info.decoded_photometric


def _htj2k(array: np.ndarray, target: str) -> bytes:
    """One frame as an HTJ2K codestream (ISO/IEC 15444-15), reversible (lossless), one
    tile, in OpenJPH's default RPCL progression, so that a viewer can show a lower
    resolution from the first bytes. For HTJ2K Lossless RPCL (PS3.5 8.2.14) the
    codestream also carries TLM marker segments and one tile-part per resolution, which
    lets a reader find each resolution without parsing the packets. Colour keeps its
    components (no multi-component transform): the frame stays RGB, as the metadata says."""
    rpcl = target == HTJ2K_LOSSLESS_RPCL
    try:
        return bytes(
            _imagecodecs().htj2k_encode(
                np.ascontiguousarray(array),
                reversible=True,
                rgb=False,
                tlm=rpcl,
                tilepart=1 if rpcl else None,
            )
        )
    except (ValueError, RuntimeError) as exc:
        raise TranscodeError(f"cannot encode as {UID(target).name}: {exc}") from exc


def _encode_array(array: np.ndarray, info: PixelInfo, target: str) -> bytes:
    photometric = info.decoded_photometric
    if target in HTJ2K_TARGETS:
        return _htj2k(array, target)
    if target == JPEG_BASELINE:
        if photometric.startswith("YBR"):
            from pydicom.pixels.processing import convert_color_space

            array = convert_color_space(array, photometric, "RGB")
        return _jpeg_baseline(array)
    try:
        return bytes(
            get_encoder(target).encode(
                np.ascontiguousarray(array), **_encode_options(info, photometric, target)
            )
        )
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise TranscodeError(f"cannot encode as {UID(target).name}: {exc}") from exc


def encode_frame(frame: bytes, info: PixelInfo, target: str) -> bytes:
    """One frame from its own bytes, decoded and encoded in ``target`` (one
    encapsulated frame, PS3.5 A.4, its media type per PS3.18 Table 8.7.3-5; native
    little endian pixel bytes for Explicit VR Little Endian). Raises
    :class:`FrameMismatch` (decode the whole instance) or :class:`TranscodeError`."""
    array = frame_array(frame, info)
    if target == EXPLICIT_VR_LE:
        return _native_bytes(array, info)
    return _encode_array(array, info, target)


def encode_frame_of_instance(data: bytes, index: int, target: str) -> bytes:
    """Frame ``index`` (0-based) of a whole instance's bytes, as :func:`encode_frame`."""
    ds = _parse(data)
    info = PixelInfo.of(ds)
    array = _file_frame(ds, index)
    if target == EXPLICIT_VR_LE:
        return _native_bytes(array, info)
    return _encode_array(array, info, target)


def transcode_instance(data: bytes, target: str) -> bytes:
    """The stored instance re-encoded in ``target`` (a Part 10 file).

    Explicit VR Little Endian is the default of application/dicom (PS3.18 8.7.3.5.2). For
    compressed targets every frame is decoded and encoded again; lossy targets mark the
    data set with Lossy Image Compression "01" and the method (PS3.3 C.7.6.1.1.5). The
    SOP Instance UID is kept: the object sent is the one the archive holds, in another
    encoding, as a retrieve (not a new derived object).
    """
    from pydicom.uid import ExplicitVRLittleEndian

    if target != EXPLICIT_VR_LE and target not in ENCODABLE:
        raise TranscodeError(f"cannot encode instances in {target}")
    ds = _parse(data)
    syntax = ds.file_meta.TransferSyntaxUID
    if "PixelData" in ds and target != str(syntax):
        info = PixelInfo.of(ds)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if target == EXPLICIT_VR_LE:
            if syntax.is_compressed:
                # native pixels, photometric updated (e.g. to RGB); the same object, so
                # the same SOP Instance UID (pydicom would make up a new one)
                ds.decompress(generate_instance_uid=False)
            elif not syntax.is_little_endian:
                array = ds.pixel_array  # colour comes out interleaved (R1 G1 B1 R2 ...)
                ds.PixelData = np.ascontiguousarray(
                    array.astype(array.dtype.newbyteorder("<"))
                ).tobytes()
                if "PlanarConfiguration" in ds:
                    ds.PlanarConfiguration = 0
        else:
            encoded = [_encode_array(_file_frame(ds, i), info, target) for i in range(frames)]
            ds.PixelData = encapsulate(encoded)
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            ds.PhotometricInterpretation = encoded_photometric(info, target)
            if info.samples == 3:
                ds.PlanarConfiguration = 0
            if target in LOSSY:
                ds.LossyImageCompression = "01"
                old = ds.get("LossyImageCompressionMethod") or []
                methods = [old] if isinstance(old, str) else list(old)
                ds.LossyImageCompressionMethod = [*methods, LOSSY[target]]
    if "PixelData" not in ds:
        target = ExplicitVRLittleEndian  # nothing to compress: the default encoding
    ds.file_meta.TransferSyntaxUID = UID(target)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    return out.getvalue()
