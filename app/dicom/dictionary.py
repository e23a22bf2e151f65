"""Attribute names: keywords and tags of the DICOM data dictionary (PS3.6)."""

from __future__ import annotations

import re
from functools import lru_cache

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

_TAG = re.compile(r"[0-9A-Fa-f]{8}")


class UnknownAttribute(ValueError):
    pass


@lru_cache(maxsize=4096)
def resolve(name: str) -> int:
    """The tag of ``name``: a keyword (``PatientID``) or eight hex digits (``00100020``).

    PS3.18 8.3.4.1: ``attributeID`` is a keyword or a tag.
    """
    if _TAG.fullmatch(name):
        return int(name, 16)
    # pydicom's dictionary has retired entries with an empty keyword: "" is no keyword
    tag = tag_for_keyword(name) if name.isidentifier() else None
    if tag is None:
        raise UnknownAttribute(f"{name!r} is neither a DICOM keyword nor a tag (8 hex digits)")
    return int(tag)


@lru_cache(maxsize=4096)
def vr_of(tag: int) -> str:
    """The VR of a tag from the dictionary ('UN' when unknown or private)."""
    if tag >> 16 & 1:
        return "UN"
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"
