"""Whether two encodings hold the same instance (issue #19: modalities and routers
re-send, through another door or in another transfer syntax).

Two objects with one SOP Instance UID are the same instance when their data sets are
equal apart from their encoding: the File Meta Information (group 0002, PS3.10 7.1:
transfer syntax, implementation, source AE title), and the encoding of the pixel data
(native or encapsulated, PS3.5 8.2 and A.4: OB or OW, fragments, offsets table). Every
other attribute must be equal, value for value; a lossy re-encoding says so itself
(Lossy Image Compression (0028,2110), PS3.3 C.7.6.1.1.5), so it is not the same
instance. And the pixels must be equal: in one transfer syntax, the data set's bytes
after the File Meta Information; in two, the decoded pixel values (:func:`same_content`).

The input is the DICOM JSON the archive keeps of each instance (PS3.18 F.2), which
already leaves group 0002 out.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.dicom.reader import Buffer, data_set_start

#: larger objects in two transfer syntaxes are not decoded to be compared: not the same
MAX_DECODED = 512 << 20

#: the pixel data elements (PS3.5 8.2, 7FE0,0008 / 0009 / 0010): encoded per transfer
#: syntax, not part of what identifies the instance
_PIXEL_TAGS = frozenset({"7FE00008", "7FE00009", "7FE00010"})

_decode = msgspec.json.Decoder(dict[str, Any])


def same_instance(stored: bytes, received: bytes) -> bool:
    """Whether the DICOM JSON objects ``stored`` and ``received`` describe the same
    instance, apart from its encoding (see the module docstring)."""
    try:
        return _comparable(_decode.decode(stored)) == _comparable(_decode.decode(received))
    except msgspec.DecodeError:
        return False


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """The attributes without pixel data; each without its VR, which the transfer
    syntax can change (Implicit VR reads ambiguous ones, OB or OW, US or SS, from the
    dictionary: PS3.5 A.1), with its sequences likewise."""
    out: dict[str, Any] = {}
    for tag, element in obj.items():
        if tag in _PIXEL_TAGS:
            continue
        value: Any = {k: v for k, v in element.items() if k != "vr"}
        if element.get("vr") == "SQ" and "Value" in value:
            value["Value"] = [_comparable(item) for item in value["Value"]]
        out[tag] = value
    return out


def same_content(stored: Buffer, received: Buffer) -> bool:
    """For two objects whose DICOM JSON :func:`same_instance` found equal: whether their
    pixels are too. With one transfer syntax the data sets (after the File Meta
    Information, which another door writes its own way) must be byte for byte equal;
    with two, the pixel values decoded from each."""
    a, b = data_set_start(stored), data_set_start(received)
    if a is None or b is None:
        return False
    if a[1] == b[1]:
        return memoryview(stored)[a[0] :] == memoryview(received)[b[0] :]
    if max(len(memoryview(stored)), len(memoryview(received))) > MAX_DECODED:
        return False
    return _same_pixels(stored, received)


def _same_pixels(stored: Buffer, received: Buffer) -> bool:
    import io

    import numpy
    import pydicom

    try:
        one = pydicom.dcmread(io.BytesIO(bytes(stored)))
        two = pydicom.dcmread(io.BytesIO(bytes(received)))
        if "PixelData" not in one and "PixelData" not in two:
            return True
        return bool(numpy.array_equal(one.pixel_array, two.pixel_array))
    except Exception:  # noqa: BLE001 - what cannot be decoded is not shown to be the same
        return False
