"""The pure parts of the DIMSE shim: identifier -> QIDO query model, results -> response
identifiers (PS3.4 C.4.1.1.3), Patient level folding, and the retrieve transfer syntax
plan (PS3.4 C.4.2.3.1)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from app.dimse.find import (
    Model,
    parse_identifier,
    patients,
    response,
)
from app.dimse.retrieve import Plan, plan
from app.dimse.status import IdentifierError
from app.index.query import Level

EXPLICIT, IMPLICIT, DEFLATED = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"
BIG, JPEG, J2KR = "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90"


def identifier(**keys: object) -> Dataset:
    ds = Dataset()
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


def test_study_identifier_becomes_the_qido_query() -> None:
    request = parse_identifier(
        identifier(
            QueryRetrieveLevel="STUDY",
            PatientName="DOE*",
            StudyDate="20240101-20240131",
            ModalitiesInStudy="CT\\MR",
            AccessionNumber="*",  # '*' alone: universal matching (C.2.2.2.4)
            StudyInstanceUID="",
        ),
        Model.STUDY_ROOT,
    )
    q = request.query
    assert q.level is Level.STUDY
    kinds = {c.tag: c.kind for c in q.conditions}
    assert kinds == {0x00100010: "wildcard", 0x00080020: "range", 0x00080061: "list"}
    assert q.returned is not None
    assert {0x00100010, 0x00080020, 0x00080061, 0x00080050, 0x0020000D} <= q.returned


def test_sequence_keys_match_through_their_item() -> None:
    item = Dataset()
    item.ScheduledProcedureStepID = "SPS1"
    request = parse_identifier(
        identifier(QueryRetrieveLevel="SERIES", RequestAttributesSequence=[item]),
        Model.STUDY_ROOT,
    )
    assert [(c.path, c.values) for c in request.query.conditions] == [
        ((0x00400275, 0x00400009), ("SPS1",))
    ]


@pytest.mark.parametrize(
    ("keys", "model", "words"),
    [
        ({"PatientID": "1"}, Model.STUDY_ROOT, "QueryRetrieveLevel"),
        ({"QueryRetrieveLevel": "WARD"}, Model.STUDY_ROOT, "is not PATIENT"),
        ({"QueryRetrieveLevel": "PATIENT"}, Model.STUDY_ROOT, "Study Root has no PATIENT"),
        (
            {"QueryRetrieveLevel": "PATIENT", "StudyDate": "20240101"},
            Model.PATIENT_ROOT,
            "Patient level",
        ),
        ({"QueryRetrieveLevel": "STUDY", "Modality": "CT"}, Model.STUDY_ROOT, "Modality"),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2024"}, Model.STUDY_ROOT, "StudyDate"),
    ],
)
def test_unusable_identifiers_are_a900(keys: dict[str, str], model: Model, words: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        parse_identifier(identifier(**keys), model)
    assert caught.value.status == 0xA900
    assert words in caught.value.message


def test_retrieve_identifiers_hold_unique_keys_only() -> None:
    ok = parse_identifier(
        identifier(
            QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4"
        ),
        Model.STUDY_ROOT,
        retrieve=True,
    )
    assert ok.level == "SERIES"
    with pytest.raises(IdentifierError, match="needs a SeriesInstanceUID"):
        parse_identifier(
            identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.3"),
            Model.STUDY_ROOT,
            retrieve=True,
        )
    with pytest.raises(IdentifierError, match="not a unique key"):
        parse_identifier(
            identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.3", PatientName="A*"),
            Model.STUDY_ROOT,
            retrieve=True,
        )


def test_response_holds_the_requested_keys_only() -> None:
    request = parse_identifier(
        identifier(
            QueryRetrieveLevel="STUDY", PatientName="", StudyDescription="", RetrieveAETitle=""
        ),
        Model.STUDY_ROOT,
    )
    result = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "MÜLLER^JÖRG"}]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
    }
    ds = response(result, request, "PICTOR")
    assert {e.keyword for e in ds} == {
        "QueryRetrieveLevel",
        "PatientName",
        "StudyDescription",
        "RetrieveAETitle",
        "StudyInstanceUID",
        "SpecificCharacterSet",
    }
    assert ds.StudyDescription in ("", None)
    assert ds.RetrieveAETitle == "PICTOR" and ds.SpecificCharacterSet == "ISO_IR 192"


def test_patient_level_folds_studies_and_counts() -> None:
    def study(pid: str, series: int, instances: int) -> dict[str, object]:
        return {
            "00100020": {"vr": "LO", "Value": [pid]},
            "00201206": {"vr": "IS", "Value": [series]},
            "00201208": {"vr": "IS", "Value": [instances]},
        }

    folded = list(patients(iter([study("A", 1, 5), study("A", 2, 7), study("B", 1, 1)])))
    assert [
        (
            p["00100020"]["Value"],
            p["00201200"]["Value"],
            p["00201202"]["Value"],
            p["00201204"]["Value"],
        )
        for p in folded
    ] == [(["A"], [2], [3], [12]), (["B"], [1], [1], [1])]


@pytest.mark.parametrize(
    ("stored", "offered", "expected"),
    [
        (JPEG, {JPEG, EXPLICIT}, Plan.AS_STORED),
        (EXPLICIT, {IMPLICIT}, Plan.AS_STORED),  # pynetdicom re-encodes native LE syntaxes
        (DEFLATED, {EXPLICIT}, Plan.AS_STORED),
        (JPEG, {EXPLICIT}, Plan.TRANSCODE),
        (BIG, {EXPLICIT, IMPLICIT}, Plan.TRANSCODE),
        (EXPLICIT, {J2KR}, Plan.ENCODE),
        (EXPLICIT, {JPEG}, None),  # never lossy for a peer
        (J2KR, set(), None),
    ],
)
def test_retrieve_plan(stored: str, offered: set[str], expected: Plan | None) -> None:
    assert plan(stored, frozenset(offered)) is expected
