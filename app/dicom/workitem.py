"""Workitems (UPS instances, PS3.4 CC) as DICOM JSON (PS3.18 F.2): the checks a dataset
sent to UPS-RS passes before anything reads it, and the few accessors the worklist needs.

A workitem is attributes only: PS3.18 11.1.3 says the transactions carry no bulk data,
so ``BulkDataURI`` is refused and ``InlineBinary`` is bounded with the whole body.
"""

from __future__ import annotations

from typing import Any

import msgspec
from pydicom.datadict import dictionary_description, dictionary_VR
from pydicom.dataset import Dataset

from app.dicom.patch import dataset_of, value_problem

#: attributes of one workitem, sequence items included (a bounded request dimension)
MAX_ELEMENTS = 2000
#: sequences in sequences, at most
MAX_DEPTH = 6

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
TRANSACTION_UID = 0x00081195
STATE = 0x00741000  # Procedure Step State
PRIORITY = 0x00741200  # Scheduled Procedure Step Priority
WORKLIST_LABEL = 0x00741202
STEP_LABEL = 0x00741204  # Procedure Step Label
INPUT_READINESS = 0x00404041
SCHEDULED_START = 0x00404005  # Scheduled Procedure Step Start DateTime
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
STUDY_UID = 0x0020000D
ACCESSION = 0x00080050
STATION_NAMES = 0x00404025  # Scheduled Station Name Code Sequence
WORKITEM_CODES = 0x00404018  # Scheduled Workitem Code Sequence
CODE_VALUE = 0x00080100
PROGRESS = 0x00741002  # Procedure Step Progress Information Sequence
CANCELLATION_REASON = 0x00741238  # Reason For Cancellation
CONTACT_NAME = 0x0074100A  # Contact Display Name
CONTACT_URI = 0x0074100C  # Contact URI
PERFORMED = 0x00741216  # Unified Procedure Step Performed Procedure Sequence
PERFORMED_START = 0x00404050  # Performed Procedure Step Start DateTime
PERFORMED_END = 0x00404051  # Performed Procedure Step End DateTime

#: the UPS Push SOP Class: the SOP Class of every workitem (PS3.4 CC.1)
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"

STATES = ("SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED")
FINAL_STATES = ("COMPLETED", "CANCELED")
PRIORITIES = ("HIGH", "MEDIUM", "LOW")
READINESS = ("INCOMPLETE", "UNAVAILABLE", "READY")


class WorkitemError(ValueError):
    """The dataset is not an acceptable workitem; the message says which attribute."""


def key(tag: int) -> str:
    return f"{tag:08X}"


def name(tag: int) -> str:
    """``Patient ID (0010,0020)``: the dictionary's name of a tag and the tag."""
    label = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    try:
        return f"{dictionary_description(tag)} {label}"
    except KeyError:
        return label


def parse_dataset(body: bytes) -> dict[str, Any]:
    """One dataset from an ``application/dicom+json`` body: a JSON object, or an array
    holding exactly one (PS3.18 11.1.3 describes payloads as arrays of workitems).
    Keys upper-cased; refused, naming the attribute: malformed JSON, keys that are not
    8 hex digits, a VR unlike the dictionary's, members other than ``vr`` / ``Value`` /
    ``InlineBinary``, values the VR does not allow (PS3.5 6.2), more than
    :data:`MAX_ELEMENTS` attributes or :data:`MAX_DEPTH` levels of sequences."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise WorkitemError(f"the body is not JSON: {exc}") from None
    if isinstance(decoded, list):
        if len(decoded) != 1:
            raise WorkitemError("the body must hold exactly one dataset")
        decoded = decoded[0]
    if not isinstance(decoded, dict):
        raise WorkitemError("the body must be a DICOM JSON dataset (an object)")
    counter = [0]
    dataset = _dataset(decoded, 0, counter)
    _check_values(dataset)
    return dataset


def _dataset(raw: dict[str, Any], depth: int, counter: list[int]) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise WorkitemError(f"sequences are nested more than {MAX_DEPTH} deep")
    out: dict[str, Any] = {}
    for raw_key, element in raw.items():
        counter[0] += 1
        if counter[0] > MAX_ELEMENTS:
            raise WorkitemError(f"a workitem has at most {MAX_ELEMENTS} attributes")
        text = str(raw_key)
        if len(text) != 8 or any(c not in "0123456789abcdefABCDEF" for c in text):
            raise WorkitemError(f"{text[:20]!r} is not a DICOM JSON key (8 hex digits)")
        tag = int(text, 16)
        if not isinstance(element, dict):
            raise WorkitemError(f"{name(tag)}: the value must be a DICOM JSON element object")
        if "BulkDataURI" in element:
            raise WorkitemError(f"{name(tag)}: a workitem carries no bulk data (PS3.18 11.1.3)")
        unknown = set(element) - {"vr", "Value", "InlineBinary"}
        if unknown:
            raise WorkitemError(f"{name(tag)}: unexpected members {sorted(unknown)[:5]}")
        vr = element.get("vr")
        try:
            expected = dictionary_VR(tag)
        except KeyError:
            expected = None  # private or unknown: the given VR stands
        if vr is None:
            vr = expected
        if not isinstance(vr, str) or (expected is not None and vr not in expected.split(" or ")):
            raise WorkitemError(f"{name(tag)}: VR {vr!r}, but the dictionary says {expected}")
        entry: dict[str, Any] = {"vr": vr}
        if "InlineBinary" in element:
            entry["InlineBinary"] = element["InlineBinary"]
        if "Value" in element:
            value = element["Value"]
            if not isinstance(value, list):
                raise WorkitemError(f"{name(tag)}: Value must be an array")
            if vr == "SQ":
                if not all(isinstance(item, dict) for item in value):
                    raise WorkitemError(f"{name(tag)}: a sequence's items are objects")
                value = [_dataset(item, depth + 1, counter) for item in value]
            entry["Value"] = value
        out[key(tag)] = entry
    return out


def _check_values(dataset: dict[str, Any]) -> None:
    try:
        ds = dataset_of(dataset)
    except ValueError as exc:
        raise WorkitemError(f"not valid DICOM JSON: {exc}") from None
    _check_elements(ds)


def _check_elements(ds: Dataset) -> None:
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _check_elements(item)
        elif element.VR not in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            problem = value_problem(element)
            if problem is not None:
                raise WorkitemError(f"{name(element.tag)}: {problem}")


def first(dataset: dict[str, Any], tag: int) -> Any:
    """The first value of ``tag`` (a person name: its alphabetic form), else None."""
    values = dataset.get(key(tag), {}).get("Value") or [None]
    value = values[0]
    if isinstance(value, dict) and "Alphabetic" in value:
        return value["Alphabetic"]
    return value


def first_code(dataset: dict[str, Any], sequence: int) -> str | None:
    """The Code Value of the first item of a code sequence."""
    items = dataset.get(key(sequence), {}).get("Value") or []
    return first(items[0], CODE_VALUE) if items and isinstance(items[0], dict) else None


def text(tag: int, value: str, vr: str = "CS") -> dict[str, Any]:
    """One element with one string value."""
    return {key(tag): {"vr": vr, "Value": [value]}}
