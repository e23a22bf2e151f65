"""Fuzzing the Part 10 reader and the analysis of an uploaded instance (PS3.10 7,
PS3.5 7.1 and 7.5).

For any bytes, :func:`app.dicom.analysis.analyse_content` either returns an analysis or
raises :class:`InstanceRejected` (a failed instance in the STOW answer): never another
exception (a bug, answered as a processing failure), within the deadline, and without
allocating memory out of proportion to the input (a length field of 0xFFFFFFF0 is a
truncated file, not 4 GB to allocate). The inputs:

* arbitrary bytes, bytes after a 'DICM' prefix, and a real file meta group followed by
  arbitrary bytes;
* reference files (tests/synth.py and pydicom's test files: explicit and implicit VR,
  big endian, deflated, encapsulated, sequences, UN) mutated: truncated, bytes changed,
  inserted, removed or copied, length fields made huge or undefined, deeply nested
  sequences inserted;
* data sets generated element by element (random values for the attributes the analysis
  reads, sequences, native and encapsulated Pixel Data with offset tables), then
  possibly mutated as well.

An analysis that succeeds must also be one the index can store: JSON with two-letter
VRs (PS3.18 F.2.2), byte ranges inside the file, integers that fit their columns, and
no NUL in a text column (PostgreSQL refuses one).
"""

from __future__ import annotations

import functools
import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from app.dicom import reader
from app.dicom.analysis import Analysis, analyse_content
from app.dicom.reader import DataSet, parse_buffer
from app.errors import FailureReason, InstanceRejected

from synth import ct_slice

#: the pydicom test files mutated (with tests/synth.py's CT slice): one of each encoding
SEED_FILES = (
    "rtplan.dcm",  # implicit VR LE, nested sequences
    "MR_small_bigendian.dcm",  # explicit VR big endian, native pixels
    "image_dfl.dcm",  # deflated explicit VR LE (PS3.5 A.5)
    "JPEG2000.dcm",  # encapsulated (PS3.5 A.4)
    "SC_rgb_rle_2frame.dcm",  # encapsulated, two frames
    "reportsi.dcm",  # a structured report: sequences in sequences
    "UN_sequence.dcm",  # a sequence encoded as UN (PS3.5 6.2.2)
)

#: the memory an analysis of these small inputs may use (Python allocations, traced)
MEMORY_BOUND = 32 << 20

INT32 = (-(2**31), 2**31 - 1)
SMALLINT = (-(2**15), 2**15 - 1)


@functools.cache
def seeds() -> tuple[bytes, ...]:
    files = [ct_slice("1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.2", 0, rows=16, cols=16)]
    for name in SEED_FILES:
        path = get_testdata_file(name, download=False)
        assert path is not None, name
        with open(path, "rb") as f:
            files.append(f.read())
    return tuple(files)


# -- the property ------------------------------------------------------------------------


def outcome(data: bytes, memory: int = MEMORY_BOUND) -> Analysis | InstanceRejected:
    """The analysis of ``data``, or why it was rejected; any other exception fails, and
    so does an analysis that allocated more than ``memory`` bytes on the way."""
    tracemalloc.start()
    try:
        return analyse_content(memoryview(data), "", len(data))
    except InstanceRejected as exc:
        return exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < memory, f"the analysis of {len(data)} bytes allocated {peak}"


def analyse(data: bytes) -> Analysis | None:
    result = outcome(data)
    return None if isinstance(result, InstanceRejected) else result


def _vrs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("vr"), str):
            yield value["vr"]
        for v in value.values():
            yield from _vrs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _vrs(v)


def check_storable(a: Analysis, size: int) -> None:
    """What the index and WADO-RS need of an analysis that succeeded."""
    metadata = msgspec.json.decode(a.metadata)
    for vr in _vrs(metadata):
        assert len(vr) == 2 and vr.isascii() and vr.isupper(), f"VR {vr!r} (PS3.18 F.2.2)"
    if a.frames is not None:
        f = a.frames
        assert len(f.offsets) == len(f.lengths) and f.first and f.first[0] == 0
        assert f.first == sorted(set(f.first)) and f.first[-1] < len(f.offsets)
        for offset, length in zip(f.offsets, f.lengths):
            assert offset >= 0 and length >= 0 and offset + length <= size
    for _, offset, length in a.bulk:
        assert offset >= 0 and length >= 0 and offset + length <= size
    for row in (a.study, a.series, a.instance):
        for column, value in row.items():
            if isinstance(value, int):
                low, high = SMALLINT if column.startswith(("pixel_", "planar_")) else INT32
                assert low <= value <= high, f"{column} = {value} does not fit its column"
            elif isinstance(value, str):
                assert "\x00" not in value, f"{column} has a NUL (PostgreSQL text)"
    # not yet: a NUL inside a text value reaches the DICOM JSON as \u0000, which a jsonb
    # column refuses (see test_a_nul_inside_a_text_value_is_not_sent_to_jsonb)


def check(data: bytes) -> None:
    result = analyse(data)
    if result is not None:
        check_storable(result, len(data))


# -- arbitrary bytes ---------------------------------------------------------------------


def _meta_group(transfer_syntax: str) -> bytes:
    uid = transfer_syntax.encode() + (b"\x00" if len(transfer_syntax) % 2 else b"")
    return b"\x00" * 128 + b"DICM" + struct.pack("<HH2sH", 2, 0x10, b"UI", len(uid)) + uid


TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
)

arbitrary = st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=256).map(lambda b: b"DICM" + b),
    st.tuples(st.binary(max_size=128), st.binary(max_size=512)).map(
        lambda t: t[0].ljust(128, b"\x00")[:128] + b"DICM" + t[1]
    ),
    st.tuples(st.sampled_from(TRANSFER_SYNTAXES), st.binary(max_size=1024)).map(
        lambda t: _meta_group(t[0]) + t[1]
    ),
)


@given(arbitrary)
def test_arbitrary_bytes_are_analysed_or_rejected(data: bytes) -> None:
    check(data)


# -- mutations ---------------------------------------------------------------------------


def _headers(ds: DataSet) -> Iterator[tuple[int, str]]:
    for el in ds:
        yield el.header_offset, el.vr
        for item in el.items or ():
            yield from _headers(item)


@dataclass(frozen=True)
class Layout:
    """Where the elements of a seed lie (PS3.5 7.1.1, 7.1.2)."""

    top: list[int]  # the top-level elements' positions
    lengths: list[tuple[int, int]]  # every length field: (position, width)
    vrs: list[int]  # every VR field (explicit VR)
    implicit: bool
    little: bool


@functools.cache
def layout(seed: int) -> Layout:
    parsed = parse_buffer(seeds()[seed])
    implicit, little = parsed.implicit_vr, parsed.little_endian
    if not parsed.offsets_are_file_positions:  # deflated: the positions are not in the file
        return Layout([], [], [], implicit, little)
    top = sorted(el.header_offset for el in parsed.dataset)
    lengths, vrs = [], []
    for header, vr in _headers(parsed.dataset):
        if implicit:
            lengths.append((header + 4, 4))
        elif vr in reader.LONG_VRS:
            lengths.append((header + 8, 4))
        else:
            lengths.append((header + 6, 2))
        if not implicit:
            vrs.append(header + 4)
    return Layout(top, lengths, vrs, implicit, little)


def nested_sequences(depth: int, *, implicit: bool, little: bool, closed: bool) -> bytes:
    """``depth`` undefined-length sequences (Content Sequence), each in an item of the
    one before (PS3.5 7.5.2)."""
    e = "<" if little else ">"
    if implicit:
        sq = struct.pack(e + "HHL", 0x0040, 0xA730, 0xFFFFFFFF)
    else:
        sq = struct.pack(e + "HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack(e + "HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close = struct.pack(e + "HHL", 0xFFFE, 0xE00D, 0) + struct.pack(e + "HHL", 0xFFFE, 0xE0DD, 0)
    return (sq + item) * depth + (close * depth if closed else b"")


HUGE_LENGTHS = (0xFFFFFFF0, 0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x80000000, 0x00010000)


@st.composite
def mutation(draw: st.DrawFn, seed: int, data: bytearray) -> None:
    where = layout(seed)
    e = "<" if where.little else ">"
    ops = ["cut", "flip", "insert", "delete", "copy"]
    if where.lengths:
        ops += ["length", "undefined", "nest"]
    if where.vrs:
        ops.append("vr")
    op = draw(st.sampled_from(ops))
    at = draw(st.integers(0, len(data)))
    if op == "cut":
        del data[at:]
    elif op == "flip":
        if at < len(data):
            data[at] ^= draw(st.integers(1, 255))
    elif op == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    elif op == "delete":
        del data[at : at + draw(st.integers(1, 16))]
    elif op == "copy":
        start = draw(st.integers(0, len(data)))
        data[at:at] = data[start : start + draw(st.integers(1, 256))]
    elif op == "vr":  # a VR of another case, of another alphabet, or not letters
        pos = draw(st.sampled_from(where.vrs))
        data[pos : pos + 2] = draw(
            st.one_of(
                st.sampled_from(
                    [b"UN", b"SQ", b"OB", b"UT", b"ZZ", b"lo", "\xc0\xc9".encode("latin-1")]
                ),
                st.binary(min_size=2, max_size=2),
            )
        )
    elif op in ("length", "undefined"):
        pos, width = draw(st.sampled_from(where.lengths))
        if width == 2:
            value = struct.pack(e + "H", draw(st.sampled_from([0xFFFF, 0xFFFE, 0x8000])))
        elif op == "length":
            value = struct.pack(e + "L", draw(st.sampled_from(HUGE_LENGTHS)))
        else:
            value = struct.pack(e + "L", 0xFFFFFFFF)
        data[pos : pos + width] = value
    elif op == "nest":
        pos = draw(st.sampled_from(where.top))
        depth = draw(st.one_of(st.integers(1, 8), st.integers(1, 2000)))
        closed = draw(st.booleans())
        nested = nested_sequences(
            depth, implicit=where.implicit, little=where.little, closed=closed
        )
        data[pos:pos] = nested


@st.composite
def mutated_seeds(draw: st.DrawFn) -> bytes:
    seed = draw(st.integers(0, len(seeds()) - 1))
    data = bytearray(seeds()[seed])
    for _ in range(draw(st.integers(1, 3))):
        draw(mutation(seed, data))
    return bytes(data)


@given(mutated_seeds())
def test_mutated_reference_files_are_analysed_or_rejected(data: bytes) -> None:
    check(data)


def test_the_seeds_are_analysed() -> None:
    """The mutations start from files the analysis takes (UN_sequence.dcm excepted: it
    has no SOP Class UID), so that they reach past the first checks."""
    names = ["synth.ct_slice", *SEED_FILES]
    taken = {name for name, data in zip(names, seeds()) if analyse(data) is not None}
    assert taken == set(names) - {"UN_sequence.dcm"}


# -- generated data sets -----------------------------------------------------------------

#: a UID and some strings that are not one
uids = st.one_of(
    st.builds(
        lambda a, b: f"1.2.826.0.1.3680043.10.{a}.{b}", st.integers(0, 10**9), st.integers(0, 99)
    ),
    st.sampled_from(["", "1.2.3\\1.2.4", "01.2", "1." * 40, "1.2 ", "1.2\x00", "abc"]),
)
texts = st.one_of(
    st.text(max_size=24).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=24),
    st.sampled_from([b"DOE^JOHN", b"A\x00B", b"\x00", b"\x1b$B\x1b(B", b"\\", b"-1", b"1.5"]),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b" 3 ", b"1.0", b"1e3", b"NaN", b"inf", b"2\\3", b"\xff"]),
)
charsets = st.sampled_from(
    [b"", b"ISO_IR 100", b"ISO_IR 192", b"ISO 2022 IR 87", b"\\ISO 2022 IR 87", b"GB18030",
     b"ISO_IR 6\\ISO 2022 IR 149", b"nonsense", b"ISO 2022 IR 13\\ISO 2022 IR 87"]
)  # fmt: skip

Node = tuple[Any, ...]  # ("el", tag, vr, value) | ("sq", tag, items, undefined) | ("px", ...)


def us(value: int) -> bytes:
    return struct.pack("<H", value & 0xFFFF)


@st.composite
def element_values(draw: st.DrawFn) -> list[Node]:
    """The attributes the analysis reads, with values good and bad."""
    nodes: list[Node] = [
        ("el", 0x00080016, "UI", draw(uids).encode()),
        ("el", 0x00080018, "UI", draw(uids).encode()),
        ("el", 0x0020000D, "UI", draw(uids).encode()),
        ("el", 0x0020000E, "UI", draw(uids).encode()),
    ]
    optional: list[tuple[int, str, st.SearchStrategy[bytes]]] = [
        (0x00080005, "CS", charsets),
        (0x00100010, "PN", texts),
        (0x00100020, "LO", texts),
        (0x00080020, "DA", texts),
        (0x00080060, "CS", texts),
        (0x00200011, "IS", numbers),
        (0x00200013, "IS", numbers),
        (0x00280008, "IS", numbers),  # Number of Frames
        (0x00280002, "US", st.integers(0, 4).map(us)),
        (0x00280004, "CS", st.sampled_from([b"MONOCHROME2", b"RGB", b"YBR_FULL_422", b""])),
        (0x00280010, "US", st.one_of(st.integers(0, 9).map(us), st.binary(max_size=6))),
        (0x00280011, "US", st.one_of(st.integers(0, 9).map(us), st.binary(max_size=6))),
        (0x00280100, "US", st.sampled_from([us(1), us(8), us(16), us(0), us(12), b""])),
        (0x00280103, "US", st.sampled_from([us(0), us(1), b"", b"\x01"])),
        (0x00280006, "US", st.sampled_from([us(0), us(1), us(0xFFFF)])),
    ]
    for tag, vr, values in optional:
        if draw(st.booleans()):
            nodes.append(("el", tag, vr, draw(values)))
    return nodes


def sequences(depth: int) -> st.SearchStrategy[Node]:
    leaf = st.tuples(
        st.just("el"),
        st.sampled_from([0x00081150, 0x00081155, 0x00100010, 0x00080100, 0x00280010]),
        st.sampled_from(["UI", "PN", "SH", "US", "UN", "OB"]),
        st.binary(max_size=16),
    )
    node: st.SearchStrategy[Node] = leaf
    for _ in range(depth):
        node = st.one_of(
            leaf,
            st.tuples(
                st.just("sq"),
                st.sampled_from([0x00081115, 0x0040A730, 0x00089215]),
                st.lists(st.lists(node, max_size=3), max_size=3),
                st.booleans(),
            ),
        )
    return node


@st.composite
def pixel_data(draw: st.DrawFn) -> list[Node]:
    if draw(st.booleans()):
        return [
            (
                "el",
                0x7FE00010,
                "OW",
                draw(st.binary(max_size=300).map(lambda b: b + b"\0" * (len(b) % 2))),
            )
        ]
    table = draw(
        st.one_of(
            st.binary(max_size=24),
            st.lists(st.integers(0, 64), max_size=4).map(
                lambda offsets: struct.pack(f"<{len(offsets)}L", *offsets)
            ),
        )
    )
    fragments = draw(st.lists(st.one_of(
        st.binary(max_size=24),
        st.sampled_from([b"\xff\xd8\xff\xe0", b"\xff\x4f\xff\x51\x00\x00", b"\x00\x00\x00\x0cjP  "]),
    ), max_size=5))  # fmt: skip
    nodes: list[Node] = [("px", 0x7FE00010, [table, *fragments] if draw(st.booleans()) else [])]
    if draw(st.booleans()):  # Extended Offset Table (PS3.5 A.4)
        nodes.append(("el", 0x7FE00001, "OV", draw(st.binary(max_size=40))))
    return nodes


def _even(value: bytes, vr: str) -> bytes:
    if len(value) % 2 == 0:
        return value
    return value + (b"\x00" if vr in ("UI", "OB", "UN") else b" ")


def _header(tag: int, vr: str, length: int, *, implicit: bool, e: str) -> bytes:
    """A data element's tag, VR and length (PS3.5 7.1.1-7.1.3)."""
    group, elem = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack(e + "HHL", group, elem, length)
    if vr in reader.LONG_VRS:
        return struct.pack(e + "HH2sHL", group, elem, vr.encode(), 0, length)
    return struct.pack(e + "HH2sH", group, elem, vr.encode(), length)


def encode(nodes: list[Node], *, implicit: bool, little: bool) -> bytes:
    """The data set encoding of ``nodes`` (PS3.5 7.1), elements in the order given."""
    e = "<" if little else ">"
    out = bytearray()
    for node in nodes:
        kind, tag = node[0], node[1]
        header = functools.partial(_header, tag, implicit=implicit, e=e)
        if kind == "el":
            value = _even(node[3], node[2])
            out += header(node[2], len(value)) + value
        elif kind == "sq":
            body = bytearray()
            for item in node[2]:
                content = encode(item, implicit=implicit, little=little)
                if node[3]:
                    body += struct.pack(e + "HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + content
                    body += struct.pack(e + "HHL", 0xFFFE, 0xE00D, 0)
                else:
                    body += struct.pack(e + "HHL", 0xFFFE, 0xE000, len(content)) + content
            if node[3]:
                out += header("SQ", 0xFFFFFFFF) + body + struct.pack(e + "HHL", 0xFFFE, 0xE0DD, 0)
            else:
                out += header("SQ", len(body)) + body
        else:  # encapsulated Pixel Data: explicit VR LE in practice
            out += header("OB", 0xFFFFFFFF)
            for fragment in node[2]:
                fragment = _even(fragment, "OB")
                out += struct.pack(e + "HHL", 0xFFFE, 0xE000, len(fragment)) + fragment
            out += struct.pack(e + "HHL", 0xFFFE, 0xE0DD, 0)
    return bytes(out)


@st.composite
def generated(draw: st.DrawFn) -> bytes:
    encapsulated = draw(st.booleans())
    syntax = draw(
        st.just("1.2.840.10008.1.2.4.50")
        if encapsulated
        else st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"])
    )
    nodes = draw(element_values()) + draw(st.lists(sequences(3), max_size=3))
    if draw(st.booleans()):
        pixels = draw(pixel_data())
        nodes += [n for n in pixels if n[0] != "px" or encapsulated]
    nodes = (
        sorted(nodes, key=lambda n: n[1]) if draw(st.booleans()) else draw(st.permutations(nodes))
    )
    body = encode(
        nodes, implicit=syntax == "1.2.840.10008.1.2", little=syntax != "1.2.840.10008.1.2.2"
    )
    data = bytearray(_meta_group(syntax) + body)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["cut", "flip", "insert"]))
        if op == "cut":
            del data[at:]
        elif op == "flip":
            if at < len(data):
                data[at] ^= draw(st.integers(1, 255))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@given(generated())
def test_generated_data_sets_are_analysed_or_rejected(data: bytes) -> None:
    check(data)


# -- regressions -------------------------------------------------------------------------


def _explicit(nodes: list[Node]) -> bytes:
    return _meta_group("1.2.840.10008.1.2.1") + encode(nodes, implicit=False, little=True)


def _ids() -> list[Node]:
    return [
        ("el", 0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7"),
        ("el", 0x00080018, "UI", b"1.2.826.0.1.3680043.10.9.1"),
        ("el", 0x0020000D, "UI", b"1.2.826.0.1.3680043.10.9.2"),
        ("el", 0x0020000E, "UI", b"1.2.826.0.1.3680043.10.9.3"),
    ]


def rejected(data: bytes) -> InstanceRejected:
    result = outcome(data)
    assert isinstance(result, InstanceRejected)
    return result


@pytest.mark.parametrize("length", HUGE_LENGTHS[:4])
def test_a_huge_length_field_is_a_truncated_file(length: int) -> None:
    """PS3.5 7.1.1: a value length is the number of bytes that follow; one beyond the end
    of the file is refused before anything of that size is allocated."""
    data = _explicit(_ids()) + struct.pack("<HH2sHL", 0x0009, 0x0010, b"OB", 0, length)
    if length == 0xFFFFFFFF:  # undefined: an encapsulated value with no item
        assert "truncated" in rejected(data).message
    else:
        assert "truncated" in rejected(data + b"\0" * 64).message


def test_a_vr_must_be_two_ascii_capitals() -> None:
    """PS3.5 7.1.2: the VR is two characters of the Default Character Repertoire (found
    by this test: latin-1 capitals passed, and reached the DICOM JSON as "vr")."""
    data = bytearray(_explicit([*_ids(), ("el", 0x00100020, "LO", b"AB")]))
    at = data.index(b"LO")
    data[at : at + 2] = "\xc0\xc9".encode("latin-1")
    assert "no valid VR" in rejected(bytes(data)).message


@pytest.mark.parametrize("closed", [True, False])
def test_deeply_nested_sequences_are_refused_not_a_recursion_error(closed: bool) -> None:
    """PS3.5 7.5 sets no bound on nesting; the reader sets one (found by this test: a
    few kilobytes of nested items raised RecursionError)."""
    nested = nested_sequences(5000, implicit=False, little=True, closed=closed)
    error = rejected(_explicit(_ids()) + nested)
    assert error.reason == FailureReason.CANNOT_UNDERSTAND and "nested" in error.message


def test_sequences_nested_as_deep_as_allowed_are_read() -> None:
    nested = nested_sequences(reader.MAX_NESTING, implicit=True, little=True, closed=True)
    data = _meta_group("1.2.840.10008.1.2") + encode(_ids(), implicit=True, little=True) + nested
    result = analyse(data)
    assert result is not None
    check_storable(result, len(data))


def test_a_deflate_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """PS3.5 A.5: the deflated data set is inflated in memory, up to a bound (found by
    this test: a 2 GiB value of zeros, 2 MiB deflated, was inflated whole). The bound
    is lowered here to keep the test quick; memory stays close to it."""
    monkeypatch.setattr(reader, "MAX_INFLATED", 8 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = [deflate.compress(encode(_ids(), implicit=False, little=True))]
    bomb.append(deflate.compress(struct.pack("<HH2sHL", 0x0009, 0x1010, b"OB", 0, 64 << 20)))
    zeros = bytes(1 << 20)
    bomb += [deflate.compress(zeros) for _ in range(64)]
    data = _meta_group("1.2.840.10008.1.2.1.99") + b"".join(bomb) + deflate.flush()
    # what is kept, the growth of the buffer it is kept in, and one step
    error = outcome(data, memory=(8 << 20) * 5 // 4 + (2 << 20))
    assert isinstance(error, InstanceRejected) and "inflates to more than 8 MiB" in error.message


def test_a_truncated_deflated_data_set_is_refused() -> None:
    data = seeds()[SEED_FILES.index("image_dfl.dcm") + 1]
    assert analyse(data) is not None
    assert "truncated" in rejected(data[:-10]).message


@pytest.mark.parametrize(
    "fragments, table",
    [
        ([], None),  # found by this test: IndexError (no Basic Offset Table item at all)
        ([b"\x00" * 6, b"\xff\xd8", b"\xff\xd8"], None),  # found: a 6-byte Basic Offset Table
        ([b"", b"\xff\xd8", b"\xff\xd8"], b"\x00" * 12),  # found: a 12-byte Extended table
    ],
)
def test_offset_tables_of_odd_lengths(fragments: list[bytes], table: bytes | None) -> None:
    """PS3.5 A.4: the Basic Offset Table is 4-byte offsets, the Extended Offset Table
    (7FE0,0001) 8-byte ones; a table of another length is not used, and the file is not
    a processing failure for it."""
    nodes = [*_ids(), ("el", 0x00280008, "IS", b"2"), ("px", 0x7FE00010, fragments)]
    if table is not None:
        nodes.append(("el", 0x7FE00001, "OV", table))
    data = _meta_group("1.2.840.10008.1.2.4.50") + encode(nodes, implicit=False, little=True)
    result = analyse(data)
    assert result is not None
    check_storable(result, len(data))


def test_integers_that_do_not_fit_their_columns_are_no_value() -> None:
    """PS3.5 6.2: an IS holds a 32-bit integer; one beyond it, or "1e999", is recorded as
    absent, not sent to an integer column that refuses it (found by this test: an
    OverflowError, and a Series Number of 2**31 that the insert would have refused)."""
    nodes = [
        *_ids(),
        ("el", 0x00200011, "IS", b"2147483648"),  # Series Number
        ("el", 0x00200013, "IS", b"1e999"),  # Instance Number
        ("el", 0x00280006, "US", us(0xFFFF)),  # Planar Configuration: a smallint column
        ("el", 0x00280008, "IS", b"-2147483648"),  # Number of Frames
    ]
    result = analyse(_explicit(nodes))
    assert result is not None
    assert result.series["series_number"] is None and result.instance["instance_number"] is None
    assert result.instance["planar_configuration"] is None
    check_storable(result, len(_explicit(nodes)))


def test_a_nul_inside_an_indexed_text_is_dropped() -> None:
    """PS3.5 6.2: NUL pads UI and OB values; inside a text value it is no character, and
    a PostgreSQL text column refuses it (found by this test)."""
    nodes = [*_ids(), ("el", 0x00100020, "LO", b"A\x00B"), ("el", 0x00100010, "PN", b"\x00\x00X")]
    result = analyse(_explicit(nodes))
    assert result is not None
    assert result.study["patient_id"] == "AB" and result.study["patient_name"] == "X"


def test_a_nul_inside_a_text_value_is_not_sent_to_jsonb() -> None:
    """PS3.5 6.2: NUL pads UI and OB values only; in a text value it is no character, and
    jsonb cannot hold \\u0000 ("unsupported Unicode escape sequence")."""
    nodes = [
        *_ids(),
        ("el", 0x00080020, "DA", b"2024\x000101"),
        ("el", 0x00100020, "LO", b"A\x00B"),
    ]
    result = analyse(_explicit(nodes))
    assert result is not None and result.study["patient_id"] == "AB"
    assert b"\\u0000" not in result.study_json
