"""The rules of the Modality Performed Procedure Step SOP Class (PS3.4 F.7.2, Table
F.7.2-1) on DICOM JSON, and the dataset <-> JSON conversion of the DIMSE side."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from app.dimse.mpps import to_dataset, to_json
from app.services.mpps import (
    MAX_ITEMS,
    AttributeProblem,
    NoLongerUpdatable,
    check_create,
    merged,
    series_of,
    steps_of,
)


def text(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def step(**overrides: Any) -> dict[str, Any]:
    attrs = {
        "00400270": {
            "vr": "SQ",
            "Value": [
                {
                    "0020000D": text("UI", "1.2.3.4"),
                    "00080050": text("SH", "ACC1"),
                    "00400009": text("SH", "SPS1"),
                }
            ],
        },
        "00100010": text("PN", {"Alphabetic": "DOE^JANE"}),
        "00400253": text("SH", "PPS1"),
        "00400241": text("AE", "CT01"),
        "00400244": text("DA", "20261203"),
        "00400245": text("TM", "093000"),
        "00400252": text("CS", "IN PROGRESS"),
        "00080060": text("CS", "CT"),
    }
    attrs.update(overrides)
    return {k: v for k, v in attrs.items() if v is not None}


def test_a_complete_n_create_passes_and_names_its_steps() -> None:
    attrs = step()
    check_create(attrs)
    (one,) = steps_of(attrs)
    assert (one.study_uid, one.accession_number, one.sps_id) == ("1.2.3.4", "ACC1", "SPS1")
    assert one.requested_procedure_id == ""


@pytest.mark.parametrize(
    "tag", ["00400253", "00400241", "00400244", "00400245", "00400252", "00080060"]
)
def test_each_type_1_attribute_is_required_at_create(tag: str) -> None:
    for absent in (None, {"vr": "CS"}, text("CS", "")):
        with pytest.raises(AttributeProblem) as caught:
            check_create(step(**{tag: absent}))
        assert caught.value.missing and caught.value.tag == tag


def test_created_in_another_status_is_an_invalid_value() -> None:
    with pytest.raises(AttributeProblem) as caught:
        check_create(step(**{"00400252": text("CS", "COMPLETED")}))
    assert not caught.value.missing and "IN PROGRESS" in caught.value.message


def test_scheduled_step_attributes_need_a_study_uid() -> None:
    with pytest.raises(AttributeProblem) as caught:
        steps_of(step(**{"00400270": {"vr": "SQ", "Value": []}}))
    assert caught.value.missing
    with pytest.raises(AttributeProblem):
        steps_of(step(**{"00400270": {"vr": "SQ", "Value": [{"00080050": text("SH", "A")}]}}))
    bad = {"vr": "SQ", "Value": [{"0020000D": text("UI", "1.2.x")}]}
    with pytest.raises(AttributeProblem) as caught:
        steps_of(step(**{"00400270": bad}))
    assert not caught.value.missing


def test_sequences_are_bounded() -> None:
    many = {
        "vr": "SQ",
        "Value": [{"0020000E": text("UI", f"1.2.{i}")} for i in range(MAX_ITEMS + 1)],
    }
    with pytest.raises(AttributeProblem, match="more than"):
        series_of({"00400340": many})


def test_series_are_listed_once_and_must_be_uids() -> None:
    seq = [{"0020000E": text("UI", u)} for u in ("1.2.5", "1.2.6", "1.2.5")]
    assert series_of({"00400340": {"vr": "SQ", "Value": seq}}) == ["1.2.5", "1.2.6"]
    with pytest.raises(AttributeProblem) as caught:
        series_of({"00400340": {"vr": "SQ", "Value": [{"00080021": text("DA", "2026")}]}})
    assert caught.value.missing


def test_n_set_replaces_what_it_names_and_keeps_the_rest() -> None:
    out = merged(step(), {"00400254": text("LO", "head"), "00100010": step()["00100010"]})
    assert out["00400254"] == text("LO", "head") and out["00400253"] == text("SH", "PPS1")


@pytest.mark.parametrize("tag", ["00100010", "00400270", "00400241", "00080060", "00080018"])
def test_n_set_may_not_change_the_identity_of_the_step(tag: str) -> None:
    with pytest.raises(AttributeProblem) as caught:
        merged(step(), {tag: text("LO", "other")})
    assert caught.value.tag == tag and not caught.value.missing


def test_completed_needs_its_final_state_attributes() -> None:
    done = {"00400252": text("CS", "COMPLETED")}
    with pytest.raises(AttributeProblem) as caught:
        merged(step(), done)
    assert caught.value.missing and caught.value.tag == "00400250"
    series = {"vr": "SQ", "Value": [{"0020000E": text("UI", "1.2.5")}]}
    full = done | {
        "00400250": text("DA", "20261203"),
        "00400251": text("TM", "100000"),
        "00400340": series,
    }
    assert merged(step(), full)["00400252"] == text("CS", "COMPLETED")
    # DISCONTINUED needs none of them
    assert merged(step(), {"00400252": text("CS", "DISCONTINUED")})


def test_a_final_step_may_no_longer_be_updated() -> None:
    for final in ("COMPLETED", "DISCONTINUED"):
        stored = step(**{"00400252": text("CS", final)})
        with pytest.raises(NoLongerUpdatable):
            merged(stored, {"00400254": text("LO", "late")})


def test_an_unknown_status_is_an_invalid_value() -> None:
    with pytest.raises(AttributeProblem):
        merged(step(), {"00400252": text("CS", "PAUSED")})


def test_datasets_travel_as_json_and_back_in_utf8() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jörg"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    item = Dataset()
    item.StudyInstanceUID = "1.2.3"
    ds.ScheduledStepAttributesSequence = [item]
    attrs = to_json(ds)
    assert "00080005" not in attrs  # decoded: the JSON is Unicode
    assert attrs["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jörg"
    back = to_dataset(attrs)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == "Müller^Jörg"
    only = to_dataset(attrs, [0x00400252])
    assert list(only.keys()) == [0x00400252]  # ASCII only: no character set
    assert to_json(None) == {}
