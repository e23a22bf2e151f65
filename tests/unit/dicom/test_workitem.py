"""A workitem's DICOM JSON (PS3.18 F.2) as UPS-RS takes it (PS3.18 11.1.3: attributes
only, no bulk data), and the accessors the worklist reads it with."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.dicom.workitem import (
    MAX_DEPTH,
    WorkitemError,
    first,
    first_code,
    name,
    parse_dataset,
)


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_one_dataset_alone_or_in_an_array_keys_upper_cased_vr_filled_in() -> None:
    given = {"0074120c": {"vr": "LO", "Value": ["x"]}, "00100020": {"Value": ["P1"]}}
    for payload in (given, [given]):
        parsed = parse_dataset(body(payload))
        assert parsed == {
            "0074120C": {"vr": "LO", "Value": ["x"]},
            "00100020": {"vr": "LO", "Value": ["P1"]},
        }


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"{", "not JSON"),
        (body([]), "exactly one"),
        (body("x"), "an object"),
        (body({"0010001": {"vr": "PN"}}), "8 hex"),
        (body({"00100010": "Doe"}), "element object"),
        (body({"00100010": {"vr": "LO", "Value": ["x"]}}), "dictionary says PN"),
        (body({"00100010": {"vr": "PN", "Value": "Doe"}}), "must be an array"),
        (body({"00400400": {"vr": "LT", "BulkDataURI": "http://x"}}), "no bulk data"),
        (body({"00400400": {"vr": "LT", "Value": ["x"], "Extra": 1}}), "unexpected members"),
        (body({"00404005": {"vr": "DT", "Value": ["not a date"]}}), "(0040,4005)"),
        (body({"0040A370": {"vr": "SQ", "Value": ["x"]}}), "items are objects"),
        (body({"00080018": {"vr": "UI", "Value": ["1.2.x"]}}), "SOP Instance UID"),
    ],
)
def test_what_is_not_a_workitem_is_refused_naming_the_attribute(payload: bytes, says: str) -> None:
    with pytest.raises(WorkitemError, match=None) as refused:
        parse_dataset(payload)
    assert says in str(refused.value)


def test_nesting_and_size_are_bounded() -> None:
    deep: dict[str, Any] = {"00100020": {"vr": "LO", "Value": ["x"]}}
    for _ in range(MAX_DEPTH):
        deep = {"0040A730": {"vr": "SQ", "Value": [deep]}}
    parse_dataset(body(deep))  # as deep as allowed
    with pytest.raises(WorkitemError, match="nested"):
        parse_dataset(body({"0040A730": {"vr": "SQ", "Value": [deep]}}))
    many = {f"0009{i:04X}": {"vr": "LO", "Value": ["x"]} for i in range(0x10, 0x10 + 2001)}
    with pytest.raises(WorkitemError, match="at most"):
        parse_dataset(body(many))


def test_accessors() -> None:
    attrs = parse_dataset(
        body(
            {
                "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
                "00404025": {
                    "vr": "SQ",
                    "Value": [{"00080100": {"vr": "SH", "Value": ["CT1"]}}],
                },
            }
        )
    )
    assert first(attrs, 0x00100010) == "Doe^Jane"
    assert first(attrs, 0x00100020) is None
    assert first_code(attrs, 0x00404025) == "CT1" and first_code(attrs, 0x00404018) is None
    assert name(0x00741000) == "Procedure Step State (0074,1000)"
    assert name(0x00091010) == "(0009,1010)"
