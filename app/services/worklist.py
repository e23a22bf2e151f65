"""Worklists (issue #18): patients and orders from the RIS, the Modality Worklist.

The HL7 listener (:mod:`app.hl7`) calls :meth:`Worklist.patient`, :meth:`merge` and
:meth:`orders`; the DIMSE process answers Modality Worklist C-FINDs (PS3.4 K) with
:func:`build_filters` and :meth:`Worklist.find`. Corrections of stored studies go
through the lifecycle's corrections (issue #15), so they are audited, undoable and in
the change feed like any other.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

from app.dicom.patch import PatchError, validate
from app.errors import BadRequest
from app.index import worklist as index
from app.index.database import Pool
from app.index.worklist import Filter, Item, OrderChange, Outcome

__all__ = ["Filter", "Item", "OrderChange", "Outcome", "Worklist", "build_filters"]

#: identifier keys matched (PS3.4 K.6.1.2.2 Table K.6-1) -> (column, how)
#: how: "text" single value or wildcard, "uid" single value or UID list, "date" and
#: "time" single value or range
MATCHING: dict[int, tuple[str, str]] = {
    0x00400001: ("station_aet", "text"),  # Scheduled Station AE Title
    0x00080060: ("modality", "text"),
    0x00400006: ("performing_physician", "text"),  # Scheduled Performing Physician
    0x00400009: ("sps_id", "text"),
    0x00400020: ("status", "text"),  # Scheduled Procedure Step Status
    0x00400002: ("sps_date", "date"),  # Scheduled Procedure Step Start Date
    0x00400003: ("sps_time", "time"),  # ... Start Time
    0x00080050: ("accession_number", "text"),
    0x00401001: ("requested_procedure_id", "text"),
    0x00100020: ("patient_id", "text"),
    0x00100021: ("issuer_of_patient_id", "text"),
    0x00100010: ("patient_name", "text"),
    0x0020000D: ("study_uid", "uid"),
}
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")


def build_filters(
    values: Mapping[int, str], matching: Mapping[int, tuple[str, str]] = MATCHING
) -> list[Filter]:
    """Identifier key values (tag -> text, multi-values joined by ``\\``) -> filters.

    Empty values and ``*`` are universal matches (C.2.2.2.3); keys not in
    ``matching`` (:data:`MATCHING`, the Modality Worklist's) are return keys only. A
    date, time or date-time that is neither a value nor a range (C.2.2.2.5) is
    :class:`BadRequest`."""
    filters = []
    for tag, text in values.items():
        if tag not in matching or text in ("", "*"):
            continue
        column, how = matching[tag]
        if how == "uid":
            uids = tuple(u.strip() for u in text.split("\\") if u.strip())
            filters.append(Filter(column, "list" if len(uids) > 1 else "single", uids[:1000]))
        elif how in ("date", "time", "datetime"):
            filters.append(Filter(column, *_range(text, how)))
        elif "*" in text or "?" in text:
            filters.append(Filter(column, "wild", (text,)))
        else:
            filters.append(Filter(column, "single", (text,)))
    return filters


def _range(text: str, how: str) -> tuple[str, tuple[Any, ...]]:
    low, dash, high = text.partition("-")
    if how == "datetime":  # a value names the whole day, hour, ... it gives
        if not dash:
            return "range", (_datetime(text), _datetime(text, upper=True))
        if not low and not high:
            raise BadRequest(f"{text!r} is not a date-time range")
        return "range", (
            _datetime(low) if low else None,
            _datetime(high, upper=True) if high else None,
        )
    parse = _date if how == "date" else _time
    if not dash:
        value = parse(text)
        return ("single", (value,)) if how == "date" else ("range", (value, value))
    if not low and not high:
        raise BadRequest(f"{text!r} is not a {how} range")
    return "range", (parse(low) if low else None, parse(high) if high else None)


def _date(text: str) -> Any:
    text = text.strip()
    if not _DATE.match(text):
        raise BadRequest(f"{text[:20]!r} is not a DICOM date (YYYYMMDD)")
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise BadRequest(f"{text!r} is not a real date") from None


_DATETIME = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})?(\d{2})?(\d{2})?")
_PERIODS = (
    dt.timedelta(days=1),
    dt.timedelta(hours=1),
    dt.timedelta(minutes=1),
    dt.timedelta(seconds=1),
)


def dicom_datetime(text: object) -> dt.datetime | None:
    """The local date-time a DT value (PS3.5 6.2) starts with, to the second (fractions
    and offsets ignored: DICOM date-times here are the archive's local time); None
    when it does not start with one."""
    m = _DATETIME.match(text) if isinstance(text, str) else None
    if m is None:
        return None
    y, mo, d, h, mi, sec = (int(g) if g else 0 for g in m.groups())
    try:
        return dt.datetime(y, mo, d, h, mi, sec)
    except ValueError:
        return None


def _datetime(text: str, *, upper: bool = False) -> dt.datetime:
    """A DT matching value; ``upper``: the last instant of the period it names
    (``20261203`` ends at 23:59:59.999999)."""
    text = text.strip()
    m = _DATETIME.match(text)
    value = dicom_datetime(text)
    if m is None or value is None or len(text.split(".")[0]) not in (8, 10, 12, 14):
        raise BadRequest(f"{text[:30]!r} is not a DICOM date-time (YYYYMMDD[HHMMSS])")
    if not upper:
        return value
    given = sum(g is not None for g in m.groups()[3:])
    return value + _PERIODS[given] - dt.timedelta(microseconds=1)


def _time(text: str) -> Any:
    m = _TIME.match(text.strip())
    if m is None:
        raise BadRequest(f"{text[:20]!r} is not a DICOM time (HHMMSS)")
    try:
        return dt.time(int(m[1]), int(m[2] or 0), int(m[3] or 0))
    except ValueError:
        raise BadRequest(f"{text!r} is not a real time") from None


def patient_patch(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The Patient module attributes of an HL7 message other than its identifiers, as
    a correction (:func:`app.dicom.patch.validate`); {} when there are none."""
    given = {k: v for k, v in attrs.items() if k not in ("00100020", "00100021")}
    if not given:
        return {}
    try:
        return validate(given)
    except PatchError as exc:
        raise BadRequest(str(exc)) from None


class Worklist:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def patient(
        self, patient_id: str, issuer: str, attrs: dict[str, Any], *, register: bool, who: str
    ) -> Outcome:
        """ADT A01 / A04 (``register``) and A08: new demographics for the patient's
        registry entry, worklist items and stored studies."""
        patch = patient_patch(attrs)
        return await index.update_patient(
            self.pool, patient_id, issuer, attrs, patch, register=register, who=who
        )

    async def merge(
        self,
        source: tuple[str, str],
        target: tuple[str, str],
        target_attrs: dict[str, Any],
        *,
        who: str,
    ) -> Outcome:
        """ADT A40: the prior patient ``source`` becomes ``target``."""
        if source == target:
            raise BadRequest("the prior patient (MRG-1) and the patient (PID-3) are the same")
        return await index.merge_patients(
            self.pool, source, target, target_attrs, patient_patch(target_attrs), who=who
        )

    async def orders(
        self,
        patient: tuple[str, str],
        attrs: dict[str, Any],
        changes: Sequence[OrderChange],
        *,
        who: str,
    ) -> Outcome:
        """ORM^O01 / OMI^O23: new, cancelled, discontinued and changed orders."""
        patient_patch(attrs)  # the same checks as an ADT's, before anything is written
        return await index.apply_orders(self.pool, patient, attrs, changes, who=who)

    async def answered(self, sender: tuple[str, str, str], digest: bytes) -> str | None:
        """The AA already given to this message (MSH-3, MSH-4, MSH-10, content), if any."""
        return await index.answered(self.pool, sender, digest)

    async def remember_answer(self, sender: tuple[str, str, str], digest: bytes, ack: str) -> None:
        await index.remember_answer(self.pool, sender, digest, ack)

    async def find(
        self, filters: Sequence[Filter], limit: int, offset: int
    ) -> tuple[list[bytes], bool]:
        return await index.find(self.pool, filters, limit, offset)
