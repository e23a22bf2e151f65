"""Whether two encodings hold the same instance (issue #19: modalities and routers
re-send, through another door or in another transfer syntax).

Two objects with one SOP Instance UID are the same instance when their data sets are
equal apart from their encoding: the File Meta Information (group 0002, PS3.10 7.1:
transfer syntax, implementation, source AE title), and the encoding of the pixel data
(native or encapsulated, PS3.5 8.2 and A.4: OB or OW, fragments, offsets table). Every
other attribute must be equal, value for value; a lossy re-encoding says so itself
(Lossy Image Compression (0028,2110), PS3.3 C.7.6.1.1.5), so it is not the same
instance. The pixel values of two lossless encodings are not decoded and compared: the
stored object is kept, and nothing is lost either way.

The input is the DICOM JSON the archive keeps of each instance (PS3.18 F.2), which
already leaves group 0002 out.
"""

from __future__ import annotations

from typing import Any

import msgspec

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
