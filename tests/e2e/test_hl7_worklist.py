"""HL7 v2 orders and ADT in, Modality Worklist out (issue #18, PS3.4 K).

A real ``pictor serve`` with its HL7 and DIMSE processes; the ``hl7`` package's MLLP
client (and its ``mllp_send`` command) sends the messages; dcmtk's ``findscu -W`` asks
for the worklist as a modality does.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import httpx
import pydicom
import pytest
from hl7.client import MLLPClient
from pydicom.dataset import Dataset

from conftest import content_type, multipart, pictor_cli
from server import PictorProcess, free_port
from synth import ct_slice

FINDSCU = Path("/usr/bin/findscu")  # absolute: pynetdicom may put shims earlier on PATH


def _msh(kind: str, control: str, version: str = "2.3.1") -> str:
    return f"MSH|^~\\&|RIS|HOSP|PICTOR|HOSP|20261202100000||{kind}|{control}|P|{version}"


def order(control: str, accession: str, *, oc: str = "NW", name: str = "DOE^JANE") -> str:
    return "\r".join(
        [
            _msh("ORM^O01", control),
            f"PID|1||P100^^^HOSP^MR||{name}||19800101|F",
            "PV1|1|O||||||REF1^WHO^DR",
            f"ORC|{oc}|PL-{accession}|FI-{accession}||SC||^^^20261203093000^^S",
            f"OBR|1|PL-{accession}|FI-{accession}|CTHEAD^CT head^LOCAL||||||||||||||"
            f"{accession}|RP-{accession}|SPS-{accession}|CT01AE|||CT",
            f"ZDS|1.2.826.0.1.3680043.10.1.{int(accession[-3:])}^PICTOR^Application^DICOM",
        ]
    )


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PictorProcess]:
    root = tmp_path_factory.mktemp("hl7")
    server = PictorProcess(
        root / "data",
        workers=1,
        env={"PICTOR_HL7_PORT": str(free_port()), "PICTOR_DIMSE_PORT": str(free_port())},
    )
    server.hl7_port = int(server.extra_env["PICTOR_HL7_PORT"])  # type: ignore[attr-defined]
    server.dimse_port = int(server.extra_env["PICTOR_DIMSE_PORT"])  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def send(archive: PictorProcess, *messages: str) -> list[hl7.Message]:
    """Messages over one MLLP connection; their parsed ACKs."""
    with MLLPClient("127.0.0.1", archive.hl7_port) as client:  # type: ignore[attr-defined]
        return [hl7.parse(client.send_message(m).decode()) for m in messages]


def worklist(archive: PictorProcess, tmp: Path, *keys: str) -> list[Dataset]:
    out = tmp / f"wl-{time.monotonic_ns()}"
    out.mkdir()
    args = [str(FINDSCU), "-W", "-X", "-od", str(out), "-aet", "CT01AE", "-aec", "PICTOR"]
    for key in keys:
        args += ["-k", key]
    done = subprocess.run(
        [*args, "127.0.0.1", str(archive.dimse_port)],  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


STEP = [
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT01AE",
    "ScheduledProcedureStepSequence[0].Modality=CT",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261203-20261203",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID=",
    "PatientName=",
    "PatientID=",
    "AccessionNumber=",
    "StudyInstanceUID=",
    "RequestedProcedurePriority=",
    "ReferringPhysicianName=",
]


def test_an_order_reaches_the_modality_worklist_and_is_cancelled(
    archive: PictorProcess, tmp_path: Path
) -> None:
    acks = send(archive, order("M1", "ACC001"), order("M2", "ACC002"))
    assert [str(a.segment("MSA")[1]) for a in acks] == ["AA", "AA"]
    assert str(acks[0].segment("MSA")[2]) == "M1"  # MSA-2 echoes MSH-10
    found = worklist(archive, tmp_path, *STEP)
    by_accession = {str(d.AccessionNumber): d for d in found}
    assert set(by_accession) == {"ACC001", "ACC002"}
    item = by_accession["ACC001"]
    assert str(item.PatientName) == "DOE^JANE" and item.PatientID == "P100"
    assert item.StudyInstanceUID == "1.2.826.0.1.3680043.10.1.1"
    assert item.RequestedProcedurePriority == "STAT"  # TQ priority S
    assert str(item.ReferringPhysicianName) == "WHO^DR"
    step = item.ScheduledProcedureStepSequence[0]
    assert step.ScheduledStationAETitle == "CT01AE" and step.Modality == "CT"
    assert step.ScheduledProcedureStepStartTime == "093000"
    assert step.ScheduledProcedureStepID == "SPS-ACC001"
    # another station, another day: not on this worklist
    assert (
        worklist(
            archive,
            tmp_path,
            *STEP[:1],
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20270101-",
            "AccessionNumber=",
        )
        == []
    )

    # the RIS renames the patient (ADT^A08): the scheduled items follow
    adt = "\r".join([_msh("ADT^A08", "M3"), "EVN|A08", "PID|1||P100^^^HOSP||ROE^JANE||19800101|F"])
    (ack,) = send(archive, adt)
    assert str(ack.segment("MSA")[1]) == "AA"
    names = {str(d.PatientName) for d in worklist(archive, tmp_path, *STEP)}
    assert names == {"ROE^JANE"}

    # ORC-1 CA cancels one order: gone from the worklist, the other stays
    cancel = tmp_path / "cancel.hl7"
    cancel.write_text(order("M4", "ACC002", oc="CA").replace("\r", "\n") + "\n")
    done = subprocess.run(
        [
            "mllp_send",
            "--port",
            str(archive.hl7_port),  # type: ignore[attr-defined]
            "--file",
            str(cancel),
            "--loose",  # a file of messages, one segment a line
            "127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "MSA|AA|M4" in done.stdout.replace("\r", "\n")
    left = {str(d.AccessionNumber) for d in worklist(archive, tmp_path, *STEP)}
    assert left == {"ACC001"}
    cancelled = worklist(
        archive,
        tmp_path,
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus=CANCELED",
        "AccessionNumber=",
    )
    assert [str(d.AccessionNumber) for d in cancelled] == ["ACC002"]


def test_bad_messages_get_ae_or_ar_and_the_connection_stays(
    archive: PictorProcess, tmp_path: Path
) -> None:
    before = {str(d.AccessionNumber) for d in worklist(archive, tmp_path, "AccessionNumber=")}
    no_pid3 = "\r".join([_msh("ADT^A08", "B1"), "PID|1||||NOBODY^X"])
    unknown = "\r".join([_msh("ADT^A08", "B2"), "PID|1||NOSUCH^^^HOSP||NOBODY^X"])
    bad_date = order("B3", "ACC900").replace("19800101", "1980XX01")
    bad_cancel = order("B4", "ACC901", oc="CA")
    wrong_type = "\r".join([_msh("ORU^R01", "B5"), "PID|1||P100"])
    bad_version = "\r".join([_msh("ADT^A08", "B6", version="9.9"), "PID|1||P100"])
    good = order("B7", "ACC902")
    acks = send(archive, no_pid3, unknown, bad_date, bad_cancel, wrong_type, bad_version, good)
    codes = [str(a.segment("MSA")[1]) for a in acks]
    assert codes == ["AE", "AE", "AE", "AE", "AR", "AR", "AA"]
    assert [str(a.segment("MSA")[2]) for a in acks] == [f"B{i}" for i in range(1, 8)]
    texts = [str(a.segment("MSA")[3]) for a in acks]
    assert "PID-3" in texts[0] and "unknown patient" in texts[1]
    assert "PID-7" in texts[2] and "no order" in texts[3]
    # v2.3.1 ERR-1 carries the location and the table 0357 code
    assert "PID" in str(acks[0].segment("ERR")[1]) and "101" in str(acks[0].segment("ERR")[1])
    after = {str(d.AccessionNumber) for d in worklist(archive, tmp_path, "AccessionNumber=")}
    assert after == before | {"ACC902"}  # nothing of the refused ones was written


def test_a_message_sent_again_gets_its_first_answer_and_is_not_applied_twice(
    archive: PictorProcess, tmp_path: Path
) -> None:
    """An interface engine that timed out waiting for an ACK sends the same message
    again (the same MSH-10): it gets the AA it got the first time, and the order it
    carried is not applied again, here over a cancellation that came in between. The
    same MSH-10 with other content, or a message that got AE, is handled again."""
    new_order = order("D1", "ACC701")
    (first,) = send(archive, new_order)
    assert str(first.segment("MSA")[1]) == "AA"
    (cancel,) = send(archive, order("D2", "ACC701", oc="CA"))
    assert str(cancel.segment("MSA")[1]) == "AA"
    (again,) = send(archive, new_order)  # the retry of D1, after the cancellation
    assert str(again) == str(first)  # the very answer of the first time
    keys = [k for k in STEP if "StartDate" not in k] + [
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus="
    ]
    found = {str(d.AccessionNumber) for d in worklist(archive, tmp_path, *keys)}
    assert "ACC701" not in found  # still cancelled: D1 was not applied twice
    (other,) = send(archive, order("D1", "ACC702"))  # MSH-10 reused, other content
    assert str(other.segment("MSA")[1]) == "AA" and str(other) != str(first)
    assert "ACC702" in {str(d.AccessionNumber) for d in worklist(archive, tmp_path, *keys)}
    unknown = "\r".join([_msh("ADT^A08", "D3"), "EVN|A08", "PID|1||NOBODY^^^HOSP||X^Y"])
    (ae,) = send(archive, unknown)
    assert str(ae.segment("MSA")[1]) == "AE"
    register = "\r".join([_msh("ADT^A04", "D4"), "EVN|A04", "PID|1||NOBODY^^^HOSP||X^Y"])
    assert str(send(archive, register)[0].segment("MSA")[1]) == "AA"
    (now,) = send(archive, unknown)  # the same message, handled again: the patient exists
    assert str(now.segment("MSA")[1]) == "AA"


def test_a_frame_larger_than_the_limit_is_refused_and_closed(archive: PictorProcess) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", archive.hl7_port), timeout=30) as s:  # type: ignore[attr-defined]
        s.sendall(b"\x0b" + b"MSH|" + b"A" * (2 << 20))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert b"MSA|AR|" in data and data.endswith(b"\x1c\x0d")


def test_a40_merge_moves_the_prior_patient_s_orders(archive: PictorProcess, tmp_path: Path) -> None:
    first = order("G1", "ACC700").replace("P100^^^HOSP^MR||DOE^JANE", "OLD7^^^HOSP^MR||TEMP^X")
    merge = "\r".join(
        [
            _msh("ADT^A40^ADT_A39", "G2"),
            "EVN|A40",
            "PID|1||NEW7^^^HOSP^MR||SMITH^ANNA||19700101|F",
            "MRG|OLD7^^^HOSP",
        ]
    )
    again = merge.replace("|G2|", "|G3|")  # the prior patient is gone now
    acks = send(archive, first, merge, again)
    assert [str(a.segment("MSA")[1]) for a in acks] == ["AA", "AA", "AE"]
    (item,) = worklist(archive, tmp_path, "AccessionNumber=ACC700", "PatientID=", "PatientName=")
    assert item.PatientID == "NEW7" and str(item.PatientName) == "SMITH^ANNA"
    assert worklist(archive, tmp_path, "PatientID=OLD7", "AccessionNumber=") == []


def test_xo_changes_an_order_and_keeps_its_status(archive: PictorProcess, tmp_path: Path) -> None:
    (ack,) = send(archive, order("X1", "ACC800"))
    assert str(ack.segment("MSA")[1]) == "AA"
    change = order("X2", "ACC800", oc="XO").replace("|||CT\r", "|||MR\r")
    (ack,) = send(archive, change)
    assert str(ack.segment("MSA")[1]) == "AA", str(ack)
    keys = ["AccessionNumber=ACC800", "ScheduledProcedureStepSequence[0].Modality="]
    (item,) = worklist(archive, tmp_path, *keys)
    step = item.ScheduledProcedureStepSequence[0]
    assert step.Modality == "MR"


def test_unusable_worklist_identifiers_get_a900_and_unknown_keys_are_returned(
    archive: PictorProcess,
) -> None:
    """PS3.4 K.4.1.1.4 / C.2.2.2: a malformed range or a two-item sequence key is A900
    with an Error Comment; a key the archive cannot match is a return key only."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

    def ask(ds: Dataset) -> list[tuple[int, Dataset | None]]:
        ae = AE(ae_title="CT01AE")
        ae.add_requested_context(ModalityWorklistInformationFind)
        assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title="PICTOR")  # type: ignore[attr-defined]
        assert assoc.is_established
        try:
            return [
                (int(st.Status), ident)
                for st, ident in assoc.send_c_find(ds, ModalityWorklistInformationFind)
            ]
        finally:
            assoc.release()

    def step(**keys: str) -> Dataset:
        item = Dataset()
        for k, v in keys.items():
            setattr(item, k, v)
        return item

    bad_date = Dataset()
    bad_date.ScheduledProcedureStepSequence = [step(ScheduledProcedureStepStartDate="2026-12-03")]
    ((status, _),) = ask(bad_date)
    assert status == 0xA900
    two = Dataset()
    two.ScheduledProcedureStepSequence = [step(Modality="CT"), step(Modality="MR")]
    ((status, _),) = ask(two)
    assert status == 0xA900
    (ack,) = send(archive, order("U1", "ACC950"))
    assert str(ack.segment("MSA")[1]) == "AA"
    odd = Dataset()
    odd.AccessionNumber = "ACC950"
    odd.PatientComments = "anything"  # not a matching key here: returned, not matched
    answers = ask(odd)
    assert [s for s, _ in answers] == [0xFF00, 0x0000]
    found = answers[0][1]
    assert found is not None and found.AccessionNumber == "ACC950"
    assert "PatientComments" in found and found.PatientComments in ("", None)


# --- Modality Performed Procedure Step (PS3.4 F.7, F.8) -----------------------------

MPPS_CLASS = "1.2.840.10008.3.1.2.3.3"
MPPS_RETRIEVE = "1.2.840.10008.3.1.2.3.4"


def _performed(accession: str, study_uid: str, **overrides: str) -> Dataset:
    """An N-CREATE attribute list as a modality sends it when the exam starts."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.AccessionNumber = accession
    item.RequestedProcedureID = f"RP-{accession}"
    item.ScheduledProcedureStepID = f"SPS-{accession}"
    ds.ScheduledStepAttributesSequence = [item]
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "P100"
    ds.PerformedProcedureStepID = f"PPS-{accession}"
    ds.PerformedStationAETitle = "CT01AE"
    ds.PerformedStationName = "CT one"
    ds.PerformedProcedureStepStartDate = "20261203"
    ds.PerformedProcedureStepStartTime = "093500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "CT head, Ünal protocol"  # not ASCII: UTF-8
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    for key, value in overrides.items():
        if value == "<absent>":
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


class Modality:
    """A modality's MPPS SCU: pynetdicom over one association."""

    def __init__(self, archive: PictorProcess) -> None:
        from pynetdicom import AE, evt

        ae = AE(ae_title="CT01AE")
        ae.add_requested_context(MPPS_CLASS)
        ae.add_requested_context(MPPS_RETRIEVE)
        #: the command set of the last response (its Affected SOP Instance UID)
        self.command: Dataset | None = None

        def received(event: object) -> None:
            self.command = event.message.command_set  # type: ignore[attr-defined]

        self.assoc = ae.associate(
            "127.0.0.1",
            archive.dimse_port,  # type: ignore[attr-defined]
            ae_title="PICTOR",
            evt_handlers=[(evt.EVT_DIMSE_RECV, received)],
        )
        assert self.assoc.is_established

    def __enter__(self) -> Modality:
        return self

    def __exit__(self, *exc: object) -> None:
        self.assoc.release()

    def create(self, ds: Dataset, uid: str | None) -> tuple[Dataset, Dataset | None]:
        status, answer = self.assoc.send_n_create(ds, MPPS_CLASS, uid)
        return status, answer

    def set(self, ds: Dataset, uid: str) -> Dataset:
        status, _ = self.assoc.send_n_set(ds, MPPS_CLASS, uid)
        return status

    def get(self, uid: str, tags: list[int]) -> tuple[Dataset, Dataset | None]:
        status, answer = self.assoc.send_n_get(tags, MPPS_RETRIEVE, uid)
        return status, answer


def _item_status(archive: PictorProcess, tmp: Path, accession: str) -> str:
    """The worklist item's status, as C-FINDs for each status find it."""
    found = [
        status
        for status in ("SCHEDULED", "STARTED", "COMPLETED", "DISCONTINUED", "CANCELED")
        for item in worklist(
            archive,
            tmp,
            f"AccessionNumber={accession}",
            f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus={status}",
        )
        if item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == status
    ]
    assert len(found) == 1, found
    return found[0]


def test_mpps_in_progress_then_completed_moves_the_worklist_item(
    archive: PictorProcess, tmp_path: Path
) -> None:
    """F.7.2.1 / F.7.2.2: N-CREATE IN PROGRESS starts the scheduled step; N-SET
    COMPLETED with the performed series completes it, after which the step is final."""
    (ack,) = send(archive, order("P1", "ACC300"))
    assert str(ack.segment("MSA")[1]) == "AA"
    study = "1.2.826.0.1.3680043.10.1.300"
    uid = "1.2.826.0.1.3680043.10.9.300"
    with Modality(archive) as modality:
        status, _ = modality.create(_performed("ACC300", study), uid)
        assert status.Status == 0x0000
        assert _item_status(archive, tmp_path, "ACC300") == "STARTED"
        # a STARTED item is still on the modality's worklist (it is not done)
        assert "ACC300" in {str(d.AccessionNumber) for d in worklist(archive, tmp_path, *STEP)}

        # N-GET (F.8): what was created, the requested attributes only, in UTF-8
        status, got = modality.get(uid, [0x00400252, 0x00400254, 0x00400270])
        assert status.Status == 0x0000 and got is not None
        assert got.PerformedProcedureStepStatus == "IN PROGRESS"
        assert got.PerformedProcedureStepDescription == "CT head, Ünal protocol"
        assert got.ScheduledStepAttributesSequence[0].AccessionNumber == "ACC300"
        assert "PatientName" not in got

        # a progress N-SET that sends an unchangeable attribute again, unchanged: fine
        progress = Dataset()
        progress.PatientID = "P100"
        progress.PerformedProcedureStepDescription = "CT head"
        assert modality.set(progress, uid).Status == 0x0000

        # COMPLETED without the end time and series: "missing attribute value"
        early = Dataset()
        early.PerformedProcedureStepStatus = "COMPLETED"
        status = modality.set(early, uid)
        assert status.Status == 0x0121
        assert "PerformedProcedureStepEndDate" in str(status.ErrorComment)
        assert _item_status(archive, tmp_path, "ACC300") == "STARTED"  # nothing applied

        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        done.PerformedProcedureStepEndDate = "20261203"
        done.PerformedProcedureStepEndTime = "095000"
        series = Dataset()
        series.SeriesInstanceUID = "1.2.826.0.1.3680043.10.9.300.1"
        series.PerformingPhysicianName = ""
        series.ProtocolName = "HEAD"
        series.OperatorsName = ""
        series.SeriesDescription = "axial"
        series.RetrieveAETitle = ""
        series.ReferencedImageSequence = []
        series.ReferencedNonImageCompositeSOPInstanceSequence = []
        done.PerformedSeriesSequence = [series]
        assert modality.set(done, uid).Status == 0x0000
        assert _item_status(archive, tmp_path, "ACC300") == "COMPLETED"
        assert "ACC300" not in {str(d.AccessionNumber) for d in worklist(archive, tmp_path, *STEP)}

        # F.7.2.2.2: once COMPLETED, no more changes (0110, Error ID A710)
        again = Dataset()
        again.PerformedProcedureStepStatus = "DISCONTINUED"
        status = modality.set(again, uid)
        assert status.Status == 0x0110 and status.ErrorID == 0xA710
        status, got = modality.get(uid, [])
        assert status.Status == 0x0000 and got is not None
        assert got.PerformedProcedureStepStatus == "COMPLETED"
        assert got.PerformedSeriesSequence[0].SeriesInstanceUID == series.SeriesInstanceUID
        assert got.SOPInstanceUID == uid
        assert _item_status(archive, tmp_path, "ACC300") == "COMPLETED"


def test_mpps_discontinued_and_uid_chosen_by_the_archive(
    archive: PictorProcess, tmp_path: Path
) -> None:
    """PS3.7 10.1.5.1.4: an N-CREATE without an SOP Instance UID is given one in the
    response; DISCONTINUED discontinues the scheduled step."""
    (ack,) = send(archive, order("P2", "ACC301"))
    assert str(ack.segment("MSA")[1]) == "AA"
    with Modality(archive) as modality:
        status, _ = modality.create(_performed("ACC301", "1.2.826.0.1.3680043.10.1.301"), None)
        assert status.Status == 0x0000
        assert modality.command is not None
        uid = str(modality.command.AffectedSOPInstanceUID)
        assert uid.startswith("1.") and len(uid) <= 64
        assert _item_status(archive, tmp_path, "ACC301") == "STARTED"
        stop = Dataset()
        stop.PerformedProcedureStepStatus = "DISCONTINUED"
        stop.PerformedProcedureStepEndDate = "20261203"
        stop.PerformedProcedureStepEndTime = "094000"
        assert modality.set(stop, uid).Status == 0x0000
        assert _item_status(archive, tmp_path, "ACC301") == "DISCONTINUED"


def test_mpps_refusals_name_what_was_wrong_and_change_nothing(
    archive: PictorProcess, tmp_path: Path
) -> None:
    """F.7.2.1.2 / PS3.7 C.5: a bad N-CREATE, N-SET or N-GET gets its status, the
    worklist item and the stored step stay as they were."""
    (ack,) = send(archive, order("P3", "ACC302"))
    assert str(ack.segment("MSA")[1]) == "AA"
    study = "1.2.826.0.1.3680043.10.1.302"
    uid = "1.2.826.0.1.3680043.10.9.302"
    with Modality(archive) as modality:
        # created in another status: invalid attribute value
        status, _ = modality.create(
            _performed("ACC302", study, PerformedProcedureStepStatus="COMPLETED"), uid
        )
        assert status.Status == 0x0106, status
        # a Type 1 attribute left out: missing attribute
        status, _ = modality.create(_performed("ACC302", study, Modality="<absent>"), uid)
        assert status.Status == 0x0120 and "Modality" in str(status.ErrorComment)
        no_steps = _performed("ACC302", study)
        no_steps.ScheduledStepAttributesSequence = []
        status, _ = modality.create(no_steps, uid)
        assert status.Status == 0x0120
        bad_uid = _performed("ACC302", study)
        bad_uid.ScheduledStepAttributesSequence[0].StudyInstanceUID = "1.2.x' OR 1=1"
        status, _ = modality.create(bad_uid, uid)
        assert status.Status == 0x0106
        assert _item_status(archive, tmp_path, "ACC302") == "SCHEDULED"

        assert modality.create(_performed("ACC302", study), uid)[0].Status == 0x0000
        # the same SOP Instance UID twice: duplicate
        status, _ = modality.create(_performed("ACC302", study), uid)
        assert status.Status == 0x0111
        # an attribute N-SET may not change, changed: invalid attribute value
        rename = Dataset()
        rename.PatientName = "SOMEONE^ELSE"
        status = modality.set(rename, uid)
        assert status.Status == 0x0106 and "PatientName" in str(status.ErrorComment)
        odd = Dataset()
        odd.PerformedProcedureStepStatus = "PAUSED"
        assert modality.set(odd, uid).Status == 0x0106
        # bounded: a Performed Series Sequence of more than 1000 items, a step over 1 MiB
        flood = Dataset()
        flood.PerformedSeriesSequence = []
        for i in range(1001):
            one = Dataset()
            one.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.9.302.{i}"
            flood.PerformedSeriesSequence.append(one)
        status = modality.set(flood, uid)
        assert status.Status == 0x0106 and "1000" in str(status.ErrorComment)
        big = Dataset()
        big.add_new(0x00090010, "LO", "PICTOR TEST")  # private creator
        big.add_new(0x00091010, "UT", "x" * (2 << 20))
        status = modality.set(big, uid)
        assert status.Status == 0x0106 and "MiB" in str(status.ErrorComment)
        # the Retrieve class has N-GET only (F.8.2)
        status, _ = modality.assoc.send_n_create(_performed("ACC302", study), MPPS_RETRIEVE, None)
        assert status.Status == 0x0211
        assert modality.assoc.send_n_set(odd, MPPS_RETRIEVE, uid)[0].Status == 0x0211
        # unknown steps: no such object instance
        assert modality.set(odd, "1.2.3.4.5.404").Status == 0x0112
        assert modality.get("1.2.3.4.5.404", [])[0].Status == 0x0112
        assert modality.get("not a uid \\ at all", [])[0].Status == 0x0112

        status, got = modality.get(uid, [0x00100010, 0x00400252])
        assert status.Status == 0x0000 and got is not None
        assert str(got.PatientName) == "DOE^JANE"
        assert got.PerformedProcedureStepStatus == "IN PROGRESS"
        assert _item_status(archive, tmp_path, "ACC302") == "STARTED"


# -- the reading worklist (UPS-RS, PS3.18 11) -------------------------------------------


def test_a_stable_study_becomes_a_reading_workitem_with_its_orders_priority(
    tmp_path: Path,
) -> None:
    """Issue #18: a study that is stable gets one UPS "read study" workitem with the
    priority of its order (STAT -> HIGH; none: MEDIUM) and the study referenced; a
    reader claims and completes it over UPS-RS; its state is the study's reading
    status. With PICTOR_READING_WORKLIST off, none is made."""
    server = PictorProcess(
        tmp_path / "data",
        workers=1,
        env={"PICTOR_HL7_PORT": str(free_port()), "PICTOR_STABLE_SECONDS": "1"},
    )
    server.hl7_port = int(server.extra_env["PICTOR_HL7_PORT"])  # type: ignore[attr-defined]
    server.start()
    try:
        (ack,) = send(server, order("R1", "ACC901"))  # TQ priority S: STAT
        assert str(ack.segment("MSA")[1]) == "AA"
        ordered = "1.2.826.0.1.3680043.10.1.901"  # the order's ZDS
        walk_in = "1.2.826.0.1.3680043.10.2.1"
        for study, patient in ((walk_in, "WALKIN"), (ordered, "P100")):
            series = f"{study}.1"
            body = multipart([ct_slice(study, series, 0, rows=16, cols=16, patient_id=patient)])
            r = httpx.post(
                f"{server.dicomweb}/studies", content=body, headers={"Content-Type": content_type()}
            )
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while True:
            r = httpx.get(f"{server.dicomweb}/workitems", params={"WorklistLabel": "READING"})
            if r.status_code == 200 and len(r.json()) == 2:
                break
            assert time.monotonic() < deadline, (r.status_code, r.text)
            time.sleep(0.3)
        first, second = r.json()  # STAT first
        assert _value(first, "0020000D") == ordered and _value(first, "00741200") == "HIGH"
        assert _value(second, "0020000D") == walk_in and _value(second, "00741200") == "MEDIUM"
        assert _value(first, "00100020") == "P100" and _value(first, "00741000") == "SCHEDULED"
        assert _value(first, "00741204").startswith("Read ")
        (code,) = first["00404018"]["Value"]  # (110005, DCM, "Interpretation")
        assert _value(code, "00080100") == "110005" and _value(code, "00080102") == "DCM"
        (source,) = first["00404021"]["Value"]  # the study, and where to retrieve it
        assert _value(source, "0020000D") == ordered
        assert _value(source, "00081190") == f"{server.dicomweb}/studies/{ordered}"
        uid = _value(first, "00080018")
        transaction = "1.2.826.0.1.3680043.10.9.1"
        state = f"{server.dicomweb}/workitems/{uid}/state"

        def change(to: str) -> int:
            body = {
                "00741000": {"vr": "CS", "Value": [to]},
                "00081195": {"vr": "UI", "Value": [transaction]},
            }
            return httpx.put(
                state, json=body, headers={"Content-Type": "application/dicom+json"}
            ).status_code

        assert change("IN PROGRESS") == 200
        performed = {
            "00741216": {
                "vr": "SQ",
                "Value": [
                    {
                        "00404050": {"vr": "DT", "Value": ["20261203100000"]},
                        "00404051": {"vr": "DT", "Value": ["20261203101500"]},
                    }
                ],
            }
        }
        r = httpx.post(
            f"{server.dicomweb}/workitems/{uid}?transaction={transaction}",
            json=performed,
            headers={"Content-Type": "application/dicom+json"},
        )
        assert r.status_code == 200, r.text
        assert change("COMPLETED") == 200
        status = httpx.get(
            f"{server.dicomweb}/workitems", params={"StudyInstanceUID": ordered}
        ).json()
        assert [_value(w, "00741000") for w in status] == ["COMPLETED"]  # read
        routes = pictor_cli("route", "status", "--json", data_dir=server.data_dir)
        assert "reading-worklist" in routes.stdout
    finally:
        server.stop()
    off = PictorProcess(
        tmp_path / "off",
        workers=1,
        env={"PICTOR_READING_WORKLIST": "false", "PICTOR_STABLE_SECONDS": "1"},
    ).start()
    try:
        study = "1.2.826.0.1.3680043.10.2.2"
        body = multipart([ct_slice(study, f"{study}.1", 0, rows=16, cols=16)])
        r = httpx.post(
            f"{off.dicomweb}/studies", content=body, headers={"Content-Type": content_type()}
        )
        assert r.status_code == 200, r.text
        time.sleep(3)  # stable, and more
        assert httpx.get(f"{off.dicomweb}/workitems").status_code == 204
        routes = pictor_cli("route", "status", "--json", data_dir=off.data_dir)
        assert routes.returncode == 0 and "reading-worklist" not in routes.stdout
    finally:
        off.stop()


def _value(attrs: dict[str, Any], tag: str) -> Any:
    values = attrs.get(tag, {}).get("Value") or [None]
    return values[0]
