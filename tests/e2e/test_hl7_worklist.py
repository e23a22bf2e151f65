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

import hl7
import pydicom
import pytest
from hl7.client import MLLPClient
from pydicom.dataset import Dataset

from server import PictorProcess, free_port

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
