"""Everything ingest records about one instance, computed once from its file.

:func:`analyse_file` runs in a worker process: it hashes the file, walks it with
:mod:`app.dicom.reader`, checks the identifying attributes, and returns an
:class:`Analysis` holding the index attributes, the instance's DICOM JSON (PS3.18 F)
ready to send, and the byte range of every frame and bulk data value in the stored file.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from app.dicom.json_model import (
    Charset,
    bulk_prefix,
    first_int,
    first_text,
    texts,
    to_json,
)
from app.dicom.levels import INSTANCE_TAGS, SERIES_TAGS, STUDY_GROUPS, STUDY_TAGS, name_words
from app.dicom.reader import (
    DataSet,
    DicomFormatError,
    Element,
    ParsedFile,
    parse_buffer,
    parse_file,
)
from app.dicom.uids import uid_problem
from app.errors import FailureReason, InstanceRejected

_FRAGMENT_START_MARKERS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP")
#: the ranges of the index's integer and smallint columns (schemas/001, 007)
_INTEGER = (-(2**31), 2**31 - 1)
_SMALLINT = (-(2**15), 2**15 - 1)


class Frames(msgspec.Struct, array_like=True, frozen=True):
    """Where the frames lie in the stored file.

    ``offsets``/``lengths`` list contiguous byte ranges (one per frame for native pixel
    data, one per fragment for encapsulated data, PS3.5 A.4); frame ``i`` is made of
    ranges ``first[i]`` up to ``first[i + 1]`` (or to the end).
    """

    offsets: list[int]
    lengths: list[int]
    first: list[int]


class Analysis(msgspec.Struct, frozen=True, kw_only=True):
    sha256: str
    size: int
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    study: dict[str, Any]  # column -> value for the study row
    series: dict[str, Any]
    instance: dict[str, Any]
    study_json: bytes  # DICOM JSON object of the study-level attributes
    series_json: bytes
    instance_json: bytes  # the instance-level attributes QIDO returns (app.dicom.levels)
    #: normalised person-name components for fuzzy matching (PS3.18 8.3.4.6)
    name_words: list[str]
    metadata: bytes  # the instance's DICOM JSON object
    frames: Frames | None
    bulk: list[tuple[str, int, int]]


def _hash(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _uid(ds: DataSet, tag: int, name: str, charset: Charset, sop: tuple[str, str]) -> str:
    """An identifying UID: present, valid (PS3.5 9.1) and single. Each of these has
    VM 1 (PS3.6 Table 6-1), and the archive files and finds the instance under it: a
    second value would be silently dropped, so it is refused instead."""
    values = texts(ds, tag, charset)
    value = values[0] if values and values[0] != "" else None
    problem = uid_problem(value)
    if problem is None and len(values) > 1:
        problem = f"has {len(values)} values; its Value Multiplicity is 1 (PS3.6 Table 6-1)"
    if problem is not None:
        raise InstanceRejected(
            FailureReason.DATASET_DOES_NOT_MATCH,
            f"{name} ({tag >> 16:04X},{tag & 0xFFFF:04X}) {problem}",
            sop_class_uid=sop[0],
            sop_instance_uid=sop[1],
        )
    assert value is not None
    return value


def _native_frames(pixel: Element, frame_len: int, count: int) -> Frames | None:
    if frame_len <= 0 or count <= 0 or frame_len * count > pixel.length:
        return None
    offsets = [pixel.offset + i * frame_len for i in range(count)]
    return Frames(offsets, [frame_len] * count, list(range(count)))


def _encapsulated_frames(
    pixel: Element, count: int, extended_offsets: bytes | None, read_head: Any
) -> Frames | None:
    """Group fragments into frames (PS3.5 A.4): offset tables first, then the data."""
    assert pixel.fragments is not None
    if len(pixel.fragments) < 2:  # no Basic Offset Table item, or no fragment after it
        return None
    bot, fragments = pixel.fragments[0], pixel.fragments[1:]
    offsets = [off for off, _ in fragments]
    lengths = [n for _, n in fragments]
    # position of each fragment's item tag relative to the first fragment's item tag
    rel = [off - 8 - (fragments[0][0] - 8) for off in offsets]
    starts: list[int] | None = None
    table: list[int] = []
    # a table of 8-byte (Extended) or 4-byte (Basic) offsets; one of another length is
    # malformed, and frames are then found as if there were none
    if extended_offsets and len(extended_offsets) % 8 == 0:
        table = list(struct.unpack(f"<{len(extended_offsets) // 8}Q", extended_offsets))
    elif bot[1] >= 4 and bot[1] % 4 == 0:
        raw = read_head(bot[0], bot[1])
        table = list(struct.unpack(f"<{bot[1] // 4}L", raw))
    if table:
        index = {r: i for i, r in enumerate(rel)}
        if all(t in index for t in table):
            starts = [index[t] for t in table]
    if starts is None:
        if count == 1:
            starts = [0]
        elif count == len(fragments):
            starts = list(range(count))
        else:
            # No usable table: a frame starts at each fragment that opens with a JPEG SOI,
            # a JPEG 2000 SOC+SIZ or a JP2 signature box.
            heads = [read_head(off, min(12, n)) for off, n in fragments]
            starts = [i for i, h in enumerate(heads) if h.startswith(_FRAGMENT_START_MARKERS)]
            if len(starts) != count or (starts and starts[0] != 0):
                return None
    if len(starts) != count:
        return None
    return Frames(offsets, lengths, starts)


def _alphabetic(name: str | None) -> str | None:
    """The alphabetic component group of a PN value (PS3.5 6.2.1), as queries match it."""
    if name is None:
        return None
    return name.split("=")[0] or None


def analyse_parsed(
    parsed: ParsedFile, read_head: Callable[[int, int], bytes], sha256: str, size: int
) -> Analysis:
    ds = parsed.dataset
    cs_el = ds.get(0x00080005)
    charset = Charset(cs_el.value if cs_el is not None else None)
    le = parsed.little_endian
    cls_text = first_text(ds, 0x00080016, charset) or ""
    sop_text = first_text(ds, 0x00080018, charset) or ""
    ref = (cls_text, sop_text)
    sop_class = _uid(ds, 0x00080016, "SOP Class UID", charset, ref)
    sop_uid = _uid(ds, 0x00080018, "SOP Instance UID", charset, ref)
    study_uid = _uid(ds, 0x0020000D, "Study Instance UID", charset, ref)
    series_uid = _uid(ds, 0x0020000E, "Series Instance UID", charset, ref)
    metadata, bulk = to_json(
        ds,
        little_endian=le,
        prefix=bulk_prefix(study_uid, series_uid, sop_uid),
        offsets_valid=parsed.offsets_are_file_positions,
    )
    study_json = {
        k: v
        for k, v in metadata.items()
        if int(k, 16) in STUDY_TAGS or int(k[:4], 16) in STUDY_GROUPS
    }
    series_json = {k: v for k, v in metadata.items() if int(k, 16) in SERIES_TAGS}
    instance_json = {k: v for k, v in metadata.items() if int(k, 16) in INSTANCE_TAGS}

    def text(tag: int) -> str | None:
        value = first_text(ds, tag, charset)
        if value is not None and "\x00" in value:
            # NUL is padding (PS3.5 6.2), not text: a PostgreSQL text column refuses it
            value = value.replace("\x00", "") or None
        return value

    def integer(tag: int, bounds: tuple[int, int] = _INTEGER) -> int | None:
        """The first value as an integer of the index column's type, or None (an IS
        holds a 32-bit integer, PS3.5 6.2: one outside it, or "inf", is no value)."""
        try:
            value = first_int(ds, tag, charset, le)
        except OverflowError:  # int(float("inf")), from an IS or DS of "1e999"
            return None
        return value if value is not None and bounds[0] <= value <= bounds[1] else None

    rows, columns = integer(0x00280010), integer(0x00280011)
    bits_allocated, samples = integer(0x00280100), integer(0x00280002) or 1
    number_of_frames = integer(0x00280008) or 1
    frames: Frames | None = None
    pixel = next((ds.get(t) for t in (0x7FE00010, 0x7FE00008, 0x7FE00009) if ds.get(t)), None)
    if pixel is not None and parsed.offsets_are_file_positions:
        if pixel.fragments is not None:
            eot = ds.get(0x7FE00001)
            frames = _encapsulated_frames(
                pixel, number_of_frames, eot.value if eot is not None else None, read_head
            )
        elif rows and columns and bits_allocated:
            bits = rows * columns * samples * bits_allocated
            if text(0x00280004) == "YBR_FULL_422":
                bits = bits * 2 // 3  # two samples per pixel once subsampled (PS3.3 C.7.6.3.1.2)
            if bits % 8 == 0:
                frames = _native_frames(pixel, bits // 8, number_of_frames)

    encode = msgspec.json.encode
    return Analysis(
        sha256=sha256,
        size=size,
        transfer_syntax=parsed.transfer_syntax,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_uid,
        study_uid=study_uid,
        series_uid=series_uid,
        study={
            "patient_name": _alphabetic(text(0x00100010)),
            "patient_id": text(0x00100020),
            "issuer_of_patient_id": text(0x00100021),
            "patient_birth_date": text(0x00100030),
            "patient_sex": text(0x00100040),
            "study_date": text(0x00080020),
            "study_time": text(0x00080030),
            "accession_number": text(0x00080050),
            "study_id": text(0x00200010),
            "referring_physician_name": _alphabetic(text(0x00080090)),
            "study_description": text(0x00081030),
        },
        series={
            "modality": text(0x00080060),
            "series_number": integer(0x00200011),
            "series_description": text(0x0008103E),
            "series_date": text(0x00080021),
            "series_time": text(0x00080031),
            "body_part_examined": text(0x00180015),
            "pps_start_date": text(0x00400244),
            "pps_start_time": text(0x00400245),
        },
        instance={
            "instance_number": integer(0x00200013),
            "rows": rows,
            "columns": columns,
            "bits_allocated": bits_allocated,
            "bits_stored": integer(0x00280101),
            "samples_per_pixel": samples if pixel is not None else None,
            "photometric_interpretation": text(0x00280004),
            "number_of_frames": number_of_frames if pixel is not None else None,
            "pixel_representation": integer(0x00280103, _SMALLINT),
            "planar_configuration": integer(0x00280006, _SMALLINT),
        },
        study_json=encode(study_json),
        series_json=encode(series_json),
        instance_json=encode(instance_json),
        name_words=name_words(text(0x00100010)),
        metadata=encode(metadata),
        frames=frames,
        bulk=bulk,
    )


def analyse_content(content: memoryview, sha256: str, size: int) -> Analysis:
    """Analyse an instance from its bytes (an upload's content, in memory or mapped);
    raise :class:`InstanceRejected` if unusable."""
    try:
        parsed = parse_buffer(content)
    except DicomFormatError as exc:
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND, f"not a readable DICOM instance: {exc}"
        ) from None

    def read_head(offset: int, length: int) -> bytes:
        return bytes(content[offset : offset + length])

    return analyse_parsed(parsed, read_head, sha256, size)


def analyse_file(
    path: Path,
    sha256: str | None = None,
    size: int | None = None,
    content: memoryview | None = None,
) -> Analysis:
    """Analyse the instance stored at ``path``; raise :class:`InstanceRejected` if unusable.

    ``sha256`` and ``size`` are those computed while the file was written (else the file
    is read once more for them); ``content`` is the file's bytes when still in memory.
    """
    if sha256 is None or size is None:
        sha256, size = _hash(path)
    try:
        parsed = parse_buffer(content) if content is not None else parse_file(path)
    except DicomFormatError as exc:
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND, f"not a readable DICOM instance: {exc}"
        ) from None

    def read_head(offset: int, length: int) -> bytes:
        if content is not None:
            return bytes(content[offset : offset + length])
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    return analyse_parsed(parsed, read_head, sha256, size)
