"""Modality Performed Procedure Steps (issue #18; PS3.4 F.7, F.8).

A modality tells the archive what it is doing with the Scheduled Procedure Steps of
the worklist: N-CREATE of a step IN PROGRESS when the exam starts (F.7.2.1), N-SETs
while it runs, and one that sets it COMPLETED or DISCONTINUED (F.7.2.2), after which
the step no longer changes. The worklist items the step names (its Scheduled Step
Attributes Sequence) follow: STARTED, then COMPLETED or DISCONTINUED, and the series
of its Performed Series Sequence are linked to them, so a series' order is known.

The rules of Table F.7.2-1 checked here work on DICOM JSON (PS3.18 Annex F), so they
do not depend on the transport: the DIMSE process (:mod:`app.dimse.mpps`) converts
and maps the errors to statuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from app.dicom.uids import MPPS, is_valid_uid
from app.errors import BadRequest, Conflict
from app.index import mpps as index
from app.index.database import Pool
from app.index.mpps import Step

__all__ = ["AttributeProblem", "NoLongerUpdatable", "Performed", "ProcedureSteps", "Step"]

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"

SCHEDULED_STEP_ATTRIBUTES = "00400270"
PERFORMED_SERIES = "00400340"
STATUS = "00400252"
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
ACCESSION = "00080050"
REQUESTED_PROCEDURE_ID = "00401001"
SPS_ID = "00400009"
STATION_AET = "00400241"

#: Type 1 in N-CREATE (Table F.7.2-1): present with a value
REQUIRED_AT_CREATE = {
    "00400253": "PerformedProcedureStepID",
    STATION_AET: "PerformedStationAETitle",
    "00400244": "PerformedProcedureStepStartDate",
    "00400245": "PerformedProcedureStepStartTime",
    STATUS: "PerformedProcedureStepStatus",
    "00080060": "Modality",
}
#: what a step set COMPLETED must hold (the Final State column of Table F.7.2-1)
REQUIRED_WHEN_COMPLETED = {
    "00400250": "PerformedProcedureStepEndDate",
    "00400251": "PerformedProcedureStepEndTime",
    PERFORMED_SERIES: "PerformedSeriesSequence",
}
#: "Not allowed" in N-SET (Table F.7.2-1): the scheduling, the patient and the
#: identity of the performed step; a modality that sends one again unchanged is
#: answered as if it had not (some send the whole step each time)
NOT_SETTABLE = {
    SCHEDULED_STEP_ATTRIBUTES: "ScheduledStepAttributesSequence",
    "00100010": "PatientName",
    "00100020": "PatientID",
    "00100021": "IssuerOfPatientID",
    "00100024": "IssuerOfPatientIDQualifiersSequence",
    "00101002": "OtherPatientIDsSequence",
    "00100030": "PatientBirthDate",
    "00100040": "PatientSex",
    "00081120": "ReferencedPatientSequence",
    "00400253": "PerformedProcedureStepID",
    STATION_AET: "PerformedStationAETitle",
    "00400242": "PerformedStationName",
    "00400243": "PerformedLocation",
    "00400244": "PerformedProcedureStepStartDate",
    "00400245": "PerformedProcedureStepStartTime",
    "00080060": "Modality",
    "00200010": "StudyID",
    "00080016": "SOPClassUID",
    "00080018": "SOPInstanceUID",
}
#: largest step kept (its DICOM JSON): a bounded request dimension
MAX_BYTES = 1 << 20
#: most items in the Scheduled Step Attributes and Performed Series Sequences
MAX_ITEMS = 1000


class AttributeProblem(BadRequest):
    """An attribute that is missing (``missing``: PS3.7 C.5 statuses 0120H / 0121H) or
    has a value the step cannot take (0106H), named by ``tag`` (DICOM JSON key)."""

    def __init__(self, message: str, tag: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.tag = tag
        self.missing = missing


class NoLongerUpdatable(Conflict):
    """N-SET of a step that is COMPLETED or DISCONTINUED (F.7.2.2.2: Processing
    failure, "Performed Procedure Step Object may no longer be updated")."""


def _values(attrs: Mapping[str, Any], tag: str) -> list[Any]:
    entry = attrs.get(tag)
    if not isinstance(entry, dict):
        return []
    values = entry.get("Value")
    return values if isinstance(values, list) else []


def _text(attrs: Mapping[str, Any], tag: str) -> str:
    values = _values(attrs, tag)
    first = values[0] if values else None
    if isinstance(first, dict):  # PN
        first = first.get("Alphabetic")
    return first.strip() if isinstance(first, str) else ""


def _items(attrs: Mapping[str, Any], tag: str, name: str) -> list[dict[str, Any]]:
    items = [i for i in _values(attrs, tag) if isinstance(i, dict)]
    if len(items) > MAX_ITEMS:
        raise AttributeProblem(f"{name} has more than {MAX_ITEMS} items", tag)
    return items


def steps_of(attrs: Mapping[str, Any]) -> list[Step]:
    """The Scheduled Procedure Steps a performed step names (its Scheduled Step
    Attributes Sequence, Type 1 with a Study Instance UID in each item)."""
    name = NOT_SETTABLE[SCHEDULED_STEP_ATTRIBUTES]
    items = _items(attrs, SCHEDULED_STEP_ATTRIBUTES, name)
    if not items:
        raise AttributeProblem(
            f"{name} is missing or empty", SCHEDULED_STEP_ATTRIBUTES, missing=True
        )
    steps = []
    for item in items:
        study = _text(item, STUDY_UID)
        if not study:
            raise AttributeProblem(f"{name} > StudyInstanceUID is missing", STUDY_UID, missing=True)
        if not is_valid_uid(study):
            raise AttributeProblem(
                f"{name} > StudyInstanceUID {study[:64]!r} is not a UID", STUDY_UID
            )
        steps.append(
            Step(
                study,
                _text(item, ACCESSION),
                _text(item, REQUESTED_PROCEDURE_ID),
                _text(item, SPS_ID),
            )
        )
    return steps


def series_of(attrs: Mapping[str, Any]) -> list[str]:
    """The Series Instance UIDs of the Performed Series Sequence."""
    out = []
    for item in _items(attrs, PERFORMED_SERIES, "PerformedSeriesSequence"):
        uid = _text(item, SERIES_UID)
        if not is_valid_uid(uid):
            raise AttributeProblem(
                f"PerformedSeriesSequence > SeriesInstanceUID {uid[:64]!r} is not a UID"
                if uid
                else "PerformedSeriesSequence > SeriesInstanceUID is missing",
                SERIES_UID,
                missing=not uid,
            )
        out.append(uid)
    return list(dict.fromkeys(out))


def check_create(attrs: Mapping[str, Any]) -> None:
    """F.7.2.1: the Type 1 attributes, and the status IN PROGRESS (F.7.2.1.2: another
    value is "Invalid attribute value")."""
    for tag, name in REQUIRED_AT_CREATE.items():
        if not _text(attrs, tag):
            raise AttributeProblem(f"{name} is missing or empty", tag, missing=True)
    status = _text(attrs, STATUS)
    if status != IN_PROGRESS:
        raise AttributeProblem(
            f"PerformedProcedureStepStatus must be IN PROGRESS when created, not {status[:20]!r}",
            STATUS,
        )


def merged(stored: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """F.7.2.2: the step after an N-SET's modification list (each attribute named
    replaces the stored one, a sequence as a whole), or the rule it breaks."""
    status = _text(stored, STATUS)
    if status != IN_PROGRESS:
        raise NoLongerUpdatable(
            f"Performed Procedure Step Object may no longer be updated (it is {status})"
        )
    for tag, name in NOT_SETTABLE.items():
        if tag in changes and changes[tag] != stored.get(tag):
            raise AttributeProblem(f"{name} may not be changed by N-SET", tag)
    out = dict(stored) | {k: v for k, v in changes.items() if k != "00080005"}
    new = _text(out, STATUS)
    if new not in (IN_PROGRESS, COMPLETED, DISCONTINUED):
        raise AttributeProblem(
            f"PerformedProcedureStepStatus {new[:20]!r} is not IN PROGRESS, COMPLETED "
            "or DISCONTINUED",
            STATUS,
        )
    if new == COMPLETED:
        for tag, name in REQUIRED_WHEN_COMPLETED.items():
            if not _values(out, tag):
                raise AttributeProblem(
                    f"{name} must have a value when the step is COMPLETED", tag, missing=True
                )
    return out


@dataclass(frozen=True)
class Performed:
    """A stored step: its DICOM JSON and what it changed on the worklist."""

    attrs: dict[str, Any]
    items: int


class ProcedureSteps:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def create(self, uid: str, attrs: dict[str, Any], *, who: str) -> Performed:
        """N-CREATE (F.7.2.1): a new step IN PROGRESS; its worklist items are STARTED."""
        if not is_valid_uid(uid):
            raise AttributeProblem(f"{uid[:64]!r} is not a SOP Instance UID", "00080018")
        check_create(attrs)
        steps = steps_of(attrs)
        series = series_of(attrs)
        attrs = attrs | {
            "00080016": {"vr": "UI", "Value": [MPPS]},
            "00080018": {"vr": "UI", "Value": [uid]},
        }
        _check_size(attrs)
        items = await index.create(
            self.pool, uid, attrs, steps, series, _text(attrs, STATION_AET), who=who
        )
        return Performed(attrs, items)

    async def update(self, uid: str, changes: dict[str, Any], *, who: str) -> Performed:
        """N-SET (F.7.2.2): the changes applied to a step IN PROGRESS, its items set
        COMPLETED or DISCONTINUED with it."""

        def apply(stored: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
            out = merged(stored, changes)
            _check_size(out)
            return out, series_of(out)

        attrs, items = await index.update(self.pool, uid, apply, status_of, who=who)
        return Performed(attrs, items)

    async def get(self, uid: str) -> dict[str, Any]:
        """N-GET (F.8): the stored step; :class:`app.errors.NotFound` when unknown."""
        return await index.get(self.pool, uid)


def status_of(attrs: Mapping[str, Any]) -> str:
    """The Performed Procedure Step Status of a step (DICOM JSON)."""
    return _text(attrs, STATUS)


def _check_size(attrs: Mapping[str, Any]) -> None:
    if len(msgspec.json.encode(attrs)) > MAX_BYTES:
        raise AttributeProblem(f"the step is larger than {MAX_BYTES >> 20} MiB", "00000000")
