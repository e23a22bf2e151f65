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
