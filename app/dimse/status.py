"""DIMSE status values and the one place where an exception becomes a failure status.

Status codes are those of PS3.7 Annex C (general) and PS3.4: B.2.3 (Storage), C.4.1.1.4
(C-FIND), C.4.2.1.5 (C-MOVE) and C.4.3.1.4 (C-GET). A failure status travels with an
Error Comment (0000,0902), LO: at most 64 characters (PS3.7 C.4).
"""

from __future__ import annotations

import logging
from enum import Enum

from pydicom.dataset import Dataset

from app.errors import InstanceRejected, RequestError, ServiceUnavailable

log = logging.getLogger(__name__)

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
#: PS3.7 C.5.7 "Processing failure" (general)
PROCESSING_FAILURE = 0x0110
#: PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5: "Refused: Out of Resources"
OUT_OF_RESOURCES = 0xA700
#: PS3.4 C.4.2.1.5: "Refused: Move Destination unknown"
MOVE_DESTINATION_UNKNOWN = 0xA801
#: PS3.4 B.2.3: "Error: Data Set does not match SOP Class"; C.4.1.1.4 / C.4.2.1.5 /
#: C.4.3.1.4: "Identifier does not match SOP Class"
DOES_NOT_MATCH = 0xA900
#: PS3.4 B.2.3: "Error: Cannot understand"; C.4: "Unable to process"
CANNOT_UNDERSTAND = 0xC000

ERROR_COMMENT_LENGTH = 64


class Service(Enum):
    STORE = "C-STORE"
    FIND = "C-FIND"
    MOVE = "C-MOVE"
    GET = "C-GET"
    MPPS = "MPPS"


class IdentifierError(Exception):
    """A C-FIND / C-MOVE / C-GET identifier the archive cannot use (PS3.4 C.4.1.1.4).

    ``offending`` names the element at fault, for Offending Element (0000,0901).
    """

    def __init__(self, message: str, *, status: int = DOES_NOT_MATCH, offending: int = 0):
        super().__init__(message)
        self.message = message
        self.status = status
        self.offending = offending


def status_dataset(status: int, comment: str = "", offending: int = 0) -> Dataset:
    """A status for pynetdicom: (0000,0900) Status and, when given, the Error Comment."""
    ds = Dataset()
    ds.Status = status
    if comment:
        # LO: no backslash, at most 64 characters (PS3.5 6.2)
        ds.ErrorComment = comment.replace("\\", "/")[:ERROR_COMMENT_LENGTH]
    if offending:
        ds.OffendingElement = [offending]
    return ds


def failure(exc: BaseException, service: Service) -> Dataset:
    """The failure status that ``exc`` means for ``service``."""
    if isinstance(exc, IdentifierError):
        return status_dataset(exc.status, exc.message, exc.offending)
    if isinstance(exc, InstanceRejected):
        return status_dataset(storage_status(int(exc.reason)), exc.message)
    if isinstance(exc, ServiceUnavailable):  # its message says what, never the cause
        log.error("%s refused: %s", service.value, exc)
        return status_dataset(OUT_OF_RESOURCES, f"out of resources: {exc.message}")
    if isinstance(exc, (TimeoutError, OSError)):
        log.error("%s refused: %s", service.value, exc)
        return status_dataset(OUT_OF_RESOURCES, "out of resources; try again later")
    if isinstance(exc, RequestError):  # e.g. a key value the index cannot compare
        return status_dataset(DOES_NOT_MATCH, exc.message)
    # the cause is logged, not told: an Error Comment reaches whoever associated
    log.exception("%s failed", service.value, exc_info=exc)
    code = PROCESSING_FAILURE if service is Service.STORE else CANNOT_UNDERSTAND
    return status_dataset(code, f"{service.value} failed (logged by the archive)")


def storage_status(reason: int) -> int:
    """PS3.4 B.2.3 C-STORE status of an ingest Failure Reason (PS3.18 Annex I.2.2).

    The reasons ingest records are DIMSE statuses already; the STOW-only Study Instance
    UID mismatch (0xA901) cannot happen over DIMSE and stays in the A9xx class.
    """
    if reason in (PROCESSING_FAILURE, 0x0111, 0x0122, OUT_OF_RESOURCES, CANNOT_UNDERSTAND):
        return reason
    if 0xA900 <= reason <= 0xA9FF:
        return DOES_NOT_MATCH
    if 0xC000 <= reason <= 0xCFFF:
        return CANNOT_UNDERSTAND
    return PROCESSING_FAILURE
