"""FHIR R4 ImagingStudy for the EMR (issue #18): search, read and the
CapabilityStatement of a real ``pictor serve``, every resource validated with
``fhir.resources`` (its R4B models: ImagingStudy, Endpoint, Bundle, CapabilityStatement
and OperationOutcome are unchanged from R4 4.0.1 there)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome
from pydicom.filebase import DicomBytesIO

from conftest import Archive, Pictor, multipart, pictor_cli, until
from synth import ct_slice, new_uids

FHIR_JSON = "application/fhir+json"


def _instance(study: str, series: str, index: int, **attrs: Any) -> bytes:
    ds = pydicom.dcmread(DicomBytesIO(ct_slice(study, series, index, rows=16, cols=16)))
    for key, value in attrs.items():
        setattr(ds, key, value)
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def studies(archive: Archive) -> dict[str, Any]:
    """Two studies of one patient (issuer HOSP), one of another (issuer an OID)."""
    first, s1 = new_uids()
    _, s2 = new_uids()
    second, s3 = new_uids()
    other, s4 = new_uids()
    common = {"PatientID": "FHIR001", "IssuerOfPatientID": "HOSP", "PatientName": "Ölund^Åsa"}
    parts = [
        _instance(first, s1, i, AccessionNumber="FACC1", StudyDate="20261101", **common)
        for i in range(2)
    ]
    parts.append(
        _instance(first, s2, 0, AccessionNumber="FACC1", StudyDate="20261101", SeriesNumber=2,
                  Modality="MR", **common)
    )  # fmt: skip
    parts.append(_instance(second, s3, 0, AccessionNumber="FACC2", StudyDate="20261120", **common))
    parts.append(
        _instance(other, s4, 0, AccessionNumber="FACC3", PatientID="FHIR001",
                  IssuerOfPatientID="1.2.3.4.5", StudyDate="20261125")
    )  # fmt: skip
    r = archive.stow(multipart(parts))
    assert r.status_code == 200, r.text
    return {"first": first, "second": second, "other": other, "series": (s1, s2)}


@pytest.fixture(scope="module")
def fhir(archive: Archive) -> httpx.Client:
    return httpx.Client(base_url=archive.process.base + "/fhir", timeout=60)


def search(fhir: httpx.Client, **params: Any) -> Bundle:
    r = fhir.get("/ImagingStudy", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON)
    return Bundle.model_validate(r.json())


def uids(bundle: Bundle) -> set[str]:
    return {str(e.resource.id) for e in bundle.entry or []}


def test_search_by_patient_identifier_with_and_without_system(
    fhir: httpx.Client, studies: dict[str, Any]
) -> None:
    found = search(fhir, **{"patient.identifier": "urn:pictor:issuer:HOSP|FHIR001"})
    assert found.type == "searchset" and found.total == 2
    assert uids(found) == {studies["first"], studies["second"]}
    by_oid = search(fhir, **{"patient.identifier": "urn:oid:1.2.3.4.5|FHIR001"})
    assert uids(by_oid) == {studies["other"]}
    anyone = search(fhir, **{"patient.identifier": "FHIR001"})
    assert uids(anyone) == {studies["first"], studies["second"], studies["other"]}
    assert search(fhir, **{"patient.identifier": "urn:pictor:issuer:ELSE|FHIR001"}).total == 0


def test_a_study_as_imaging_study(fhir: httpx.Client, studies: dict[str, Any]) -> None:
    found = search(fhir, identifier=f"urn:dicom:uid|urn:oid:{studies['first']}")
    (entry,) = found.entry or []
    assert str(entry.fullUrl).endswith(f"/fhir/ImagingStudy/{studies['first']}")
    study = ImagingStudy.model_validate(entry.resource.model_dump())
    assert study.status == "available"
    assert {m.code for m in study.modality or []} == {"CT", "MR"}
    assert study.numberOfSeries == 2 and study.numberOfInstances == 3
    assert study.subject.identifier.value == "FHIR001"
    assert study.subject.identifier.system == "urn:pictor:issuer:HOSP"
    assert study.subject.display == "Ölund^Åsa"
    # DICOM's local time, with the archive's zone (FHIR requires one with a time)
    assert study.started is not None and study.started.tzinfo is not None
    assert study.started.replace(tzinfo=None) == datetime(2026, 11, 1, 9, 30)
    (acsn,) = [i for i in study.identifier or [] if i.type is not None]
    assert acsn.value == "FACC1" and acsn.type.coding[0].code == "ACSN"
    # the contained Endpoint: WADO-RS at the study's URL, which answers
    (endpoint,) = study.contained or []
    assert study.endpoint[0].reference == "#wado-rs" == f"#{endpoint.id}"
    assert endpoint.connectionType.code == "dicom-wado-rs"
    assert endpoint.address.endswith(f"/dicom-web/studies/{studies['first']}")
    metadata = httpx.get(f"{endpoint.address}/metadata", timeout=60)
    assert metadata.status_code == 200 and len(metadata.json()) == 3
    # a search describes series, a read their instances too
    assert [s.uid for s in study.series or []] == list(studies["series"])
    assert all(s.instance is None for s in study.series or [])


def test_read_has_series_and_instances(fhir: httpx.Client, studies: dict[str, Any]) -> None:
    r = fhir.get(f"/ImagingStudy/{studies['first']}")
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR_JSON)
    study = ImagingStudy.model_validate(r.json())
    ct, mr = study.series or []
    assert ct.modality.code == "CT" and mr.modality.code == "MR" and mr.number == 2
    assert ct.numberOfInstances == 2 and [i.number for i in ct.instance or []] == [1, 2]
    assert ct.instance[0].sopClass.code == "urn:oid:1.2.840.10008.5.1.4.1.1.2"


def test_other_searches_and_paging(fhir: httpx.Client, studies: dict[str, Any]) -> None:
    assert uids(search(fhir, accession="FACC2")) == {studies["second"]}
    assert uids(search(fhir, identifier="FACC2")) == {studies["second"]}
    mine = {"patient.identifier": "FHIR001"}
    assert uids(search(fhir, modality="MR", **mine)) == {studies["first"]}
    ranged = search(fhir, started=["ge2026-11-15", "lt2026-11-25"], **mine)
    assert uids(ranged) == {studies["second"]}
    page = search(fhir, _count=2, **mine)
    assert len(page.entry or []) == 2 and page.total is None
    (next_link,) = [link.url for link in page.link or [] if link.relation == "next"]
    r = httpx.get(str(next_link), timeout=60)
    rest = Bundle.model_validate(r.json())
    assert uids(page) | uids(rest) == {studies["first"], studies["second"], studies["other"]}
    assert rest.total == 3


@pytest.mark.parametrize(
    ("params", "status", "says"),
    [
        ({}, 400, "at least one"),
        ({"name": "x"}, 400, "not supported"),
        ({"patient.identifier:exact": "FHIR001"}, 400, "modifiers"),
        ({"identifier": "urn:dicom:uid|urn:oid:1.2.x"}, 400, "not a Study Instance UID"),
        ({"identifier": "http://other|X"}, 400, "not known"),
        ({"accession": "A,B"}, 400, "comma"),
        ({"started": "2026-13-01"}, 400, "not a date"),
        ({"started": "sa2026-01-01"}, 400, "prefix"),
        ({"started": ["ge2026-02-01", "le2026-01-01"]}, 400, "no day"),
        ({"accession": "X", "_count": "0"}, 400, "_count"),
        ({"accession": "X", "_count": "²"}, 400, "_count"),
        ({"accession": "X", "_offset": "9" * 40}, 400, "_offset"),
        ({"accession": "X", "_format": "xml"}, 406, "JSON"),
        ({"accession": "X'; DROP TABLE study; --"}, 200, ""),
    ],
)
def test_bad_searches_get_an_operation_outcome(
    fhir: httpx.Client, studies: dict[str, Any], params: dict[str, Any], status: int, says: str
) -> None:
    r = fhir.get("/ImagingStudy", params=params)
    assert r.status_code == status, r.text
    if status == 200:
        assert Bundle.model_validate(r.json()).total == 0
        return
    outcome = OperationOutcome.model_validate(r.json())
    assert says in (outcome.issue[0].diagnostics or "")


def test_reads_of_what_is_not_there_and_format_negotiation(
    fhir: httpx.Client, studies: dict[str, Any]
) -> None:
    for missing in ("1.2.3.404", "not-a-uid", "1" * 65):
        r = fhir.get(f"/ImagingStudy/{missing}")
        assert r.status_code == 404, r.text
        assert OperationOutcome.model_validate(r.json()).issue[0].code == "not-found"
    r = fhir.get(f"/ImagingStudy/{studies['first']}", params={"patient": "x"})
    assert r.status_code == 400
    r = fhir.get(f"/ImagingStudy/{studies['first']}", headers={"Accept": "application/fhir+xml"})
    assert r.status_code == 406
    r = fhir.get(f"/ImagingStudy/{studies['first']}", headers={"Accept": "application/json"})
    assert r.status_code == 200


def test_capability_statement(fhir: httpx.Client) -> None:
    r = fhir.get("/metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR_JSON)
    statement = CapabilityStatement.model_validate(r.json())
    assert statement.fhirVersion == "4.0.1" and statement.kind == "instance"
    (resource,) = statement.rest[0].resource or []
    assert resource.type == "ImagingStudy"
    assert {i.code for i in resource.interaction or []} == {"read", "search-type"}
    names = {p.name for p in resource.searchParam or []}
    assert {"identifier", "patient.identifier", "accession", "modality", "started"} <= names
    assert fhir.get("/metadata", params={"_format": "xml"}).status_code == 406


# -- pushing stable studies to the EMR's FHIR server (PICTOR_FHIR_PUSH_URL) ----------


class FhirServer:
    """A FHIR server's conditional update on loopback: each PUT of ImagingStudy by
    identifier is validated with fhir.resources and kept; the first ``failures`` are
    answered 503; 201 for a new resource, 200 for a replaced one."""

    def __init__(self, failures: int = 0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        from server import free_port

        self.failures = failures
        self.stored: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.problems: list[str] = []
        self.port = free_port()
        fhir = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                parts = urlsplit(self.path)
                (identifier,) = parse_qs(parts.query)["identifier"]
                status = 201 if identifier not in fhir.stored else 200
                try:
                    resource = json.loads(body)
                    ImagingStudy.model_validate(resource)
                    assert parts.path == "/fhir/ImagingStudy", parts.path
                    assert self.headers["Content-Type"].startswith(FHIR_JSON)
                    assert self.headers.get("Authorization") == "Bearer ehr-token"
                    assert "id" not in resource
                except Exception as exc:  # noqa: BLE001 - told to the test
                    fhir.problems.append(repr(exc))
                    status = 400
                if fhir.failures > 0:
                    fhir.failures -= 1
                    status = 503
                elif status != 400:
                    fhir.stored[identifier] = resource
                fhir.requests.append(("PUT", identifier, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_stable_studies_are_put_to_the_emr_and_retried(tmp_path: Path, pictor: Pictor) -> None:
    """A study, once stable, is PUT by identifier (FHIR conditional update); a server
    that fails at first is retried until it takes it; a study that grows is PUT again
    and replaces the resource; ``pictor route status`` shows the route."""
    ehr = FhirServer(failures=2)
    try:
        data = tmp_path / "data"
        process = pictor(
            data,
            env={
                "PICTOR_STABLE_SECONDS": "1",
                "PICTOR_ROUTE_BACKOFF_SECONDS": "0.2",
                "PICTOR_FHIR_PUSH_URL": ehr.url,
                "PICTOR_FHIR_PUSH_TOKEN": "ehr-token",
            },
        )
        archive = Archive(process)
        study, series = new_uids()
        key = f"urn:dicom:uid|urn:oid:{study}"
        r = archive.stow(
            multipart([_instance(study, series, i, AccessionNumber="PUSH1") for i in range(2)])
        )
        assert r.status_code == 200, r.text
        until(lambda: key in ehr.stored, 60, "the study reached the FHIR server")
        assert [s for _, _, s in ehr.requests[:3]] == [503, 503, 201]
        pushed = ImagingStudy.model_validate(ehr.stored[key])
        assert pushed.numberOfInstances == 2 and pushed.contained[0].address.endswith(study)
        # the study grows: stable again, PUT again, the resource replaced
        r = archive.stow(multipart([_instance(study, series, 2, AccessionNumber="PUSH1")]))
        assert r.status_code == 200, r.text
        until(lambda: ehr.stored[key]["numberOfInstances"] == 3, 60, "the new instance pushed")
        assert ehr.requests[-1] == ("PUT", key, 200) and not ehr.problems
        done = pictor_cli("route", "status", "--json", data_dir=data)
        assert done.returncode == 0, done.stderr
        (route,) = [r for r in json.loads(done.stdout) if r["name"] == "fhir-push"]
        assert route["to"] == f"fhir:{ehr.url}" and route["on"] == "study.stable"
        assert route["token"] is True and route["done"] >= 2 and route["failed"] == 0
        assert (
            route["lastError"]
            == f"{ehr.url}/ImagingStudy?identifier="
            + key.replace("|", "%7C")
            + " answered HTTP 503"
        )
    finally:
        ehr.close()


def test_a_bad_push_url_stops_the_server_with_a_clear_error(tmp_path: Path) -> None:
    from server import PictorProcess

    process = PictorProcess(tmp_path / "data", env={"PICTOR_FHIR_PUSH_URL": "ftp://ehr/fhir"})
    with pytest.raises(RuntimeError, match="PICTOR_FHIR_PUSH_URL"):
        process.start()
    process.stop()
