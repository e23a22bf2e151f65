"""HL7 v2 messages to DICOM worklist attributes, and the ACKs (app/hl7/messages.py)."""

from __future__ import annotations

import datetime as dt

import hl7
import pytest

from app.errors import BadRequest
from app.hl7.messages import MessageError, ack, decode, header_of, parse
from app.services.worklist import build_filters

OMI = "\r".join(
    [
        "MSH|^~\\&|RIS|HOSP|PICTOR|HOSP|20261202||OMI^O23^OMI_O23|C9|P|2.5.1||||||UNICODE UTF-8",
        "PID|1||77^^^&1.2.3.4&ISO||Müller^Jürgen^^Jr^Dr||19650230|X",
        "ORC|NW|PL9^RIS|FI9^PACS",
        "TQ1|1||||||20261205141500||A",
        "OBR|1|PL9|FI9|MRKNEE^MR knee^LOCAL",
        "IPC|ACC9|RP9|1.2.3.9|SPS9|MR||STATION1|ROOM 3|MR01",
    ]
)
GOOD = OMI.replace("19650230", "19650228").replace("|X", "|F")


def test_omi_with_ipc_and_tq1_maps_to_the_worklist_attributes() -> None:
    with pytest.raises(MessageError) as bad:  # 30 February
        parse(OMI)
    assert bad.value.where == "PID-7"
    msg = parse(GOOD)
    patient = msg.patient
    assert patient is not None
    assert (patient.patient_id, patient.issuer) == ("77", "1.2.3.4")  # CX.4.2 universal ID
    # XPN family^given^middle^suffix^prefix -> PN family^given^middle^prefix^suffix
    assert patient.attrs["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jürgen^^Dr^Jr"
    assert patient.attrs["00100030"]["Value"] == ["19650228"]
    (order,) = msg.orders
    assert order.accession_number == "ACC9" and order.sps_id == "SPS9"
    assert order.study_uid == "1.2.3.9" and order.modality == "MR"
    assert order.station_aet == "MR01"
    assert order.start == dt.datetime(2026, 12, 5, 14, 15)
    assert order.priority == "HIGH"  # TQ1-9 A (ASAP)
    step = order.attrs["00400100"]["Value"][0]
    assert step["00400010"]["Value"] == ["STATION1"] and step["00400011"]["Value"] == ["ROOM 3"]


def test_unsupported_kinds_versions_and_sex_values_are_refused_with_their_codes() -> None:
    with pytest.raises(MessageError) as e:
        parse(OMI.replace("2.5.1", "3.0"))
    assert e.value.code == 203 and e.value.reject
    with pytest.raises(MessageError) as e:
        parse(OMI.replace("OMI^O23^OMI_O23", "ADT^A03"))
    assert e.value.code == 201 and e.value.reject
    with pytest.raises(MessageError) as e:
        parse(OMI.replace("19650230", "19650228"))  # sex X is not in table 0001
    assert e.value.code == 103 and e.value.where == "PID-8"
    with pytest.raises(MessageError) as e:
        parse(GOOD.replace("ORC|NW", "ORC|ZZ"))
    assert e.value.where == "ORC-1"
    with pytest.raises(MessageError) as e:
        parse(GOOD.replace("1.2.3.9", "1.02.3"))  # PS3.5 9.1: no leading zeros
    assert e.value.code == 102


def test_delimiters_inside_values_never_reach_dicom_and_long_values_are_refused() -> None:
    msg = parse(GOOD.replace("Müller", "O\\S\\Brien\\E\\x"))  # ^ and \ escaped in HL7
    assert msg.patient is not None
    name = msg.patient.attrs["00100010"]["Value"][0]["Alphabetic"]
    assert name.startswith("O Brien x^")
    with pytest.raises(MessageError) as e:
        parse(GOOD.replace("ACC9", "A" * 17))  # SH holds 16
    assert e.value.where == "IPC-1"


def test_charsets_follow_msh_18() -> None:
    latin = OMI.replace("UNICODE UTF-8", "8859/1").encode("latin-1")
    assert "Müller" in decode(latin)
    with pytest.raises(MessageError):
        decode(OMI.replace("UNICODE UTF-8", "EBCDIC").encode())
    with pytest.raises(MessageError):
        decode(OMI.encode("latin-1"))  # says UTF-8, is not


def test_acks_echo_the_control_id_and_carry_err_in_the_version_s_form() -> None:
    header = header_of(OMI)
    error = MessageError("PID-3 is empty", code=101, where="PID-3")
    v25 = hl7.parse(ack(header, "AE", str(error), error=error))
    assert str(v25.segment("MSA")[1]) == "AE" and str(v25.segment("MSA")[2]) == "C9"
    assert str(v25.segment("MSH")[9]) == "ACK^O23^ACK"
    err = v25.segment("ERR")
    assert str(err[2]) == "PID^1^3" and str(err[3]).startswith("101^")
    assert str(err[8]) == "PID-3 is empty"
    v23 = hl7.parse(ack(header_of(OMI.replace("2.5.1", "2.3")), "AE", "x", error=error))
    assert str(v23.segment("ERR")[1]).startswith("PID^1^3^101")
    # a hostile control ID cannot add fields or segments to the answer
    evil = header_of(OMI.replace("|C9|", "|A|B\rMSA|AA|"))
    text = ack(evil, "AA")
    assert text.count("\r") == 2 and "\rMSA|AA|A|\r" in text


def test_worklist_keys_become_filters_and_bad_ranges_are_refused() -> None:
    filters = build_filters(
        {0x00400002: "20261201-", 0x00100010: "DOE*", 0x0020000D: "1.2\\1.3", 0x00080050: ""}
    )
    kinds = {f.column: (f.kind, f.values) for f in filters}
    assert kinds["sps_date"] == ("range", (dt.date(2026, 12, 1), None))
    assert kinds["patient_name"] == ("wild", ("DOE*",))
    assert kinds["study_uid"] == ("list", ("1.2", "1.3"))
    assert "accession_number" not in kinds  # universal match
    with pytest.raises(BadRequest):
        build_filters({0x00400002: "2026-12-01"})
    with pytest.raises(BadRequest):
        build_filters({0x00400003: "2561"})


def test_a_source_outside_the_hl7_peers_is_closed_before_anything_is_read() -> None:
    """With PICTOR_HL7_PEERS, another address gets no answer at all (no ACK, no parse)."""
    import asyncio
    import ipaddress

    from app.hl7.listener import Listener, frame
    from app.services.worklist import Worklist

    async def run() -> bytes:
        listener = Listener(Worklist(None), peers=[ipaddress.ip_network("10.0.0.0/8")])  # type: ignore[arg-type]
        server = await listener.serve("127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(frame(GOOD))
        await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:  # closed with the message unread: a reset, no ACK
            answer = b""
        writer.close()
        server.close()
        return answer

    assert asyncio.run(run()) == b""
