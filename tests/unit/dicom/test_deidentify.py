"""De-identification by PS3.15 Annex E (app.dicom.deidentify): every attribute the
Basic Profile's table (Table E.1-1) names is removed, emptied, replaced with a dummy
or its UID replaced; no identifying value survives anywhere in the written file;
UIDs map consistently, so references stay linked; the options keep what they say."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from app.dicom import deidentify as deid

from synth import ct_slice, new_uids

KEY = b"k" * 32
MARK = "SECRETX"


def _ct(index: int = 0, study: str | None = None, series: str | None = None) -> Dataset:
    s, r = new_uids()
    return dcmread(io.BytesIO(ct_slice(study or s, series or r, index, rows=16, cols=16)))


def _fill(ds: Dataset) -> dict[int, str]:
    """Every single-valued attribute of the table with a text, date or UID value that
    can be found again in the bytes; the values set, by tag."""
    put: dict[int, str] = {}
    for n, tag in enumerate(sorted(deid._EXACT)):
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        if tag >> 16 in (0x0000, 0x0002):  # command and file meta groups: not a data set's
            continue
        value = {
            "DA": "20240102", "TM": "101010", "DT": "20240102101010",
            "UI": f"1.2.3.999.{n}", "PN": f"{MARK}^N{n}",
        }.get(vr)  # fmt: skip
        if value is None and vr in ("LO", "SH", "LT", "ST", "UT", "UC", "AE", "CS"):
            value = f"{MARK}{n}"[:16]
        if value is None:
            continue
        ds.add_new(tag, vr, value)
        put[tag] = value
    return put


def _written(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_no_value_the_table_names_survives() -> None:
    ds = _ct()
    put = _fill(ds)
    assert len(put) > 200, "the table has hundreds of such attributes"
    # and the same values inside a sequence item, and in a private element
    item = Dataset()
    item.PatientName = f"{MARK}^NESTED"
    item.ReferencedSOPInstanceUID = "1.2.3.999.77777"
    ds.ReferencedImageSequence = Sequence([item])
    ds.add_new(0x00091010, "LO", f"{MARK}PRIV")
    deid.deidentify(ds, KEY)
    data = _written(ds)
    assert MARK.encode() not in data
    assert b"1.2.3.999." not in data and b"20240102" not in data
    for tag in put:
        action = deid._action(tag)
        if action == "X":
            assert tag not in ds, keyword_for_tag(tag)
    assert 0x00091010 not in ds  # private: removed
    assert ds.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100"]
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_uids_map_consistently_and_references_stay_linked() -> None:
    study, series = new_uids()
    one, two = _ct(0, study, series), _ct(1, study, series)
    ref = Dataset()
    ref.ReferencedSOPClassUID = one.SOPClassUID
    ref.ReferencedSOPInstanceUID = one.SOPInstanceUID
    two.ReferencedImageSequence = Sequence([ref])
    original = str(one.SOPInstanceUID)
    deid.deidentify(one, KEY)
    deid.deidentify(two, KEY)
    assert one.StudyInstanceUID == two.StudyInstanceUID != study
    assert one.SeriesInstanceUID == two.SeriesInstanceUID != series
    assert two.ReferencedImageSequence[0].ReferencedSOPInstanceUID == one.SOPInstanceUID
    assert one.SOPInstanceUID == deid.new_uid(KEY, original)
    assert deid.new_uid(b"another key" * 3, original) != one.SOPInstanceUID
    assert str(one.SOPInstanceUID).startswith("2.25.") and len(str(one.SOPInstanceUID)) <= 64
    assert one.SOPClassUID == two.SOPClassUID  # not identifying: kept
    # one patient keeps one pseudonym, and it is neither the name nor the ID
    assert one.PatientID == two.PatientID == one.PatientName
    assert str(one.PatientID).startswith("ANON-")


def test_pixel_data_and_what_the_table_keeps_are_unchanged() -> None:
    ds = _ct()
    pixels, rows, modality = ds.PixelData, ds.Rows, ds.Modality
    deid.deidentify(ds, KEY)
    assert ds.PixelData == pixels and ds.Rows == rows and ds.Modality == modality


def test_retain_dates_keeps_the_dates_and_says_so() -> None:
    ds = _ct()
    ds.StudyDate, ds.AcquisitionDateTime, ds.PatientBirthDate = (
        "20240102",
        "20240102101010",
        "19700101",
    )
    deid.deidentify(ds, KEY, ["retain-dates"])
    assert ds.StudyDate == "20240102" and ds.AcquisitionDateTime == "20240102101010"
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113106"]
    assert "PatientName" in ds and not str(ds.PatientName).startswith("DOE")


def test_clean_descriptors_keep_descriptions_without_identifying_values() -> None:
    ds = _ct()
    ds.PatientName = "SMITH^JOHN"
    ds.PatientID = "MRN12345"
    ds.StudyDescription = "CT CHEST for SMITH follow-up MRN12345"
    ds.ImageComments = "john smith, see prior"
    basic = _ct()
    basic.StudyDescription, basic.ImageComments = ds.StudyDescription, ds.ImageComments
    deid.deidentify(basic, KEY)
    assert "StudyDescription" not in basic and "ImageComments" not in basic
    deid.deidentify(ds, KEY, ["clean-descriptors"])
    assert ds.StudyDescription == "CT CHEST for follow-up"
    assert ds.ImageComments == ", see prior"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113105"]


def test_the_part10_round_trip_keeps_the_transfer_syntax() -> None:
    original = _ct()
    data, uid = deid.deidentify_part10(_written(original), KEY, ())
    again = dcmread(io.BytesIO(data))
    assert str(again.SOPInstanceUID) == uid == deid.new_uid(KEY, str(original.SOPInstanceUID))
    assert again.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert again.PixelData == original.PixelData


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "basic"),
        ("retain-dates", "basic"),
        ("basic,nope", "unknown de-identification option"),
        ("basic,retain-dates,x", "unknown"),
    ],
)
def test_options_are_checked(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        deid.parse_options(text)


def test_options_parse() -> None:
    assert deid.parse_options("basic") == ()
    assert deid.parse_options("basic,clean-descriptors,retain-dates") == (
        "retain-dates",
        "clean-descriptors",
    )
