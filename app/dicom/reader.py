"""A small, fast reader of DICOM Part 10 files (PS3.10 7.1, PS3.5 7).

Ingest needs three things from each stored file, once: the values of the attributes it
indexes, the DICOM JSON of the whole data set, and the byte position of every value that
is served later (Pixel Data fragments and frames, other bulk data). pydicom answers the
first two, but turning its raw elements into values costs milliseconds per instance,
and it does not report where nested values lie. This reader walks the encoded data set
over a memory map instead: values up to ``inline_limit`` bytes are sliced out, larger
ones are recorded as ``(offset, length)`` only, so memory does not grow with the size of
the file.

The reader builds a tree of :class:`Element`; :mod:`app.dicom.json_model` turns it into
DICOM JSON and :mod:`app.dicom.analysis` into index rows and frame ranges.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pydicom.datadict import dictionary_VR

from app.dicom.uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE

Buffer = bytes | bytearray | memoryview | mmap.mmap

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITATION = 0xFFFEE00D
SEQUENCE_DELIMITATION = 0xFFFEE0DD
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})

#: VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 7.1.2).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
#: Non-binary values longer than this are not read into memory either.
TEXT_LIMIT = 16 << 20
#: Sequences nested deeper than this are refused. PS3.5 7.5 sets no bound, but the
#: reader and the DICOM JSON built from its tree recurse once per level; no IOD nests
#: anywhere near this deep (an SR content tree rarely passes ten levels).
MAX_NESTING = 64
#: A deflated data set (PS3.5 A.5) is inflated in memory: at most this much of it.
MAX_INFLATED = 256 << 20
_INFLATE_STEP = 1 << 20
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


class DicomFormatError(ValueError):
    """The bytes are not a well-formed DICOM file (not DICOM, truncated, garbled)."""


@dataclass(slots=True)
class Element:
    tag: int
    vr: str
    #: position of the value in the walked buffer (file offset unless deflated)
    offset: int
    #: value length in bytes; UNDEFINED for undefined-length encapsulated values
    length: int
    #: the value bytes, or ``None`` when longer than the reader's inline limit
    value: bytes | None = None
    #: SQ: the items
    items: list[DataSet] | None = None
    #: encapsulated (undefined-length) OB/OW: ``(offset, length)`` of each item's data;
    #: the first is the Basic Offset Table (PS3.5 A.4)
    fragments: list[tuple[int, int]] | None = None
    #: position of the element's tag (used to resolve Basic Offset Table entries)
    header_offset: int = 0


@dataclass(slots=True)
class DataSet:
    elements: dict[int, Element] = field(default_factory=dict)

    def get(self, tag: int) -> Element | None:
        return self.elements.get(tag)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.elements.values())


@dataclass(slots=True)
class ParsedFile:
    transfer_syntax: str
    meta: DataSet
    dataset: DataSet
    little_endian: bool
    implicit_vr: bool
    #: False when offsets refer to an inflated copy, not to the stored file
    offsets_are_file_positions: bool


def _ambiguous_us_ss() -> frozenset[int]:
    from pydicom._dicom_dict import DicomDictionary

    return frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "US or SS")


_US_OR_SS = _ambiguous_us_ss()


@lru_cache(maxsize=4096)
def implicit_vr(tag: int) -> str:
    """The VR of ``tag`` in implicit VR encoding, from the data dictionary (PS3.6)."""
    group, elem = tag >> 16, tag & 0xFFFF
    if group & 1:
        # Private: creators are LO (PS3.5 7.8.1); other private values are unknown.
        return "LO" if 0x0010 <= elem <= 0x00FF else "UN"
    if elem == 0:
        return "UL"  # group length
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    if vr in ("OB or OW", "US or OW", "US or SS or OW"):
        return "OW"
    if vr == "US or SS":
        return "US"
    return vr


class _Walker:
    def __init__(self, buf: Buffer, little_endian: bool, implicit: bool, inline_limit: int) -> None:
        self.buf = memoryview(buf)
        self.size = len(self.buf)
        self.little = little_endian
        self.implicit = implicit
        self.inline_limit = inline_limit
        e = "<" if little_endian else ">"
        self.u16 = struct.Struct(e + "H").unpack_from
        self.u32 = struct.Struct(e + "L").unpack_from
        self.tag_len = struct.Struct(e + "HHL").unpack_from
        self.tag_vr_len = struct.Struct(e + "HH2sH").unpack_from
        #: sequences entered and not yet left
        self.depth = 0

    def need(self, pos: int, n: int) -> None:
        if pos + n > self.size:
            raise DicomFormatError(
                f"truncated: an element at byte {pos} needs {n} bytes but the data ends at "
                f"byte {self.size}"
            )

    def dataset(self, pos: int, end: int, *, implicit: bool, in_item: bool) -> tuple[DataSet, int]:
        ds = DataSet()
        elements = ds.elements
        while pos < end:
            if end - pos < 8:
                if not in_item and not any(self.buf[pos:end]):
                    return ds, end  # trailing zero padding after the data set
                raise DicomFormatError(f"truncated element header at byte {pos}")
            element, pos = self.element(pos, implicit=implicit)
            if element is None:  # Item Delimitation Item: end of an undefined-length item
                return ds, pos
            if element.tag != 0xFFFCFFFC:  # Data Set Trailing Padding (PS3.10 7.2)
                if implicit and element.vr == "US" and element.tag in _US_OR_SS:
                    rep = elements.get(0x00280103)  # Pixel Representation: 1 = signed
                    if rep is not None and rep.value and rep.value[0 if self.little else 1] == 1:
                        element.vr = "SS"
                elements[element.tag] = element
        if pos > end:
            raise DicomFormatError(f"an element runs past the end of its container at byte {end}")
        return ds, pos

    def element(self, pos: int, *, implicit: bool) -> tuple[Element | None, int]:
        """Read the data element whose tag is at ``pos`` (PS3.5 7.1)."""
        buf = self.buf
        group, elem, length = self.tag_len(buf, pos)
        tag = (group << 16) | elem
        header = pos
        if tag == ITEM_DELIMITATION:
            return None, pos + 8
        if tag in (ITEM, SEQUENCE_DELIMITATION):
            raise DicomFormatError(f"unexpected item tag {tag:08X} at byte {pos}")
        if implicit:
            vr = implicit_vr(tag)
            pos += 8
        else:
            _, _, raw_vr, short_len = self.tag_vr_len(buf, pos)
            vr = raw_vr.decode("latin-1")
            if vr in LONG_VRS:
                self.need(pos, 12)
                length = self.u32(buf, pos + 8)[0]
                pos += 12
            elif raw_vr.isalpha() and raw_vr.isupper():  # bytes: ASCII letters only
                length = short_len
                pos += 8
            else:
                raise DicomFormatError(
                    f"element ({group:04X},{elem:04X}) at byte {pos} has no valid VR "
                    f"({raw_vr!r}) in an explicit VR data set"
                )
        if vr == "UN" and tag not in PIXEL_DATA_TAGS:
            # UN stands for a VR the sender did not know; its value is encoded as in
            # implicit VR little endian (PS3.5 6.2.2), so the dictionary VR applies.
            known = implicit_vr(tag)
            if known != "UN" and (self.little or known == "SQ"):
                vr = known
                implicit = implicit or known == "SQ"
        if vr == "SQ" or (length == UNDEFINED and vr == "UN" and tag not in PIXEL_DATA_TAGS):
            # An undefined-length UN is a sequence in implicit VR LE (PS3.5 6.2.2 note).
            items, end = self.sequence(pos, length, implicit=implicit or vr == "UN")
            return Element(tag, "SQ", pos, length, items=items, header_offset=header), end
        if length == UNDEFINED:
            fragments, end = self.fragments(pos)
            return Element(tag, vr, pos, UNDEFINED, fragments=fragments, header_offset=header), end
        self.need(pos, length)
        limit = self.inline_limit if vr in BINARY_VRS or tag in PIXEL_DATA_TAGS else TEXT_LIMIT
        value = bytes(buf[pos : pos + length]) if length <= limit else None
        return Element(tag, vr, pos, length, value, header_offset=header), pos + length

    def sequence(self, pos: int, length: int, *, implicit: bool) -> tuple[list[DataSet], int]:
        if self.depth >= MAX_NESTING:
            raise DicomFormatError(
                f"sequences are nested more than {MAX_NESTING} deep at byte {pos}"
            )
        self.depth += 1
        try:
            return self._items(pos, length, implicit=implicit)
        finally:
            self.depth -= 1

    def _items(self, pos: int, length: int, *, implicit: bool) -> tuple[list[DataSet], int]:
        """The items of a sequence whose value starts at ``pos`` (PS3.5 7.5.1)."""
        items: list[DataSet] = []
        end = self.size if length == UNDEFINED else pos + length
        if length != UNDEFINED:
            self.need(pos, length)
        while pos < end:
            self.need(pos, 8)
            group, elem, item_len = self.tag_len(self.buf, pos)
            tag = (group << 16) | elem
            pos += 8
            if tag == SEQUENCE_DELIMITATION:
                return items, pos
            if tag != ITEM:
                raise DicomFormatError(f"expected an item tag in a sequence at byte {pos - 8}")
            if item_len == UNDEFINED:
                item, pos = self.dataset(pos, self.size, implicit=implicit, in_item=True)
            else:
                self.need(pos, item_len)
                item, pos = self.dataset(pos, pos + item_len, implicit=implicit, in_item=True)
            items.append(item)
        if length == UNDEFINED:
            raise DicomFormatError("truncated: a sequence has no Sequence Delimitation Item")
        return items, pos

    def fragments(self, pos: int) -> tuple[list[tuple[int, int]], int]:
        """Items of an encapsulated value (PS3.5 A.4): ``(data offset, length)`` each."""
        out: list[tuple[int, int]] = []
        while True:
            self.need(pos, 8)
            group, elem, item_len = self.tag_len(self.buf, pos)
            tag = (group << 16) | elem
            if tag == SEQUENCE_DELIMITATION:
                return out, pos + 8
            if tag != ITEM or item_len == UNDEFINED:
                raise DicomFormatError(f"malformed encapsulated item at byte {pos}")
            self.need(pos + 8, item_len)
            out.append((pos + 8, item_len))
            pos += 8 + item_len


def _meta_transfer_syntax(meta: DataSet) -> str:
    el = meta.get(0x00020010)
    if el is None or el.value is None:
        raise DicomFormatError("the file meta information has no Transfer Syntax UID (0002,0010)")
    return el.value.decode("ascii", "replace").strip(" \x00")


def parse_buffer(buf: Buffer, *, inline_limit: int = 1024) -> ParsedFile:
    """Parse a whole Part 10 file held in ``buf`` (bytes or a memory map)."""
    try:
        return _parse(buf, inline_limit)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise DicomFormatError(f"malformed data set ({exc})") from None


def _parse_meta(view: memoryview) -> tuple[DataSet, int]:
    """The File Meta Information (always explicit VR little endian, PS3.10 7.1) and the
    position of the data set after it."""
    if len(view) >= 132 and bytes(view[128:132]) == b"DICM":
        pos = 132
    elif len(view) >= 4 and bytes(view[0:4]) == b"DICM":
        pos = 4  # a few writers omit the preamble
    else:
        raise DicomFormatError("not a DICOM file: no 'DICM' prefix at byte 128 (PS3.10 7.1)")
    meta_walker = _Walker(view, True, False, inline_limit=1 << 16)
    meta = DataSet()
    while pos + 8 <= len(view) and meta_walker.u16(view, pos)[0] == 0x0002:
        element, pos = meta_walker.element(pos, implicit=False)
        if element is None:
            raise DicomFormatError("malformed File Meta Information")
        meta.elements[element.tag] = element
    if not meta.elements:
        raise DicomFormatError("the file has no File Meta Information group (0002,xxxx)")
    return meta, pos


def _is_implicit(body: Buffer, pos: int, ts: str) -> bool:
    if ts == IMPLICIT_VR_LE:
        return True
    if len(body) >= pos + 6:
        # Some writers label an implicit VR data set as explicit; the VR bytes tell.
        vr = bytes(memoryview(body)[pos + 4 : pos + 6])
        return not (vr.isalpha() and vr.isupper())
    return False


def data_set_start(buf: Buffer) -> tuple[int, str] | None:
    """Where the data set begins in a Part 10 file (after the File Meta Information,
    PS3.10 7.1) and its transfer syntax; None if ``buf`` is not one."""
    try:
        meta, pos = _parse_meta(memoryview(buf))
        return pos, _meta_transfer_syntax(meta)
    except (DicomFormatError, struct.error, IndexError, UnicodeDecodeError):
        return None


def tail_offset(buf: Buffer) -> int | None:
    """Where the top-level elements before Pixel Data end in a Part 10 file, or a
    prefix of one: the position of the first element at or after (7FE0,0000), or the
    end of ``buf`` when there is none. None when ``buf`` ends inside an element (the
    prefix is too short) or the data set is deflated (positions are not file bytes).
    Used to rewrite a header and copy the rest unchanged (app.dicom.patch)."""
    view = memoryview(buf)
    try:
        meta, pos = _parse_meta(view)
        ts = _meta_transfer_syntax(meta)
        if ts == DEFLATED_EXPLICIT_VR_LE:
            return None
        implicit = _is_implicit(view, pos, ts)
        walker = _Walker(view, ts != EXPLICIT_VR_BE, implicit, inline_limit=0)
        while pos < walker.size:
            if walker.size - pos < 8:
                return None
            group, elem = walker.u16(view, pos)[0], walker.u16(view, pos + 2)[0]
            if (group << 16) | elem >= 0x7FE00000:
                return pos
            _, pos = walker.element(pos, implicit=implicit)
        return pos
    except (DicomFormatError, struct.error, IndexError, UnicodeDecodeError):
        return None


def _inflate(deflated: memoryview) -> bytearray:
    """The data set of the Deflated Explicit VR Little Endian transfer syntax (PS3.5
    A.5: raw deflate, RFC 1951), at most MAX_INFLATED bytes of it: deflate packs up to
    1032 bytes into one, so a small upload could otherwise claim gigabytes. Inflated
    step by step into one buffer, so that memory stays close to what is kept."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    body = bytearray()
    try:
        for start in range(0, len(deflated), _INFLATE_STEP):
            pending: bytes | memoryview = deflated[start : start + _INFLATE_STEP]
            while not inflater.eof:
                room = min(_INFLATE_STEP, MAX_INFLATED + 1 - len(body))
                piece = inflater.decompress(pending, room)
                body += piece
                if len(body) > MAX_INFLATED:
                    raise DicomFormatError(
                        f"the deflated data set inflates to more than {MAX_INFLATED >> 20} MiB"
                    )
                pending = inflater.unconsumed_tail
                if not pending and len(piece) < room:
                    break  # this step's input is used up
            if inflater.eof:
                break
    except zlib.error as exc:
        raise DicomFormatError(f"deflated data set cannot be inflated: {exc}") from None
    if not inflater.eof:
        raise DicomFormatError("deflated data set cannot be inflated: the stream is truncated")
    return body


def _parse(buf: Buffer, inline_limit: int) -> ParsedFile:
    view = memoryview(buf)
    meta, pos = _parse_meta(view)
    ts = _meta_transfer_syntax(meta)
    offsets_in_file = True
    body: Buffer = view
    if ts == DEFLATED_EXPLICIT_VR_LE:
        body = _inflate(view[pos:])
        pos, offsets_in_file = 0, False
    little = ts != EXPLICIT_VR_BE
    implicit = _is_implicit(body, pos, ts)
    walker = _Walker(body, little, implicit, inline_limit)
    dataset, _ = walker.dataset(pos, walker.size, implicit=implicit, in_item=False)
    return ParsedFile(ts, meta, dataset, little, implicit, offsets_in_file)


def parse_file(path: Path, *, inline_limit: int = 1024) -> ParsedFile:
    """Parse the file at ``path`` through a read-only memory map."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise DicomFormatError("the file is empty")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    problem = ""
    try:
        return parse_buffer(mm, inline_limit=inline_limit)
    except DicomFormatError as exc:
        problem = str(exc)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        problem = f"malformed data set ({exc})"
    finally:
        try:
            mm.close()
        except BufferError:  # a traceback still references the map; GC closes it
            pass
    # raised outside the handler so that no frame keeps the memory map alive
    raise DicomFormatError(problem)
