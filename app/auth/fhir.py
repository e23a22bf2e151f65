"""Audit events as FHIR R4 AuditEvent resources, in the manner of IHE Basic Audit Log
Patterns (BALP) and DICOM PS3.15 Annex A.5 (audit message vocabulary).

Each event becomes one AuditEvent (http://hl7.org/fhir/R4/auditevent.html):

* ``type``: DICOM (DCM) 110112 "Query" for QIDO-RS and C-FIND, 110106 "Export" for data
  leaving the archive (WADO-RS, rendered, C-MOVE, C-GET, opening a study link),
  110107 "Import" for STOW-RS and C-STORE, 110114 "User Authentication" for an
  association refused, and for the admin API the FHIR ``rest`` type;
* ``subtype``: the RESTful interaction (``search-type``, ``read``, ``create``,
  http://hl7.org/fhir/restful-interaction) for DICOMweb, the DIMSE service for DIMSE;
* ``action``: E (execute: a query), R (read), C (create); ``recorded``; ``outcome``
  0 success, 4 minor failure (refused: 401, 403, 404 and other 4xx), 8 serious failure
  (5xx, DIMSE failure statuses), with ``outcomeDesc`` giving the status;
* ``agent``: the requestor (``who``: token name, JWT subject, study link, AE title; its
  network address) and Pictor itself, with the DICOM roles 110153 "Source Role ID" /
  110152 "Destination Role ID" saying which way data went;
* ``source``: Pictor, an application server (security-source-type 4);
* ``entity``: the patient (BALP: type 1 Person, role 1 Patient, the Patient ID), each
  study by its Study Instance UID (type 2 System Object, role 3 Report, DCM 110180
  "Study Instance UID"), and a search's query (role 24 Query, base64 as FHIR requires).
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Any

DCM = "http://dicom.nema.org/resources/ontology/DCM"
REST_INTERACTION = "http://hl7.org/fhir/restful-interaction"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
NETWORK_TYPE_IP = "2"

_QUERY = (DCM, "110112", "Query")
_EXPORT = (DCM, "110106", "Export")
_IMPORT = (DCM, "110107", "Import")
_AUTH = (DCM, "110114", "User Authentication")
_REST = (EVENT_TYPE, "rest", "RESTful Operation")


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def classify(action: str) -> tuple[tuple[str, str, str], str, tuple[str, str, str] | None]:
    """(type coding, action code, subtype coding) of an audit event's action."""
    if action.startswith("qido") or action in ("iid", "dimse-c-find"):
        sub = (
            (REST_INTERACTION, "search-type", "search-type")
            if action != "dimse-c-find"
            else (DCM, "C-FIND", "C-FIND")
        )
        return _QUERY, "E", sub
    if action == "stow":
        return _IMPORT, "C", (REST_INTERACTION, "create", "create")
    if action == "dimse-c-store":
        return _IMPORT, "C", (DCM, "C-STORE", "C-STORE")
    if action in ("dimse-c-move", "dimse-c-get"):
        service = action[6:].upper()
        return _EXPORT, "R", (DCM, service, service)
    if action == "dimse-associate":
        return _AUTH, "E", None
    if action.startswith("wado") or action == "link-open":
        return _EXPORT, "R", (REST_INTERACTION, "read", "read")
    return _REST, "E", None


def _outcome(status: int, dimse: bool, outcome: str) -> str:
    if outcome in ("denied", "not-found"):
        return "4"
    if dimse:
        if status in (0, 0xFF00, 0xFF01) or 0xB000 <= status <= 0xBFFF:
            return "0"
        return "4" if status in (0xA801, 0xFE00) else "8"
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def audit_event(row: dict[str, Any]) -> dict[str, Any]:
    """One audit_event row (as :func:`app.index.access.query_audit` returns it)."""
    action: str = row["action"]
    dimse = action.startswith("dimse-")
    event_type, action_code, subtype = classify(action)
    imports = event_type == _IMPORT
    status = int(row["status"])
    requestor: dict[str, Any] = {
        "type": {
            "coding": [
                _coding(DCM, "110153", "Source Role ID")
                if imports
                else _coding(DCM, "110152", "Destination Role ID")
            ]
        },
        "who": {"identifier": {"value": row["who"]}, "display": row["who"]},
        "requestor": True,
    }
    if row.get("client"):
        requestor["network"] = {"address": row["client"], "type": NETWORK_TYPE_IP}
    server = {
        "type": {
            "coding": [
                _coding(DCM, "110152", "Destination Role ID")
                if imports
                else _coding(DCM, "110153", "Source Role ID")
            ]
        },
        "who": {"display": "Pictor"},
        "requestor": False,
    }
    entities: list[dict[str, Any]] = []
    for patient in row.get("patient_ids") or []:
        entities.append(
            {
                "what": {"identifier": {"value": patient}},
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    for study in row.get("study_uids") or []:
        entities.append(
            {
                "what": {
                    "identifier": {
                        "system": "urn:dicom:uid",
                        "type": {"coding": [_coding(DCM, "110180", "Study Instance UID")]},
                        "value": f"urn:oid:{study}",
                    }
                },
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "3", "Report"),
            }
        )
    if row.get("query"):
        entities.append(
            {
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "24", "Query"),
                "query": base64.b64encode(str(row["query"]).encode()).decode(),
            }
        )
    at: dt.datetime = row["at"]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(row["id"]),
        "type": _coding(*event_type),
        "action": action_code,
        "recorded": at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "outcome": _outcome(status, dimse, row["outcome"]),
        "outcomeDesc": (f"DIMSE status 0x{status:04X}" if dimse else f"HTTP {status}")
        + f" ({row['outcome']}; {action})",
        "agent": [requestor, server],
        "source": {
            "site": "Pictor",
            "observer": {"display": "Pictor"},
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
    }
    if subtype is not None:
        event["subtype"] = [_coding(*subtype)]
    if entities:
        event["entity"] = entities
    return event


def _event_uuid(event_id: int) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"pictor-audit-{event_id}")


def bundle(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A FHIR ``searchset`` Bundle of the events."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(rows),
        "entry": [
            {
                "fullUrl": f"urn:uuid:{_event_uuid(row['id'])}",
                "resource": audit_event(row),
            }
            for row in rows
        ],
    }
