"""Modality Performed Procedure Step SCP (PS3.4 F.7) and its Retrieve SOP Class (F.8).

N-CREATE (F.7.2.1), N-SET (F.7.2.2) and N-GET (F.8.2.1) requests arrive as datasets;
they are turned into DICOM JSON (PS3.18 Annex F) for the rules and the index of
:mod:`app.services.mpps`, and the rules' refusals into the statuses of PS3.4 F.7.2.1.2,
F.7.2.2.2 and PS3.7 C.5 (the attribute at fault is named in the Error Comment).
"""

from __future__ import annotations

from typing import Any

import msgspec
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from app.dicom.uids import MPPS
from app.dimse.resources import Resources
from app.dimse.status import OUT_OF_RESOURCES, SUCCESS, Service, failure, status_dataset
from app.errors import Conflict, NotFound
from app.services.mpps import AttributeProblem, NoLongerUpdatable, ProcedureSteps

# failure statuses of the N-services (PS3.7 Annex C.5, named as PS3.4 F.7.2.1.2 and
# F.7.2.2.2 use them)
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
#: "Missing attribute" (an N-CREATE lacks a Type 1 one), "Missing attribute value"
MISSING_ATTRIBUTE, MISSING_ATTRIBUTE_VALUE = 0x0120, 0x0121
RESOURCE_LIMITATION = 0x0213
#: "Unrecognized operation": N-CREATE / N-SET under the Retrieve class, which has N-GET only
UNRECOGNIZED_OPERATION = 0x0211
#: PS3.4 F.7.2.2.2: Error ID of "Performed Procedure Step Object may no longer be updated"
NO_LONGER_UPDATABLE_ID = 0xA710
#: Specific Character Set (0008,0005): answered for the whole dataset, never a request key
SPECIFIC_CHARACTER_SET = "00080005"


def to_json(ds: Dataset | None) -> dict[str, Any]:
    """A request's attribute list as DICOM JSON; an undecodable one is refused."""
    if ds is None:
        return {}
    try:
        # plain JSON types: pydicom leaves str subclasses (UID) that msgspec refuses
        raw = msgspec.json.encode(ds.to_json_dict(bulk_data_threshold=1 << 62), enc_hook=str)
        attrs: dict[str, Any] = msgspec.json.decode(raw)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on bad values
        raise AttributeProblem(
            f"the attribute list cannot be read: {type(exc).__name__}", ""
        ) from exc
    attrs.pop(SPECIFIC_CHARACTER_SET, None)  # decoded already: the JSON is Unicode
    return attrs


def to_dataset(attrs: dict[str, Any], wanted: list[int] | None = None) -> Dataset:
    """A stored step as a dataset: all of it, or the attributes ``wanted`` (F.8.2.1.1:
    an empty Attribute Identifier List asks for all)."""
    if wanted:
        keys = {f"{tag:08X}" for tag in wanted}
        attrs = {k: v for k, v in attrs.items() if k in keys}
    ds = Dataset.from_json(attrs)
    if not msgspec.json.encode(attrs).isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"  # PS3.5 6.1.2.3: Unicode in UTF-8
    return ds


def _status(exc: BaseException, *, create: bool) -> Dataset:
    if isinstance(exc, AttributeProblem):
        if exc.missing:
            code = MISSING_ATTRIBUTE if create else MISSING_ATTRIBUTE_VALUE
        else:
            code = INVALID_ATTRIBUTE_VALUE
        return status_dataset(code, exc.message)
    if isinstance(exc, NoLongerUpdatable):
        ds = status_dataset(PROCESSING_FAILURE, "Performed Procedure Step may no longer be updated")
        ds.ErrorID = NO_LONGER_UPDATABLE_ID
        return ds
    if isinstance(exc, Conflict):
        return status_dataset(DUPLICATE_SOP_INSTANCE, exc.message)
    if isinstance(exc, NotFound):
        return status_dataset(NO_SUCH_OBJECT_INSTANCE, exc.message)
    out = failure(exc, Service.MPPS)  # logs what it does not tell
    # the N-services' codes (PS3.7 C.5): resource limitation, else processing failure
    out.Status = RESOURCE_LIMITATION if out.Status == OUT_OF_RESOURCES else PROCESSING_FAILURE
    return out


def _who(event: Any) -> str:
    return f"dimse:{str(event.assoc.requestor.ae_title).strip()}"


class PerformedProcedureSteps:
    """N-CREATE, N-SET and N-GET of MPPS (run in pynetdicom's threads)."""

    def __init__(self, res: Resources) -> None:
        self.res = res
        self.steps = ProcedureSteps(res.pool)

    def n_create(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """F.7.2.1: the SCU may leave the SOP Instance UID to the SCP, which then
        answers it in the response (PS3.7 10.1.5.1.4)."""
        if str(event.request.AffectedSOPClassUID) != MPPS:
            return status_dataset(UNRECOGNIZED_OPERATION, "N-CREATE is an operation of MPPS"), None
        try:
            given = event.request.AffectedSOPInstanceUID
            uid = str(given or generate_uid())
            attrs = to_json(event.attribute_list)
            self.res.bridge.run(self.steps.create(uid, attrs, who=_who(event)))
        except Exception as exc:  # noqa: BLE001 - one place maps it to a status
            return _status(exc, create=True), None
        answer = Dataset()
        if not given:
            answer.AffectedSOPInstanceUID = uid
        return SUCCESS, answer

    def n_set(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        if str(event.request.RequestedSOPClassUID) != MPPS:
            return status_dataset(UNRECOGNIZED_OPERATION, "N-SET is an operation of MPPS"), None
        try:
            uid = str(event.request.RequestedSOPInstanceUID or "")
            changes = to_json(event.modification_list)
            self.res.bridge.run(self.steps.update(uid, changes, who=_who(event)))
        except Exception as exc:  # noqa: BLE001 - one place maps it to a status
            return _status(exc, create=False), None
        return SUCCESS, None

    def n_get(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """F.8.2.1: the step's attributes (of the Attribute Identifier List, or all)."""
        try:
            uid = str(event.request.RequestedSOPInstanceUID or "")
            attrs = self.res.bridge.run(self.steps.get(uid))
            wanted = event.request.AttributeIdentifierList
            if wanted is not None and not isinstance(wanted, list):
                wanted = [wanted]
            return SUCCESS, to_dataset(attrs, [int(t) for t in wanted or []])
        except Exception as exc:  # noqa: BLE001 - one place maps it to a status
            return _status(exc, create=False), None
