"""Specific Character Set at ingest (PS3.5 6.1; PN as PS3.18 F.2.2 has it).

Regression for issue #19: a valid ISO 2022 IR 149 (Korean) file was refused with
"argument of type 'NoneType' is not iterable" from ``Charset.decode``. Every file of
pydicom's character set test set is analysed, and its text checked against pydicom's
own decoding; the decoder's rules are then pinned one by one on values of their own.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import msgspec
import pydicom
import pytest

from app.dicom.analysis import analyse_content
from app.dicom.json_model import Charset
from app.errors import FailureReason, InstanceRejected

from charset_files import CHARSET_FILES, complete, expected_texts, json_texts, person_name


@pytest.mark.parametrize("path", CHARSET_FILES, ids=lambda p: p.name)
def test_every_charset_file_is_analysed_and_decoded_as_pydicom_decodes_it(path: Path) -> None:
    data = complete(path)
    analysis = analyse_content(memoryview(data), "", len(data))
    ds = pydicom.dcmread(BytesIO(data))
    expected = expected_texts(ds)
    assert json_texts(msgspec.json.decode(analysis.metadata)) == expected
    study = msgspec.json.decode(analysis.study_json)  # what QIDO returns at study level
    assert study.get("00100010", {}).get("Value") == expected.get("00100010")
    name = ds.get("PatientName")
    # the indexed column holds the Alphabetic group, as single value matching compares it
    assert analysis.study["patient_name"] == (name.alphabetic or None if name else None)


def test_the_korean_file_of_the_issue() -> None:
    """chrKoreanMulti.dcm: ``\\ISO 2022 IR 149``, each value opening with ESC $ ) C."""
    (path,) = [p for p in CHARSET_FILES if p.name == "chrKoreanMulti.dcm"]
    analysis = analyse_content(memoryview(path.read_bytes()), "", path.stat().st_size)
    metadata = msgspec.json.decode(analysis.metadata)
    assert metadata["00100010"]["Value"] == [{"Alphabetic": "김희중"}]
    assert metadata["00101001"]["Value"] == [{"Alphabetic": "김희중"}] * 2
    assert metadata["001021B0"]["Value"] == ["김희중"]  # LT: this raised the TypeError
    assert analysis.study["patient_name"] == "김희중"


@pytest.mark.parametrize("name", ["chrSQEncoding.dcm", "chrSQEncoding1.dcm"])
def test_bare_data_sets_are_refused_for_their_missing_uids_not_their_text(name: str) -> None:
    (path,) = [p for p in CHARSET_FILES if p.name == name]
    with pytest.raises(InstanceRejected) as caught:
        analyse_content(memoryview(path.read_bytes()), "", path.stat().st_size)
    assert caught.value.reason == FailureReason.DATASET_DOES_NOT_MATCH
    assert "SOP Class UID (0008,0016) is missing" in str(caught.value)


def test_an_items_own_character_set_applies_to_the_item() -> None:
    """chrSQEncoding1: ISO 2022 IR 13 / IR 87 at the top, none in the item (inherited)."""
    (path,) = [p for p in CHARSET_FILES if p.name == "chrSQEncoding1.dcm"]
    analysis = analyse_content(memoryview(complete(path)), "", 0)
    item = msgspec.json.decode(analysis.metadata)["00321064"]["Value"][0]
    assert item["00100010"]["Value"] == [
        {"Alphabetic": "ﾔﾏﾀﾞ^ﾀﾛｳ", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]


# -- the decoder's rules, PS3.5 6.1.2.5 --------------------------------------------------


def decode(charset: bytes, raw: bytes, vr: str = "PN") -> str:
    return Charset(charset).decode(raw, vr)


def test_gb2312_in_g1_as_in_ps3_5_annex_k() -> None:
    """ISO 2022 IR 58 (ESC $ ) A): pydicom 3.0 leaves its escape sequences in the text."""
    raw = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab="
    assert decode(b"\\ISO 2022 IR 58", raw) == "Zhang^XiaoDong=张^小东="


def test_jis_x_0212_in_g0() -> None:
    assert decode(b"\\ISO 2022 IR 159", b"\x1b$(D0!\x1b(B") == "丂"


def test_delimiter_bytes_inside_a_two_byte_g0_set_are_characters() -> None:
    """ "ま" is 02/04 05/14 in JIS X 0208: its 05/14 is no "^" (PS3.5 6.1.2.5.3)."""
    assert decode(b"\\ISO 2022 IR 87", b"\x1b$B$^\x1b(B^A") == "ま^A"


def test_value_1_is_active_again_after_a_pn_delimiter_and_a_control_character() -> None:
    """PS3.5 6.1.2.5.3: Greek (ESC - F) until "^" or CR, then Latin-1 of value 1 again."""
    charsets = b"ISO 2022 IR 100\\ISO 2022 IR 126"
    assert decode(charsets, b"\x1b-F\xe1^\xe1") == "α^á"
    assert decode(charsets, b"\x1b-F\xe1^\xe1\r\n\xe1", "LT") == "α^α\r\ná"


def test_escape_to_ascii_keeps_the_g1_set() -> None:
    """ESC ( B designates G0 only (ISO/IEC 2022): KS X 1001 in G1 stays."""
    assert decode(b"\\ISO 2022 IR 149", b"\x1b$)C\xb1\xe8\x1b(B \xb1\xe8", "LO") == "김 김"


def test_an_unknown_escape_sequence_is_one_replacement_character() -> None:
    assert decode(b"\\ISO 2022 IR 87", b"A\x1b$@;3B") == "A\ufffd;3B"


@pytest.mark.parametrize(
    ("charset", "raw", "text"),
    [
        (b"", b"J\xe9r\xf4me", "Jérôme"),  # none: 8-bit bytes kept as Latin-1, not lost
        (b"ISO-IR 144", b"\xbb\xee", "Лю"),  # misspelt Defined Term
        (b"ISO_IR 999", b"J\xe9r\xf4me", "Jérôme"),  # no Defined Term: as none
        (b"base64", b"abc", "abc"),  # nor is a Python codec name taken for one
        (b"undefined", b"abc", "abc"),
        (b"ISO_IR 192\\ISO 2022 IR 87", "王".encode(), "王"),  # no code extensions to UTF-8
    ],
)
def test_unusual_specific_character_sets_do_not_fail(charset: bytes, raw: bytes, text: str) -> None:
    assert decode(charset, raw) == text


def test_person_name_reference_helper() -> None:
    """The reference drops empty groups as F.2.2 does ("=" alone is no Ideographic)."""
    assert person_name(pydicom.valuerep.PersonName("A^B==C")) == {
        "Alphabetic": "A^B",
        "Phonetic": "C",
    }
