"""The sans-IO multipart/related parser (RFC 2046 5.1) and media type parsing (RFC 9110)."""

from __future__ import annotations

import random

import pytest

from app.dicomweb.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_media_type,
)


def parse(body: bytes, boundary: str, chunk: int) -> list[tuple[dict[str, str], bytes]]:
    parser = MultipartParser(boundary)
    parts: list[tuple[dict[str, str], bytes]] = []
    headers: dict[str, str] = {}
    data = bytearray()
    for i in range(0, len(body), chunk):
        for event in parser.feed(body[i : i + chunk]):
            if isinstance(event, PartStart):
                headers, data = event.headers, bytearray()
            elif isinstance(event, PartData):
                data += event.data
            elif isinstance(event, PartEnd):
                parts.append((headers, bytes(data)))
    parser.close()
    return parts


CHUNKS = [1, 2, 3, 7, 64, 1000, 1 << 20]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_preamble_epilogue_and_padding(chunk: int) -> None:
    body = (
        b"This is the preamble.\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nONE\r\n"
        b"--b1  \t\r\nContent-Type: application/dicom\r\nContent-Length: 3\r\n\r\nTWO\r\n"
        b"--b1--\r\nThis is the epilogue, ignored.\r\n--b1\r\n"
    )
    parts = parse(body, "b1", chunk)
    assert [p[1] for p in parts] == [b"ONE", b"TWO"]
    assert parts[1][0] == {"content-type": "application/dicom", "content-length": "3"}


@pytest.mark.parametrize("chunk", CHUNKS)
def test_body_starting_with_delimiter_and_part_without_headers(chunk: int) -> None:
    parts = parse(b"--x\r\n\r\nraw\r\n\r\nbytes\r\n--x--", "x", chunk)
    assert parts == [({}, b"raw\r\n\r\nbytes")]


def test_data_resembling_the_delimiter_is_data() -> None:
    payload = b"\r\n--bn\r\n-bnd--bnd\r\n--bnX" * 50
    body = b"--bnd\r\n\r\n" + payload + b"\r\n--bnd--\r\n"
    for chunk in CHUNKS:
        assert parse(body, "bnd", chunk) == [({}, payload)]


def test_random_bodies_any_chunking() -> None:
    rng = random.Random(7)
    for _ in range(200):
        payloads = [
            bytes(rng.choice(b"ab\r\n-bnd") for _ in range(rng.randint(0, 2000))).replace(
                b"\r\n--bnd", b"\r\n--bnX"
            )
            for _ in range(rng.randint(1, 4))
        ]
        body = b"".join(b"--bnd\r\nA: b\r\n\r\n" + p + b"\r\n" for p in payloads) + b"--bnd--"
        chunk = rng.choice(CHUNKS)
        assert [p[1] for p in parse(body, "bnd", chunk)] == payloads


def test_folded_header() -> None:
    parts = parse(
        b"--b\r\nContent-Type: application/dicom;\r\n  transfer-syntax=1.2\r\n\r\nx\r\n--b--",
        "b",
        5,
    )
    assert parts[0][0]["content-type"] == "application/dicom; transfer-syntax=1.2"


@pytest.mark.parametrize(
    "body, message",
    [
        (b"no boundary at all", "no part"),
        (b"--b\r\nContent-Type: application/dicom\r\n\r\ntruncated", "middle of a part"),
        (b"--b--\r\n", "no part"),
        (b"--bjunk\r\n\r\nx\r\n--b--", "after the boundary"),
        (b"--b\r\nno colon here\r\n\r\nx\r\n--b--", "malformed part header"),
    ],
)
def test_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        parse(body, "b", 3)


def test_header_section_is_bounded() -> None:
    parser = MultipartParser("b")
    with pytest.raises(MultipartError, match="16 KiB"):
        parser.feed(b"--b\r\nX: " + b"a" * 20000)


def test_boundary_length_rfc2046() -> None:
    with pytest.raises(MultipartError):
        MultipartParser("x" * 71)
    MultipartParser("x" * 70)


@pytest.mark.parametrize(
    "value, media, params",
    [
        (
            'multipart/related; type="application/dicom"; boundary=abc',
            "multipart/related",
            {"type": "application/dicom", "boundary": "abc"},
        ),
        (
            "Multipart/Related;Type=application/dicom;Boundary=a:b",
            "multipart/related",
            {"type": "application/dicom", "boundary": "a:b"},
        ),
        (
            'multipart/related; boundary="a;b=c \\"q\\""; type=application/dicom',
            "multipart/related",
            {"boundary": 'a;b=c "q"', "type": "application/dicom"},
        ),
        ("application/dicom", "application/dicom", {}),
        ("  application/dicom ; transfer-syntax=*", "application/dicom", {"transfer-syntax": "*"}),
    ],
)
def test_parse_media_type(value: str, media: str, params: dict[str, str]) -> None:
    assert parse_media_type(value) == (media, params)
