"""Stable studies pushed to an EMR's FHIR server (issue #18): the ``fhir:`` destination
of routing (:mod:`app.services.routes`), which ``PICTOR_FHIR_PUSH_URL`` keeps as the
route ``fhir-push`` on ``study.stable``.

A job PUTs the whole study, as the ImagingStudy ``GET /fhir/ImagingStudy/{id}``
answers (:mod:`app.services.fhir`), to ``<base>/ImagingStudy?identifier=
urn:dicom:uid|urn:oid:<Study Instance UID>``: a conditional update
(http://hl7.org/fhir/R4/http.html#cond-update), which creates the resource the first
time and replaces it when the study grows or is corrected, whatever id the server gave
it. The resource is sent without an ``id`` so that servers which do not let clients
choose ids take it. A 200 or 201 answer acknowledges every instance of the job; any
other answer, or none, is retried by the route's queue (backoff, a day, ``pictor route
status``), so a server that is down misses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

import msgspec

from app import __version__
from app.config import Settings
from app.errors import NotFound
from app.index.database import Pool
from app.index.retrieve import StoredInstance
from app.services.fhir import DICOM_UID, FHIR_JSON, ImagingStudies
from app.services.outbound import Client, OutboundError
from app.services.routes import Deid, Sender


class FhirSenders:
    """The factory :class:`app.services.routes.Routes` calls for a ``fhir:`` route; one
    HTTP client per process."""

    def __init__(self, pool: Pool, settings: Settings) -> None:
        self.studies = ImagingStudies(pool)
        self.http = Client(settings.route_timeout, f"pictor/{__version__} (fhir)")
        self.base = settings.dicomweb_url

    def __call__(self, target: str, token: str | None, study: str) -> Sender:
        return FhirSender(self, target, token, study)

    async def aclose(self) -> None:
        await self.http.close()


class FhirSender:
    def __init__(self, senders: FhirSenders, target: str, token: str | None, study: str) -> None:
        self.senders = senders
        self.study = study
        identifier = quote(f"{DICOM_UID}|urn:oid:{study}", safe=":")
        self.url = f"{target}/ImagingStudy?identifier={identifier}"
        self.headers = {"Content-Type": f"{FHIR_JSON}; charset=utf-8", "Accept": FHIR_JSON}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        #: the study was PUT in this job: later batches are acknowledged with it
        self.sent = False

    async def send(
        self, batch: Sequence[StoredInstance], deid: Deid | None
    ) -> tuple[set[str], str | None]:
        uids = {i.sop_instance_uid for i in batch}
        if self.sent:
            return uids, None
        try:
            resource = await self.senders.studies.read(self.study, self.senders.base)
        except NotFound:
            return uids, None  # deleted since: nothing to tell
        resource.pop("id", None)
        body = msgspec.json.encode(resource)
        try:
            status = await self.senders.http.post(self.url, body, self.headers, method="PUT")
        except OutboundError as exc:
            return set(), f"{self.url}: {exc}"
        if status not in (200, 201):
            return set(), f"{self.url} answered HTTP {status}"
        self.sent = True
        return uids, None

    async def close(self) -> None:
        return None  # the connections are the process's
