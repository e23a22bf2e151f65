"""Deterministic synthetic DICOM instances for tests and benchmarks.

* ``ct_slice``: a complete Part-10 CT Image Storage file (Explicit VR Little Endian)
  as bytes.  The same arguments always give the same bytes (for a given pydicom
  version, which is recorded in the file meta Implementation Version Name).
* ``big_multiframe``: a native multi-frame instance of arbitrary size streamed to
  disk without holding Pixel Data in memory; ``multiframe_frame`` recomputes the
  bytes of any of its frames so tests can check frame retrieval cheaply.
* ``new_uids``: fresh study and series UIDs.
"""

from __future__ import annotations

import functools
import hashlib
import io
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = [
    "CT_IMAGE_STORAGE",
    "MF_GRAYSCALE_WORD_SC_STORAGE",
    "ct_slice",
    "sop_instance_uid",
    "big_multiframe",
    "multiframe_frame",
    "new_uids",
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MF_GRAYSCALE_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"

_PIXEL_SPACING_MM = 0.7
_SLICE_THICKNESS_MM = 1.25
_MAX_PIXEL_DATA = 0xFFFFFFFE  # largest even length below the undefined-length marker


def new_uids() -> tuple[str, str]:
    """Fresh (StudyInstanceUID, SeriesInstanceUID)."""
    return str(generate_uid()), str(generate_uid())


def _derived_uid(*parts: str) -> str:
    """A deterministic UUID-derived ``2.25.`` UID (PS3.5 §B.2) from ``parts``.

    (``generate_uid(prefix=None, entropy_srcs=...)`` would ignore the entropy
    sources in pydicom 3 and return a random UUID4 UID, hence ``uuid5``.)
    """
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '|'.join(parts)).int}"


def sop_instance_uid(series_uid: str, index: int) -> str:
    """SOP Instance UID of slice ``index``: ``<series>.<index+1>`` if it fits, else derived."""
    candidate = f"{series_uid}.{index + 1}"
    return candidate if len(candidate) <= 64 else _derived_uid(series_uid, str(index))


# --------------------------------------------------------------------------------------
# CT slices
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _ct_base(rows: int, cols: int, seed: int) -> npt.NDArray[np.int16]:
    """Cached stored-value phantom: air, a water ellipse, a bone ring, inserts, noise.

    Values are HU (RescaleSlope 1, RescaleIntercept 0) and stay well inside the
    signed 12-bit range [-2048, 2047] even after the per-slice offset.
    """
    y, x = np.ogrid[-1.0 : 1.0 : rows * 1j, -1.0 : 1.0 : cols * 1j]
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2
    img = np.full((rows, cols), -1000.0)
    img[body <= 1.0] = 40.0
    img[(body <= 1.0) & (body >= 0.9)] = 900.0  # cortical "bone" ring
    img += 60.0 * x  # gentle gradient so rows differ
    rng = np.random.default_rng(seed)
    for _ in range(4):  # a few soft-tissue / fat inserts
        cx, cy = rng.uniform(-0.4, 0.4, size=2)
        radius = rng.uniform(0.05, 0.15)
        img[(x - cx) ** 2 + (y - cy) ** 2 <= radius**2] = rng.choice([-100.0, 60.0, 300.0])
    img += rng.normal(0.0, 8.0, size=(rows, cols))
    out = np.clip(np.rint(img), -1024, 1500).astype("<i2")
    out.flags.writeable = False
    return out


def _ct_pixels(rows: int, cols: int, seed: int, index: int) -> bytes:
    """Pixel Data bytes for slice ``index`` (base phantom + index-dependent changes)."""
    frame = _ct_base(rows, cols, seed) + np.int16(index % 50)
    # A small "lesion" that moves with the slice index.
    size = max(1, min(rows, cols) // 32)
    r0 = (rows // 3 + 3 * index) % max(1, rows - size)
    c0 = (cols // 2 + 5 * index) % max(1, cols - size)
    frame[r0 : r0 + size, c0 : c0 + size] = 200
    return frame.tobytes()


def _accession(study_uid: str) -> str:
    """Deterministic accession number (SH, <= 16 chars) for a study."""
    return "A" + hashlib.sha1(study_uid.encode()).hexdigest()[:12].upper()


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    """File meta for an Explicit VR Little Endian instance."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _patient_study_series(
    ds: Dataset, study_uid: str, series_uid: str, patient_id: str, patient_name: str
) -> None:
    """Fill Patient, General Study, General Series and equipment attributes."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240115"
    ds.StudyTime = "093000"
    ds.StudyID = "1"
    ds.AccessionNumber = _accession(study_uid)
    ds.ReferringPhysicianName = "SMITH^JOHN"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDate = "20240115"
    ds.SeriesTime = "093100"
    ds.SeriesNumber = 1
    ds.Manufacturer = "Pictor Synthetic"
    ds.ManufacturerModelName = "synth.py"
    ds.InstitutionName = "Pictor Test Hospital"


def _fmt_ds(value: float) -> str:
    """Format a Decimal String value (fixed 3 decimals, always <= 16 chars here)."""
    return f"{value:.3f}"


def _ct_dynamic(series_uid: str, index: int, rows: int, cols: int) -> dict[str, str]:
    """The per-slice attribute values (as their encoded strings)."""
    z = -_SLICE_THICKNESS_MM * index
    x0 = -_PIXEL_SPACING_MM * cols / 2
    y0 = -_PIXEL_SPACING_MM * rows / 2
    return {
        "SOPInstanceUID": sop_instance_uid(series_uid, index),
        "ContentTime": f"{93100 + index % 60:06d}",
        "InstanceNumber": str(index + 1),
        "ImagePositionPatient": "\\".join(_fmt_ds(v) for v in (x0, y0, z)),
        "SliceLocation": _fmt_ds(z),
    }


# Tags of the per-slice attributes above, in ascending order, and their VRs.
_CT_DYNAMIC: tuple[tuple[int, str, str], ...] = (
    (0x00080018, "UI", "SOPInstanceUID"),
    (0x00080033, "TM", "ContentTime"),
    (0x00200013, "IS", "InstanceNumber"),
    (0x00200032, "DS", "ImagePositionPatient"),
    (0x00201041, "DS", "SliceLocation"),
)
_PIXEL_DATA_TAG = 0x7FE00010


def _ct_dataset(
    study_uid: str,
    series_uid: str,
    index: int,
    rows: int,
    cols: int,
    patient_id: str,
    patient_name: str,
    pixel_data: bytes | None,
) -> Dataset:
    """The complete CT dataset (with file meta) of slice ``index``, built with pydicom."""
    dynamic = _ct_dynamic(series_uid, index, rows, cols)
    sop_uid = dynamic["SOPInstanceUID"]
    ds = Dataset()
    ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop_uid)
    _patient_study_series(ds, study_uid, series_uid, patient_id, patient_name)
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Modality = "CT"
    ds.StudyDescription = "CT CHEST SYNTHETIC"
    ds.SeriesDescription = "AXIAL 1.25mm"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.ContentDate = "20240115"
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = _derived_uid(study_uid, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = _SLICE_THICKNESS_MM
    ds.PixelSpacing = [_PIXEL_SPACING_MM, _PIXEL_SPACING_MM]
    ds.KVP = 120
    ds.ConvolutionKernel = "STANDARD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    for _, _, keyword in _CT_DYNAMIC:
        setattr(ds, keyword, dynamic[keyword])
    if pixel_data is not None:
        ds.PixelData = pixel_data
    return ds


def _encode(ds: Dataset) -> bytes:
    """Encode the elements of ``ds`` as Explicit VR Little Endian (no preamble/meta)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def _short_element(tag: int, vr: str, value: str) -> bytes:
    """Encode a short-form Explicit VR LE element with an ASCII value, padded to even."""
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw


@dataclass(frozen=True)
class _CTTemplate:
    """Pre-encoded static parts of a series' slices (see ``_ct_template``)."""

    meta_before: bytes  # (0002,0001)..(0002,0002)
    meta_after: bytes  # (0002,0010)..end of group 2
    segments: tuple[bytes, ...]  # static runs around the _CT_DYNAMIC elements


@functools.lru_cache(maxsize=64)
def _ct_template(
    study_uid: str, series_uid: str, rows: int, cols: int, patient_id: str, patient_name: str
) -> _CTTemplate:
    """Encode once, with pydicom, everything that does not change between slices."""
    ds = _ct_dataset(study_uid, series_uid, 0, rows, cols, patient_id, patient_name, None)
    meta = ds.file_meta
    write_file_meta_info(DicomBytesIO(), meta, enforce_standard=True)  # completes meta
    bounds = [0x00000000]
    for tag, _, _ in _CT_DYNAMIC:
        bounds += [tag, tag + 1]
    bounds.append(_PIXEL_DATA_TAG)
    segments = tuple(_encode(ds[bounds[i] : bounds[i + 1]]) for i in range(0, len(bounds), 2))
    return _CTTemplate(
        meta_before=_encode(meta[0x00020001:0x00020003]),
        meta_after=_encode(meta[0x00020004:0x00030000]),
        segments=segments,
    )


def ct_slice(
    study_uid: str,
    series_uid: str,
    index: int,
    *,
    rows: int = 512,
    cols: int = 512,
    seed: int = 0,
    patient_id: str = "PAT0001",
    patient_name: str = "DOE^JANE",
) -> bytes:
    """A complete Part-10 CT Image Storage file (Explicit VR LE) for slice ``index``.

    16-bit signed pixels (BitsStored 12), InstanceNumber ``index + 1`` and
    SOPInstanceUID from ``sop_instance_uid(series_uid, index)``; deterministic.

    For speed the attributes shared by a series are encoded once by pydicom and
    cached; only the per-slice elements are encoded here.  The result is
    byte-identical to ``pydicom.dcmwrite(..., enforce_file_format=True)`` of
    ``_ct_dataset(...)`` (checked by the self-test).
    """
    tpl = _ct_template(study_uid, series_uid, rows, cols, patient_id, patient_name)
    dynamic = _ct_dynamic(series_uid, index, rows, cols)
    sop_elem = _short_element(0x00020003, "UI", dynamic["SOPInstanceUID"])
    group_len = len(tpl.meta_before) + len(sop_elem) + len(tpl.meta_after)
    pixels = _ct_pixels(rows, cols, seed, index)
    parts = [
        bytes(128),
        b"DICM",
        struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, group_len),
        tpl.meta_before,
        sop_elem,
        tpl.meta_after,
    ]
    for segment, (tag, vr, keyword) in zip(tpl.segments, _CT_DYNAMIC):
        parts += [segment, _short_element(tag, vr, dynamic[keyword])]
    parts += [
        tpl.segments[-1],
        struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, len(pixels)),
        pixels,
    ]
    return b"".join(parts)


# --------------------------------------------------------------------------------------
# Big multi-frame
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _mf_base(rows: int, cols: int) -> npt.NDArray[np.uint16]:
    """Cached diagonal-gradient frame used as the basis of every multi-frame frame."""
    r = np.arange(rows, dtype=np.uint32)[:, None]
    c = np.arange(cols, dtype=np.uint32)[None, :]
    out = ((r * 131 + c * 17) & 0xFFFF).astype("<u2")
    out.flags.writeable = False
    return out


def _mf_frame_array(index: int, rows: int, cols: int) -> npt.NDArray[np.uint16]:
    """Frame ``index``: gradient shifted by the index, first two pixels encode the index."""
    frame = _mf_base(rows, cols) + np.uint16((index * 257) & 0xFFFF)  # wraps mod 2**16
    flat = frame.reshape(-1)
    flat[0] = index & 0xFFFF
    if flat.size > 1:
        flat[1] = (index >> 16) & 0xFFFF
    return frame


def multiframe_frame(index: int, *, rows: int = 512, cols: int = 512) -> bytes:
    """The exact bytes of frame ``index`` (0-based) written by ``big_multiframe``."""
    return _mf_frame_array(index, rows, cols).tobytes()


def big_multiframe(path: Path, target_bytes: int, *, rows: int = 512, cols: int = 512) -> Path:
    """Stream a native 16-bit multi-frame instance with ~``target_bytes`` of Pixel Data.

    Multi-frame Grayscale Word Secondary Capture, Explicit VR Little Endian, new
    UIDs.  The header is written by pydicom; the (7FE0,0010) OW element header is
    appended by hand and frames are streamed in chunks, so memory stays small.
    The frame count is ``max(1, target_bytes // (rows*cols*2))``.
    """
    frame_len = rows * cols * 2
    n_frames = max(1, target_bytes // frame_len)
    pixel_len = n_frames * frame_len  # always even
    if pixel_len > _MAX_PIXEL_DATA:
        raise ValueError(f"Pixel Data of {pixel_len} bytes does not fit a 32-bit length")

    study_uid, series_uid = new_uids()
    sop_uid = str(generate_uid())
    ds = Dataset()
    ds.file_meta = _file_meta(MF_GRAYSCALE_WORD_SC_STORAGE, sop_uid)
    _patient_study_series(ds, study_uid, series_uid, "PATBIG01", "BIG^MULTIFRAME")
    ds.SOPClassUID = MF_GRAYSCALE_WORD_SC_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Modality = "OT"
    ds.StudyDescription = "BIG MULTIFRAME SYNTHETIC"
    ds.SeriesDescription = f"{n_frames} frames"
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate = "20240115"
    ds.ContentTime = "093000"
    ds.BurnedInAnnotation = "NO"
    ds.NumberOfFrames = n_frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 40
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"

    path.parent.mkdir(parents=True, exist_ok=True)
    frames_per_chunk = max(1, (16 * 1024 * 1024) // frame_len)
    with path.open("wb") as fp:
        pydicom.dcmwrite(fp, ds, enforce_file_format=True)
        # (7FE0,0010) Pixel Data, VR OW, 2 reserved bytes, 32-bit length (PS3.5 §7.1.2).
        fp.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_len))
        for start in range(0, n_frames, frames_per_chunk):
            stop = min(n_frames, start + frames_per_chunk)
            chunk = np.stack([_mf_frame_array(i, rows, cols) for i in range(start, stop)])
            fp.write(chunk.tobytes())
    return path


KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def rejection_note(
    study_uid: str,
    series_uid: str,
    rejected: list[tuple[str, str]],
    code: str = "113001",
    *,
    sop_uid: str | None = None,
    patient_id: str = "PAT0001",
    patient_name: str = "DOE^JANE",
) -> bytes:
    """An IOCM rejection note: a Key Object Selection Document (PS3.3 A.35.4) whose
    Concept Name is a PS3.16 CID 7011 code, referencing ``rejected`` ((series, SOP
    Instance UID) of CT images in ``study_uid``) in its Current Requested Procedure
    Evidence Sequence (IHE RAD TF-2 4.66)."""
    meanings = {
        "113001": "Rejected for Quality Reasons",
        "113037": "Rejected for Patient Safety Reasons",
        "113038": "Incorrect Modality Worklist Entry",
        "113039": "Data Retention Policy Expired",
    }
    sop_uid = sop_uid or _derived_uid("kos", series_uid, code, *[s for _, s in rejected])
    ds = Dataset()
    _patient_study_series(ds, study_uid, series_uid, patient_id, patient_name)
    ds.SOPClassUID = KEY_OBJECT_SELECTION
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "KO"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ContentDate = "20240116"
    ds.ContentTime = "120000"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue = code
    concept.CodingSchemeDesignator = "DCM"
    concept.CodeMeaning = meanings.get(code, "Other")
    ds.ConceptNameCodeSequence = [concept]
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = [template]
    content = []
    by_series: dict[str, list[str]] = {}
    for series, sop in rejected:
        by_series.setdefault(series, []).append(sop)
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "IMAGE"
        ref = Dataset()
        ref.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        ref.ReferencedSOPInstanceUID = sop
        item.ReferencedSOPSequence = [ref]
        content.append(item)
    ds.ContentSequence = content
    study_item = Dataset()
    study_item.StudyInstanceUID = study_uid
    series_items = []
    for series, sops in by_series.items():
        series_item = Dataset()
        series_item.SeriesInstanceUID = series
        refs = []
        for sop in sops:
            ref = Dataset()
            ref.ReferencedSOPClassUID = CT_IMAGE_STORAGE
            ref.ReferencedSOPInstanceUID = sop
            refs.append(ref)
        series_item.ReferencedSOPSequence = refs
        series_items.append(series_item)
    study_item.ReferencedSeriesSequence = series_items
    ds.CurrentRequestedProcedureEvidenceSequence = [study_item]
    ds.file_meta = _file_meta(KEY_OBJECT_SELECTION, sop_uid)
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _self_test() -> None:
    """Read the generators' output back with pydicom and time ``ct_slice``."""
    import tempfile
    import time

    study, series = new_uids()
    data = ct_slice(study, series, 3)
    assert data == ct_slice(study, series, 3), "not deterministic"
    ds = pydicom.dcmread(io.BytesIO(data))
    arr = ds.pixel_array
    print(
        ds.SOPInstanceUID,
        ds.InstanceNumber,
        ds.ImagePositionPatient,
        arr.dtype,
        arr.shape,
        int(arr.min()),
        int(arr.max()),
        len(data),
    )
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert arr.dtype == np.int16 and arr.min() >= -2048 and arr.max() <= 2047

    # The template fast path must match a plain pydicom encoding byte for byte.
    cases = [
        (study, series, 0, 512, 512, "PAT0001", "DOE^JANE"),
        (study, series, 57, 512, 512, "PAT0001", "DOE^JANE"),
        ("1.2.3", "1.2.3.4", 8, 64, 48, "P2", "MÜLLER^ANNA"),
        ("1.2.3", "1.2.3.45", 9, 63, 17, "P3", "ODD^NAME^X"),
    ]
    for st, se, idx, r, c, pid, pname in cases:
        fast = ct_slice(st, se, idx, rows=r, cols=c, seed=1, patient_id=pid, patient_name=pname)
        ref_ds = _ct_dataset(st, se, idx, r, c, pid, pname, _ct_pixels(r, c, 1, idx))
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ref_ds, enforce_file_format=True)
        assert fast == buf.getvalue(), (se, idx)
        back = pydicom.dcmread(io.BytesIO(fast))
        assert back.PatientName == pname and back.InstanceNumber == idx + 1
    print("fast path matches pydicom.dcmwrite")

    ct_slice(study, series, 0)  # warm the cache
    n = 500
    t0 = time.perf_counter()
    for i in range(n):
        ct_slice(study, series, i)
    print(f"ct_slice 512x512: {(time.perf_counter() - t0) / n * 1e3:.3f} ms/slice")

    long_series = "1.2.826.0.1.3680043.8.498." + "9" * 36  # 62 chars
    assert len(sop_instance_uid(long_series, 10)) <= 64
    print("derived SOP UID for long series:", sop_instance_uid(long_series, 10))

    with tempfile.TemporaryDirectory() as tmp:
        target = 50 * 1024 * 1024
        t0 = time.perf_counter()
        path = big_multiframe(Path(tmp) / "big.dcm", target)
        elapsed = time.perf_counter() - t0
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
        print(
            f"big_multiframe: {path.stat().st_size} bytes in {elapsed:.2f}s,",
            f"NumberOfFrames={ds.NumberOfFrames}, shape={arr.shape}",
        )
        assert arr.shape == (int(ds.NumberOfFrames), 512, 512)
        assert len(ds.PixelData) == int(ds.NumberOfFrames) * 512 * 512 * 2
        for i in (0, 1, int(ds.NumberOfFrames) - 1):
            assert arr[i].tobytes() == multiframe_frame(i), i


if __name__ == "__main__":
    _self_test()
