"""Accept header negotiation (PS3.18 8.7, RFC 9110 12.5.1)."""

from __future__ import annotations

import pytest

from app.dicomweb.negotiation import SEARCH_MEDIA_TYPES, choose
from app.errors import NotAcceptable


@pytest.mark.parametrize(
    "accept, chosen",
    [
        (None, "application/dicom+json"),
        ("", "application/dicom+json"),
        ("*/*", "application/dicom+json"),
        ("application/*", "application/dicom+json"),
        ("application/json", "application/json"),
        ("application/dicom+json", "application/dicom+json"),
        ("application/json;q=0.9, application/dicom+json", "application/dicom+json"),
        ("application/dicom+json;q=0.5, application/json;q=0.8", "application/json"),
        ("text/html, application/xhtml+xml, */*;q=0.1", "application/dicom+json"),
        (
            'multipart/related; type="application/dicom+xml", application/json;q=0.2',
            "application/json",
        ),
    ],
)
def test_choose(accept: str | None, chosen: str) -> None:
    assert choose(accept, SEARCH_MEDIA_TYPES) == chosen


@pytest.mark.parametrize(
    "accept",
    ['multipart/related; type="application/dicom+xml"', "text/html", "application/dicom+json;q=0"],
)
def test_nothing_acceptable_is_406_listing_what_is_offered(accept: str) -> None:
    with pytest.raises(NotAcceptable, match="application/dicom\\+json, application/json"):
        choose(accept, SEARCH_MEDIA_TYPES)


from app.dicom.uids import EXPLICIT_VR_LE  # noqa: E402
from app.dicomweb.media import Offer, negotiate_multipart  # noqa: E402

JPEG = Offer("image/jpeg", "1.2.840.10008.1.2.4.50")
NATIVE = Offer("application/octet-stream", EXPLICIT_VR_LE)
DEFAULTS = {"application/octet-stream": EXPLICIT_VR_LE, "image/jpeg": "1.2.840.10008.1.2.4.50"}


@pytest.mark.parametrize(
    "accept, offers, chosen",
    [
        # OHIF: octet-stream with transfer-syntax=* takes the stored form, whatever its type
        ('multipart/related; type="application/octet-stream"; transfer-syntax=*', [JPEG], JPEG),
        ("multipart/related; type=application/octet-stream; transfer-syntax=*", [NATIVE], NATIVE),
        ('multipart/related; type="application/octet-stream"', [NATIVE], NATIVE),
        ('multipart/related; type="image/jpeg"', [JPEG], JPEG),
        ("image/jpeg", [JPEG], JPEG),
        ("*/*", [JPEG], JPEG),
        (None, [NATIVE], NATIVE),
        (
            'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50',
            [JPEG],
            JPEG,
        ),
    ],
)
def test_negotiate_multipart(accept: str | None, offers: list[Offer], chosen: Offer) -> None:
    assert negotiate_multipart(accept, offers, DEFAULTS) == chosen


@pytest.mark.parametrize(
    "accept, offers",
    [
        ('multipart/related; type="application/octet-stream"', [JPEG]),  # needs transcoding
        ('multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.70', [JPEG]),
        ('multipart/related; type="image/jls"', [NATIVE]),
    ],
)
def test_negotiate_multipart_406(accept: str, offers: list[Offer]) -> None:
    with pytest.raises(NotAcceptable, match="available"):
        negotiate_multipart(accept, offers, DEFAULTS)
