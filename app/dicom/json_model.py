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
import struct
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes

from app.dicom.reader import BINARY_VRS, PIXEL_DATA_TAGS, DataSet, Element

#: Prefix of stored BulkDataURIs; replaced by the public DICOMweb base URL when served.
BASE_MARKER = "pictor:base"

#: Binary values longer than this go out as BulkDataURI, shorter ones inline.
BULK_THRESHOLD = 1024

_SINGLE_VALUED_TEXT = frozenset({"LT", "ST", "UT", "UR"})
_STRIP_BOTH = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMERIC = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_DEFAULT_ENCODINGS = ["iso8859"]

#: (path, offset, length) of each value sent as BulkDataURI; path like "7FE00010" or
#: "00540016/0/00281201" (tag / item index / tag ...).
BulkRange = tuple[str, int, int]


class Charset:
    """Python codecs for a Specific Character Set (0008,0005), PS3.5 6.1."""

    __slots__ = ("encodings", "simple")

    def __init__(self, value: bytes | None) -> None:
        terms = (value or b"").decode("ascii", "replace").split("\\")
        terms = [t.strip() for t in terms]
        if not any(terms):
            self.encodings = list(_DEFAULT_ENCODINGS)
        else:
            self.encodings = convert_encodings(terms)
        self.simple: str | None = (
            self.encodings[0] if len(self.encodings) == 1 and "2022" not in terms[0] else None
        )

    def decode(self, raw: bytes, vr: str) -> str:
        if vr not in _CHARSET_VRS:
            return raw.decode("latin-1")
        if self.simple is not None:
            return raw.decode(self.simple, "replace")
        delimiters = {0x5E, 0x3D} if vr == "PN" else None
        return decode_bytes(raw, self.encodings, delimiters)  # type: ignore[arg-type]


def _strings(el: Element, charset: Charset) -> list[str]:
    assert el.value is not None
    text = charset.decode(el.value, el.vr)
    if el.vr in _SINGLE_VALUED_TEXT:
        return [text.rstrip(" \x00")]
    values = text.split("\\")
    if el.vr in _STRIP_BOTH:
        return [v.strip(" \x00") for v in values]
    return [v.rstrip(" \x00") for v in values]


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
