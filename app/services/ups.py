"""The Unified Worklist (issue #18): UPS-RS's workitems (PS3.18 11; the behaviour of
the Unified Procedure Step SCP, PS3.4 CC), whoever asks, over HTTP or otherwise.

A workitem is SCHEDULED when created; a performer claims it by taking it IN PROGRESS
with a Transaction UID of its own, which every later change must carry, and ends it
COMPLETED (the final state requirements of PS3.4 CC.2.5.1.1 met) or CANCELED. A
cancellation request cancels a SCHEDULED workitem at once; one IN PROGRESS is left to
its performer, who is told (PS3.4 CC.2.2.3). Subscribers (PS3.4 CC.2.3) get event
reports (CC.2.4) over their WebSocket (PS3.18 11.13); the reports are queued in the
transaction of the change that causes them.

The answers' statuses map the DIMSE statuses of PS3.4 Table CC.2.1-2 ff.: C307 (no such
workitem) 404; C300 / C302 / C303 / C304 / C310 / C311 (not possible in this state)
409; B304 / B306 (already so) a success with a Warning; a dataset that is not what the
transaction takes (a Type 1 attribute missing, the Transaction UID of a state change
among them) 400 naming the attribute. C301, a Transaction UID that is not the
performer's (or none, for a claimed workitem), is 409 as dcm4chee answers it and as
issue #18 asks, where PS3.18 Tables 11.6.3-1 and 11.7.3-1 list it under 400: a client
reads either as a refusal, and 409 says that the workitem is someone else's. The
Warning texts are the standard's.

Completed and canceled workitems are kept (their history is the reading worklist's
record); nothing deletes them, so deletion locks are always granted and always held.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.uid import generate_uid

from app.dicom import workitem as wi
from app.dicom.dictionary import UnknownAttribute, resolve
from app.dicom.uids import uid_problem
from app.dicom.workitem import WorkitemError, first, first_code, key, name
from app.errors import BadRequest, Conflict, NotFound
from app.index import ups as index
from app.index.database import Listener, Pool
from app.index.ups import FILTERED, GLOBAL, Change, Columns, Report, StudyFacts, Workitem
from app.index.worklist import Filter
from app.services.worklist import build_filters, dicom_datetime

__all__ = ["FILTERED", "GLOBAL", "Outcome", "Wakeups", "Workitems", "check_aet"]

#: Event Type IDs (PS3.4 Table CC.2.4-1)
STATE_REPORT, CANCEL_REQUESTED, PROGRESS_REPORT, ASSIGNED = 1, 2, 3, 5

#: matching keys of a search (PS3.18 11.9; PS3.4 Table CC.2.5-3's keys) -> (column, how)
MATCHING: dict[int, tuple[str, str]] = {
    wi.SOP_INSTANCE_UID: ("uid", "uid"),
    wi.STATE: ("state", "text"),
    wi.PRIORITY: ("priority", "text"),
    wi.WORKLIST_LABEL: ("worklist_label", "text"),
    wi.STEP_LABEL: ("step_label", "text"),
    wi.INPUT_READINESS: ("input_readiness", "text"),
    wi.SCHEDULED_START: ("scheduled_start", "datetime"),
    wi.PATIENT_ID: ("patient_id", "text"),
    wi.PATIENT_NAME: ("patient_name", "text"),
    wi.STUDY_UID: ("study_uid", "uid"),
    wi.ACCESSION: ("accession_number", "text"),
    1: ("station_aet", "text"),  # ScheduledStationNameCodeSequence.CodeValue
    2: ("workitem_code", "text"),  # ScheduledWorkitemCodeSequence.CodeValue
}
#: sequence matching keys: (sequence, its item's attribute) -> a pseudo tag of MATCHING
_NESTED = {(wi.STATION_NAMES, wi.CODE_VALUE): 1, (wi.WORKITEM_CODES, wi.CODE_VALUE): 2}

#: attributes an update may not change (PS3.4 Table CC.2.5-3, "Not allowed" for N-SET)
NOT_UPDATABLE = frozenset(
    {
        wi.SOP_CLASS_UID,
        wi.SOP_INSTANCE_UID,
        wi.TRANSACTION_UID,
        wi.STATE,
        wi.PATIENT_NAME,
        wi.PATIENT_ID,
        0x00100030,  # Patient's Birth Date
        0x00100040,  # Patient's Sex
        0x00380010,  # Admission ID
        0x0040A370,  # Referenced Request Sequence
        0x00741224,  # Replaced Procedure Step Sequence
    }
)
#: what a cancellation request may say (PS3.4 Table CC.2.2-1)
_DISCONTINUATION_CODES = 0x0074100E  # Procedure Step Discontinuation Reason Code Sequence
CANCEL_ATTRIBUTES = frozenset(
    {wi.CANCELLATION_REASON, _DISCONTINUATION_CODES, wi.CONTACT_URI, wi.CONTACT_NAME}
)
_CANCELLATION_TIME = 0x00404052
_MODIFIED = 0x00404010  # Scheduled Procedure Step Modification DateTime
_REQUESTING_AE = 0x00741236

#: search answers, at most (a bounded request dimension)
MAX_LIMIT = 1000
MAX_OFFSET = 100_000
#: workitems a worklist subscription subscribes to at once, at most
MAX_SUBSCRIBED = 10_000
_SEARCH_CONTROLS = ("limit", "offset", "includefield", "fuzzymatching")
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2 AE: no backslash, no controls


class StateConflict(Conflict):
    """The request is not possible in the workitem's state (PS3.18 11.7.3.2)."""


@dataclass(frozen=True)
class Outcome:
    """What a transaction did: the workitem's UID and a Warning text, if any."""

    uid: str
    warning: str | None = None


def check_aet(aet: str) -> str:
    """An Application Entity Title from a path (PS3.5 6.2 AE): 1 to 16 characters, no
    backslash or control characters; leading and trailing spaces are not significant."""
    if not _AE.match(aet) or not aet.strip():
        raise BadRequest(
            f"{aet[:20]!r} is not an AE title (1 to 16 characters, no backslash or controls)"
        )
    return aet.strip()


def check_uid(uid: str, what: str = "workitem UID") -> str:
    if (problem := uid_problem(uid)) is not None:
        raise BadRequest(f"the {what} is not valid: {problem}")
    return uid


def _parse(body: bytes) -> dict[str, Any]:
    try:
        return wi.parse_dataset(body)
    except WorkitemError as exc:
        raise BadRequest(str(exc)) from None


def columns_of(attrs: Mapping[str, Any]) -> Columns:
    a = dict(attrs)
    return Columns(
        state=first(a, wi.STATE),
        priority=first(a, wi.PRIORITY),
        worklist_label=first(a, wi.WORKLIST_LABEL),
        step_label=first(a, wi.STEP_LABEL),
        input_readiness=first(a, wi.INPUT_READINESS),
        scheduled_start=dicom_datetime(first(a, wi.SCHEDULED_START)),
        patient_id=first(a, wi.PATIENT_ID),
        patient_name=first(a, wi.PATIENT_NAME),
        study_uid=first(a, wi.STUDY_UID),
        accession_number=first(a, wi.ACCESSION),
        station_aet=first_code(a, wi.STATION_NAMES),
        workitem_code=first_code(a, wi.WORKITEM_CODES),
    )


def _now() -> str:
    return dt.datetime.now().strftime("%Y%m%d%H%M%S")


def _check_scheduled(attrs: Mapping[str, Any]) -> None:
    """The Type 1 attributes of a workitem an SCU creates (PS3.4 Table CC.2.5-3)."""
    a = dict(attrs)
    missing = [
        name(tag)
        for tag in (wi.PRIORITY, wi.STEP_LABEL, wi.SCHEDULED_START, wi.INPUT_READINESS)
        if first(a, tag) in (None, "")
    ]
    if missing:
        raise BadRequest("a workitem needs " + ", ".join(missing) + " (PS3.4 Table CC.2.5-3)")
    if first(a, wi.PRIORITY) not in wi.PRIORITIES:
        raise BadRequest(f"{name(wi.PRIORITY)} must be one of {', '.join(wi.PRIORITIES)}")
    if first(a, wi.INPUT_READINESS) not in wi.READINESS:
        raise BadRequest(f"{name(wi.INPUT_READINESS)} must be one of {', '.join(wi.READINESS)}")
    if dicom_datetime(first(a, wi.SCHEDULED_START)) is None:
        raise BadRequest(f"{name(wi.SCHEDULED_START)} is not a date-time")


def _event(uid: str, event_type: int, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """An event report as the notification channel sends it (PS3.18 11.13; the
    Affected SOP Class UID is UPS Push's, PS3.4 CC.2.4.3)."""
    return {
        "00000002": {"vr": "UI", "Value": [wi.UPS_PUSH]},
        "00001000": {"vr": "UI", "Value": [uid]},
        "00001002": {"vr": "US", "Value": [event_type]},
        **attrs,
    }


def state_report(uid: str, attrs: Mapping[str, Any], reason: str | None = None) -> dict[str, Any]:
    """UPS State Report (Event Type ID 1, PS3.4 Table CC.2.4-2)."""
    a = dict(attrs)
    body = {
        **wi.text(wi.STATE, first(a, wi.STATE)),
        **wi.text(wi.INPUT_READINESS, first(a, wi.INPUT_READINESS)),
    }
    if reason:
        body.update(wi.text(wi.CANCELLATION_REASON, reason, "LT"))
    return _event(uid, STATE_REPORT, body)


def _initial_report(report: Report) -> dict[str, Any]:
    return state_report(report.uid, report.attrs)


def _assigned(uid: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """UPS Assigned (Event Type ID 5): the station and the performers it names."""
    wanted = (wi.STATION_NAMES, 0x00404034)  # ... and Scheduled Human Performers Sequence
    return _event(uid, ASSIGNED, {key(t): attrs[key(t)] for t in wanted if key(t) in attrs})


def _filled(attrs: Mapping[str, Any], tag: int) -> bool:
    return bool(attrs.get(key(tag), {}).get("Value"))


def _performed_missing(attrs: Mapping[str, Any]) -> list[str]:
    """What a workitem lacks to be COMPLETED (PS3.4 CC.2.5.1.1, the "P" requirements of
    Table CC.2.5-3): a performed procedure item with its start and end date-times."""
    items = attrs.get(key(wi.PERFORMED), {}).get("Value") or []
    item = items[0] if items else {}
    missing = [name(t) for t in (wi.PERFORMED_START, wi.PERFORMED_END) if not _filled(item, t)]
    return [f"{name(wi.PERFORMED)} > {m}" for m in missing]


def _with_performed_defaults(attrs: dict[str, Any]) -> dict[str, Any]:
    """The Type 2 members of the performed procedure item present (empty when unknown)."""
    items = attrs[key(wi.PERFORMED)]["Value"]
    item = dict(items[0])
    for tag in (0x00404028, 0x00404019, 0x00404033):  # station, workitem codes, output
        item.setdefault(key(tag), {"vr": "SQ"})
    return {**attrs, key(wi.PERFORMED): {"vr": "SQ", "Value": [item, *items[1:]]}}


def _canceled(attrs: dict[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
    """The final state requirements of CANCELED (the "X" rows of PS3.4 Table CC.2.5-3)
    filled in: a progress item with the cancellation date-time, the discontinuation
    reason codes (empty unless given) and the reason, if one was given."""
    items = attrs.get(key(wi.PROGRESS), {}).get("Value") or [{}]
    item = dict(items[0])
    if not _filled(item, _CANCELLATION_TIME):
        item[key(_CANCELLATION_TIME)] = {"vr": "DT", "Value": [_now()]}
    for tag in (_DISCONTINUATION_CODES, wi.CANCELLATION_REASON, wi.CONTACT_URI, wi.CONTACT_NAME):
        if key(tag) in request:
            item[key(tag)] = request[key(tag)]
    item.setdefault(key(_DISCONTINUATION_CODES), {"vr": "SQ"})
    return {**attrs, key(wi.PROGRESS): {"vr": "SQ", "Value": [item, *items[1:]]}}


def _with_state(attrs: Mapping[str, Any], state: str) -> dict[str, Any]:
    return {**attrs, **wi.text(wi.STATE, state), **wi.text(_MODIFIED, _now(), "DT")}


class WrongTransaction(Conflict):
    """C301: not the Transaction UID of the performer that claimed the workitem."""


def _transaction(given: str | None, item: Workitem) -> None:
    if not given:
        raise WrongTransaction(
            "The Transaction UID is missing: the workitem is IN PROGRESS and only its "
            "performer may change it"
        )
    if given != item.transaction_uid:
        raise WrongTransaction("The Transaction UID is incorrect: it is not the performer's")


def _inconsistent(item: Workitem, what: str) -> StateConflict:
    return StateConflict(
        "The submitted request is inconsistent with the state of the UPS Instance: "
        f"it is {item.state}; {what}"
    )


def _filter_values(text: str) -> dict[int, str]:
    """``attr=value,attr=value`` (PS3.18 11.10.1.2, the filter of a filtered worklist
    subscription) -> matching key values."""
    values: dict[int, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        attr, eq, value = part.partition("=")
        if not eq:
            raise BadRequest(f"filter term {part[:40]!r} is not attribute=value")
        values[_matching_tag(attr.strip())] = value
    if not values:
        raise BadRequest("the filter names no attribute")
    return values


def _tag(word: str) -> int:
    try:
        return resolve(word)
    except UnknownAttribute as exc:
        raise BadRequest(str(exc)) from None


def _matching_tag(attr: str) -> int:
    """A matching key (a tag or keyword; a sequence's attribute as ``Seq.Attr``) -> the
    key of :data:`MATCHING`; one the worklist cannot match on: 400."""
    path = tuple(_tag(p) for p in attr.split("."))
    found = path[0] if len(path) == 1 else _NESTED.get(path) if len(path) == 2 else None
    if found is None or found not in MATCHING or found == wi.TRANSACTION_UID:
        known = sorted(
            {name(t) for t in MATCHING if t > 2} | {"ScheduledStationNameCodeSequence.CodeValue"}
        )
        raise BadRequest(
            f"{attr[:60]!r} is not a matching key of the worklist; known: " + ", ".join(known)
        )
    return found


def search_filters(pairs: Sequence[tuple[str, str]]) -> tuple[list[Filter], int, int]:
    """A search's query parameters (PS3.18 11.9.1.2) -> filters, limit, offset. Unknown
    attributes are 400; ``includefield`` and ``fuzzymatching`` are accepted (every
    attribute is always returned; names match case-insensitively anyway)."""
    values: dict[int, str] = {}
    limit, offset = 100, 0
    for k, v in pairs:
        if k == "limit":
            limit = _bounded(v, "limit", 1, MAX_LIMIT)
        elif k == "offset":
            offset = _bounded(v, "offset", 0, MAX_OFFSET)
        elif k == "fuzzymatching":
            if v not in ("true", "false"):
                raise BadRequest("fuzzymatching is true or false")
        elif k == "includefield":
            for word in v.split(","):
                if word.strip() and word.strip() != "all":
                    _tag(word.strip().split(".")[0])
        else:
            values[_matching_tag(k)] = v
    return build_filters(values, MATCHING), limit, offset


def _bounded(text: str, what: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"{what} must be a whole number from {low} to {high}")
    return int(text)


#: Requested Procedure Priority (PS3.3 C.4.11, from the order) -> the workitem's
READING_PRIORITY = {
    "STAT": "HIGH",
    "HIGH": "HIGH",
    "ROUTINE": "MEDIUM",
    "MEDIUM": "MEDIUM",
    "LOW": "LOW",
}
#: the Worklist Label of reading workitems
READING_LABEL = "READING"
#: Scheduled Workitem Code of a reading: (110005, DCM, "Interpretation"), CID 9231
INTERPRETATION = {
    key(wi.CODE_VALUE): {"vr": "SH", "Value": ["110005"]},
    "00080102": {"vr": "SH", "Value": ["DCM"]},
    "00080104": {"vr": "LO", "Value": ["Interpretation"]},
}
_READING_NAMESPACE = uuid.UUID("6f1c2f4e-6a53-4c55-9a1e-5e2a3d0b7a10")


def reading_uid(study_uid: str) -> str:
    """The reading workitem's UID: one per study, the same on every node (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid5(_READING_NAMESPACE, study_uid).int}"


def reading_workitem(
    study_uid: str, facts: StudyFacts, dicomweb: str
) -> tuple[str, dict[str, Any]]:
    """A SCHEDULED "read study" workitem (PS3.4 CC): the study's patient, accession and
    Study Instance UID, an Input Information item that references the study with its
    WADO-RS Retrieve URL, and the priority of its most urgent order (STAT -> HIGH;
    no order: MEDIUM)."""
    uid = reading_uid(study_uid)
    ranks = [READING_PRIORITY.get(p, "MEDIUM") for p in facts.priorities]
    priority = next((p for p in wi.PRIORITIES if p in ranks), "MEDIUM")
    what = facts.study_description or "/".join(facts.modalities) or "study"
    attrs: dict[str, Any] = {
        **wi.text(wi.SOP_CLASS_UID, wi.UPS_PUSH, "UI"),
        **wi.text(wi.SOP_INSTANCE_UID, uid, "UI"),
        **wi.text(wi.STATE, "SCHEDULED"),
        **wi.text(wi.PRIORITY, priority),
        **wi.text(wi.WORKLIST_LABEL, READING_LABEL, "LO"),
        **wi.text(wi.STEP_LABEL, f"Read {what}"[:64], "LO"),
        **wi.text(wi.SCHEDULED_START, _now(), "DT"),
        **wi.text(_MODIFIED, _now(), "DT"),
        **wi.text(wi.INPUT_READINESS, "READY"),
        **wi.text(wi.STUDY_UID, study_uid, "UI"),
        key(wi.WORKITEM_CODES): {"vr": "SQ", "Value": [INTERPRETATION]},
        "00404021": {  # Input Information Sequence
            "vr": "SQ",
            "Value": [
                {
                    **wi.text(wi.STUDY_UID, study_uid, "UI"),
                    **wi.text(0x0040E020, "DICOM"),  # Type of Instances
                    **wi.text(0x00081190, f"{dicomweb}/studies/{study_uid}", "UR"),
                }
            ],
        },
        key(wi.PERFORMED): {"vr": "SQ"},
    }
    person = {"Alphabetic": facts.patient_name} if facts.patient_name else None
    attrs[key(wi.PATIENT_NAME)] = {"vr": "PN", **({"Value": [person]} if person else {})}
    for tag, vr, text in (
        (wi.PATIENT_ID, "LO", facts.patient_id),
        (0x00100021, "LO", facts.issuer_of_patient_id),
        (0x00100030, "DA", facts.patient_birth_date),
        (0x00100040, "CS", facts.patient_sex),
        (wi.ACCESSION, "SH", facts.accession_number),
    ):
        attrs[key(tag)] = {"vr": vr, **({"Value": [text]} if text else {})}
    return uid, attrs


class Workitems:
    def __init__(self, pool: Pool, worklist_label: str) -> None:
        self.pool = pool
        self.worklist_label = worklist_label

    # -- Create (PS3.18 11.4; N-CREATE, PS3.4 CC.2.5) -------------------------------------

    async def create(self, body: bytes, given_uid: str | None, *, who: str) -> Outcome:
        attrs = _parse(body)
        in_body = first(attrs, wi.SOP_INSTANCE_UID)
        if given_uid and in_body and given_uid != in_body:
            raise BadRequest(
                f"the workitem UID {given_uid} of the query differs from the dataset's "
                f"{name(wi.SOP_INSTANCE_UID)} {in_body}"
            )
        uid = check_uid(given_uid or in_body or generate_uid())
        state = first(attrs, wi.STATE)
        if state != "SCHEDULED":  # C309
            raise BadRequest(f"a new workitem's {name(wi.STATE)} must be SCHEDULED, not {state!r}")
        if first(attrs, wi.TRANSACTION_UID):
            raise BadRequest(f"a new workitem has no {name(wi.TRANSACTION_UID)}")
        for tag in (wi.PROGRESS, wi.PERFORMED):  # "shall be empty" / "created empty"
            if _filled(attrs, tag):
                raise BadRequest(f"a new workitem's {name(tag)} must be empty")
        attrs.pop(key(wi.TRANSACTION_UID), None)
        if not first(attrs, wi.WORKLIST_LABEL):  # the SCP fills it in (Type 2/1)
            attrs.update(wi.text(wi.WORKLIST_LABEL, self.worklist_label, "LO"))
        _check_scheduled(attrs)
        attrs.update(wi.text(wi.SOP_CLASS_UID, wi.UPS_PUSH, "UI"))
        attrs.update(wi.text(wi.SOP_INSTANCE_UID, uid, "UI"))
        attrs.update(wi.text(_MODIFIED, _now(), "DT"))
        attrs.setdefault(key(wi.PERFORMED), {"vr": "SQ"})
        events = [state_report(uid, attrs)]
        if _filled(attrs, wi.STATION_NAMES):
            events.append(_assigned(uid, attrs))
        change = Change(attrs, columns_of(attrs), None, False, "ups-create", events)
        await index.create(self.pool, uid, change, self._filters_of, who=who)
        return Outcome(uid)

    @staticmethod
    def _filters_of(text: str) -> Sequence[Filter] | None:
        try:
            return build_filters(_filter_values(text), MATCHING)
        except BadRequest:
            return None

    # -- Retrieve (PS3.18 11.5; N-GET, CC.2.7) --------------------------------------------

    async def retrieve(self, uid: str) -> dict[str, Any]:
        """The workitem; its Transaction UID is never returned (PS3.4 CC.2.7.3)."""
        return (await index.get(self.pool, check_uid(uid))).attrs

    # -- Search (PS3.18 11.9; C-FIND, CC.2.8) ---------------------------------------------

    async def search(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[bytes], bool]:
        filters, limit, offset = search_filters(pairs)
        return await index.find(self.pool, filters, limit, offset)

    # -- Update (PS3.18 11.6; N-SET, CC.2.6) ----------------------------------------------

    async def update(self, uid: str, body: bytes, transaction: str | None, *, who: str) -> Outcome:
        changes = _parse(body)
        refused = sorted(name(int(k, 16)) for k in changes if int(k, 16) in NOT_UPDATABLE)
        if refused:
            raise BadRequest("an update may not change " + ", ".join(refused) + " (PS3.4 CC.2.6)")
        if not changes:
            raise BadRequest("the update names no attribute")

        async def decide(item: Workitem) -> Change:
            if item.state in wi.FINAL_STATES:  # C300; 400 as PS3.18 11.6.3.2 says
                raise BadRequest(
                    "The submitted request is inconsistent with the current state of the "
                    f"Workitem: it is {item.state} and may no longer be updated"
                )
            if item.state == "IN PROGRESS":
                _transaction(transaction, item)
            elif transaction:
                raise WrongTransaction(
                    "The Transaction UID is incorrect: the workitem is SCHEDULED, not claimed"
                )
            attrs = {**item.attrs, **changes, **wi.text(_MODIFIED, _now(), "DT")}
            _check_scheduled(attrs)
            events = []
            if first(attrs, wi.INPUT_READINESS) != first(item.attrs, wi.INPUT_READINESS):
                events.append(state_report(uid, attrs))
            if key(wi.PROGRESS) in changes:
                progress = {key(wi.PROGRESS): attrs[key(wi.PROGRESS)]}
                events.append(_event(uid, PROGRESS_REPORT, progress))
            if any(key(t) in changes for t in (wi.STATION_NAMES, 0x00404034)):
                events.append(_assigned(uid, attrs))
            return Change(
                attrs,
                columns_of(attrs),
                item.transaction_uid,
                item.cancel_requested,
                "ups-update",
                events,
                {"attributes": sorted(changes)[:50]},
            )

        await index.change(self.pool, check_uid(uid), decide, who=who)
        return Outcome(uid)

    # -- Change State (PS3.18 11.7; N-ACTION 1, CC.2.1) -----------------------------------

    async def change_state(self, uid: str, body: bytes, *, who: str) -> Outcome:
        request = _parse(body)
        target = first(request, wi.STATE)
        transaction = first(request, wi.TRANSACTION_UID)
        if not transaction:
            raise BadRequest(f"The Transaction UID is missing: {name(wi.TRANSACTION_UID)}")
        check_uid(str(transaction), "Transaction UID")
        if target not in ("IN PROGRESS", "COMPLETED", "CANCELED", "SCHEDULED"):
            raise BadRequest(
                f"{name(wi.STATE)} must be IN PROGRESS, COMPLETED or CANCELED, not {target!r}"
            )
        warning: list[str] = []

        async def decide(item: Workitem) -> Change | None:
            if target == "SCHEDULED":  # C303
                raise _inconsistent(item, "a workitem is only SCHEDULED when created")
            if target == "IN PROGRESS":
                if item.state == "SCHEDULED":
                    attrs = _with_state(item.attrs, "IN PROGRESS")
                    return Change(
                        attrs,
                        columns_of(attrs),
                        transaction,
                        item.cancel_requested,
                        "ups-claim",
                        [state_report(uid, attrs)],
                        {"state": "IN PROGRESS"},
                    )
                if transaction != item.transaction_uid:  # C301
                    raise WrongTransaction(
                        "The Transaction UID is incorrect: it is not the performer's"
                    )
                if item.state == "IN PROGRESS":  # C302
                    raise _inconsistent(item, "it was claimed already")
                raise _inconsistent(item, "it may no longer be changed")  # C300
            if item.state == "SCHEDULED":  # C310
                raise _inconsistent(item, f"it must be IN PROGRESS before it is {target}")
            _transaction(transaction, item)
            if item.state == target:  # B304 / B306
                warning.append(f"The UPS is already in the requested state of {target}.")
                return None
            if item.state != "IN PROGRESS":  # C300
                raise _inconsistent(item, "it may no longer be changed")
            if target == "COMPLETED":
                missing = _performed_missing(item.attrs)
                if missing:  # C304
                    raise _inconsistent(
                        item,
                        "the final state requirements are not met (PS3.4 CC.2.5.1.1); "
                        "update it first with " + ", ".join(missing),
                    )
                attrs = _with_state(_with_performed_defaults(item.attrs), "COMPLETED")
            else:
                attrs = _with_state(_canceled(item.attrs, {}), "CANCELED")
            return Change(
                attrs,
                columns_of(attrs),
                item.transaction_uid,
                item.cancel_requested,
                "ups-complete" if target == "COMPLETED" else "ups-cancel",
                [state_report(uid, attrs)],
                {"state": target},
            )

        await index.change(self.pool, check_uid(uid), decide, who=who)
        return Outcome(uid, warning[0] if warning else None)

    # -- Request Cancellation (PS3.18 11.8; N-ACTION 2, CC.2.2) ---------------------------

    async def request_cancel(self, uid: str, body: bytes, requester: str, *, who: str) -> Outcome:
        """A SCHEDULED workitem is canceled (IN PROGRESS, then CANCELED: a State Report
        for each, PS3.4 CC.2.2.3); one IN PROGRESS is marked and its subscribers are
        told (UPS Cancel Requested); either way the request is reported."""
        request = _parse(body) if body.strip() else {}
        unknown = sorted(name(int(k, 16)) for k in request if int(k, 16) not in CANCEL_ATTRIBUTES)
        if unknown:
            raise BadRequest(
                "a cancellation request carries only Reason For Cancellation, Procedure "
                "Step Discontinuation Reason Code Sequence, Contact URI and Contact "
                "Display Name; not " + ", ".join(unknown)
            )
        warning: list[str] = []
        asked = _event(
            uid, CANCEL_REQUESTED, {**wi.text(_REQUESTING_AE, requester, "AE"), **request}
        )
        reason = first(request, wi.CANCELLATION_REASON)

        async def decide(item: Workitem) -> Change | None:
            if item.state == "CANCELED":  # B304
                warning.append("The UPS is already in the requested state of CANCELED.")
                return None
            if item.state == "COMPLETED":  # C311
                raise _inconsistent(item, "a completed workitem cannot be canceled")
            if item.state == "IN PROGRESS":
                return Change(
                    item.attrs,
                    columns_of(item.attrs),
                    item.transaction_uid,
                    True,
                    "ups-cancel-request",
                    [asked],
                    {"reason": reason} if reason else {},
                )
            started = _with_state(item.attrs, "IN PROGRESS")
            attrs = _with_state(_canceled(item.attrs, request), "CANCELED")
            return Change(
                attrs,
                columns_of(attrs),
                None,
                True,
                "ups-cancel",
                [asked, state_report(uid, started), state_report(uid, attrs, reason)],
                {"state": "CANCELED", "requested": True},
            )

        await index.change(self.pool, check_uid(uid), decide, who=who)
        return Outcome(uid, warning[0] if warning else None)

    # -- Subscriptions (PS3.18 11.10-11.12; N-ACTION 3-5, CC.2.3) -------------------------

    async def subscribe(
        self, workitem: str, aet: str, pairs: Sequence[tuple[str, str]], *, who: str
    ) -> Outcome:
        aet = check_aet(aet)
        check_uid(workitem)
        lock, text = False, None
        for k, v in pairs:
            if k == "deletionlock":
                if v not in ("true", "false"):
                    raise BadRequest("deletionlock is true or false")
                lock = v == "true"
            elif k == "filter":
                text = v
            else:
                raise BadRequest(f"a subscription takes deletionlock and filter, not {k[:40]!r}")
        filters: list[Filter] | None = None
        if workitem == FILTERED:
            if text is None:
                raise BadRequest("a filtered worklist subscription needs a filter")
            filters = build_filters(_filter_values(text), MATCHING)
        elif text is not None:
            raise BadRequest(f"only the filtered worklist subscription ({FILTERED}) takes a filter")
        await index.subscribe(
            self.pool,
            aet,
            workitem,
            lock,
            filters,
            text,
            _initial_report,
            who=who,
            limit=MAX_SUBSCRIBED,
        )
        return Outcome(workitem)

    async def unsubscribe(self, workitem: str, aet: str, *, who: str) -> Outcome:
        await index.unsubscribe(self.pool, check_aet(aet), check_uid(workitem), who=who)
        return Outcome(workitem)

    async def suspend(self, workitem: str, aet: str, *, who: str) -> Outcome:
        if workitem not in (GLOBAL, FILTERED):
            raise BadRequest(
                f"only a worklist subscription ({GLOBAL} or {FILTERED}) can be suspended"
            )
        await index.suspend(self.pool, check_aet(aet), workitem, who=who)
        return Outcome(workitem)

    # -- the reading worklist (issue #18) -------------------------------------------------

    async def create_reading(self, study_uid: str, dicomweb: str, *, who: str) -> bool:
        """The "read study" workitem of a stable study (:func:`reading_workitem`), once
        per study: False when it exists already; :class:`NotFound` when the study does
        not (deleted since it became stable)."""
        facts = await index.study_facts(self.pool, study_uid)
        if facts is None:
            raise NotFound(f"no study {study_uid}")
        uid, attrs = reading_workitem(study_uid, facts, dicomweb)
        change = Change(
            attrs,
            columns_of(attrs),
            None,
            False,
            "ups-create",
            [state_report(uid, attrs)],
            {"reading": study_uid},
        )
        try:
            await index.create(self.pool, uid, change, self._filters_of, who=who)
        except Conflict:
            return False
        return True

    # -- the notification channel (PS3.18 11.13) ------------------------------------------

    async def pending(self, aet: str, limit: int) -> list[tuple[int, bytes]]:
        return await index.pending(self.pool, aet, limit)

    async def sent(self, aet: str, ids: Sequence[int]) -> None:
        await index.sent(self.pool, aet, ids)


class Wakeups:
    """Wakes a process's open notification channels when event reports for their AE
    are committed (LISTEN on :data:`app.index.ups.EVENTS_CHANNEL`, on any node); while
    listening is interrupted, every channel is woken, and each polls anyway."""

    def __init__(self, pool: Pool) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._listener = Listener(pool, index.EVENTS_CHANNEL, self._announced, self._all)

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    def _announced(self, aet: str) -> None:
        for event in self._waiting.get(aet, ()):
            event.set()

    def _all(self) -> None:
        for events in self._waiting.values():
            for event in events:
                event.set()

    @contextlib.contextmanager
    def watch(self, aet: str, event: asyncio.Event) -> Iterator[None]:
        """``event`` is set whenever reports for ``aet`` are announced, meanwhile."""
        self._waiting.setdefault(aet, set()).add(event)
        try:
            yield
        finally:
            waiting = self._waiting.get(aet, set())
            waiting.discard(event)
            if not waiting:
                self._waiting.pop(aet, None)
