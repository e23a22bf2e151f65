"""Corrections as patches (app.dicom.patch), the header boundary they rely on
(app.dicom.reader.tail_offset) and IOCM rejection notes (app.dicom.iocm), on the
reference corpus: every transfer syntax, implicit and big-endian, deflated, encapsulated,
with and without pixel data."""

from __future__ import annotations

import io
import json

import msgspec
import pydicom
import pytest

from app.dicom.iocm import rejection_of
from app.dicom.patch import PatchError, first_text, head_end, patch_part10, validate
from app.dicom.reader import tail_offset

from corpus import reference_files
from synth import ct_slice, new_uids, rejection_note, sop_instance_uid

PATCH = validate(
    {
        "PatientName": {"vr": "PN", "Value": [{"Alphabetic": "NEW^NAME"}]},
        "PatientID": {"vr": "LO", "Value": ["NEWID"]},
        "StudyDescription": {"vr": "LO", "Value": ["CORRECTED"]},
    }
)


@pytest.mark.parametrize("ref", reference_files(), ids=lambda r: r.path.name)
def test_patched_file_carries_new_values_and_the_rest_unchanged(ref) -> None:  # type: ignore[no-untyped-def]
    data = ref.path.read_bytes()
    out = patch_part10(data, msgspec.json.encode(PATCH))
    new, old = pydicom.dcmread(io.BytesIO(out)), pydicom.dcmread(io.BytesIO(data))
    assert str(new.PatientName) == "NEW^NAME" and new.PatientID == "NEWID"
    assert new.StudyDescription == "CORRECTED"
    assert new.file_meta.TransferSyntaxUID == old.file_meta.TransferSyntaxUID
    assert new.SOPInstanceUID == old.SOPInstanceUID
    if "PixelData" in old:
        assert new.PixelData == old.PixelData
    end = tail_offset(data)
    if end is not None:  # the bytes from Pixel Data on are copied, not re-encoded
        assert out.endswith(data[end:])
    # every other attribute is as it was
    for element in old:
        if element.tag in (0x00100010, 0x00100020, 0x00081030) or element.tag.element == 0:
            continue
        if element.VR != "SQ" and element.tag != 0x7FE00010:
            assert new[element.tag].value == element.value, element.tag


def test_tail_offset_is_the_pixel_data_element() -> None:
    study, series = new_uids()
    data = ct_slice(study, series, 0, rows=16, cols=16)
    end = tail_offset(data)
    assert end is not None and data[end : end + 4] == b"\xe0\x7f\x10\x00"
    assert head_end(data[: end - 3], whole=False) is None  # cut inside an element
    assert head_end(data[:end], whole=False) is None  # cannot tell it ends there
    assert head_end(data[: end + 20], whole=False) == end


def test_charset_that_cannot_hold_the_new_value_becomes_utf8() -> None:
    study, series = new_uids()
    data = ct_slice(study, series, 0, rows=16, cols=16)  # ISO_IR 100
    patch = validate({"PatientName": {"vr": "PN", "Value": [{"Alphabetic": "Иванов^Иван"}]}})
    ds = pydicom.dcmread(io.BytesIO(patch_part10(data, msgspec.json.encode(patch))))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Иванов^Иван"
    latin = validate({"PatientName": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jörg"}]}})
    ds = pydicom.dcmread(io.BytesIO(patch_part10(data, msgspec.json.encode(latin))))
    assert ds.SpecificCharacterSet == "ISO_IR 100" and str(ds.PatientName) == "Müller^Jörg"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"Modality": {"vr": "CS", "Value": ["MR"]}}, "Modality"),
        ({"0020000D": {"vr": "UI", "Value": ["1.2"]}}, "StudyInstanceUID"),
        ({"00080005": {"vr": "CS", "Value": ["ISO_IR 192"]}}, "SpecificCharacterSet"),
        ({"00100000": {"vr": "UL", "Value": [1]}}, "00100000"),
        ({"PatientSex": {"vr": "CS", "Value": ["female with spaces and more"]}}, "PatientSex"),
        ({"PatientAge": {"vr": "AS", "Value": ["forty"]}}, "PatientAge"),
        ({"PatientName": {"vr": "PN", "Value": [{"Alphabetic": "A" * 65}]}}, "PatientName"),
        ({"StudyTime": {"vr": "TM", "Value": ["25:00"]}}, "StudyTime"),
        ({"PatientID": {"Value": [{"nested": 1}]}}, "PatientID"),
    ],
)
def test_validate_refuses_naming_the_attribute(body: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(PatchError, match=message):
        validate(body)


def test_validate_fills_the_vr_and_accepts_keywords_and_empty_values() -> None:
    patch = validate({"PatientID": {"Value": ["X"]}, "00100030": {"vr": "DA"}})
    assert patch == {"00100020": {"vr": "LO", "Value": ["X"]}, "00100030": {"vr": "DA"}}
    assert first_text(patch["00100030"]) is None
    assert first_text({"vr": "PN", "Value": [{"Alphabetic": "A^B", "Ideographic": "x"}]}) == "A^B"


def test_rejection_of_a_note_lists_what_it_references() -> None:
    study, series = new_uids()
    sops = [sop_instance_uid(series, i) for i in range(3)]
    note = rejection_note(study, new_uids()[1], [(series, s) for s in sops[:2]], "113037")
    ds = pydicom.dcmread(io.BytesIO(note))
    meta = json.dumps(ds.to_json_dict()).encode()
    found = rejection_of(ds.SOPClassUID, ds.SOPInstanceUID, meta)
    assert found is not None and found.code == "113037"
    assert found.references == [(study, series, s) for s in sops[:2]]
    # not a rejection: another code, another scheme, another SOP class
    other = pydicom.dcmread(
        io.BytesIO(rejection_note(study, series, [(series, sops[0])], "113000"))
    )
    assert (
        rejection_of(
            other.SOPClassUID, other.SOPInstanceUID, json.dumps(other.to_json_dict()).encode()
        )
        is None
    )
    ds.ConceptNameCodeSequence[0].CodingSchemeDesignator = "99LOCAL"
    assert (
        rejection_of(ds.SOPClassUID, ds.SOPInstanceUID, json.dumps(ds.to_json_dict()).encode())
        is None
    )
    assert rejection_of("1.2.840.10008.5.1.4.1.1.2", ds.SOPInstanceUID, meta) is None
