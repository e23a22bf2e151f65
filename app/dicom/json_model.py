"""The DICOM JSON Model (PS3.18 Annex F) from a :class:`~app.dicom.reader.DataSet`.

Each attribute becomes ``{"vr": VR, "Value": [...]}`` (F.2.2), with person names as
``{"Alphabetic", "Ideographic", "Phonetic"}`` objects (F.2.2), numbers for IS, DS and the
binary numeric VRs (F.2.3), and binary values either as ``InlineBinary`` (base64) or, when
large, as a ``BulkDataURI`` (F.2.6) whose target is recorded as a byte range.

Bulk data URIs are stored relative to the DICOMweb root behind :data:`BASE_MARKER`; the
server substitutes its public base URL when it sends the metadata, so stored metadata
stays valid when the archive moves behind another host name or proxy.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable
from typing import Any

from app.dicom.reader import BINARY_VRS, PIXEL_DATA_TAGS, DataSet, Element

#: Prefix of stored BulkDataURIs; replaced by the public DICOMweb base URL when served.
BASE_MARKER = "pictor:base"

#: Binary values longer than this go out as BulkDataURI, shorter ones inline.
BULK_THRESHOLD = 1024

_SINGLE_VALUED_TEXT = frozenset({"LT", "ST", "UT", "UR"})
_STRIP_BOTH = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
#: the VRs whose values Specific Character Set applies to (PS3.5 6.1.2.3 and 6.1.2.4)
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMERIC = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}

#: (path, offset, length) of each value sent as BulkDataURI; path like "7FE00010" or
#: "00540016/0/00281201" (tag / item index / tag ...).
BulkRange = tuple[str, int, int]


# -- Specific Character Set (PS3.5 6.1, PS3.3 C.12.1.1.2) ------------------------------------

#: Stand-in for "G1 undefined" (value 1 empty: ASCII alone, PS3.5 6.1.2.5.4 c): a byte
#: with the high bit set is then outside the repertoire, and is kept as Latin-1 rather
#: than lost.
_UNDEFINED_G1 = "latin_1"

#: ISO-IR numbers of the single-byte Defined Terms, "ISO_IR n" (PS3.3 Table C.12-2) and
#: "ISO 2022 IR n" (Table C.12-3) -> Python codec of the set each designates as G1. G0 is
#: ISO-IR 6 (ASCII), or for IR 13 JIS X 0201 Romaji, which Python decodes alike (05/12
#: stays the backslash, the value delimiter).
_SINGLE_BYTE = {
    "100": "latin_1",
    "101": "iso8859_2",
    "109": "iso8859_3",
    "110": "iso8859_4",
    "144": "iso8859_5",
    "127": "iso8859_6",
    "126": "iso8859_7",
    "138": "iso8859_8",
    "148": "iso8859_9",
    "203": "iso8859_15",
    "13": "shift_jis",  # JIS X 0201 Katakana in G1 (0xA1-0xDF)
    "166": "tis_620",
}
#: Defined Terms that may take part in code extensions -> the codec of their G1 set.
#: ISO 2022 IR 87 and 159 (Table C.12-4) designate G0 sets, invoked by escapes only.
_TERMS: dict[str, str] = {
    "": _UNDEFINED_G1,
    "ISO_IR 6": _UNDEFINED_G1,
    "ISO 2022 IR 6": _UNDEFINED_G1,
    "ISO 2022 IR 87": _UNDEFINED_G1,
    "ISO 2022 IR 159": _UNDEFINED_G1,
    "ISO 2022 IR 149": "euc_kr",  # KS X 1001 in G1
    "ISO 2022 IR 58": "gb2312",  # GB 2312 in G1
    **{f"ISO_IR {ir}": codec for ir, codec in _SINGLE_BYTE.items()},
    **{f"ISO 2022 IR {ir}": codec for ir, codec in _SINGLE_BYTE.items()},
}

#: Defined Terms that allow no code extensions and have a codec of their own
#: (PS3.3 Table C.12-5, PS3.5 6.1.2.5.4 d)
_STAND_ALONE = {"ISO_IR 192": "utf_8", "GB18030": "gb18030", "GBK": "gbk"}

#: "ISO-IR 100", "iso_ir100", "ISO 2022 IR100" ... as senders misspell the Defined Terms
_MISSPELT = re.compile(r"ISO[ _-]?(2022[ _-]?)?IR[ _-]?(\d+)")

_SET_HIGH_BIT = bytes(b | 0x80 for b in range(256))


def _jis_x_0208(gl: bytes) -> str:
    """Two GL bytes per character; EUC-JP holds JIS X 0208 as the same bytes with the
    high bit set."""
    return gl.translate(_SET_HIGH_BIT).decode("euc_jp", "replace")


def _jis_x_0212(gl: bytes) -> str:
    """Two GL bytes per character; EUC-JP holds JIS X 0212 behind single shift 3 (0x8F)."""
    high = gl.translate(_SET_HIGH_BIT)
    return b"".join(b"\x8f" + high[i : i + 2] for i in range(0, len(high), 2)).decode(
        "euc_jp", "replace"
    )


#: Escape sequences designating G0 (PS3.3 Tables C.12-3 and C.12-4) -> the decoder of a
#: multi-byte set, or None for the single-byte ISO-IR 6 and ISO-IR 14
_G0_ESCAPES: dict[bytes, Callable[[bytes], str] | None] = {
    b"\x1b(B": None,  # ISO-IR 6, ASCII
    b"\x1b(J": None,  # ISO-IR 14, JIS X 0201 Romaji
    b"\x1b$B": _jis_x_0208,  # ISO-IR 87
    b"\x1b$(D": _jis_x_0212,  # ISO-IR 159
}
#: Escape sequences designating G1 (same tables) -> the codec of that set
_G1_ESCAPES: dict[bytes, str] = {
    b"\x1b-A": "latin_1",  # ISO-IR 100
    b"\x1b-B": "iso8859_2",  # ISO-IR 101
    b"\x1b-C": "iso8859_3",  # ISO-IR 109
    b"\x1b-D": "iso8859_4",  # ISO-IR 110
    b"\x1b-L": "iso8859_5",  # ISO-IR 144
    b"\x1b-G": "iso8859_6",  # ISO-IR 127
    b"\x1b-F": "iso8859_7",  # ISO-IR 126
    b"\x1b-H": "iso8859_8",  # ISO-IR 138
    b"\x1b-M": "iso8859_9",  # ISO-IR 148
    b"\x1b-b": "iso8859_15",  # ISO-IR 203
    b"\x1b-T": "tis_620",  # ISO-IR 166
    b"\x1b)I": "shift_jis",  # ISO-IR 13, JIS X 0201 Katakana
    b"\x1b$)C": "euc_kr",  # ISO-IR 149, KS X 1001
    b"\x1b$)A": "gb2312",  # ISO-IR 58, GB 2312
}
#: an ISO 2022 escape sequence: ESC, intermediate bytes (02/00-02/15), a final byte
_ESCAPE = re.compile(rb"(\x1b[\x20-\x2f]*[\x30-\x7e]?)")
#: where value 1's character set is active again (PS3.5 6.1.2.5.3): before CR, LF, FF
#: and any other control character but ESC, and in PN before the "^" and "=" delimiters
_TEXT_RESETS = re.compile(rb"[\x00-\x1a\x1c-\x1f]")
_PN_RESETS = re.compile(rb"[\x00-\x1a\x1c-\x1f^=]")
_GL_RUNS = re.compile(rb"[\x21-\x7e]+|[^\x21-\x7e]+")


def _run(data: bytes, g0: Callable[[bytes], str] | None, g1: str) -> str:
    """Bytes decoded in one state: G0 invoked in GL (02/01-07/14), G1 in GR."""
    if g0 is None:
        return data.decode(g1, "replace")  # every G1 codec has ASCII as its lower half
    return "".join(
        g0(part) if 0x21 <= part[0] <= 0x7E else part.decode(g1, "replace")
        for part in _GL_RUNS.findall(data)
    )


class Charset:
    """The character sets of a Specific Character Set (0008,0005) value, PS3.5 6.1.

    ISO 2022 code extensions (PS3.5 6.1.2.5) are followed as the standard lays them out:
    the set of value 1 is designated initially (ASCII alone when value 1 is empty), an
    escape sequence designates another set as G0 or G1 until the next one, and value 1
    becomes active again at a control character and at the PN delimiters (6.1.2.5.3).
    GB18030, GBK and UTF-8 (ISO_IR 192) allow no code extensions and are decoded whole.
    Bytes a set cannot decode become U+FFFD, as does an unknown escape sequence: a value
    is never refused for its text.
    """

    __slots__ = ("stand_alone", "initial")

    def __init__(self, value: bytes | None) -> None:
        terms = [t.strip() for t in (value or b"").decode("ascii", "replace").split("\\")]
        first = self._term(terms[0])
        #: the codec of a character set without code extensions, else None
        self.stand_alone: str | None = None
        #: the codec of the G1 set value 1 designates (G0 is ASCII or JIS X 0201 Romaji)
        self.initial = _UNDEFINED_G1
        if first in _TERMS:
            self.initial = _TERMS[first]
        elif first in _STAND_ALONE:
            self.stand_alone = _STAND_ALONE[first]
        # anything else is no Defined Term: the default repertoire, as for an absent value
        # (never a Python codec of that name: "base64" or "undefined" would fail each value)

    @staticmethod
    def _term(term: str) -> str:
        term = term.upper()
        if term in _TERMS or term in _STAND_ALONE:
            return term
        match = _MISSPELT.fullmatch(term)
        if match is None:
            return term
        return f"ISO 2022 IR {match[2]}" if match[1] else f"ISO_IR {match[2]}"

    def decode(self, raw: bytes, vr: str) -> str:
        if vr not in _CHARSET_VRS:
            return raw.decode("latin-1")
        if self.stand_alone is not None:
            return raw.decode(self.stand_alone, "replace")
        if 0x1B not in raw:
            return raw.decode(self.initial, "replace")
        return self._extended(raw, _PN_RESETS if vr == "PN" else _TEXT_RESETS)

    def _extended(self, raw: bytes, resets: re.Pattern[bytes]) -> str:
        """Decode a value with escape sequences (PS3.5 6.1.2.5, ISO/IEC 2022)."""
        out: list[str] = []
        g0: Callable[[bytes], str] | None = None
        g1 = self.initial
        # split() with a group alternates text (even indexes) and escape sequences
        for i, part in enumerate(_ESCAPE.split(raw)):
            if i % 2:
                if part in _G0_ESCAPES:
                    g0 = _G0_ESCAPES[part]
                elif part in _G1_ESCAPES:
                    g1 = _G1_ESCAPES[part]
                else:
                    out.append("\ufffd")
                continue
            if g0 is not None or g1 != self.initial:
                # inside a multi-byte G0 set "^" and "=" are bytes of characters; the
                # writer switched back before any delimiter (6.1.2.5.3)
                reset = (resets if g0 is None else _TEXT_RESETS).search(part)
                if reset is not None:
                    out.append(_run(part[: reset.start()], g0, g1))
                    part = part[reset.start() :]
                    g0, g1 = None, self.initial
            if part:
                out.append(_run(part, g0, g1))
        return "".join(out)


def _strings(el: Element, charset: Charset) -> list[str]:
    assert el.value is not None
    # NUL pads UI and binary values only (PS3.5 6.2): inside text it is no character,
    # and PostgreSQL's jsonb cannot hold \u0000; the file itself keeps it
    text = charset.decode(el.value, el.vr).replace("\x00", "")
    if el.vr in _SINGLE_VALUED_TEXT:
        return [text.rstrip(" ")]
    values = text.split("\\")
    if el.vr in _STRIP_BOTH:
        return [v.strip(" ") for v in values]
    return [v.rstrip(" ") for v in values]


def _number(text: str, vr: str) -> int | float | str | None:
    if text == "":
        return None
    try:
        return int(text) if vr == "IS" else float(text)
    except ValueError:
        try:
            return float(text)  # "IS" written as "1.0" by some modalities
        except ValueError:
            return text  # keep what was sent rather than lose it


def _person_name(text: str) -> dict[str, str] | None:
    if text == "":
        return None
    groups = text.split("=")
    out: dict[str, str] = {}
    for key, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups):
        if group:
            out[key] = group
    return out or None


def element_values(el: Element, charset: Charset, little_endian: bool) -> list[Any]:
    """The JSON ``Value`` array of a non-sequence, non-binary element (PS3.18 F.2.2-F.2.5)."""
    vr = el.vr
    raw = el.value
    if raw is None or len(raw) == 0:
        return []
    code = _NUMERIC.get(vr)
    if code is not None:
        size = struct.calcsize("<" + code)
        count = len(raw) // size
        return list(
            struct.unpack(("<" if little_endian else ">") + code * count, raw[: count * size])
        )
    if vr == "AT":
        count = len(raw) // 4
        words = struct.unpack(("<" if little_endian else ">") + "H" * (count * 2), raw[: count * 4])
        return [f"{words[i]:04X}{words[i + 1]:04X}" for i in range(0, len(words), 2)]
    texts = _strings(el, charset)
    if vr == "PN":
        return [_person_name(t) for t in texts]
    if vr in ("IS", "DS"):
        return [_number(t, vr) for t in texts]
    return [t if t != "" else None for t in texts]


def first_text(ds: DataSet, tag: int, charset: Charset) -> str | None:
    """The first value of a string attribute as text, or ``None`` if absent or empty."""
    el = ds.get(tag)
    if el is None or el.value is None or el.items is not None:
        return None
    values = _strings(el, charset)
    return values[0] if values and values[0] != "" else None


def texts(ds: DataSet, tag: int, charset: Charset) -> list[str]:
    """Every value of a string attribute as text (PS3.5 6.4: values are separated by
    backslashes); empty if absent."""
    el = ds.get(tag)
    if el is None or el.value is None or el.items is not None:
        return []
    return list(_strings(el, charset))


def first_int(ds: DataSet, tag: int, charset: Charset, little_endian: bool) -> int | None:
    el = ds.get(tag)
    if el is None or el.value is None:
        return None
    values = element_values(el, charset, little_endian)
    if not values:
        return None
    try:
        return int(values[0])
    except (TypeError, ValueError):
        return None


class JsonBuilder:
    """Builds the DICOM JSON of one instance and records where its bulk data lies."""

    def __init__(self, little_endian: bool, bulk_uri_prefix: str, offsets_valid: bool) -> None:
        self.little = little_endian
        self.prefix = bulk_uri_prefix
        self.offsets_valid = offsets_valid
        self.bulk: list[BulkRange] = []

    def dataset(self, ds: DataSet, charset: Charset, path: str = "") -> dict[str, Any]:
        cs_el = ds.get(0x00080005)
        if cs_el is not None and cs_el.value is not None:
            charset = Charset(cs_el.value)
        out: dict[str, Any] = {}
        for el in ds:
            if el.tag & 0xFFFF == 0 or el.tag >> 16 == 0x0002:
                continue  # group lengths are retired; file meta is not part of the data set
            key = f"{el.tag:08X}"
            out[key] = self.element(el, charset, f"{path}{key}")
        return out

    def element(self, el: Element, charset: Charset, path: str) -> dict[str, Any]:
        vr = el.vr
        if el.items is not None:
            items = [self.dataset(item, charset, f"{path}/{i}/") for i, item in enumerate(el.items)]
            return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        if vr in BINARY_VRS or el.tag in PIXEL_DATA_TAGS or el.fragments is not None:
            if el.length == 0:
                return {"vr": vr}
            if el.fragments is None and el.value is not None and el.length <= BULK_THRESHOLD:
                return {"vr": vr, "InlineBinary": base64.b64encode(el.value).decode("ascii")}
            if self.offsets_valid and el.fragments is None:
                self.bulk.append((path, el.offset, el.length))
            return {"vr": vr, "BulkDataURI": f"{self.prefix}/bulk/{path}"}
        if el.value is None:
            # a text value over TEXT_LIMIT: served as bulk data rather than held in memory
            return {"vr": vr, "BulkDataURI": f"{self.prefix}/bulk/{path}"}
        values = element_values(el, charset, self.little)
        if not values or all(v is None for v in values):
            return {"vr": vr}
        return {"vr": vr, "Value": values}


def bulk_prefix(study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"{BASE_MARKER}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def to_json(
    ds: DataSet, *, little_endian: bool, prefix: str, offsets_valid: bool = True
) -> tuple[dict[str, Any], list[BulkRange]]:
    builder = JsonBuilder(little_endian, prefix, offsets_valid)
    return builder.dataset(ds, Charset(None)), builder.bulk
