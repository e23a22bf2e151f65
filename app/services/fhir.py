"""FHIR R4 ImagingStudy for the EMR (issue #18): the archive's studies as
http://hl7.org/fhir/R4/imagingstudy.html resources, searched and read.

A study is found through the same search as QIDO-RS (:mod:`app.services.search`, so
matching, limits and what a caller may see are the same), and described from the
QIDO answers of its study, series and instances (PS3.18 Annex F DICOM JSON):

* ``id`` is the Study Instance UID (it fits FHIR's id: at most 64 digits and dots);
  ``identifier`` holds it as ``urn:dicom:uid`` / ``urn:oid:...`` and the Accession
  Number typed ``ACSN`` (HL7 v2 table 0203);
* ``subject`` is a logical reference: the Patient ID with its issuer as an
  Identifier (:func:`patient_system`) and the name as display;
* ``endpoint`` names a contained Endpoint of connectionType ``dicom-wado-rs`` whose
  address is the study's WADO-RS URL (PS3.18 10.4.1);
* ``started`` is Study Date and Time; DICOM times are local, so the archive's own time
  zone is given to them (FHIR requires one with a time); a study without a time gets
  its date only.

Search parameters (http://hl7.org/fhir/R4/imagingstudy.html#search): ``identifier``,
``patient.identifier``, ``accession``, ``modality``, ``started`` (``eq``, ``ge``,
``le``, ``gt``, ``lt`` on dates), ``_count``, ``_offset`` and ``_format``. Anything
else is refused (400, an OperationOutcome saying which), so that a client never takes
a broader answer for the one it asked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote, urlencode

import msgspec

from app.dicom.uids import is_valid_uid
from app.errors import BadRequest, NotAcceptable, NotFound
from app.index.database import Pool
from app.services.search import Level, build_query, run
from app.text import ascii_int

__all__ = [
    "FHIR_JSON",
    "ImagingStudies",
    "capability_statement",
    "imaging_study",
    "operation_outcome",
    "patient_system",
]

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID = "urn:dicom:uid"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
#: the Pictor URN for an Issuer of Patient ID that is neither an OID nor a URI
ISSUER_URN = "urn:pictor:issuer:"

#: FHIR's default page and its largest (``_count``)
DEFAULT_COUNT, MAX_COUNT = 20, 100
#: instances described in one ImagingStudy read at most (a bounded answer; the rest
#: are counted in numberOfInstances and reachable over DICOMweb)
MAX_INSTANCES = 10000

_STUDY_FIELDS = (
    "StudyDate,StudyTime,AccessionNumber,StudyDescription,ModalitiesInStudy,PatientName,"
    "PatientID,IssuerOfPatientID,ReferringPhysicianName,NumberOfStudyRelatedSeries,"
    "NumberOfStudyRelatedInstances"
)
_SERIES_FIELDS = (
    "SeriesNumber,SeriesDescription,Modality,NumberOfSeriesRelatedInstances,SeriesDate,"
    "SeriesTime,BodyPartExamined"
)
_INSTANCE_FIELDS = "SOPClassUID,InstanceNumber,SeriesInstanceUID"
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_DATE = re.compile(r"(eq|ge|le|gt|lt)?(\d{4})-(\d{2})-(\d{2})")
SEARCH_PARAMETERS = (
    "identifier",
    "patient.identifier",
    "accession",
    "modality",
    "started",
    "_count",
    "_offset",
    "_format",
)


def _first(attrs: Mapping[str, Any], tag: str) -> Any:
    entry = attrs.get(tag)
    values = entry.get("Value") if isinstance(entry, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _text(attrs: Mapping[str, Any], tag: str) -> str:
    value = _first(attrs, tag)
    if isinstance(value, dict):  # PN
        value = value.get("Alphabetic")
    return str(value).strip() if value is not None else ""


def _number(attrs: Mapping[str, Any], tag: str) -> int | None:
    value = _first(attrs, tag)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def patient_system(issuer: str) -> str | None:
    """The FHIR Identifier.system of an Issuer of Patient ID: ``urn:oid:`` for an OID,
    the issuer itself when it is a URI, else ``urn:pictor:issuer:<issuer>``."""
    if not issuer:
        return None
    if _OID.fullmatch(issuer):
        return f"urn:oid:{issuer}"
    if _URI.fullmatch(issuer):
        return issuer
    return ISSUER_URN + quote(issuer, safe="")


def issuer_of(system: str) -> str:
    """The Issuer of Patient ID a system names (the inverse of :func:`patient_system`)."""
    if system.startswith(ISSUER_URN):
        return unquote(system[len(ISSUER_URN) :])
    if system.startswith("urn:oid:") and _OID.fullmatch(system[8:]):
        return system[8:]
    return system


def started(study_date: str, study_time: str) -> str | None:
    """A FHIR dateTime of DICOM DA and TM (PS3.5 6.2), in the archive's time zone."""
    if not re.fullmatch(r"\d{8}", study_date):
        return None
    try:
        day = datetime.strptime(study_date, "%Y%m%d")
    except ValueError:
        return None
    digits = re.match(r"(\d{2})(\d{2})?(\d{2})?", study_time)
    if digits is None:
        return day.strftime("%Y-%m-%d")
    hour, minute, second = (int(g) if g else 0 for g in digits.groups())
    if hour > 23 or minute > 59 or second > 60:
        return day.strftime("%Y-%m-%d")
    local = day.replace(hour=hour, minute=minute, second=min(second, 59)).astimezone()
    return local.isoformat(timespec="seconds")


def _coding(code: str) -> dict[str, str]:
    return {"system": DCM, "code": code}


def imaging_study(
    study: Mapping[str, Any],
    series: Sequence[Mapping[str, Any]],
    instances: Mapping[str, list[Mapping[str, Any]]] | None,
    base: str,
) -> dict[str, Any]:
    """One ImagingStudy (R4) from the QIDO answers of a study, its series and, when
    given (a read), its instances by series; ``base`` is the DICOMweb root."""
    uid = _text(study, "0020000D")
    out: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": uid,
        "contained": [
            {
                "resourceType": "Endpoint",
                "id": "wado-rs",
                "status": "active",
                "connectionType": {"system": CONNECTION_TYPE, "code": "dicom-wado-rs"},
                "payloadType": [
                    {"coding": [{"system": DCM, "code": "113014", "display": "Study"}]}
                ],
                "payloadMimeType": ["application/dicom"],
                "address": f"{base}/studies/{uid}",
            }
        ],
        "identifier": [{"use": "official", "system": DICOM_UID, "value": f"urn:oid:{uid}"}],
        "status": "available",
    }
    if accession := _text(study, "00080050"):
        acsn = {"coding": [{"system": V2_0203, "code": "ACSN"}]}
        out["identifier"].append({"type": acsn, "value": accession})
    modalities = (study.get("00080061") or {}).get("Value") or []
    if codes := [str(m) for m in modalities if m]:
        out["modality"] = [_coding(m) for m in dict.fromkeys(codes)]
    subject: dict[str, Any] = {"type": "Patient"}
    if patient_id := _text(study, "00100020"):
        identifier: dict[str, str] = {"value": patient_id}
        if system := patient_system(_text(study, "00100021")):
            identifier["system"] = system
        subject["identifier"] = identifier
    subject["display"] = _text(study, "00100010") or "unknown patient"
    out["subject"] = subject
    if when := started(_text(study, "00080020"), _text(study, "00080030")):
        out["started"] = when
    if referrer := _text(study, "00080090"):
        out["referrer"] = {"display": referrer}
    out["endpoint"] = [{"reference": "#wado-rs"}]
    for key, tag in (("numberOfSeries", "00201206"), ("numberOfInstances", "00201208")):
        if (n := _number(study, tag)) is not None:
            out[key] = n
    if description := _text(study, "00081030"):
        out["description"] = description
    if series:
        out["series"] = [_series(s, instances) for s in series]
    return out


def _series(
    series: Mapping[str, Any], instances: Mapping[str, list[Mapping[str, Any]]] | None
) -> dict[str, Any]:
    uid = _text(series, "0020000E")
    out: dict[str, Any] = {"uid": uid}
    if (number := _number(series, "00200011")) is not None and number >= 0:
        out["number"] = number
    out["modality"] = _coding(_text(series, "00080060") or "OT")  # 1..1; OT: other
    if description := _text(series, "0008103E"):
        out["description"] = description
    if (n := _number(series, "00201209")) is not None:
        out["numberOfInstances"] = n
    if body_part := _text(series, "00180015"):
        out["bodySite"] = {"display": body_part}
    if when := started(_text(series, "00080021"), _text(series, "00080031")):
        out["started"] = when
    if instances is not None and (found := instances.get(uid)):
        out["instance"] = [_instance(i) for i in found]
    return out


def _instance(instance: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uid": _text(instance, "00080018"),
        "sopClass": {
            "system": "urn:ietf:rfc:3986",
            "code": f"urn:oid:{_text(instance, '00080016')}",
        },
    }
    if (number := _number(instance, "00200013")) is not None and number >= 0:
        out["number"] = number
    return out


def operation_outcome(status: int, message: str) -> dict[str, Any]:
    """An OperationOutcome (R4) for an error answer."""
    code = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 406: "not-supported"}
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": code.get(status, "processing" if status < 500 else "exception"),
                "diagnostics": message,
            }
        ],
    }


def capability_statement(fhir_base: str, version: str) -> dict[str, Any]:
    """``GET /fhir/metadata``: what this server does (R4 CapabilityStatement)."""
    search = [
        (
            "identifier",
            "token",
            "the Study Instance UID (urn:dicom:uid|urn:oid:...) or Accession Number",
        ),
        ("patient.identifier", "token", "the patient's identifier, [system|]value"),
        ("accession", "token", "the Accession Number"),
        ("modality", "token", "a modality in the study (DCM code)"),
        ("started", "date", "the study date: eq, ge, le, gt, lt and a date"),
    ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date.today().isoformat(),
        "publisher": "Pictor",
        "kind": "instance",
        "software": {"name": "Pictor", "version": version},
        "implementation": {"description": "Pictor imaging archive", "url": fhir_base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        "type": "ImagingStudy",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": [
                            {"name": name, "type": kind, "documentation": doc}
                            for name, kind, doc in search
                        ],
                    }
                ],
            }
        ],
    }


def _one(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1 and name != "started":
        raise BadRequest(f"{name} is given more than once; give it once")
    value = values[0]
    if "," in value:
        raise BadRequest(
            f"{name}: several values (a comma) are not supported; search once for each"
        )
    return value


def _token(value: str) -> tuple[str | None, str]:
    system, bar, code = value.partition("|")
    return (system, code) if bar else (None, value)


def _date_range(values: list[str]) -> str:
    low: date | None = None
    high: date | None = None
    for value in values:
        match = _DATE.fullmatch(value)
        if match is None:
            raise BadRequest(
                f"started={value[:40]!r}: give a prefix (eq, ge, le, gt, lt) and YYYY-MM-DD"
            )
        prefix = match.group(1) or "eq"
        try:
            day = date(*(int(g) for g in match.groups()[1:]))
        except ValueError:
            raise BadRequest(f"started={value[:40]!r} is not a date") from None
        if prefix in ("eq", "ge", "gt"):
            start = day + timedelta(days=1) if prefix == "gt" else day
            low = start if low is None else max(low, start)
        if prefix in ("eq", "le", "lt"):
            end = day - timedelta(days=1) if prefix == "lt" else day
            high = end if high is None else min(high, end)
    if low is not None and high is not None and low > high:
        raise BadRequest("started: the dates given leave no day to match")
    return f"{low.strftime('%Y%m%d') if low else ''}-{high.strftime('%Y%m%d') if high else ''}"


def qido_parameters(params: Mapping[str, list[str]]) -> list[tuple[str, str]]:
    """The QIDO-RS keys (PS3.18 10.6.1.2) a FHIR search asks for."""
    for name in params:
        if name not in SEARCH_PARAMETERS:
            base = name.split(":")[0]
            what = "modifiers are" if base in SEARCH_PARAMETERS else f"{name[:40]!r} is"
            raise BadRequest(
                f"{what} not supported; the search parameters are {', '.join(SEARCH_PARAMETERS)}"
            )
    out: list[tuple[str, str]] = []
    if (value := _one(params, "identifier")) is not None:
        system, code = _token(value)
        if system == DICOM_UID or (system is None and code.startswith("urn:oid:")):
            uid = code.removeprefix("urn:oid:")
            if not is_valid_uid(uid):
                raise BadRequest(f"identifier: {uid[:64]!r} is not a Study Instance UID")
            out.append(("StudyInstanceUID", uid))
        elif system in (None, "", V2_0203):
            out.append(("AccessionNumber", code))
        else:
            raise BadRequest(
                f"identifier: the system {system[:64]!r} is not known; use {DICOM_UID} or none"
            )
    if (value := _one(params, "patient.identifier")) is not None:
        system, code = _token(value)
        if not code:
            raise BadRequest("patient.identifier: give the identifier's value")
        out.append(("PatientID", code))
        if system:
            out.append(("IssuerOfPatientID", issuer_of(system)))
    if (value := _one(params, "accession")) is not None:
        out.append(("AccessionNumber", _token(value)[1]))
    if (value := _one(params, "modality")) is not None:
        system, code = _token(value)
        if system not in (None, "", DCM):
            raise BadRequest(f"modality: the system must be {DCM}")
        out.append(("ModalitiesInStudy", code))
    if values := params.get("started"):
        out.append(("StudyDate", _date_range(values)))
    if not out:
        raise BadRequest(
            "give at least one of identifier, patient.identifier, accession, modality, started"
        )
    return out


def accept_format(accept: str | None, fmt: str | None) -> None:
    """JSON only (``_format`` wins over Accept, as FHIR says); else 406."""
    if fmt is not None:
        if fmt not in ("json", FHIR_JSON, "application/json"):
            raise NotAcceptable(f"_format={fmt[:40]!r}: this server answers JSON only")
        return
    if accept is None or not accept.strip():
        return
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        if "q=0" in params.replace(" ", "") and not re.search(r"q=0\.\d*[1-9]", params):
            continue
        if media.strip().lower() in (FHIR_JSON, "application/json", "application/*", "*/*"):
            return
    raise NotAcceptable(f"this server answers {FHIR_JSON} only")


class ImagingStudies:
    """Search and read of ImagingStudy over the archive's search."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def _qido(
        self, level: Level, params: list[tuple[str, str]], base: str, **scope: str | None
    ) -> tuple[list[dict[str, Any]], bool]:
        query = build_query(level, params, **scope)  # type: ignore[arg-type]
        found = await run(self.pool, query, base)
        rows: list[dict[str, Any]] = msgspec.json.decode(found.body)
        return rows, found.more

    async def _series(self, uid: str, base: str, confined: str | None) -> list[dict[str, Any]]:
        rows, _ = await self._qido(
            Level.SERIES, [("includefield", _SERIES_FIELDS)], base, study=uid, confined=confined
        )
        return sorted(rows, key=lambda s: (_number(s, "00200011") or 0, _text(s, "0020000E")))

    async def search(
        self,
        params: Mapping[str, list[str]],
        base: str,
        fhir_base: str,
        confined: str | None = None,
    ) -> dict[str, Any]:
        """A searchset Bundle of the studies ``params`` match, ``_count`` a page, with
        ``self`` and ``next`` links."""
        keys = qido_parameters(params)
        count = _bounded(_one(params, "_count"), "_count", DEFAULT_COUNT, MAX_COUNT)
        offset = _bounded(_one(params, "_offset"), "_offset", 0, 1 << 31)
        page = [
            *keys,
            ("includefield", _STUDY_FIELDS),
            ("limit", str(count)),
            ("offset", str(offset)),
        ]
        studies, more = await self._qido(Level.STUDY, page, base, confined=confined)
        entries = []
        for study in studies:
            uid = _text(study, "0020000D")
            resource = imaging_study(study, await self._series(uid, base, confined), None, base)
            entries.append(
                {
                    "fullUrl": f"{fhir_base}/ImagingStudy/{uid}",
                    "resource": resource,
                    "search": {"mode": "match"},
                }
            )
        query = [(k, v) for k, vs in params.items() if k not in ("_count", "_offset") for v in vs]
        link = [{"relation": "self", "url": _url(fhir_base, query, count, offset)}]
        if more:
            link.append({"relation": "next", "url": _url(fhir_base, query, count, offset + count)})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if not more:
            bundle["total"] = offset + len(entries)
        return bundle | {"link": link, "entry": entries}

    async def read(self, uid: str, base: str, confined: str | None = None) -> dict[str, Any]:
        """One ImagingStudy with its series and instances; 404 when there is none."""
        if not is_valid_uid(uid):
            raise NotFound(f"ImagingStudy/{uid[:64]} is not known")
        studies, _ = await self._qido(
            Level.STUDY,
            [("StudyInstanceUID", uid), ("includefield", _STUDY_FIELDS)],
            base,
            confined=confined,
        )
        if not studies:
            raise NotFound(f"ImagingStudy/{uid} is not known")
        series = await self._series(uid, base, confined)
        rows, _ = await self._qido(
            Level.INSTANCE,
            [("includefield", _INSTANCE_FIELDS), ("limit", str(MAX_INSTANCES))],
            base,
            study=uid,
            confined=confined,
        )
        by_series: dict[str, list[Mapping[str, Any]]] = {}
        for row in rows:
            by_series.setdefault(_text(row, "0020000E"), []).append(row)
        for found in by_series.values():
            found.sort(key=lambda i: (_number(i, "00200013") or 0, _text(i, "00080018")))
        return imaging_study(studies[0], series, by_series, base)


def _bounded(value: str | None, name: str, default: int, most: int) -> int:
    if value is None:
        return default
    number = ascii_int(value.strip(), 10)
    if number is None or number < 0 or (name == "_count" and number == 0):
        raise BadRequest(f"{name} must be a whole number{' from 1' if name == '_count' else ''}")
    return min(number, most)


def _url(fhir_base: str, query: list[tuple[str, str]], count: int, offset: int) -> str:
    pairs = [*query, ("_count", str(count))] + ([("_offset", str(offset))] if offset else [])
    return f"{fhir_base}/ImagingStudy?{urlencode(pairs)}"
