"""pydicom's character set test files (``pydicom.data.get_charset_files``) and pydicom's
own decoding of their text, the reference the archive's DICOM JSON is checked against.

* ``CHARSET_FILES``: every ``*.dcm`` of the set, sorted by name.
* ``complete(path)``: the file's bytes, or, for the two files that are bare data sets
  (chrSQEncoding*.dcm have no SOP Class, SOP Instance, Study or Series Instance UID in
  the data set, which STOW refuses, PS3.18 10.5.1.1), a copy with those added.
* ``storable()``: what one archive can hold of the set: ``complete`` bytes, and a copy
  under fresh UIDs for a file that shares its SOP Instance UID with an earlier one
  (chrFrenMulti with chrFren, chrJapMultiExplicitIR6 with chrJapMulti): a different
  object under a stored UID is refused (PS3.4 B.4.1).
* ``expected_texts(ds)`` / ``json_texts(obj)``: path -> JSON ``Value`` of every attribute
  whose VR Specific Character Set applies to (PS3.5 6.1.2.3), from pydicom's decoding
  and from a DICOM JSON object; PN as ``{"Alphabetic", "Ideographic", "Phonetic"}``
  (PS3.18 F.2.2).

Only UIDs change in a copy; the text elements are written back as the raw bytes read,
and the retired group lengths, which the new UIDs would make wrong, are left out.
"""

from __future__ import annotations

import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_charset_files
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

CHARSET_FILES: list[Path] = sorted(Path(p) for p in get_charset_files("*.dcm"))

#: the VRs Specific Character Set applies to (PS3.5 6.1.2.3)
TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_IDENTIFYING = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def _uid(*parts: str) -> str:
    """A deterministic ``2.25.`` UID (PS3.5 B.2): storing the set twice is idempotent."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '|'.join(('pictor-charset', *parts))).int}"


def _with_uids(path: Path, fresh: bool) -> bytes:
    ds = pydicom.dcmread(path)
    for tag in [t for t in ds.keys() if t.element == 0]:  # noqa: SIM118 - iterating a Dataset yields elements  # noqa: SIM118 - tags, not elements
        del ds[tag]
    meta = ds.file_meta
    ds.SOPClassUID = ds.get("SOPClassUID") or meta.MediaStorageSOPClassUID
    for keyword in _IDENTIFYING[1:]:
        if fresh or keyword not in ds:
            setattr(ds, keyword, _uid(path.name, keyword))
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def complete(path: Path) -> bytes:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if all(keyword in ds for keyword in _IDENTIFYING):
        return path.read_bytes()
    return _with_uids(path, fresh=False)


def storable() -> dict[str, bytes]:
    """File name -> the bytes to store, every SOP Instance UID distinct."""
    out: dict[str, bytes] = {}
    seen: set[str] = set()
    for path in CHARSET_FILES:
        data = complete(path)
        sop = pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID
        if sop in seen:
            data = _with_uids(path, fresh=True)
            sop = pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID
        seen.add(sop)
        out[path.name] = data
    return out


def person_name(value: PersonName) -> dict[str, str] | None:
    """A PN value as DICOM JSON (PS3.18 F.2.2): the component groups that are not empty."""
    groups = {
        "Alphabetic": value.alphabetic,
        "Ideographic": value.ideographic,
        "Phonetic": value.phonetic,
    }
    return {k: v for k, v in groups.items() if v} or None


def expected_texts(ds: Dataset, path: str = "") -> dict[str, list[Any]]:
    """pydicom's decoding of every text attribute, items included, as JSON Values.

    An element the file itself marks UN is left out: pydicom gives a private one the VR
    of its private dictionary, the archive keeps it as the binary it was sent as.
    """
    out: dict[str, list[Any]] = {}
    for tag in ds.keys():  # noqa: SIM118 - a Dataset iterates over converted elements
        if ds.get_item(tag).VR == "UN":
            continue
        elem = ds[tag]
        key = f"{path}{elem.tag:08X}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                out.update(expected_texts(item, f"{key}/{i}/"))
            continue
        if elem.VR not in TEXT_VRS or elem.tag.group == 0x0002 or elem.value in (None, ""):
            continue
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        if elem.VR == "PN":
            decoded = [person_name(v) for v in values]
        else:
            decoded = [str(v) or None for v in values]
        if any(v is not None for v in decoded):
            out[key] = decoded
    return out


def json_texts(obj: dict[str, Any], path: str = "") -> dict[str, list[Any]]:
    """The same paths and Values read from a DICOM JSON object."""
    out: dict[str, list[Any]] = {}
    for key, attr in obj.items():
        if attr["vr"] == "SQ":
            for i, item in enumerate(attr.get("Value", [])):
                out.update(json_texts(item, f"{path}{key}/{i}/"))
        elif attr["vr"] in TEXT_VRS and "Value" in attr:
            out[f"{path}{key}"] = attr["Value"]
    return out
