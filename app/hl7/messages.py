"""HL7 v2 messages (v2.3 to v2.5.1) read into what the worklist service acts on.

Parsing is the maintained ``hl7`` package's; this module maps its fields to DICOM, the
way IHE Scheduled Workflow does (IHE RAD TF-2 RAD-1, RAD-4, RAD-12, RAD-13):

* PID-3 (the first repetition): the ID is Patient ID (0010,0020), its assigning
  authority (CX.4, the namespace, else the universal ID) Issuer of Patient ID (0010,0021).
  PID-5 Patient's Name (XPN family^given^middle^suffix^prefix becomes DICOM
  family^given^middle^prefix^suffix, PS3.5 6.2), PID-7 Birth Date, PID-8 Sex.
* MRG-1: the prior patient of an ADT^A40 merge.
* each ORC starts an order; its OBR, TQ1, IPC and ZDS segments follow it. ORC-1 is the
  order control (NW new, CA / DC cancel / discontinue, XO change); ORC-2 / ORC-3 the
  placer and filler order numbers that later messages name the order by.
* OBR-4 Requested Procedure Code and Description, OBR-18 Accession Number, OBR-19
  Requested Procedure ID, OBR-20 Scheduled Procedure Step ID, OBR-21 Scheduled Station
  AE Title, OBR-24 Modality, the start time and priority of ORC-7 / OBR-27 (TQ, v2.3 and
  v2.4) or TQ1-7 / TQ1-9 (v2.5), else OBR-36; ZDS-1 Study Instance UID (IHE v2.3.1).
* IPC (OMI^O23, v2.5): Accession Number, Requested Procedure ID, Study Instance UID,
  SPS ID, Modality, Scheduled Station Name, Location and AE Title, over the OBR's.

A value the message lacks is left empty or made up where DICOM needs one: the Accession
Number falls back to the filler, then the placer order number; the Study Instance UID
is generated (2.25, PS3.5 B.2); the Requested Procedure and SPS IDs default to the
accession number. What cannot be read is a :class:`MessageError` carrying the HL7 error
code (table 0357) and the field it is about, which the listener answers with AE or AR.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import hl7

#: HL7 table 0357 (message error condition codes)
SEGMENT_SEQUENCE = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
TABLE_VALUE_NOT_FOUND = 103
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT = 201
UNSUPPORTED_VERSION = 203
UNKNOWN_KEY = 204
INTERNAL_ERROR = 207

ERROR_TEXT = {
    SEGMENT_SEQUENCE: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT: "Unsupported event code",
    UNSUPPORTED_VERSION: "Unsupported version id",
    UNKNOWN_KEY: "Unknown key identifier",
    INTERNAL_ERROR: "Application internal error",
}

VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
#: (message type, trigger event) handled
SUPPORTED = {
    ("ADT", "A01"),  # admit
    ("ADT", "A04"),  # register
    ("ADT", "A08"),  # update patient information
    ("ADT", "A40"),  # merge patient (patient identifier list)
    ("ORM", "O01"),  # order (v2.3, v2.4)
    ("OMI", "O23"),  # imaging order (v2.5)
}
#: ORC-1 order controls (HL7 table 0119) that are acted on
NEW, CANCEL, DISCONTINUE, CHANGE = "NW", "CA", "DC", "XO"
ORDER_CONTROLS = (NEW, CANCEL, DISCONTINUE, CHANGE)
#: HL7 table 0001 -> Patient's Sex (0010,0040) enumerated values (PS3.3 C.7.1.1)
SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O", "U": ""}
#: TQ.6 / TQ1-9 priority (HL7 table 0027) -> Requested Procedure Priority (0040,1003)
PRIORITY = {"S": "STAT", "A": "HIGH", "P": "HIGH", "C": "MEDIUM", "R": "ROUTINE", "T": "MEDIUM"}
#: MSH-18 character set -> Python codec, and the DICOM Specific Character Set is UTF-8
CHARSETS = {
    "": "utf-8",
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/5": "iso8859-5",
    "8859/7": "iso8859-7",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
}
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")
#: characters that delimit DICOM values and PN components, never inside one
_DICOM_DELIMITERS = str.maketrans({"\\": " ", "^": " ", "=": " "})
_LIMITS = {"LO": 64, "SH": 16, "CS": 16, "AE": 16, "PN": 64, "UI": 64, "LT": 10240}


class MessageError(ValueError):
    """The message cannot be acted on: ``code`` (HL7 table 0357), ``where`` the
    segment and field (``PID-3``), and whether the sender should not resend it as is
    (``reject``: AR, else AE)."""

    def __init__(self, message: str, *, code: int, where: str = "", reject: bool = False):
        super().__init__(message)
        self.code = code
        self.where = where
        self.reject = reject


@dataclass(frozen=True)
class Header:
    """MSH: who sent it and what it is (MSH-9, MSH-10, MSH-12)."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str
    event: str
    control_id: str
    version: str


@dataclass(frozen=True)
class Patient:
    patient_id: str
    issuer: str  # '' when PID-3 names no assigning authority
    #: the Patient module (DICOM JSON): the attributes this message gives a value or
    #: explicitly clears (an HL7 ``""``); attributes it leaves out are not here
    attrs: dict[str, Any]


@dataclass(frozen=True)
class Order:
    """One ORC and what follows it: a Scheduled Procedure Step of the worklist."""

    control: str
    placer: str | None
    filler: str | None
    accession_number: str
    requested_procedure_id: str
    sps_id: str
    study_uid: str
    modality: str | None
    station_aet: str | None
    performing_physician: str | None
    start: dt.datetime | None
    priority: str | None
    #: the item's attributes other than the Patient module (DICOM JSON), the
    #: Scheduled Procedure Step Sequence (0040,0100) with its one item among them
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    header: Header
    patient: Patient | None
    prior: Patient | None = None  # MRG-1 of ADT^A40
    orders: tuple[Order, ...] = ()

    @property
    def kind(self) -> tuple[str, str]:
        return (self.header.message_type, self.header.event)


def decode(raw: bytes) -> str:
    """The message text, decoded as MSH-18 says (UTF-8 when it says nothing)."""
    charset = ""
    head = raw.split(b"\r", 1)[0]
    if head.startswith(b"MSH") and len(head) > 8:
        sep = head[3:4]
        fields = head.split(sep)
        if len(fields) > 17:
            charset = fields[17].split(head[4:5] or b"^")[0].decode("ascii", "replace").strip()
    codec = CHARSETS.get(charset.upper())
    if codec is None:
        raise MessageError(
            f"MSH-18 character set {charset[:20]!r} is not supported",
            code=TABLE_VALUE_NOT_FOUND,
            where="MSH-18",
        )
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        if charset:
            raise MessageError(
                f"the message is not valid {charset}", code=DATA_TYPE_ERROR, where="MSH-18"
            ) from None
        return raw.decode("latin-1")  # HL7's most common unlabelled character set


def header_of(text: str) -> Header:
    """The MSH of ``text``, read without the rest (so a bad message still gets an ACK
    addressed to its sender)."""
    line = text.lstrip("\r\n").split("\r", 1)[0]
    if not line.startswith("MSH") or len(line) < 8:
        raise MessageError("the message does not start with MSH", code=SEGMENT_SEQUENCE)
    sep, comp = line[3], line[4]
    parts = line.split(sep)
    parts = [parts[0], sep, *parts[1:]]  # MSH-1 is the separator itself

    def get(n: int, c: int = 0) -> str:
        value = parts[n] if n < len(parts) else ""
        pieces = value.split(comp)
        return pieces[c].strip() if c < len(pieces) else ""

    return Header(
        sending_application=get(3),
        sending_facility=get(4),
        receiving_application=get(5),
        receiving_facility=get(6),
        message_type=get(9, 0).upper(),
        event=get(9, 1).upper(),
        control_id=get(10),
        version=get(12, 0),
    )


def parse(text: str) -> Message:
    """Read a message this archive acts on; :class:`MessageError` when it cannot."""
    header = header_of(text)
    if not header.control_id:
        raise MessageError("MSH-10 message control ID is empty", code=101, where="MSH-10")
    if header.version not in VERSIONS:
        raise MessageError(
            f"HL7 version {header.version[:10]!r} is not one of {', '.join(VERSIONS)}",
            code=UNSUPPORTED_VERSION,
            where="MSH-12",
            reject=True,
        )
    if header.message_type not in {t for t, _ in SUPPORTED}:
        raise MessageError(
            f"message type {header.message_type[:10]!r} is not handled here",
            code=UNSUPPORTED_MESSAGE_TYPE,
            where="MSH-9",
            reject=True,
        )
    if (header.message_type, header.event) not in SUPPORTED:
        raise MessageError(
            f"{header.message_type}^{header.event[:10]} is not handled here",
            code=UNSUPPORTED_EVENT,
            where="MSH-9",
            reject=True,
        )
    try:
        msg = hl7.parse(text.strip("\r\n") + "\r")
    except Exception as exc:  # noqa: BLE001 - the package raises several kinds
        raise MessageError(f"the message cannot be parsed: {exc}", code=DATA_TYPE_ERROR) from None
    reader = _Reader(msg)
    if "PID" not in reader.counts:
        raise MessageError("the message has no PID segment", code=100, where="PID")
    patient = _patient(reader, "PID", 1, 3, names=True)
    prior = None
    if header.event == "A40":
        if "MRG" not in reader.counts:
            raise MessageError("an A40 merge needs an MRG segment", code=100, where="MRG")
        prior = _patient(reader, "MRG", 1, 1, names=False)
    orders: tuple[Order, ...] = ()
    if header.message_type in ("ORM", "OMI"):
        orders = tuple(_orders(reader, patient))
        if not orders:
            raise MessageError("an order message needs an ORC segment", code=100, where="ORC")
    return Message(header, patient, prior, orders)


class _Reader:
    """Field access by segment occurrence; absent segments and fields read as ''."""

    def __init__(self, msg: hl7.Message) -> None:
        self.msg = msg
        self.counts: dict[str, int] = {}
        #: (segment id, occurrence) in message order
        self.order: list[tuple[str, int]] = []
        for seg in msg:
            name = str(seg[0]).strip().upper()
            self.counts[name] = self.counts.get(name, 0) + 1
            self.order.append((name, self.counts[name]))

    def get(self, seg: str, occ: int, f: int, c: int = 1, s: int = 1, r: int = 1) -> str:
        if occ > self.counts.get(seg, 0):
            return ""
        try:
            value = self.msg.extract_field(seg, occ, f, r, c, s)
        except (IndexError, KeyError):
            return ""
        return str(value).strip()


def _text(value: str, where: str, vr: str) -> str:
    """An HL7 value as a DICOM value of ``vr``: delimiters gone, length checked."""
    out = value.translate(_DICOM_DELIMITERS).strip() if vr != "LT" else value.strip()
    if any(ord(ch) < 0x20 for ch in out):
        raise MessageError(f"{where} holds control characters", code=DATA_TYPE_ERROR, where=where)
    limit = _LIMITS.get(vr, 64)
    if len(out) > limit:
        raise MessageError(
            f"{where} is longer than the {limit} characters DICOM allows",
            code=DATA_TYPE_ERROR,
            where=where,
        )
    return out


def _elem(vr: str, value: str | None) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]} if value else {"vr": vr}


def _pn(value: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": value}]} if value else {"vr": "PN"}


def _patient(r: _Reader, seg: str, occ: int, f: int, *, names: bool) -> Patient:
    where = f"{seg}-{f}"
    patient_id = _text(r.get(seg, occ, f, 1), where, "LO")
    if not patient_id:
        raise MessageError(f"{where} (patient identifier) is empty", code=101, where=where)
    issuer = r.get(seg, occ, f, 4, 1) or r.get(seg, occ, f, 4, 2)
    issuer = _text(issuer, f"{where}.4", "LO")
    attrs: dict[str, Any] = {
        "00100020": _elem("LO", patient_id),
        "00100021": _elem("LO", issuer),
    }
    if names:
        name = _person(r, seg, occ, 5, family_first=True)
        if name is not None:
            attrs["00100010"] = _pn(name)
        birth = r.get(seg, occ, 7)
        if birth:
            attrs["00100030"] = _elem("DA", _date(birth, f"{seg}-7"))
        sex = r.get(seg, occ, 8).upper()
        if sex:
            if sex == '""':
                attrs["00100040"] = {"vr": "CS"}
            elif sex not in SEX:
                raise MessageError(
                    f"{seg}-8 sex {sex[:5]!r} is not in HL7 table 0001",
                    code=TABLE_VALUE_NOT_FOUND,
                    where=f"{seg}-8",
                )
            else:
                attrs["00100040"] = _elem("CS", SEX[sex])
    return Patient(patient_id, issuer, attrs)


def _person(r: _Reader, seg: str, occ: int, f: int, *, family_first: bool) -> str | None:
    """XPN (family_first) or XCN (ID first) as a DICOM PN; None when the field is
    absent, '' when the message clears it (``""``)."""
    base = 1 if family_first else 2
    raw = r.get(seg, occ, f, base)
    if raw == '""':
        return ""
    comps = [r.get(seg, occ, f, base + i) for i in range(5)]
    if not any(comps):
        return None
    family, given, middle, suffix, prefix = comps
    where = f"{seg}-{f}"
    parts = [_text(p, where, "PN") for p in (family, given, middle, prefix, suffix)]
    while parts and not parts[-1]:
        parts.pop()
    name = "^".join(parts)
    if len(name) > 64:
        raise MessageError(f"{where} is longer than 64 characters", code=102, where=where)
    return name


def _timestamp(value: str, where: str) -> dt.datetime | None:
    """An HL7 TS/DTM (to the minute at least, else the date) as local time."""
    if not value or value == '""':
        return None
    m = _TS.match(value)
    if m is None:
        raise MessageError(
            f"{where} {value[:26]!r} is not an HL7 date/time", code=DATA_TYPE_ERROR, where=where
        )
    year, month, day, hour, minute, second = (int(g) if g else None for g in m.groups()[:6])
    try:
        return dt.datetime(year or 1, month or 1, day or 1, hour or 0, minute or 0, second or 0)
    except ValueError:
        raise MessageError(
            f"{where} {value[:26]!r} is not a real date", code=DATA_TYPE_ERROR, where=where
        ) from None


def _date(value: str, where: str) -> str:
    if value == '""':
        return ""
    stamp = _timestamp(value, where)
    if stamp is None or len(value) < 8:
        return ""  # a year or a month alone is not a DICOM DA
    return stamp.strftime("%Y%m%d")


def _orders(r: _Reader, patient: Patient) -> list[Order]:
    groups: list[dict[str, int]] = []
    for name, occ in r.order:
        if name == "ORC":
            groups.append({"ORC": occ})
        elif name in ("OBR", "TQ1", "IPC", "ZDS") and groups:
            groups[-1].setdefault(name, occ)
        elif name in ("OBR", "TQ1", "IPC") and not groups:
            raise MessageError(f"{name} comes before any ORC", code=100, where=name)
    return [_order(r, g) for g in groups]


def _order(r: _Reader, g: dict[str, int]) -> Order:
    orc, obr, tq1, ipc, zds = (g.get(k, 0) for k in ("ORC", "OBR", "TQ1", "IPC", "ZDS"))
    control = r.get("ORC", orc, 1).upper()
    if control not in ORDER_CONTROLS:
        raise MessageError(
            f"ORC-1 order control {control[:4]!r} is not NW, CA, DC or XO",
            code=TABLE_VALUE_NOT_FOUND,
            where="ORC-1",
        )
    placer = _text(r.get("ORC", orc, 2) or r.get("OBR", obr, 2), "ORC-2", "LO") or None
    filler = _text(r.get("ORC", orc, 3) or r.get("OBR", obr, 3), "ORC-3", "LO") or None
    if placer is None and filler is None:
        raise MessageError(
            "the order has neither a placer (ORC-2) nor a filler (ORC-3) order number",
            code=REQUIRED_FIELD_MISSING,
            where="ORC-2",
        )

    def pick(*sources: tuple[str, int, int, int, str], vr: str = "SH") -> str:
        for seg, occ, f, c, where in sources:
            if occ and (value := r.get(seg, occ, f, c)) and value != '""':
                return _text(value, where, vr)
        return ""

    accession = pick(("IPC", ipc, 1, 1, "IPC-1"), ("OBR", obr, 18, 1, "OBR-18"))
    accession = accession or _text((filler or placer or "")[:16], "ORC-3", "SH")
    rp_id = pick(("IPC", ipc, 2, 1, "IPC-2"), ("OBR", obr, 19, 1, "OBR-19")) or accession
    sps_id = pick(("IPC", ipc, 4, 1, "IPC-4"), ("OBR", obr, 20, 1, "OBR-20")) or rp_id
    study_uid = pick(("IPC", ipc, 3, 1, "IPC-3"), ("ZDS", zds, 1, 1, "ZDS-1"), vr="UI")
    if study_uid and not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", study_uid):
        raise MessageError(
            f"the Study Instance UID {study_uid[:64]!r} is not a UID",
            code=DATA_TYPE_ERROR,
            where="ZDS-1" if zds else "IPC-3",
        )
    study_uid = study_uid or f"2.25.{uuid.uuid4().int}"
    modality = pick(("IPC", ipc, 5, 1, "IPC-5"), ("OBR", obr, 24, 1, "OBR-24"), vr="CS")
    station_aet = pick(("IPC", ipc, 9, 1, "IPC-9"), ("OBR", obr, 21, 1, "OBR-21"), vr="AE")
    station_name = pick(("IPC", ipc, 7, 1, "IPC-7"), vr="SH")
    location = pick(("IPC", ipc, 8, 1, "IPC-8"), vr="SH")
    start_text = (
        (r.get("TQ1", tq1, 7) if tq1 else "")
        or r.get("ORC", orc, 7, 4)
        or r.get("OBR", obr, 27, 4)
        or r.get("OBR", obr, 36)
    )
    start = _timestamp(start_text, "TQ1-7" if tq1 else "ORC-7.4")
    priority_code = (
        (r.get("TQ1", tq1, 9) if tq1 else "") or r.get("ORC", orc, 7, 6) or r.get("OBR", obr, 27, 6)
    ).upper()
    priority = PRIORITY.get(priority_code, "ROUTINE" if priority_code else None)
    code = _text(r.get("OBR", obr, 4, 1), "OBR-4", "SH")
    meaning = _text(r.get("OBR", obr, 4, 2), "OBR-4.2", "LO")
    scheme = _text(r.get("OBR", obr, 4, 3), "OBR-4.3", "SH")
    referring = _person(r, "PV1", 1, 8, family_first=False)
    if referring is None:
        referring = _person(r, "OBR", obr, 16, family_first=False) if obr else None
    performing = _person(r, "OBR", obr, 34, family_first=False) if obr else None
    procedure_code: list[dict[str, Any]] = []
    if code:
        procedure_code.append(
            {
                "00080100": _elem("SH", code),
                "00080102": _elem("SH", scheme or "L"),
                "00080104": _elem("LO", meaning or code),
            }
        )
    sps: dict[str, Any] = {
        "00400001": _elem("AE", station_aet),  # Scheduled Station AE Title
        "00400002": _elem("DA", start.strftime("%Y%m%d") if start else None),
        "00400003": _elem("TM", start.strftime("%H%M%S") if start else None),
        "00080060": _elem("CS", modality),
        "00400006": _pn(performing or ""),  # Scheduled Performing Physician's Name
        "00400007": _elem("LO", meaning or code),  # SPS Description
        "00400010": _elem("SH", station_name),
        "00400011": _elem("SH", location),
        "00400009": _elem("SH", sps_id),
        "00400020": _elem("CS", "SCHEDULED"),  # SPS Status
    }
    if procedure_code:
        sps["00400008"] = {"vr": "SQ", "Value": procedure_code}  # Scheduled Protocol Code
    attrs: dict[str, Any] = {
        "00080050": _elem("SH", accession),
        "00080090": _pn(referring or ""),
        "0020000D": _elem("UI", study_uid),
        "00401001": _elem("SH", rp_id),  # Requested Procedure ID
        "00321060": _elem("LO", meaning or code),  # Requested Procedure Description
        "00401003": _elem("SH", priority),  # Requested Procedure Priority
        "00402016": _elem("LO", placer),  # Placer Order Number / Imaging Service Request
        "00402017": _elem("LO", filler),  # Filler Order Number / Imaging Service Request
        "00400100": {"vr": "SQ", "Value": [sps]},
    }
    if procedure_code:
        attrs["00321064"] = {"vr": "SQ", "Value": procedure_code}  # Requested Procedure Code
    return Order(
        control=control,
        placer=placer,
        filler=filler,
        accession_number=accession,
        requested_procedure_id=rp_id,
        sps_id=sps_id,
        study_uid=study_uid,
        modality=modality or None,
        station_aet=station_aet or None,
        performing_physician=performing or None,
        start=start,
        priority=priority,
        attrs=attrs,
    )


# -- acknowledgements -------------------------------------------------------------------


def ack(
    header: Header | None,
    code: str,
    text: str = "",
    *,
    error: MessageError | None = None,
    application: str = "PICTOR",
    now: dt.datetime | None = None,
) -> str:
    """An original-mode ACK (HL7 v2.5.1 2.9.2): MSA-1 ``code`` (AA, AE, AR), MSA-2 the
    message's control ID, MSA-3 ``text``, and for an error an ERR segment: ERR-1 in
    v2.3 / v2.4, ERR-2, -3, -4 and -8 from v2.5 (the segment changed in v2.5)."""
    h = header or Header("", "", "", "", "", "", "", "2.5.1")
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d%H%M%S")
    version = h.version if h.version in VERSIONS else "2.5.1"
    event = h.event if re.fullmatch(r"[A-Z0-9]{3}", h.event or "") else ""
    fields = [
        "MSH",
        "^~\\&",
        _esc(h.receiving_application or application),
        _esc(h.receiving_facility),
        _esc(h.sending_application),
        _esc(h.sending_facility),
        stamp,
        "",
        f"ACK^{event}^ACK" if event else "ACK",
        f"A{uuid.uuid4().hex[:19]}",
        "P",
        version,
    ]
    lines = ["|".join(fields), "|".join(["MSA", code, _esc(h.control_id), _esc(text[:80])])]
    if error is not None:
        seg, _, fld = error.where.partition("-")
        location = f"{seg}^1^{fld.split('.')[0]}" if seg and fld else seg
        code_text = f"{error.code}^{_esc(ERROR_TEXT.get(error.code, 'Error'))}^HL70357"
        if version in ("2.3", "2.3.1", "2.4"):
            lines.append(f"ERR|{location}^{code_text.replace('^', '&')}")
        else:
            lines.append(f"ERR||{location}|{code_text}|E||||{_esc(str(error)[:250])}")
    return "\r".join(lines) + "\r"


def _esc(value: str) -> str:
    """HL7 escape sequences for the delimiters (v2.5.1 2.7.4); control characters go."""
    out = value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    out = out.replace("&", "\\T\\").replace("~", "\\R\\")
    return "".join(ch for ch in out if ord(ch) >= 0x20)
