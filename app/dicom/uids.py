"""UID syntax, PS3.5 9.1."""

from __future__ import annotations

import re

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
