"""IOCM rejection notes (IHE RAD TF-1 §37, TF-2 4.66 Imaging Object Change Management).

A rejection note is a Key Object Selection Document (PS3.3 A.35.4) whose Document
Title, the Concept Name Code Sequence (0040,A043), is one of the rejection codes of
PS3.16 CID 7011 "Rejected for Quality Reasons" and its siblings. The instances it
rejects are listed in its Current Requested Procedure Evidence Sequence (0040,A375):
Study Instance UID, Referenced Series Sequence (0008,1115) with Series Instance UID, and
Referenced SOP Sequence (0008,1199) with Referenced SOP Instance UID (0008,1155)
(PS3.3 C.17.2.1, Hierarchical SOP Instance Reference Macro).

Read from the instance's DICOM JSON (the metadata stored at ingest).
"""

from __future__ import annotations

from typing import Any

import msgspec

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"

QUALITY = "113001"  # Rejected for Quality Reasons
PATIENT_SAFETY = "113037"  # Rejected for Patient Safety Reasons
WRONG_WORKLIST_ENTRY = "113038"  # Incorrect Modality Worklist Entry
RETENTION_EXPIRED = "113039"  # Data Retention Policy Expired
#: PS3.16 CID 7011 rejection codes, scheme DCM
REJECTION_CODES = {
    QUALITY: "Rejected for Quality Reasons",
    PATIENT_SAFETY: "Rejected for Patient Safety Reasons",
    WRONG_WORKLIST_ENTRY: "Incorrect Modality Worklist Entry",
    RETENTION_EXPIRED: "Data Retention Policy Expired",
}
#: codes whose rejected instances are purged at once, not after the trash period
PURGED_AT_ONCE = frozenset({RETENTION_EXPIRED})

_CONCEPT_NAME = "0040A043"
_CODE_VALUE = "00080100"
_SCHEME = "00080102"
_EVIDENCE = "0040A375"
_STUDY_UID = "0020000D"
_SERIES_SEQUENCE = "00081115"
_SERIES_UID = "0020000E"
_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP = "00081155"


class Rejection(msgspec.Struct, frozen=True):
    note_uid: str
    code: str
    #: (study, series, SOP Instance UID) of each rejected instance
    references: list[tuple[str, str, str]]


def _items(element: Any) -> list[dict[str, Any]]:
    if not isinstance(element, dict):
        return []
    return [v for v in element.get("Value") or [] if isinstance(v, dict)]


def _text(item: dict[str, Any], tag: str) -> str | None:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value") or []
    return values[0] if values and isinstance(values[0], str) else None


def rejection_of(sop_class_uid: str, sop_uid: str, metadata: bytes) -> Rejection | None:
    """The rejection a stored instance makes, or None (not a KOS, not a rejection code)."""
    if sop_class_uid != KEY_OBJECT_SELECTION:
        return None
    meta = msgspec.json.decode(metadata)
    if not isinstance(meta, dict):
        return None
    names = _items(meta.get(_CONCEPT_NAME))
    if not names or _text(names[0], _SCHEME) != "DCM":
        return None
    code = _text(names[0], _CODE_VALUE)
    if code not in REJECTION_CODES:
        return None
    references: list[tuple[str, str, str]] = []
    for study_item in _items(meta.get(_EVIDENCE)):
        study = _text(study_item, _STUDY_UID)
        for series_item in _items(study_item.get(_SERIES_SEQUENCE)):
            series = _text(series_item, _SERIES_UID)
            for sop_item in _items(series_item.get(_SOP_SEQUENCE)):
                sop = _text(sop_item, _REFERENCED_SOP)
                if study and series and sop and sop != sop_uid:
                    references.append((study, series, sop))
    return Rejection(sop_uid, code, references)
