"""app.text.ascii_int: numbers from outside."""

from __future__ import annotations

import pytest

from app.text import ascii_int


@pytest.mark.parametrize(
    ("text", "digits", "expected"),
    [
        ("0", 18, 0),
        ("0042", 18, 42),
        ("9" * 18, 18, int("9" * 18)),
        ("9" * 19, 18, None),  # past the bound: not read
        ("9" * 5000, 18, None),  # int() would refuse it (4,300 digits and more)
        ("\u00b2", 18, None),  # "²".isdigit() is true; int("²") fails
        ("\u0663", 18, None),  # Arabic-Indic three: a decimal digit, not an ASCII one
        ("", 18, None),
        (" 1", 18, None),
        ("+1", 18, None),
        ("-1", 18, None),
        ("1_000", 18, None),  # int() takes underscores
        ("12\n", 18, None),  # re's $ would match before the newline; fullmatch does not
    ],
)
def test_ascii_int(text: str, digits: int, expected: int | None) -> None:
    assert ascii_int(text, digits) == expected
