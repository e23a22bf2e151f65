"""STOW-RS status and Store Instances Response Module (PS3.18 10.5.3, Annex I)."""

from __future__ import annotations

import pytest

from app.dicomweb.stow import check_content_type, store_response
from app.errors import BadRequest, UnsupportedMediaType
from app.services.ingest import ALREADY_STORED, FAILED, STORED, Outcome

BASE = "http://h/dicom-web"


def ok(sop: str, study: str = "1.1", status: str = STORED) -> Outcome:
    return Outcome(
        status=status,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=sop,
        study_uid=study,
        series_uid="1.1.1",
    )


def bad(sop: str = "", reason: int = 0xC000) -> Outcome:
    return Outcome(status=FAILED, sop_instance_uid=sop, reason=reason, message="broken")


def test_all_stored_is_200_with_retrieve_urls() -> None:
    status, body, warnings = store_response(
        [ok("9.1"), ok("9.2", status=ALREADY_STORED)], BASE, None
    )
    assert status == 200 and warnings == []
    assert body["00081190"]["Value"] == [f"{BASE}/studies/1.1"]
    refs = body["00081199"]["Value"]
    assert [r["00081155"]["Value"][0] for r in refs] == ["9.1", "9.2"]
    assert refs[0]["00081190"]["Value"][0] == f"{BASE}/studies/1.1/series/1.1.1/instances/9.1"
    assert "00081198" not in body


def test_some_failed_is_202_none_stored_is_409() -> None:
    status, body, warnings = store_response([ok("9.1"), bad("9.2", 0xA900)], BASE, None)
    assert status == 202
    failed = body["00081198"]["Value"][0]
    assert failed["00081197"] == {"vr": "US", "Value": [0xA900]}
    assert failed["00081155"]["Value"] == ["9.2"]
    assert warnings == ["broken"]
    status, body, _ = store_response([bad(), bad()], BASE, None)
    assert status == 409 and "00081199" not in body
    assert body["00081190"] == {"vr": "UR"}  # type 2, no study stored


def test_several_studies_leave_retrieve_url_empty() -> None:
    _, body, _ = store_response([ok("9.1", "1.1"), ok("9.2", "1.2")], BASE, None)
    assert body["00081190"] == {"vr": "UR"}


def test_malformed_body_after_stored_parts() -> None:
    status, _, warnings = store_response([ok("9.1")], BASE, None, "malformed multipart body")
    assert status == 202 and warnings[0] == "malformed multipart body"


@pytest.mark.parametrize(
    "value, expected",
    [
        ('multipart/related; type="application/dicom"; boundary=x', ("multipart/related", "x")),
        ('multipart/related; type=application/dicom; boundary="x y"', ("multipart/related", "x y")),
        ("multipart/related; boundary=x", ("multipart/related", "x")),
        ("application/dicom", ("application/dicom", None)),
    ],
)
def test_accepted_content_types(value: str, expected: tuple[str, str | None]) -> None:
    assert check_content_type(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "application/json",
        'multipart/related; type="application/dicom+json"; boundary=x',
        "multipart/form-data; boundary=x",
        "text/plain",
    ],
)
def test_unsupported_content_types_are_415(value: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        check_content_type(value)


def test_multipart_without_boundary_is_400() -> None:
    with pytest.raises(BadRequest, match="boundary"):
        check_content_type('multipart/related; type="application/dicom"')
