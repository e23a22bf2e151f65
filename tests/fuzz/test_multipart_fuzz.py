"""Fuzzing the sans-IO multipart/related parser (RFC 2046 5.1, RFC 2387).

Properties:

* a well-formed body (random preamble, transport padding, headers, epilogue, and part
  data full of CRLFs, dashes and prefixes of the delimiter) gives back exactly its
  parts' headers and bytes, however the body is cut into chunks (RFC 2046 5.1.1: a
  delimiter is CRLF "--" boundary, and only that ends a part);
* any other bytes, cut anyhow, make the parser raise :class:`MultipartError` (a 400)
  and nothing else, and what it holds back between two chunks stays bounded;
* a header section or a boundary line over the parser's bounds is refused whatever the
  chunking, not only when it arrives in small chunks.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from app.dicomweb import multipart
from app.dicomweb.multipart import MultipartError, MultipartParser, PartData, PartEnd, PartStart

#: RFC 2046 5.1.1 bchars (bcharsnospace and the space, which may not end a boundary)
BCHARS = string.digits + string.ascii_letters + "'()+_,-./:=? "
#: RFC 5322 2.2 field-name characters: printable US-ASCII but the colon
NAME_CHARS = "".join(chr(c) for c in range(33, 127) if chr(c) != ":")

#: what the parser may hold back between chunks: a header section that has not ended
#: yet (the largest), less than a delimiter in a part's data, a padded boundary line
BUFFER_BOUND = multipart._MAX_HEADER_BYTES + 3

Part = tuple[list[tuple[str, str]], bytes]

boundaries = st.text(BCHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" "))
padding = st.text(" \t", max_size=8).map(str.encode)
header_names = st.text(NAME_CHARS, min_size=1, max_size=24)
# latin-1 text without CR and LF (a header line ends at CRLF); values keep their inner
# spaces, and lose their leading and trailing OWS (RFC 9110 5.5)
header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)
headers = st.lists(st.tuples(header_names, header_values), max_size=4)


def delimiter(boundary: str) -> bytes:
    return b"\r\n--" + boundary.encode("latin-1")


def without(data: bytes, delim: bytes) -> bytes:
    """``data`` with every delimiter taken out (a part may not contain one)."""
    while delim in data:
        data = data.replace(delim, delim[:-1])
    return data


def tricky_bytes(boundary: str) -> st.SearchStrategy[bytes]:
    """Bytes made of what a delimiter is made of: CR, LF, dashes, boundary prefixes."""
    delim = delimiter(boundary)
    pieces = st.one_of(
        st.sampled_from([b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n\r\n", delim[2:]]),
        st.integers(1, len(delim) - 1).map(lambda k: delim[:k]),
        st.binary(max_size=48),
    )
    return st.lists(pieces, max_size=12).map(lambda ps: without(b"".join(ps), delim))


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes, list[Part]]:
    """A well-formed multipart body with its boundary and its parts (RFC 2046 5.1.1)."""
    boundary = draw(boundaries)
    dash = b"--" + boundary.encode("latin-1")
    data = tricky_bytes(boundary)
    parts: list[Part] = [(draw(headers), draw(data)) for _ in range(draw(st.integers(1, 4)))]
    preamble = draw(data)
    if preamble.startswith(dash):  # that line would be the first delimiter line
        preamble = b"x" + preamble
    out = [preamble + b"\r\n" + dash if preamble or draw(st.booleans()) else dash]
    for fields, payload in parts:
        out.append(draw(padding) + b"\r\n")
        for name, value in fields:
            out.append(f"{name}:{value}\r\n".encode("latin-1"))
        out.append(b"\r\n" + payload + b"\r\n" + dash)
    out.append(b"--" + draw(padding))
    if draw(st.booleans()):
        out.append(b"\r\n" + draw(st.binary(max_size=64)))  # the epilogue
    return boundary, b"".join(out), parts


def chunked(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    return [body[a:b] for a, b in zip(points, points[1:])]


chunkings = st.one_of(
    st.lists(st.integers(0, 1 << 16), max_size=24),  # random cut points
    st.just([-1]),  # byte by byte (see feed_all)
    st.just([]),  # all in one
)


def feed_all(parser: MultipartParser, body: bytes, cuts: list[int]) -> list[Part]:
    """Feed ``body`` in chunks; the parts seen whole, their data copied as the parser
    asks (before the next chunk is fed)."""
    chunks = [body[i : i + 1] for i in range(len(body))] if cuts == [-1] else chunked(body, cuts)
    parts: list[Part] = []
    data = bytearray()
    open_part = False
    for chunk in chunks:
        for event in parser.feed(chunk):
            if isinstance(event, PartStart):
                assert not open_part, "a part started inside another"
                parts.append((sorted(event.headers.items()), b""))
                data, open_part = bytearray(), True
            elif isinstance(event, PartData):
                assert open_part, "data outside a part"
                data += event.data  # a view into the chunk: copied before the next feed
            elif isinstance(event, PartEnd):
                assert open_part, "a part ended that had not started"
                parts[-1] = (parts[-1][0], bytes(data))
                open_part = False
        assert len(parser._buf) <= BUFFER_BOUND, "the parser holds back too much"
    return parts if not open_part else parts[:-1]


def expected_headers(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out: dict[str, str] = {}
    for name, value in fields:  # a repeated name: the last one counts
        out[name.lower()] = value.strip(" \t")
    return sorted(out.items())


@given(bodies(), chunkings)
@example(  # found by this test: a value lost a final NEL or NO-BREAK SPACE, which is
    # not OWS (RFC 9110 5.6.3: SP and HTAB only)
    ("b", b"--b\r\nX-A: v\x85\r\n\r\ndata\r\n--b--", [([("X-A", "v\x85")], b"data")]),
    [],
)
def test_well_formed_bodies_give_their_parts_in_any_chunking(
    body: tuple[str, bytes, list[Part]], cuts: list[int]
) -> None:
    boundary, raw, parts = body
    parser = MultipartParser(boundary)
    got = feed_all(parser, raw, cuts)
    parser.close()
    assert got == [(expected_headers(fields), payload) for fields, payload in parts]
    assert parser.parts == len(parts)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A well-formed body damaged: truncated, bytes changed, inserted or removed."""
    boundary, raw, _ = draw(bodies())
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["cut", "flip", "insert", "delete"]))
        if op == "cut":
            del data[at:]
        elif op == "flip":
            if at < len(data):
                data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.sampled_from([b"\r\n", b"--", b":", b"\r\n\r\n"]))
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return boundary, bytes(data)


garbage = st.one_of(
    mutated(),
    st.tuples(boundaries, st.binary(max_size=512)),
    st.tuples(boundaries, st.binary(max_size=64)).map(
        lambda t: (t[0], b"--" + t[0].encode() + t[1])
    ),
)


@given(garbage, chunkings)
def test_any_bytes_raise_only_multipart_error(case: tuple[str, bytes], cuts: list[int]) -> None:
    boundary, raw = case
    parser = MultipartParser(boundary)
    try:
        feed_all(parser, raw, cuts)
        parser.close()
    except MultipartError:
        pass


@given(st.text(max_size=80))
@example("\u0100")  # found by this test: UnicodeEncodeError, not a 400
def test_any_boundary_makes_a_parser_or_a_multipart_error(boundary: str) -> None:
    try:
        MultipartParser(boundary)
    except MultipartError:
        pass


def test_a_latin_1_boundary_is_taken() -> None:
    """An HTTP header carries octets (RFC 9110 5.5), decoded as latin-1 on the way in."""
    parser = MultipartParser("é")
    assert feed_all(parser, "--é\r\n\r\nx\r\n--é--".encode("latin-1"), []) == [([], b"x")]


@given(
    st.integers(multipart._MAX_HEADER_BYTES - 8, multipart._MAX_HEADER_BYTES + 8),
    chunkings,
)
@example(multipart._MAX_HEADER_BYTES + 1, [])  # found by this test: accepted in one chunk
@example(multipart._MAX_HEADER_BYTES, [-1])  # found by this test: refused byte by byte
def test_header_section_bound_does_not_depend_on_chunking(size: int, cuts: list[int]) -> None:
    """A header section (before its empty line) of more than 16 KiB is refused, in one
    chunk as in many; one of 16 KiB is taken in any chunking."""
    line = b"X: " + b"a" * (size - 3)
    raw = b"--b\r\n" + line + b"\r\n\r\npayload\r\n--b--"
    parser = MultipartParser("b")
    if size > multipart._MAX_HEADER_BYTES:
        with pytest.raises(MultipartError, match="16 KiB"):
            feed_all(parser, raw, cuts)
    else:
        assert feed_all(parser, raw, cuts) == [([("x", "a" * (size - 3))], b"payload")]
        parser.close()


@given(st.integers(multipart._MAX_PADDING - 4, multipart._MAX_PADDING + 4), chunkings)
@example(multipart._MAX_PADDING + 1, [])  # found by this test: accepted in one chunk
@example(multipart._MAX_PADDING, [-1])  # found by this test: refused byte by byte
def test_boundary_line_bound_does_not_depend_on_chunking(size: int, cuts: list[int]) -> None:
    """Transport padding after a boundary (RFC 2046 5.1.1) is bounded the same way in
    every chunking."""
    raw = b"--b" + b" " * size + b"\r\n\r\npayload\r\n--b--"
    parser = MultipartParser("b")
    if size > multipart._MAX_PADDING:
        with pytest.raises(MultipartError, match="not followed by CRLF"):
            feed_all(parser, raw, cuts)
    else:
        assert feed_all(parser, raw, cuts) == [([], b"payload")]
        parser.close()
