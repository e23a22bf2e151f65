"""Same instance, another encoding (app.dicom.equivalence; issue #19)."""

from __future__ import annotations

import io

import pydicom
from pydicom.uid import JPEG2000Lossless, RLELossless

from app.dicom.analysis import analyse_content
from app.dicom.equivalence import same_content, same_instance

from synth import ct_slice, new_uids


def _metadata(data: bytes) -> bytes:
    return analyse_content(memoryview(data), "", len(data)).metadata


def _encode(ds: pydicom.Dataset, **kw: object) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, **kw)  # type: ignore[arg-type]
    return out.getvalue()


def _original() -> tuple[bytes, pydicom.Dataset]:
    study, series = new_uids()
    data = ct_slice(study, series, 0, rows=32, cols=32)
    return data, pydicom.dcmread(io.BytesIO(data))


def test_other_transfer_syntaxes_and_file_meta_are_the_same_instance() -> None:
    data, ds = _original()
    stored = _metadata(data)
    for syntax in (RLELossless, JPEG2000Lossless):
        other = pydicom.dcmread(io.BytesIO(data))
        other.compress(syntax, generate_instance_uid=False)
        assert same_instance(stored, _metadata(_encode(other))), syntax
    implicit = pydicom.dcmread(io.BytesIO(data))
    implicit.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    implicit.file_meta.SourceApplicationEntityTitle = "ROUTER"  # another door's meta
    assert same_instance(stored, _metadata(_encode(implicit)))


def test_a_changed_attribute_or_a_lossy_copy_is_not() -> None:
    data, ds = _original()
    stored = _metadata(data)
    renamed = pydicom.dcmread(io.BytesIO(data))
    renamed.PatientName = "OTHER^NAME"
    assert not same_instance(stored, _metadata(_encode(renamed)))
    lossy = pydicom.dcmread(io.BytesIO(data))
    lossy.LossyImageCompression = "01"  # PS3.3 C.7.6.1.1.5: says it is not the original
    assert not same_instance(stored, _metadata(_encode(lossy)))
    fewer = pydicom.dcmread(io.BytesIO(data))
    del fewer.StudyDescription
    assert not same_instance(stored, _metadata(_encode(fewer)))


def test_sequences_are_compared_item_by_item() -> None:
    data, _ = _original()
    with_seq = pydicom.dcmread(io.BytesIO(data))
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D1100", "SRT", "Head"
    with_seq.AnatomicRegionSequence = [item]
    stored = _metadata(_encode(with_seq))
    item.CodeMeaning = "Chest"
    assert not same_instance(stored, _metadata(_encode(with_seq)))
    item.CodeMeaning = "Head"
    with_seq.compress(RLELossless, generate_instance_uid=False)
    assert same_instance(stored, _metadata(_encode(with_seq)))


def test_malformed_json_is_never_the_same() -> None:
    data, _ = _original()
    assert not same_instance(b"{not json", _metadata(data))


def test_pixels_decide_too_in_one_syntax_and_in_two() -> None:
    """Equal headers are not enough: a second object with other pixel values under the
    same UIDs is another object (it replaces or is refused), in the same transfer syntax
    (bytes compared) and in another (decoded pixels compared)."""
    study, series = new_uids()
    first = ct_slice(study, series, 0, rows=32, cols=32, seed=1)
    other = ct_slice(study, series, 0, rows=32, cols=32, seed=2)
    assert same_instance(_metadata(first), _metadata(other))  # headers alike
    assert not same_content(first, other)
    assert same_content(first, first)
    rle = pydicom.dcmread(io.BytesIO(first))
    rle.compress(RLELossless, generate_instance_uid=False)
    assert same_content(first, _encode(rle))
    rle_other = pydicom.dcmread(io.BytesIO(other))
    rle_other.compress(RLELossless, generate_instance_uid=False)
    assert not same_content(first, _encode(rle_other))
    meta = pydicom.dcmread(io.BytesIO(first))
    meta.file_meta.SourceApplicationEntityTitle = "ROUTER"  # another door's meta only
    assert same_content(first, _encode(meta))
    assert not same_content(first, b"not DICOM")
