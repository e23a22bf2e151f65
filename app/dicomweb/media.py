"""Media types of retrieved pixel data per transfer syntax, and multipart negotiation.

PS3.18 8.7.3 (Tables 8.7.3-2 to 8.7.3-5): each transfer syntax travels as one media
type; ``transfer-syntax=*`` asks for whatever is stored. What a resource can return is
this table filtered by what is stored (DESIGN.md decision 5).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.dicom.uids import (
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    IMPLICIT_VR_LE,
    J2K,
    J2K_LOSSLESS,
    J2K_PART2,
    J2K_PART2_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    RLE_LOSSLESS,
)
from app.dicomweb.negotiation import parse_accept
from app.errors import NotAcceptable

#: transfer syntax UID -> media type of its frames (PS3.18 Table 8.7.3-5)
FRAME_MEDIA_TYPES: dict[str, str] = {
    EXPLICIT_VR_LE: "application/octet-stream",
    IMPLICIT_VR_LE: "application/octet-stream",
    EXPLICIT_VR_BE: "application/octet-stream",
    JPEG_BASELINE: "image/jpeg",
    JPEG_EXTENDED: "image/jpeg",
    JPEG_LOSSLESS: "image/jpeg",
    JPEG_LOSSLESS_SV1: "image/jpeg",
    JPEG_LS_LOSSLESS: "image/jls",
    JPEG_LS_NEAR_LOSSLESS: "image/jls",
    J2K_LOSSLESS: "image/jp2",
    J2K: "image/jp2",
    J2K_PART2_LOSSLESS: "image/jpx",
    J2K_PART2: "image/jpx",
    HTJ2K_LOSSLESS: "image/jphc",
    HTJ2K_LOSSLESS_RPCL: "image/jphc",
    HTJ2K: "image/jphc",
    RLE_LOSSLESS: "image/x-dicom-rle",
}


#: newer name of the RLE media type (PS3.18 2020+); both are offered
RLE_MEDIA_TYPES = ("image/x-dicom-rle", "image/dicom-rle")

#: a media type asked for without a transfer-syntax parameter means its default syntax
#: (PS3.18 8.7.3.5, Tables 8.7.3-3 and 8.7.3-5)
DEFAULT_SYNTAX: dict[str, str] = {
    "application/dicom": EXPLICIT_VR_LE,
    "application/octet-stream": EXPLICIT_VR_LE,
    "image/jpeg": JPEG_LOSSLESS_SV1,
    "image/jls": JPEG_LS_LOSSLESS,
    "image/jp2": J2K_LOSSLESS,
    "image/jpx": J2K_PART2_LOSSLESS,
    "image/jphc": HTJ2K_LOSSLESS,
    "image/x-dicom-rle": RLE_LOSSLESS,
    "image/dicom-rle": RLE_LOSSLESS,
}


def native_pixel_syntax(ts: str) -> str:
    """The transfer syntax that labels native frame bytes: implicit VR LE pixel bytes are
    exactly those of explicit VR LE (PS3.5 8.2), so they are offered as the latter."""
    return EXPLICIT_VR_LE if ts == IMPLICIT_VR_LE else ts


@dataclass(frozen=True)
class Offer:
    """A representation a resource can send: a media type and its transfer syntax."""

    media_type: str
    transfer_syntax: str
    #: the archive holds this pixel data only in this lossy form: it answers a request
    #: for the media type's default syntax too (PS3.18 8.7.3)
    only_lossy: bool = False

    def header(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


#: lossy compressed transfer syntaxes (PS3.5 Table A-1 / 8.2)
LOSSY_SYNTAXES = frozenset(
    "1.2.840.10008.1.2.4." + n for n in ("50", "51", "81", "91", "93", "203")
)


def frame_offers(ts: str, *, stored: bool = False) -> list[Offer]:
    """How frames encoded in transfer syntax ``ts`` can be labelled (PS3.18 8.7.3-5).
    ``stored``: the archive's own copy is in ``ts``."""
    media = FRAME_MEDIA_TYPES[ts]
    lossy = stored and ts in LOSSY_SYNTAXES
    if media == RLE_MEDIA_TYPES[0]:
        return [Offer(m, ts) for m in RLE_MEDIA_TYPES]
    return [Offer(media, native_pixel_syntax(ts), lossy)]


def negotiate_multipart(
    accept: str | None, offers: list[Offer], default_syntax: dict[str, str]
) -> Offer:
    """Pick the offer an Accept header allows (PS3.18 8.7.4).

    Accepts ``multipart/related; type="X"; transfer-syntax=Y``, bare ``X`` types, and
    wildcards; ``transfer-syntax=*`` takes any offer, whatever X says. A type without
    ``transfer-syntax`` means the type's default syntax (``default_syntax``), e.g.
    Explicit VR Little Endian for application/octet-stream and application/dicom,
    JPEG Lossless SV1 for image/jpeg (PS3.18 8.7.3, Tables 8.7.3-2 and 8.7.3-5), unless
    the archive holds the pixel data only in lossy form (``Offer.only_lossy``).
    """
    best: tuple[float, int, Offer] | None = None
    for media, params, q in parse_accept(accept):
        if q <= 0:
            continue
        if media == "multipart/related":
            wanted = params.get("type", "").lower()
        else:
            wanted = media
        syntax = params.get("transfer-syntax")
        for rank, offer in enumerate(offers):
            # transfer-syntax=* asks for the stored form whatever its type: viewers (OHIF)
            # send type="application/octet-stream"; transfer-syntax=* and take image/jpeg
            if (
                syntax != "*"
                and wanted not in ("", "*/*", offer.media_type)
                and not (wanted.endswith("/*") and offer.media_type.startswith(wanted[:-1]))
            ):
                continue
            if syntax is None:
                # a named type without the parameter means its default syntax; a
                # wildcard leaves the choice to the server (stored form first)
                named = wanted == offer.media_type
                fits = (
                    not named
                    or offer.only_lossy
                    or default_syntax.get(wanted) in (None, offer.transfer_syntax)
                )
            else:
                fits = syntax in ("*", offer.transfer_syntax)
            if fits:
                key = (q, -rank, offer)
                if best is None or key[:2] > best[:2]:
                    best = key
    if best is None:
        available = ", ".join(
            f'multipart/related; type="{o.media_type}"; transfer-syntax={o.transfer_syntax}'
            for o in offers
        )
        raise NotAcceptable(
            f"cannot produce what Accept asks for ({accept}); available: {available}"
        )
    return best[2]
