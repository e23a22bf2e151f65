"""One error tree for the whole archive.

::

    PictorError                    any failure Pictor itself reports
    ├── RequestError               the client sent something unusable (HTTP 4xx)
    │   ├── BadRequest             400: malformed syntax (PS3.18 8.5)
    │   ├── Unauthorized           401: no or bad credentials (RFC 6750 3)
    │   ├── Forbidden              403: the credentials lack the scope
    │   ├── NotFound               404
    │   ├── MethodNotAllowed       405: the path has no route for the method
    │   ├── NotAcceptable          406: nothing offered matches Accept
    │   ├── Conflict               409
    │   ├── RangeNotSatisfiable    416: a Range outside the value (RFC 9110 15.5.17)
    │   └── UnsupportedMediaType   415: Content-Type not accepted (PS3.18 10.5.3.1)
    ├── InstanceRejected           one SOP Instance cannot be stored; carries the
    │                              PS3.18 Annex I.2.2 Failure Reason (0008,1197)
    └── ServiceUnavailable         503: the index or the blob store cannot be reached

Library errors (asyncpg, pydicom, OSError) are translated where they are raised. One
function renders the tree as HTTP (:func:`app.asgi.error_answer`: the framework's
handlers, the hot dispatch and access control all answer through it), one as DIMSE
statuses (:func:`app.dimse.status.failure`).
"""

from __future__ import annotations

from enum import IntEnum


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) values, PS3.18 Annex I.2.2 Table I.2-2."""

    PROCESSING_FAILURE = 0x0110
    #: PS3.7 Annex C (status 0111H): "Duplicate SOP Instance": a *different* object is
    #: already stored under this SOP Instance UID.
    DUPLICATE_SOP_INSTANCE = 0x0111
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    #: A9xx "Data Set does not match SOP Class": required attributes missing or invalid.
    DATASET_DOES_NOT_MATCH = 0xA900
    #: A9xx as well: Study Instance UID differs from the one in the request target
    #: (PS3.18 10.5.1; the code used for this by other DICOMweb servers, 43265).
    STUDY_UID_MISMATCH = 0xA901
    #: Cxxx "Cannot understand": not DICOM, truncated, unparseable.
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    #: the SOP Instance UID was rejected by an IOCM rejection note (IHE RAD TF-2 4.66):
    #: no standard code exists; Cxxx is the range PS3.4 B.2.3 leaves to the SCP for
    #: failures a retry cannot cure (an A7xx "out of resources" would invite one)
    REJECTED_INSTANCE = 0xC771


class PictorError(Exception):
    """Base of every error Pictor reports."""

    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        """Extra response headers the error calls for."""
        return {}


class RequestError(PictorError):
    status_code = 400


class BadRequest(RequestError):
    status_code = 400


class Unauthorized(RequestError):
    """401 with the ``WWW-Authenticate`` challenge of RFC 6750 3."""

    status_code = 401

    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(message)
        self.challenge = challenge

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge}


class Forbidden(RequestError):
    """403; ``challenge`` (RFC 6750 3.1 insufficient_scope), when there is one."""

    status_code = 403

    def __init__(self, message: str, challenge: str = "") -> None:
        super().__init__(message)
        self.challenge = challenge

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge} if self.challenge else {}


class NotFound(RequestError):
    status_code = 404


class MethodNotAllowed(RequestError):
    status_code = 405

    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class NotAcceptable(RequestError):
    status_code = 406


class Conflict(RequestError):
    status_code = 409


class RangeNotSatisfiable(RequestError):
    status_code = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        return (type(self), (self.message, self.size))


class PayloadTooLarge(RequestError):
    status_code = 413


class UnsupportedMediaType(RequestError):
    status_code = 415


class ServiceUnavailable(PictorError):
    """The archive cannot answer now (its index is unreachable, say); the client should
    try again after ``Retry-After`` seconds (RFC 9110 10.2.3), a few seconds being about
    the time the embedded database takes to be restarted."""

    status_code = 503
    retry_after = 5

    @property
    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


class StorageFull(PictorError):
    """The archive's storage has no room for new data (RFC 4918 11.5: 507 Insufficient
    Storage): the disk is full, or its free space is below ``PICTOR_MIN_FREE_BYTES``."""

    status_code = 507


class InstanceRejected(PictorError):
    """One instance cannot be stored; the others in the same request are unaffected."""

    status_code = 409

    def __init__(
        self,
        reason: FailureReason,
        message: str,
        *,
        sop_class_uid: str = "",
        sop_instance_uid: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # crosses process boundaries (ingest analyses files in worker processes)
        return (
            _rebuild_rejected,
            (self.reason, self.message, self.sop_class_uid, self.sop_instance_uid),
        )


def _rebuild_rejected(
    reason: FailureReason, message: str, sop_class_uid: str, sop_instance_uid: str
) -> InstanceRejected:
    return InstanceRejected(
        reason, message, sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid
    )
