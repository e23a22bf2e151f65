"""STOW-RS: the Studies Store transaction (PS3.18 10.5).

``POST /studies`` and ``POST /studies/{study}`` accept ``multipart/related;
type="application/dicom"`` (PS3.18 8.6.1.2, 10.5.1) and, as an extension, a single
``application/dicom`` body. The body is parsed as it streams in; each part is written
straight to a temp file; its header is analysed while the next part arrives.
Parts are committed in batches; the response is a Store Instances Response Module
(PS3.18 Annex I) as ``application/dicom+json``, with the HTTP status decided once at
the end (PS3.18 10.5.3.1): 200 all stored, 202 some failed, 409 none stored, 400 bad
syntax, 415 unsupported Content-Type (answered before the body is read).
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request
from litestar.exceptions import InternalServerException
from litestar.response import Response
from msgspec.json import encode

from app.asgi import warning_header
from app.auth.principal import AUDIT_UIDS_KEY, DELETE, may, who_of
from app.dicom.uids import uid_problem
from app.dicomweb.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_media_type,
)
from app.dicomweb.urls import instance_url, request_base_url, study_url
from app.errors import BadRequest, FailureReason, ServiceUnavailable, UnsupportedMediaType
from app.services.ingest import BATCH, FAILED, INDEX_DOWN, STORAGE_FULL, Ingest, Outcome, Part
from app.storage import Upload
from app.text import ascii_int

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
#: parts committed together: one fsync group and one index transaction


def check_content_type(value: str | None) -> tuple[str, str | None]:
    """Validate the request's Content-Type; returns (media type, boundary).

    Raises 415 for a type STOW-RS does not take here (PS3.18 10.5.3.1) and 400 for a
    multipart type without a boundary.
    """
    if not value:
        raise UnsupportedMediaType(
            'Content-Type is missing; send multipart/related; type="application/dicom" '
            "(PS3.18 10.5.1) or application/dicom"
        )
    media, params = parse_media_type(value)
    if media == DICOM:
        return media, None
    if media == "multipart/related":
        part_type = params.get("type", DICOM).lower()
        if part_type != DICOM:
            raise UnsupportedMediaType(
                f"multipart/related with type={part_type!r} is not supported; only "
                f'type="application/dicom" (PS3.18 10.5.1, Table 8.6.1-2)'
            )
        boundary = params.get("boundary")
        if not boundary:
            raise BadRequest("multipart/related Content-Type has no boundary parameter (RFC 2046)")
        return media, boundary
    raise UnsupportedMediaType(
        f"Content-Type {media!r} is not accepted by STOW-RS here; send multipart/related; "
        f'type="application/dicom" (PS3.18 10.5.1) or application/dicom'
    )


def _sop_item(o: Outcome) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [o.sop_class_uid]} if o.sop_class_uid else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [o.sop_instance_uid]}
        if o.sop_instance_uid
        else {"vr": "UI"},
    }
    return item


def store_response(
    outcomes: list[Outcome], base: str, url_study: str | None, extra_failure: str = ""
) -> tuple[int, dict[str, Any], list[str]]:
    """Status, Store Instances Response Module (PS3.18 Annex I.1) and warning texts."""
    stored = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    body: dict[str, Any] = {}
    studies = {o.study_uid for o in stored}
    if url_study:
        body["00081190"] = {"vr": "UR", "Value": [study_url(base, url_study)]}
    elif len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [study_url(base, studies.pop())]}
    else:
        body["00081190"] = {"vr": "UR"}  # Type 2: several studies, or none stored
    if failed:
        items = []
        for o in failed:
            item = _sop_item(o)
            item["00081197"] = {"vr": "US", "Value": [o.reason or FailureReason.PROCESSING_FAILURE]}
            # Error Comment carries the human-readable reason
            item["00000902"] = (
                {"vr": "LO", "Value": [o.message[:64]]} if o.message else {"vr": "LO"}
            )
            items.append(item)
        body["00081198"] = {"vr": "SQ", "Value": items}
    if stored:
        items = []
        for o in stored:
            item = _sop_item(o)
            item["00081190"] = {
                "vr": "UR",
                "Value": [instance_url(base, o.study_uid, o.series_uid, o.sop_instance_uid)],
            }
            items.append(item)
        body["00081199"] = {"vr": "SQ", "Value": items}
    warnings = [o.message for o in failed if o.message]
    if extra_failure:
        warnings.insert(0, extra_failure)
    causes = {o.cause for o in failed}
    if not outcomes or (extra_failure and not stored):
        status = 400 if extra_failure else 409
    elif not failed and not extra_failure:
        status = 200
    elif stored:
        status = 202
    elif causes == {STORAGE_FULL}:
        status = 507  # RFC 4918 11.5: nothing could be stored for want of space
    elif causes == {INDEX_DOWN}:
        status = 503  # nothing was stored because the index is unavailable: retry
    else:
        status = 409
    return status, body, warnings


class _Upload:
    """State of one STOW request: the part being written, parts awaiting commit."""

    def __init__(self, ingest: Ingest, study: str | None, who: str, may_purge: bool) -> None:
        self.ingest = ingest
        self.study = study
        self.who = who
        self.may_purge = may_purge
        self.current: Upload | None = None
        self.skipping = False
        self.pending: list[Part] = []
        self.outcomes: list[Outcome] = []
        self.part_number = 0

    async def start(self, headers: dict[str, str]) -> None:
        self.part_number += 1
        ctype = headers.get("content-type")
        if ctype is not None and parse_media_type(ctype)[0] != DICOM:
            self.skipping = True
            self.outcomes.append(
                Outcome(
                    status=FAILED,
                    reason=int(FailureReason.CANNOT_UNDERSTAND),
                    message=f"part {self.part_number} has Content-Type {ctype!r}; "
                    f"expected application/dicom",
                )
            )
            return
        self.skipping = False
        self.current = self.ingest.new_part()

    async def data(self, chunk: bytes | memoryview) -> None:
        if self.current is not None:
            await self.current.write(chunk)

    async def end(self) -> None:
        if self.current is None:
            return
        temp, self.current = self.current, None
        self.pending.append(await self.ingest.complete(temp))
        if len(self.pending) >= BATCH:
            await self.flush()

    async def flush(self) -> None:
        batch, self.pending = self.pending, []
        if batch:
            self.outcomes.extend(
                await self.ingest.commit(batch, self.study, who=self.who, may_purge=self.may_purge)
            )

    async def abandon_current(self) -> None:
        """Throw away the part being received (it did not end)."""
        if self.current is not None:
            await self.current.abort()
            self.current = None

    async def abandon(self) -> None:
        """Throw away everything not yet committed (committed instances stay)."""
        await self.abandon_current()
        pending, self.pending = self.pending, []
        await self.ingest.discard(pending)


async def store_instances(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Store Instances (PS3.18 10.5): the Studies Store transaction."""
    study: str | None = request.path_params.get("study")
    media, boundary = check_content_type(request.headers.get("content-type"))
    if study is not None and (problem := uid_problem(study)) is not None:
        raise BadRequest(f"the Study Instance UID in the URL {problem}")
    ingest: Ingest = request.app.state.ingest
    length = request.headers.get("content-length", "")
    ingest.check_space(ascii_int(length, 19) or 0)  # 507 before the body
    upload = _Upload(ingest, study, who_of(request.scope), may(request.scope, DELETE))
    failure = ""
    try:
        if boundary is None:
            await upload.start({})
            async for chunk in request.stream():
                await upload.data(chunk)
            await upload.end()
        else:
            parser = MultipartParser(boundary)
            async for chunk in request.stream():
                for event in parser.feed(chunk):
                    if isinstance(event, PartData):
                        if not upload.skipping:
                            await upload.data(event.data)
                    elif isinstance(event, PartStart):
                        await upload.start(event.headers)
                    elif isinstance(event, PartEnd):
                        await upload.end()
            parser.close()
        await upload.flush()
    except MultipartError as exc:
        # every part received whole before the fault is decided like any other (stored or
        # failed, and listed); the broken rest is named in the Warning (issue #19: 8
        # complete parts were dropped from both sequences)
        await upload.abandon_current()
        await upload.flush()
        if not upload.outcomes:
            raise
        failure = (
            f"malformed multipart body after {len(upload.outcomes)} complete parts "
            f"(each listed above; nothing after them was stored): {exc.message}"
        )
    except InternalServerException:
        # the client hung up mid-upload: nothing half-received is kept
        log.info("STOW client disconnected; discarding the uncommitted parts")
        await upload.abandon()
        raise
    except BaseException:
        await upload.abandon()
        raise
    base = request_base_url(
        request.app.state.settings.public_base_url, request.headers, request.url
    )
    status, body, warnings = store_response(upload.outcomes, base, study, failure)
    request.scope[AUDIT_UIDS_KEY] = [  # type: ignore[literal-required]
        (o.study_uid, o.series_uid, o.sop_instance_uid) for o in upload.outcomes if o.ok
    ]
    headers = {"Warning": warning_header(warnings)} if warnings else {}
    if status == 503:
        headers["Retry-After"] = str(ServiceUnavailable.retry_after)
    return Response(encode(body), status_code=status, media_type=DICOM_JSON, headers=headers)
