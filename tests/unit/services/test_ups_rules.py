"""The worklist's pure rules (PS3.18 11.9, PS3.4 CC): search parameters to filters to
SQL, the filter of a filtered worklist subscription, the reading workitem of a study."""

from __future__ import annotations

import datetime as dt

import pytest

from app.errors import BadRequest
from app.index.ups import UPS, StudyFacts
from app.index.worklist import Filter, compile_find
from app.services.ups import (
    check_aet,
    reading_uid,
    reading_workitem,
    search_filters,
)


def test_search_parameters_become_filters_on_the_workitem_columns() -> None:
    filters, limit, offset = search_filters(
        [
            ("ProcedureStepState", "SCHEDULED"),
            ("PatientName", "DOE*"),
            ("00741200", "HIGH"),
            ("SOPInstanceUID", "1.2.3\\1.2.4"),
            ("ScheduledStationNameCodeSequence.CodeValue", "CT1"),
            ("ScheduledProcedureStepStartDateTime", "20261203-2026120412"),
            ("includefield", "all"),
            ("fuzzymatching", "false"),
            ("limit", "10"),
            ("offset", "20"),
        ]
    )
    assert (limit, offset) == (10, 20)
    assert set(filters) == {
        Filter("state", "single", ("SCHEDULED",)),
        Filter("patient_name", "wild", ("DOE*",)),
        Filter("priority", "single", ("HIGH",)),
        Filter("uid", "list", ("1.2.3", "1.2.4")),
        Filter("station_aet", "single", ("CT1",)),
        Filter(
            "scheduled_start",
            "range",
            (dt.datetime(2026, 12, 3), dt.datetime(2026, 12, 4, 12, 59, 59, 999999)),
        ),
    }
    sql, args = compile_find(filters, limit, offset, UPS)
    assert sql.startswith("SELECT attrs FROM ups WHERE ")
    assert "lower(patient_name) LIKE" in sql and "doe%" in args
    assert sql.index("CASE priority WHEN 'HIGH'") > sql.index("ORDER BY")  # STAT first
    assert args[-2:] == [11, 20]  # one more than the limit: whether more follow


@pytest.mark.parametrize(
    "pairs",
    [
        [("Nonsense", "1")],
        [("TransactionUID", "1.2.3")],  # never matched on (PS3.4 Table CC.2.5-3)
        [("00081195", "1.2.3")],
        [("PatientName.CodeValue", "x")],
        [("ScheduledStationNameCodeSequence.CodeMeaning", "x")],
        [("limit", "0")],
        [("limit", "1001")],
        [("offset", "-1")],
        [("fuzzymatching", "yes")],
        [("includefield", "NotAKeyword")],
        [("ScheduledProcedureStepStartDateTime", "2026-12")],
        [("ScheduledProcedureStepStartDateTime", "20261203+0100")],
        [("ScheduledProcedureStepStartDateTime", "20261340")],
        [("ScheduledProcedureStepStartDateTime", "-")],
    ],
)
def test_what_the_worklist_cannot_match_is_400(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(BadRequest):
        search_filters(pairs)


@pytest.mark.parametrize(
    ("aet", "ok"),
    [
        ("READER1", True),
        (" PADDED ", True),
        ("A" * 16, True),
        ("A" * 17, False),
        ("", False),
        ("   ", False),
        ("BAD\\AET", False),
        ("NEW\nLINE", False),
    ],
)
def test_ae_titles(aet: str, ok: bool) -> None:
    if ok:
        assert check_aet(aet) == aet.strip()
    else:
        with pytest.raises(BadRequest):
            check_aet(aet)


def _facts(**overrides: object) -> StudyFacts:
    base = dict(
        patient_name="DOE^JANE",
        patient_id="P1",
        issuer_of_patient_id="HOSP",
        patient_birth_date="19800101",
        patient_sex="F",
        accession_number="A1",
        study_description="CT HEAD",
        modalities=["CT"],
        priorities=[],
    )
    return StudyFacts(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("priorities", "expected"),
    [
        ([], "MEDIUM"),
        (["ROUTINE"], "MEDIUM"),
        (["LOW"], "LOW"),
        (["STAT"], "HIGH"),
        (["ROUTINE", "STAT"], "HIGH"),
        (["LOW", "ROUTINE"], "MEDIUM"),
        (["ODD"], "MEDIUM"),
    ],
)
def test_a_reading_takes_the_priority_of_its_most_urgent_order(
    priorities: list[str], expected: str
) -> None:
    _, attrs = reading_workitem("1.2.3", _facts(priorities=priorities), "http://h/dicom-web")
    assert attrs["00741200"]["Value"] == [expected]


def test_the_reading_workitem_references_its_study() -> None:
    uid, attrs = reading_workitem("1.2.3", _facts(patient_name=None), "http://h/dicom-web")
    assert uid == reading_uid("1.2.3") != reading_uid("1.2.4")  # one per study
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert attrs["00741000"]["Value"] == ["SCHEDULED"]
    assert attrs["00741204"]["Value"] == ["Read CT HEAD"]
    assert attrs["00100010"] == {"vr": "PN"}  # Type 2: present, empty when unknown
    (source,) = attrs["00404021"]["Value"]
    assert source["00081190"]["Value"] == ["http://h/dicom-web/studies/1.2.3"]
    assert source["0020000D"]["Value"] == ["1.2.3"]
