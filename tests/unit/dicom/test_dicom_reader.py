"""The DICOM reader and JSON model (PS3.10 7.1, PS3.5 7, PS3.18 Annex F), checked
against pydicom's own reading of the reference corpus."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import msgspec
import pydicom
import pytest

from app.dicom.analysis import analyse_file
from app.dicom.json_model import BASE_MARKER, bulk_prefix, to_json
from app.dicom.reader import DicomFormatError, parse_buffer, parse_file
from app.dicom.uids import is_valid_uid, uid_problem
from app.errors import FailureReason, InstanceRejected

from corpus import RefFile, expected_frames, make_encapsulated_pdf, reference_files
from synth import ct_slice, new_uids

CORPUS = reference_files()


def _norm(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if value.is_integer() else round(value, 6)
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, str):
        return value.strip(" ")  # pydicom keeps spaces inside multi-valued CS
    return value


def _compare(mine: dict[str, Any], ref: dict[str, Any], path: str = "") -> list[str]:
    """Differences between our JSON and pydicom's, ignoring bulk data representation."""
    problems = []
    for key in sorted(set(mine) | set(ref)):
        if key.startswith("0002") or key.endswith("0000") or key == "FFFCFFFC":
            continue  # file meta, group lengths, trailing padding: not part of the data set
        a, b = mine.get(key), ref.get(key)
        if a is None or b is None:
            problems.append(f"{path}{key}: only in {'ours' if b is None else 'pydicom'}")
            continue
        if {"BulkDataURI", "InlineBinary"} & (set(a) | set(b)):
            continue
        if a["vr"] == "SQ":
            for i, (x, y) in enumerate(zip(a.get("Value", []), b.get("Value", []))):
                problems += _compare(x, y, f"{path}{key}/{i}/")
            continue
        va, vb = _norm(a.get("Value")), _norm(b.get("Value"))
        if vb is not None and va is not None:
            vb = [None if v == "" else v for v in vb]  # PS3.18 F.2.5: empty value -> null
        if va != vb:
            problems.append(f"{path}{key}: {va!r} != {vb!r}")
    return problems


@pytest.mark.parametrize("ref", CORPUS, ids=[r.name for r in CORPUS])
def test_json_matches_pydicom(ref: RefFile) -> None:
    parsed = parse_file(ref.path)
    mine, _ = to_json(parsed.dataset, little_endian=parsed.little_endian, prefix="X")
    ds = pydicom.dcmread(ref.path)
    theirs = ds.to_json_dict(bulk_data_threshold=1 << 30, bulk_data_element_handler=None)
    assert _compare(mine, theirs) == []
    msgspec.json.encode(mine)  # serialisable as is


@pytest.mark.parametrize("ref", CORPUS, ids=[r.name for r in CORPUS])
def test_frame_ranges_match_pydicom(ref: RefFile) -> None:
    """Ingest records where each frame lies in the file; the bytes there are the
    frames pydicom extracts (PS3.5 8.2 native, A.4 encapsulated)."""
    analysis = analyse_file(ref.path)
    if ref.number_of_frames == 0:
        assert analysis.frames is None
        return
    if analysis.transfer_syntax == "1.2.840.10008.1.2.1.99":
        assert analysis.frames is None  # deflated: no frame lies in the file as stored
        return
    assert analysis.frames is not None
    data = ref.path.read_bytes()
    fr = analysis.frames
    frames = []
    for i, first in enumerate(fr.first):
        end = fr.first[i + 1] if i + 1 < len(fr.first) else len(fr.offsets)
        frames.append(
            b"".join(data[o : o + n] for o, n in zip(fr.offsets[first:end], fr.lengths[first:end]))
        )
    expected = expected_frames(ref.path)
    assert len(frames) == len(expected) == ref.number_of_frames
    for got, want in zip(frames, expected):
        # pydicom pads an odd-length last frame to the even element length
        assert got == want or (len(want) == len(got) + 1 and want[:-1] == got)


def test_bulk_data_ranges_point_at_the_values() -> None:
    study, series = new_uids()
    data = ct_slice(study, series, 0)
    analysis = analyse_file(_write(data))
    meta = msgspec.json.decode(analysis.metadata)
    prefix = bulk_prefix(study, series, analysis.sop_instance_uid)
    assert meta["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{prefix}/bulk/7FE00010"}
    assert prefix.startswith(BASE_MARKER + "/studies/")
    ranges = {path: (off, n) for path, off, n in analysis.bulk}
    off, n = ranges["7FE00010"]
    assert data[off : off + n] == pydicom.dcmread(_write(data)).PixelData
    assert analysis.frames is not None and analysis.frames.offsets == [off]


def test_small_binary_values_are_inline() -> None:
    ds = pydicom.dcmread(next(r.path for r in CORPUS if r.name == "CT_small.dcm"))
    parsed = parse_file(next(r.path for r in CORPUS if r.name == "CT_small.dcm"))
    mine, _ = to_json(parsed.dataset, little_endian=True, prefix="X")
    inline = {k: v for k, v in mine.items() if "InlineBinary" in v}
    assert inline
    for key, value in inline.items():
        assert base64.b64decode(value["InlineBinary"]) == ds[int(key, 16)].value


def test_encapsulated_pdf(tmp_path: Path) -> None:
    path = make_encapsulated_pdf(tmp_path)
    analysis = analyse_file(path)
    meta = msgspec.json.decode(analysis.metadata)
    doc = meta["00420011"]  # Encapsulated Document: small here, so inline (F.2.7)
    assert doc["vr"] == "OB"
    assert base64.b64decode(doc["InlineBinary"]).startswith(b"%PDF")
    assert analysis.frames is None
    assert analysis.sop_class_uid == "1.2.840.10008.5.1.4.1.1.104.1"


def _write(data: bytes) -> Path:
    import tempfile

    f = tempfile.NamedTemporaryFile(suffix=".dcm", delete=False)
    f.write(data)
    f.close()
    return Path(f.name)


def test_truncated_file_is_rejected_as_cannot_understand() -> None:
    study, series = new_uids()
    data = ct_slice(study, series, 0)
    for cut in (100, 140, 600, len(data) - 1000):
        with pytest.raises(InstanceRejected) as info:
            analyse_file(_write(data[:cut]))
        assert info.value.reason == FailureReason.CANNOT_UNDERSTAND
        assert "truncated" in info.value.message or "DICM" in info.value.message


def test_not_dicom() -> None:
    with pytest.raises(DicomFormatError, match="DICM"):
        parse_buffer(b"%PDF-1.4 hello" * 20)
    with pytest.raises(InstanceRejected, match="DICM"):
        analyse_file(_write(b"x" * 500))


@pytest.mark.parametrize(
    "keyword, value, message",
    [
        ("SOPInstanceUID", None, "SOP Instance UID (0008,0018) is missing"),
        ("StudyInstanceUID", "1.2.03", "is not a UID"),
        ("SeriesInstanceUID", "1." + "2" * 70, "64"),
        ("SOPClassUID", "abc", "is not a UID"),
    ],
)
def test_missing_or_malformed_uids(keyword: str, value: str | None, message: str) -> None:
    study, series = new_uids()
    ds = pydicom.dcmread(_write(ct_slice(study, series, 0)))
    if value is None:
        delattr(ds, keyword)
    else:
        setattr(ds, keyword, value)
    path = _write(b"")
    ds.save_as(path, enforce_file_format=False)
    with pytest.raises(
        InstanceRejected, match=message.replace("(", r"\(").replace(")", r"\)")
    ) as info:
        analyse_file(path)
    assert info.value.reason == FailureReason.DATASET_DOES_NOT_MATCH


def test_uid_rules_ps3_5_9_1() -> None:
    assert is_valid_uid("1.2.840.10008.1.2.1")
    assert is_valid_uid("0.0")
    for bad in ("", "1.", ".1", "1..2", "01.2", "1.2a", "1." + "9" * 63):
        assert not is_valid_uid(bad), bad
    assert uid_problem("1.2") is None


def test_pn_and_numbers_follow_f_2() -> None:
    study, series = new_uids()
    ds = pydicom.dcmread(_write(ct_slice(study, series, 0)))
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]
    path = _write(b"")
    ds.save_as(path)
    parsed = parse_file(path)
    mine, _ = to_json(parsed.dataset, little_endian=True, prefix="X")
    assert mine["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    assert mine["00080008"]["Value"] == ["ORIGINAL", None, "AXIAL"]
    assert isinstance(mine["00280030"]["Value"][0], float)  # DS as number
    assert not any(isinstance(v, float) and math.isnan(v) for v in mine["00280030"]["Value"])
