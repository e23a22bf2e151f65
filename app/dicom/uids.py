"""Every UID constant Pictor names (transfer syntaxes, PS3.5 Section 10 and Annex A;
SOP classes, PS3.4), and UID syntax (PS3.5 9.1). The one place they are spelled."""

from __future__ import annotations

import re

# -- transfer syntaxes (PS3.5 Section 10, PS3.6 Annex A) --
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
#: every encapsulated (compressed) syntax but RLE starts with this
ENCAPSULATED_PREFIX = "1.2.840.10008.1.2.4."
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
J2K_PART2_LOSSLESS = "1.2.840.10008.1.2.4.92"
J2K_PART2 = "1.2.840.10008.1.2.4.93"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
#: the syntaxes whose pixel data is not encapsulated
NATIVE_SYNTAXES = frozenset(
    {IMPLICIT_VR_LE, EXPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE}
)

# -- SOP classes (PS3.4) --
VERIFICATION = "1.2.840.10008.1.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
#: Modality Worklist Information Model - FIND (PS3.4 K.6.1.3)
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
#: Modality Performed Procedure Step (PS3.4 F.7) and its Retrieve SOP Class (F.8)
MPPS = "1.2.840.10008.3.1.2.3.3"
MPPS_RETRIEVE = "1.2.840.10008.3.1.2.3.4"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

# PS3.5 9.1: components of digits separated by '.', no leading zero in a multi-digit
# component, at most 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def uid_problem(value: object) -> str | None:
    """Why ``value`` is not a valid UID, or ``None`` when it is."""
    if not isinstance(value, str) or value == "":
        return "is missing or empty"
    if len(value) > 64:
        return f"is {len(value)} characters long (PS3.5 9.1 allows 64)"
    if _UID.fullmatch(value) is None:
        return f"{value!r} is not a UID (PS3.5 9.1: digits and dots, no leading zeros)"
    return None
