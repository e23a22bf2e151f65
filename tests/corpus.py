"""Catalogue of reference DICOM files for tests.

The files come from pydicom's bundled test data and the locally installed
``pydicom-data`` package.  Nothing is ever downloaded: every lookup goes through
``pydicom.data.get_testdata_file(name, download=False)``.  (``get_testdata_files``
is deliberately not used because, for any pattern matching a file that exists only
in pydicom's online store, it *tries to download it*.)

Every catalogued file is "storable": it has file meta with a Transfer Syntax UID,
valid SOP Class / SOP Instance / Study / Series Instance UIDs (checked again at
load time) and a SOP Instance UID not used by any other catalogued file.  Many
pydicom test files are re-encodings of the same instance and reuse its UIDs, so
from each such family only one member is chosen (see ``_CANDIDATES``).

Transfer syntaxes that cannot be covered from local data:

* JPEG Lossless Process 14 (1.2.840.10008.1.2.4.57): no such file exists locally
  (only Process 14 SV1, 1.2.840.10008.1.2.4.70).
* JPEG-LS near-lossless (1.2.840.10008.1.2.4.81): all local examples
  (``JPEGLSNearLossless_08/16.dcm``, ``SC_rgb_jls_lossy_line/sample.dcm``) lack
  Study/Series Instance UIDs.  ``make_patched_copy`` writes a storable copy of
  any of them with deterministic UIDs added (not part of the catalogue).
* HTJ2K (1.2.840.10008.1.2.4.201/.202/.203): the ``HTJ2K*.dcm`` files are only
  in pydicom's online store, not in ``pydicom-data`` 1.0.0.

Excluded files (beyond UID-family duplicates), and why:

* No file meta / no 'DICM' prefix: ``ExplVR_BigEndNoMeta.dcm``,
  ``ExplVR_LitEndNoMeta.dcm``, ``no_meta.dcm``, ``rtstruct.dcm``, ``OT-PAL-8-face.dcm``.
* Missing Transfer Syntax UID or SOP/Study/Series UIDs: ``meta_missing_tsyntax.dcm``,
  ``no_meta_group_length.dcm``, ``empty_charset_LEI.dcm``, ``priv_SQ.dcm``,
  ``nested_priv_SQ.dcm``, ``UN_sequence.dcm``, the four JPEG-LS near-lossless files.
* Deliberately broken or non-conformant: ``MR_truncated.dcm`` (short Pixel Data),
  ``rtplan_truncated.dcm``, ``emri_small_jpeg_2k_lossless_too_short.dcm``,
  ``JPEG2000-embedded-sequence-delimiter.dcm`` (not decodable), ``JPEG-lossy.dcm``
  (not decodable; ``JPGExtended.dcm`` is the fixed version), ``badVR.dcm``
  (NumberOfFrames '1A'), ``bad_sequence.dcm`` (non-UID hex strings as UIDs),
  ``GDCMJ2K_TextGBR.dcm`` (JP2 header inside Pixel Data),
  ``J2K_pixelrep_mismatch.dcm`` (Pixel Representation contradicts the codestream),
  ``explicit_VR-UN.dcm`` (elements stored with VR UN), the ``693_*`` files
  (BitsStored contradicts the codestream precision; regression data).
* File meta MediaStorageSOPInstanceUID differs from the dataset's SOPInstanceUID:
  ``rtdose.dcm``, ``rtdose_1frame.dcm``, ``rtdose_expb*.dcm``, ``rtplan.dcm``.
* Too large (> 5 MB): ``RG1_UNC*``, ``RG3_UNC*``, ``color3d_jpeg_baseline.dcm``.
* Valid but left out to keep the set small: ``MR2_J2KI``/``MR2_UNC*``, ``RG1_J2K*``,
  ``RG3_J2KR``, ``US1_UNCR``, ``SC_rgb_dcmtk_+eb+cr/+cy+n1/+cy+s2/+cy+s4``,
  ``SC_jpeg_no_color_transform_2``, ``SC_rgb_jpeg_lossy_gdcm``, ``mlut_18``,
  ``OBXXXX1A.dcm`` variants, and the 16x16 images under ``dicomdirtests/``.
"""

from __future__ import annotations

import functools
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

from app.dicom.uids import is_valid_uid

__all__ = [
    "RefFile",
    "reference_files",
    "skipped_files",
    "get_ref",
    "is_valid_uid",
    "expected_frames",
    "make_encapsulated_pdf",
    "make_patched_copy",
    "ENCAPSULATED_PDF_STORAGE",
    "REFERENCE_FILES",
]

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
MAX_FILE_SIZE = 5 * 1024 * 1024


@dataclass(frozen=True)
class RefFile:
    """One catalogued reference file.

    ``number_of_frames`` is 0 for instances without Pixel Data (SR, waveform, ...).
    ``encapsulated`` is True when Pixel Data uses an encapsulated transfer syntax.
    """

    name: str
    path: Path
    transfer_syntax: str
    number_of_frames: int
    encapsulated: bool
    note: str


# (file name, note).  Order matters: for UIDs shared between several files the
# first one listed wins.  Families sharing a SOP Instance UID and which member
# is used:
#   MR_small*            -> MR_small_implicit.dcm
#   emri_small*          -> emri_small_jpeg_ls_lossless.dcm
#   SC_rgb[_expb|_rle][_16bit|_32bit][_2frame], SC_rgb_jpeg_gdcm -> SC_rgb_rle_16bit_2frame.dcm
#   OBXXXX1A*, examples_palette -> OBXXXX1A_rle_2frame.dcm
#   rtdose*              -> rtdose_rle.dcm (others: MediaStorageSOPInstanceUID mismatch)
#   SC_rgb_jpeg / SC_rgb_jpeg_dcmd -> SC_rgb_jpeg_dcmd.dcm
#   liver*               -> liver.dcm
#   gdcm-US-ALOKA-16*    -> gdcm-US-ALOKA-16_big.dcm
#   SC_rgb_small_odd(_big_endian) -> SC_rgb_small_odd.dcm
#   SC_rgb_dcmtk_+eb+cy+n2 / SC_ybr_full(_422)_uncompressed -> SC_ybr_full_uncompressed.dcm
#   SC_rgb_dcmtk_*_dcmd (decompressed copies) -> the JPEG originals
#   JPEG2000.dcm / JPEG2000_UNC.dcm -> JPEG2000.dcm
#   US1_J2KR / examples_jpeg2k -> examples_jpeg2k.dcm; US1_J2KI / US1_UNCI -> US1_J2KI.dcm
#   MR2_J2KR is unique; MR2_J2KI / MR2_UNCI not used; RG3_J2KI / RG3_UNCI -> RG3_J2KI.dcm
#   color3d_jpeg_baseline / examples_ybr_color -> examples_ybr_color.dcm
#   color-pl / color-px  -> color-pl.dcm
#   reportsi(_with_empty_number_tags) -> reportsi.dcm
_CANDIDATES: tuple[tuple[str, str], ...] = (
    # --- Implicit VR Little Endian
    ("MR_small_implicit.dcm", "MR 64x64, 16-bit signed"),
    ("SC_rgb_jpeg_dcmd.dcm", "SC 256x256, 8-bit RGB"),
    # --- Explicit VR Little Endian
    ("CT_small.dcm", "CT 128x128, 16-bit signed"),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR 484x484, 16-bit, overlay + private tags"),
    ("vlut_04.dcm", "SC 512x512, 8-bit MONOCHROME2, VOI LUT Sequence"),
    ("examples_rgb_color.dcm", "US 240x320, 8-bit RGB"),
    ("color-pl.dcm", "US 120x256, 8-bit RGB, Planar Configuration 1"),
    ("SC_ybr_full_uncompressed.dcm", "SC 100x100, 8-bit YBR_FULL native"),
    ("SC_rgb_small_odd.dcm", "SC 3x3 RGB: odd-length Pixel Data (27 bytes + pad)"),
    ("eCT_Supplemental.dcm", "Enhanced CT, 2 frames 512x512, 16-bit: native multi-frame"),
    ("liver.dcm", "SEG, 3 frames 512x512, BitsAllocated 1"),
    ("test-SR.dcm", "Comprehensive SR, deeply nested content"),
    ("reportsi.dcm", "Basic Text SR"),
    ("waveform_ecg.dcm", "12-lead ECG waveform, no Pixel Data"),
    # --- Explicit VR Big Endian (frames are stored big endian)
    ("ExplVR_BigEnd.dcm", "US 60x80, 8-bit RGB, big endian"),
    ("gdcm-US-ALOKA-16_big.dcm", "US 480x640, 16-bit PALETTE COLOR (segmented LUT), big endian"),
    # --- Deflated Explicit VR Little Endian
    ("image_dfl.dcm", "SC 512x512, 8-bit; whole dataset deflated: frames have no byte range"),
    # --- JPEG Baseline (Process 1)
    ("SC_rgb_jpeg_dcmtk.dcm", "SC 100x100, 8-bit YBR_FULL"),
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", "SC 100x100, 8-bit YBR_FULL_422"),
    ("SC_jpeg_no_color_transform.dcm", "SC 256x256, 8-bit RGB without colour transform"),
    ("SC_rgb_small_odd_jpeg.dcm", "SC 3x3, 8-bit YBR_FULL, odd dimensions"),
    ("examples_ybr_color.dcm", "US multi-frame, 30 frames 240x320 YBR_FULL_422"),
    # --- JPEG Extended (Process 2 & 4)
    ("JPGExtended.dcm", "SC 1024x256, 12-bit"),
    # --- JPEG Lossless SV1 (Process 14, Selection Value 1)
    ("JPEG-LL.dcm", "SC 1024x256, 16-bit signed"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "US 768x1024, 8-bit"),
    # --- JPEG-LS lossless
    ("emri_small_jpeg_ls_lossless.dcm", "Enhanced MR, 10 frames 64x64, 16-bit"),
    # --- JPEG 2000 lossless
    ("MR2_J2KR.dcm", "MR 1024x1024, 16-bit"),
    ("examples_jpeg2k.dcm", "US 480x640, 8-bit YBR_RCT"),
    # --- JPEG 2000 (lossy allowed)
    ("JPEG2000.dcm", "SC 1024x256, 16-bit signed"),
    ("US1_J2KI.dcm", "US 480x640, 8-bit YBR_ICT"),
    ("SC_rgb_gdcm_KY.dcm", "SC 100x100, 8-bit RGB"),
    ("RG3_J2KI.dcm", "CR 1760x1760, 16-bit MONOCHROME1"),
    # --- RLE Lossless
    ("OBXXXX1A_rle_2frame.dcm", "US multi-frame, 2 frames 600x800, 8-bit PALETTE COLOR"),
    ("SC_rgb_rle_16bit_2frame.dcm", "SC 2 frames 100x100, 16-bit RGB"),
    ("rtdose_rle.dcm", "RT Dose, 15 frames 10x10, 32-bit"),
)


def _num_frames(ds: Dataset) -> int:
    """Number of frames of ``ds`` (0 without Pixel Data)."""
    if "PixelData" not in ds:
        return 0
    value = ds.get("NumberOfFrames")
    return int(value) if value not in (None, "") else 1


def _check(ds: Dataset) -> str | None:
    """Return why ``ds`` is not storable, or None if it is."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return "no file meta Transfer Syntax UID"
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not is_valid_uid(ds.get(keyword)):
            return f"missing or invalid {keyword}"
    if meta.get("MediaStorageSOPInstanceUID", ds.SOPInstanceUID) != ds.SOPInstanceUID:
        return "MediaStorageSOPInstanceUID differs from SOPInstanceUID"
    if meta.get("MediaStorageSOPClassUID", ds.SOPClassUID) != ds.SOPClassUID:
        return "MediaStorageSOPClassUID differs from SOPClassUID"
    return None


@functools.cache
def _catalogue() -> tuple[tuple[RefFile, ...], tuple[tuple[str, str], ...]]:
    """Build (chosen files, skipped (name, reason) pairs); cached."""
    chosen: list[RefFile] = []
    skipped: list[tuple[str, str]] = []
    sop_seen: dict[str, str] = {}
    series_study: dict[str, str] = {}
    study_patient: dict[str, str] = {}
    for name, note in _CANDIDATES:
        found = get_testdata_file(name, download=False)
        path = Path(found) if isinstance(found, str) else None
        if path is None or not path.is_file():
            skipped.append((name, "not available locally"))
            continue
        if path.stat().st_size > MAX_FILE_SIZE:
            skipped.append((name, "larger than 5 MB"))
            continue
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # noqa: BLE001 - any read failure excludes the file
            skipped.append((name, f"unreadable: {exc}"))
            continue
        reason = _check(ds)
        sop, study, series = ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID
        patient = str(ds.get("PatientID", ""))
        if reason is None and sop in sop_seen:
            reason = f"SOPInstanceUID already used by {sop_seen[sop]}"
        if reason is None and series_study.get(series, study) != study:
            reason = "SeriesInstanceUID already used in another study"
        if reason is None and study_patient.get(study, patient) != patient:
            reason = "StudyInstanceUID already used for another PatientID"
        if reason is not None:
            skipped.append((name, reason))
            continue
        sop_seen[sop] = name
        series_study[series] = study
        study_patient[study] = patient
        ts = UID(ds.file_meta.TransferSyntaxUID)
        chosen.append(
            RefFile(
                name=name,
                path=path,
                transfer_syntax=str(ts),
                number_of_frames=_num_frames(ds),
                encapsulated=bool(ts.is_encapsulated) and "PixelData" in ds,
                note=note,
            )
        )
    return tuple(chosen), tuple(skipped)


def reference_files() -> list[RefFile]:
    """The catalogued reference files (validated, de-duplicated, cached)."""
    return list(_catalogue()[0])


def skipped_files() -> list[tuple[str, str]]:
    """Candidates that were rejected at load time, with the reason."""
    return list(_catalogue()[1])


def get_ref(name: str) -> RefFile:
    """Look up a catalogued file by file name."""
    for ref in _catalogue()[0]:
        if ref.name == name:
            return ref
    raise KeyError(name)


def __getattr__(name: str) -> Any:
    """Lazily provide ``REFERENCE_FILES`` (module-level ``__getattr__``, PEP 562)."""
    if name == "REFERENCE_FILES":
        return reference_files()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


REFERENCE_FILES: list[RefFile]  # provided lazily by __getattr__


def _native_frame_length(ds: Dataset) -> int:
    """Bytes per frame of native Pixel Data; raises if frames are not byte aligned."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1))
    bits = int(ds.BitsAllocated)
    if samples == 3 and ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        # Native YBR_FULL_422 stores chroma horizontally subsampled: Y Y Cb Cr.
        frame_bits = rows * cols * 2 * bits
    else:
        frame_bits = rows * cols * samples * bits
    if frame_bits % 8:
        raise ValueError(f"frames of {frame_bits} bits are not byte aligned")
    return frame_bits // 8


def expected_frames(path: Path, *, as_little_endian: bool = False) -> list[bytes]:
    """Every frame of ``path`` as pydicom extracts it.

    * Encapsulated transfer syntaxes: the compressed frame bitstreams, from
      ``pydicom.encaps.generate_frames`` (fragments of a frame are joined).
    * Native transfer syntaxes: Pixel Data split into NumberOfFrames equal parts of
      Rows*Columns*SamplesPerPixel*BitsAllocated/8 bytes (trailing padding dropped).
      Big endian files yield big endian frames unless ``as_little_endian`` is set,
      which byte-swaps 16/32/64-bit samples.
    * Deflated files: the native frames after pydicom has inflated the dataset.
      Such frames have no byte range in the stored file.

    Returns ``[]`` for instances without Pixel Data.  Raises ``ValueError`` for
    BitsAllocated 1 data whose frames are not byte aligned (single frames excepted,
    they are returned with the last byte's spare bits as stored).
    """
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        return []
    ts = UID(ds.file_meta.TransferSyntaxUID)
    n_frames = _num_frames(ds)
    data: bytes = ds.PixelData

    if ts.is_encapsulated:
        extended = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        frames = list(generate_frames(data, number_of_frames=n_frames, extended_offsets=extended))
        if len(frames) != n_frames:
            raise ValueError(f"found {len(frames)} encapsulated frames, expected {n_frames}")
        return frames

    bits = int(ds.BitsAllocated)
    if bits == 1 and n_frames == 1:
        rows, cols = int(ds.Rows), int(ds.Columns)
        length = (rows * cols * int(ds.get("SamplesPerPixel", 1)) + 7) // 8
    else:
        length = _native_frame_length(ds)
    if len(data) < length * n_frames:
        raise ValueError(f"Pixel Data has {len(data)} bytes, expected {length * n_frames}")
    frames = [data[i * length : (i + 1) * length] for i in range(n_frames)]
    if as_little_endian and not ts.is_little_endian and bits in (16, 32, 64):
        frames = [_byteswap(frame, bits // 8) for frame in frames]
    return frames


def _byteswap(data: bytes, width: int) -> bytes:
    """Reverse the byte order of each ``width``-byte word of ``data``."""
    out = bytearray(len(data))
    for k in range(width):
        out[k::width] = data[width - 1 - k :: width]
    return bytes(out)


# --------------------------------------------------------------------------------------
# Generated documents
# --------------------------------------------------------------------------------------


def _tiny_pdf() -> bytes:
    """A minimal one-page PDF 1.4 with a correct cross-reference table."""
    content = b"BT /F1 24 Tf 72 720 Td (Pictor test document) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref_at
    if len(out) % 2:  # keep the DICOM value even-length without a padding byte
        out += b"\n"
    return bytes(out)


def make_encapsulated_pdf(directory: Path) -> Path:
    """Write a fresh Encapsulated PDF Storage instance into ``directory``.

    Explicit VR Little Endian, fresh UIDs; the file is named ``<SOPInstanceUID>.dcm``.
    """
    pdf = _tiny_pdf()
    sop_uid = generate_uid()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = "PDF^TEST"
    ds.PatientID = "PDF0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "PDFACC1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Encapsulated PDF test"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.Modality = "DOC"
    ds.Manufacturer = "Pictor tests"
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate = "20240102"
    ds.ContentTime = "101500"
    ds.AcquisitionDateTime = "20240102101500"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "Pictor test document"
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf
    ds.EncapsulatedDocumentLength = len(pdf)

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{sop_uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def make_patched_copy(name: str, directory: Path) -> Path:
    """Copy test file ``name`` into ``directory`` adding any missing Study/Series UIDs.

    Meant for files excluded from the catalogue only for lacking those UIDs (e.g. the
    JPEG-LS near-lossless examples).  Added UIDs are derived deterministically from
    the SOP Instance UID; Pixel Data is untouched, so ``expected_frames`` applies.
    """
    found = get_testdata_file(name, download=False)
    if not isinstance(found, str):
        raise FileNotFoundError(name)
    ds = pydicom.dcmread(found)
    if not is_valid_uid(ds.get("SOPInstanceUID")) or not is_valid_uid(ds.get("SOPClassUID")):
        raise ValueError(f"{name} has no usable SOP Class / SOP Instance UID")
    sop = str(ds.SOPInstanceUID)
    # UUID-derived (2.25) UIDs via uuid5: pydicom's generate_uid(prefix=None) ignores
    # entropy_srcs and would be random.
    if not is_valid_uid(ds.get("StudyInstanceUID")):
        ds.StudyInstanceUID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, sop + '|study').int}"
    if not is_valid_uid(ds.get("SeriesInstanceUID")):
        ds.SeriesInstanceUID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, sop + '|series').int}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------------------
# Self-check: python tests/corpus.py
# --------------------------------------------------------------------------------------


def _self_check() -> int:
    """Print the catalogue and verify every file round-trips; return an exit code."""
    refs = reference_files()
    failures = 0
    print(f"{'name':36} {'transfer syntax':58} {'frames':>6} {'encaps':6} {'size':>9}")
    for ref in refs:
        ts_name = UID(ref.transfer_syntax).name
        size = ref.path.stat().st_size
        print(
            f"{ref.name:36} {ts_name[:58]:58} {ref.number_of_frames:6} "
            f"{str(ref.encapsulated):6} {size:9}"
        )
        try:
            ds = pydicom.dcmread(ref.path)
            frames = expected_frames(ref.path)
            assert len(frames) == ref.number_of_frames, "frame count"
            assert all(frames), "empty frame"
            if ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
                # Everything after the file meta is raw deflate; the frame only
                # appears once inflated.
                raw = ref.path.read_bytes()
                body_at = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
                inflated = zlib.decompress(raw[body_at:], -zlib.MAX_WBITS)
                assert frames[0] not in raw and frames[0] in inflated, "deflated frame"
            elif not ref.encapsulated and frames:
                raw = ref.path.read_bytes()
                assert all(f in raw for f in frames), "native frame not in file"
            if "PixelData" in ds:
                arr = ds.pixel_array  # must decode
                assert arr.size > 0
        except Exception as exc:  # noqa: BLE001 - report and continue
            failures += 1
            print(f"    FAILED: {type(exc).__name__}: {exc}")
    print(f"\n{len(refs)} files, {failures} failures")
    for name, reason in skipped_files():
        print(f"skipped {name}: {reason}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(_self_check())
