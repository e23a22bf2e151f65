"""Numbers in text that came from outside (headers, query parameters, tokens)."""

from __future__ import annotations

import re

_DIGITS = re.compile("[0-9]+")


def ascii_int(text: str, max_digits: int = 18) -> int | None:
    """``text`` as a non-negative integer when it is 1 to ``max_digits`` ASCII digits,
    else None. Not ``str.isdigit()``: it takes "²" and other digits ``int()`` refuses,
    and ``int()`` refuses 4,300 digits and more; either was a 500."""
    if len(text) > max_digits or not _DIGITS.fullmatch(text):
        return None
    return int(text)
