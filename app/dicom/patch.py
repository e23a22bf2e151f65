"""Corrections of patient and study attributes (issue #15), as DICOM JSON patches.

A correction never rewrites a stored file. It is a *patch*: the DICOM JSON (PS3.18
Annex F) of the attributes whose values replace the file's. The index applies it to the
stored metadata and the study row at once; a retrieved Part 10 file gets it on the way
out (:func:`patch_part10`): the header up to Pixel Data is re-encoded with the new
values and the rest of the file, the pixel data, is sent as stored.

Only attributes of the patient and study levels of the Study Root information model
(PS3.4 C.6.2.1: the Patient module, group 0010, and the study attributes of
:data:`app.dicom.levels.STUDY_TAGS`) may be corrected this way; UIDs never.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import msgspec
from pydicom import config, dcmread, dcmwrite
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName, validate_value

from app.dicom.levels import STUDY_TAGS
from app.dicom.reader import tail_offset

#: tags never corrected: identity (UIDs) and what the archive itself maintains
FIXED = frozenset({0x0020000D, 0x00080005, 0x00080201})
#: the study row's columns a correction of these tags changes (PS3.4 C.6.2.1.2 keys)
COLUMNS = {
    0x00100010: "patient_name",
    0x00100020: "patient_id",
    0x00100021: "issuer_of_patient_id",
    0x00100030: "patient_birth_date",
    0x00100040: "patient_sex",
    0x00080020: "study_date",
    0x00080030: "study_time",
    0x00080050: "accession_number",
    0x00200010: "study_id",
    0x00080090: "referring_physician_name",
    0x00081030: "study_description",
}
PATIENT_NAME = 0x00100010
_TEXT_CONTROLS = "\x1b\t\n\x0c\r"
#: a correction names at most this many attributes (bounded request dimension)
MAX_ATTRIBUTES = 64


class PatchError(ValueError):
    """The correction is not acceptable; the message says which attribute and why."""


def updatable(tag: int) -> bool:
    """Patient module (group 0010) and study-level attributes, except UIDs."""
    if tag in FIXED or tag & 0xFFFF == 0:
        return False
    return (tag >> 16) == 0x0010 or tag in STUDY_TAGS


def _name(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if keyword else f"{tag:08X}"


def tag_of(key: str) -> int:
    """A DICOM JSON key (8 hex digits) or a keyword (``PatientName``) -> tag."""
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        return int(key, 16)
    tag = tag_for_keyword(key)
    if tag is None:
        raise PatchError(f"{key!r} is neither a DICOM tag (8 hex digits) nor a keyword")
    return int(tag)


def validate(body: Any) -> dict[str, Any]:
    """A correction as DICOM JSON -> the patch to apply (keys upper-case, VR filled in).

    Refused, naming each offending attribute: a non-object, unknown tags, attributes of
    other levels or UIDs, a VR other than the dictionary's, values the VR does not allow
    (PS3.5 6.2: length, characters, DA/TM format)."""
    if not isinstance(body, dict) or not body:
        raise PatchError("the correction must be a non-empty DICOM JSON object")
    if len(body) > MAX_ATTRIBUTES:
        raise PatchError(f"a correction names at most {MAX_ATTRIBUTES} attributes")
    patch: dict[str, Any] = {}
    refused: list[str] = []
    for key, element in body.items():
        tag = tag_of(str(key))
        if not updatable(tag):
            refused.append(_name(tag))
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            refused.append(_name(tag))
            continue
        if not isinstance(element, dict):
            raise PatchError(f"{_name(tag)}: the value must be a DICOM JSON element object")
        if vr == "SQ":
            raise PatchError(f"{_name(tag)}: sequences cannot be corrected this way")
        given = element.get("vr", vr)
        if given != vr:
            raise PatchError(f"{_name(tag)}: VR {given!r}, but the dictionary says {vr}")
        unknown = set(element) - {"vr", "Value"}
        if unknown:
            raise PatchError(f"{_name(tag)}: unexpected members {sorted(unknown)}")
        entry: dict[str, Any] = {"vr": vr}
        if "Value" in element:
            entry["Value"] = element["Value"]
        patch[f"{tag:08X}"] = entry
    if refused:
        raise PatchError(
            "only patient and study attributes can be corrected (no UIDs); not: "
            + ", ".join(refused)
        )
    _check_values(patch)
    return patch


def dataset_of(attrs: dict[str, Any]) -> Dataset:
    """DICOM JSON (checked in its shape already) as a pydicom dataset; ValueError, with
    pydicom's reason, when pydicom cannot read it (its warnings are silenced: the
    values are validated by :func:`value_problem` after)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Dataset.from_json(msgspec.json.encode(attrs).decode())
    except Exception as exc:  # noqa: BLE001 - pydicom raises several kinds on bad JSON
        raise ValueError(str(exc)[:200]) from None


def _check_values(patch: dict[str, Any]) -> None:
    try:
        ds = dataset_of(patch)
    except ValueError as exc:
        raise PatchError(f"the correction is not valid DICOM JSON: {exc}") from None
    for element in ds:
        if element.VR == "SQ":
            continue
        problem = value_problem(element)
        if problem is not None:
            raise PatchError(f"{_name(int(element.tag))}: {problem}")


def value_problem(element: DataElement) -> str | None:
    """What is wrong with the values of a (non-sequence) element, or None: a value its
    VR does not allow (PS3.5 6.2: length, characters, DA/TM formats) or a control
    character where the VR has none (PS3.5 6.1.3: ESC, for code extensions, anywhere;
    TAB, LF, FF and CR only in the text VRs)."""
    values = element.value if element.VM > 1 else [element.value]
    for value in values:
        if value is None or value == "":
            continue
        raw = str(value) if element.VR == "PN" else value
        try:
            validate_value(element.VR, raw, config.RAISE)
        except (ValueError, TypeError) as exc:
            return str(exc)
        allowed = _TEXT_CONTROLS if element.VR in ("LT", "ST", "UT") else "\x1b"
        if isinstance(raw, str) and any(ord(c) < 0x20 and c not in allowed for c in raw):
            return "control characters"
    return None


def first_text(element: dict[str, Any] | None) -> str | None:
    """The value a study column holds for a DICOM JSON element: its first value (PN:
    the alphabetic group, as queries match it; PS3.5 6.2.1)."""
    values = (element or {}).get("Value") or []
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):
        value = value.get("Alphabetic")
    return str(value) if value not in (None, "") else None


def patched_metadata(metadata: bytes, patch: bytes) -> bytes:
    """An instance's stored DICOM JSON with the patch's attributes in place of its own,
    in tag order. Only the top level is decoded (the values stay raw bytes), so this
    costs a fraction of re-parsing the whole object."""
    top = msgspec.json.decode(metadata, type=dict[str, msgspec.Raw])
    top.update(msgspec.json.decode(patch, type=dict[str, msgspec.Raw]))
    return msgspec.json.encode(dict(sorted(top.items())))


# -- Part 10 on the way out ---------------------------------------------------------------


def patch_part10(data: bytes, patch: bytes) -> bytes:
    """A whole Part 10 file with the patch applied."""
    end = tail_offset(data)
    if end is None:  # deflated: the data set is re-encoded whole
        ds = dcmread(io.BytesIO(data))
        _apply(ds, patch)
        out = io.BytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
        return out.getvalue()
    return patch_head(data[:end], patch) + data[end:]


def patch_head(head: bytes, patch: bytes) -> bytes:
    """The file's bytes up to Pixel Data (preamble, File Meta Information, the
    attributes before (7FE0,0010)) re-encoded with the patch applied, in the file's own
    transfer syntax; what follows is appended unchanged by the caller."""
    ds = dcmread(io.BytesIO(head), force=True)
    _apply(ds, patch)
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=False)
    return out.getvalue()


def head_end(head: bytes, whole: bool) -> int | None:
    """Where the part of ``head`` a rewrite covers ends, or None if the prefix read is
    too short to tell (or the data set is deflated)."""
    end = tail_offset(head)
    if end is None or (end == len(head) and not whole):
        return None
    return end


def _apply(ds: Dataset, patch: bytes) -> None:
    changes = Dataset.from_json(patch.decode())
    for tag in [t for t in ds.keys() if t.element == 0 and t.group != 0x0002]:  # noqa: SIM118
        del ds[tag]  # group lengths (retired, PS3.5 7.2) would no longer be true
    text = [e for e in changes if e.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC")]
    if not _encodable(ds, text):
        # the file's character set cannot hold a new value: the data set is decoded
        # (with its own character set) and written again in UTF-8 (PS3.5 6.1.2.3,
        # ISO_IR 192)
        ds.decode()
        ds.SpecificCharacterSet = "ISO_IR 192"
        _unpin_person_names(ds)
    for element in changes:
        ds[element.tag] = element


def _unpin_person_names(ds: Dataset) -> None:
    """Decoded person names keep the character set they were decoded with; written
    again, they must take the data set's new one."""
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _unpin_person_names(item)
        elif element.VR == "PN" and element.value is not None:
            if element.VM > 1:
                element.value = [PersonName(str(v)) for v in element.value]
            elif element.value != "":
                element.value = PersonName(str(element.value))


def _encodable(ds: Dataset, elements: list[Any]) -> bool:
    """Whether the new text values can be written in the file's character set."""
    charset = ds.get("SpecificCharacterSet") or "ISO_IR 6"
    names = [charset] if isinstance(charset, str) else list(charset)
    texts = [
        str(value)
        for element in elements
        for value in (element.value if element.VM > 1 else [element.value])
        if value not in (None, "")
    ]
    if all(text.isascii() for text in texts):
        return True
    if len(names) != 1:
        return False  # ISO 2022 code extensions: written again in UTF-8 instead
    codec = convert_encodings(names)[0]
    try:
        for text in texts:
            text.encode(codec)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
