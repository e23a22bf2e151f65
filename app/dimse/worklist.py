"""Modality Worklist C-FIND SCP (PS3.4 K, Modality Worklist Information Model).

A modality asks for its Scheduled Procedure Steps with an identifier whose keys are
the worklist attributes, the Scheduled Procedure Step Sequence (0040,0100) holding one
item of step keys (K.6.1.2.2): typically its Scheduled Station AE Title, Modality and a
Start Date range. Keys with a value are matched (:data:`app.services.worklist.MATCHING`:
single value, wildcard, date and time range, list of UIDs, PS3.4 C.2.2.2); the others
are return keys, answered zero-length when the item has no value (K.4.1.1.3.2); keys
the archive cannot match are treated as return keys, never refused. Each matching item
is one pending response, in Scheduled Procedure Step start order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
from pydicom.dataset import Dataset

from app.dimse.find import identifier, key_text, requested
from app.dimse.resources import Resources
from app.dimse.status import CANCEL, PENDING, IdentifierError, Service, failure
from app.errors import BadRequest
from app.services.worklist import MATCHING, Worklist, build_filters

SCHEDULED_PROCEDURE_STEP_SEQUENCE = 0x00400100
#: items read per index query; responses go out while the next page is read
PAGE = 200
#: keys read from an identifier at most (a bounded request dimension)
MAX_KEYS = 256


def key_values(identifier: Dataset) -> dict[int, str]:
    """The matching keys' values as text: top-level keys and those of the Scheduled
    Procedure Step Sequence's item (PS3.4 K.6.1.2.2). A sequence key with more than one
    item is :class:`IdentifierError` (C.2.2.2.6)."""
    values: dict[int, str] = {}
    elements = list(identifier)
    sps = identifier.get(SCHEDULED_PROCEDURE_STEP_SEQUENCE)
    if sps is not None and sps.VR == "SQ" and sps.value:
        if len(sps.value) > 1:
            raise IdentifierError(
                "ScheduledProcedureStepSequence: a sequence key has one item at most",
                offending=SCHEDULED_PROCEDURE_STEP_SEQUENCE,
            )
        elements.extend(sps.value[0])
    if len(elements) > MAX_KEYS:
        raise IdentifierError(f"an identifier has at most {MAX_KEYS} keys")
    for elem in elements:
        tag = int(elem.tag)
        if tag in MATCHING and elem.VR != "SQ":
            values[tag] = key_text(elem)
    return values


class WorklistFind:
    """The C-FIND service for the worklist (runs in pynetdicom's threads)."""

    def __init__(self, res: Resources) -> None:
        self.res = res
        self.worklist = Worklist(res.pool)

    def handle(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        try:
            keys = event.identifier
            try:
                filters = build_filters(key_values(keys))
            except BadRequest as exc:
                raise IdentifierError(exc.message) from None
            offset = 0
            while True:
                rows, more = self.res.bridge.run(self.worklist.find(filters, PAGE, offset))
                for row in rows:
                    if event.is_cancelled:
                        yield CANCEL, None  # PS3.4 K.4.1.3.2 C-CANCEL
                        return
                    yield PENDING, answer(msgspec.json.decode(row), keys)
                if not more:
                    return
                offset += PAGE
        except Exception as exc:  # noqa: BLE001 - one place maps it to a status
            yield failure(exc, Service.FIND), None


def answer(item: dict[str, Any], keys: Dataset) -> Dataset:
    """The response identifier of one worklist item: the requested keys only."""
    found, empty = requested(item, keys, "")
    return identifier(found, empty)
