"""FHIR R4 over HTTP (issue #18): ``GET /fhir/metadata``, ``GET /fhir/ImagingStudy``
(search) and ``GET /fhir/ImagingStudy/{id}`` (read), answered
``application/fhir+json``; errors are OperationOutcome resources with the status FHIR's
RESTful API gives them (http://hl7.org/fhir/R4/http.html). What is answered is built
in :mod:`app.services.fhir`.

The FHIR base is the DICOMweb root's sibling: ``https://host/fhir`` next to
``https://host/dicom-web`` (and under ``X-Forwarded-Prefix`` or the configured public
base URL alike).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.response import Response

from app import __version__
from app.auth.principal import confined_study
from app.dicomweb.qido import query_parameters
from app.dicomweb.urls import DICOMWEB_PREFIX, request_base_url
from app.errors import BadRequest, PictorError
from app.services.fhir import (
    FHIR_JSON,
    ImagingStudies,
    accept_format,
    capability_statement,
    operation_outcome,
)


def _bases(request: Request[Any, Any, Any]) -> tuple[str, str]:
    """(the DICOMweb root, the FHIR base) as the client sees them."""
    settings = request.app.state.settings
    base = request_base_url(settings.public_base_url, request.headers, request.url)
    return base, base.removesuffix(DICOMWEB_PREFIX) + "/fhir"


def _answer(resource: dict[str, Any], status: int = 200) -> Response[bytes]:
    return Response(
        msgspec.json.encode(resource),
        status_code=status,
        media_type=FHIR_JSON,
        headers={"Cache-Control": "no-store"},
    )


def _failed(exc: PictorError) -> Response[bytes]:
    # 5xx: the message of a PictorError says what failed, never the cause
    return _answer(operation_outcome(exc.status_code, exc.message), exc.status_code)


def _params(request: Request[Any, Any, Any]) -> dict[str, list[str]]:
    pairs = query_parameters(request.scope.get("query_string", b"").decode("latin-1"))
    out: dict[str, list[str]] = {}
    for key, value in pairs:
        out.setdefault(key, []).append(value)
    return out


def _negotiate(request: Request[Any, Any, Any], params: dict[str, list[str]]) -> None:
    formats = params.get("_format") or []
    accept_format(request.headers.get("accept"), formats[0] if formats else None)


async def metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The CapabilityStatement (http://hl7.org/fhir/R4/capabilitystatement.html)."""
    try:
        params = _params(request)
        _negotiate(request, params)
    except PictorError as exc:
        return _failed(exc)
    return _answer(capability_statement(_bases(request)[1], __version__))


async def search_imaging_studies(request: Request[Any, Any, Any]) -> Response[bytes]:
    """``GET /fhir/ImagingStudy?...``: a searchset Bundle."""
    try:
        params = _params(request)
        _negotiate(request, params)
        base, fhir_base = _bases(request)
        studies = ImagingStudies(request.app.state.pool)
        bundle = await studies.search(params, base, fhir_base, confined_study(request.scope))
    except PictorError as exc:
        return _failed(exc)
    return _answer(bundle)


async def read_imaging_study(request: Request[Any, Any, Any]) -> Response[bytes]:
    """``GET /fhir/ImagingStudy/{id}``: one ImagingStudy, its series and instances."""
    try:
        params = _params(request)
        if unknown := sorted(k[:40] for k in params if k != "_format"):
            raise BadRequest(f"a read takes no parameters but _format; given: {', '.join(unknown)}")
        _negotiate(request, params)
        base, _ = _bases(request)
        studies = ImagingStudies(request.app.state.pool)
        study = await studies.read(request.path_params["id"], base, confined_study(request.scope))
    except PictorError as exc:
        return _failed(exc)
    return _answer(study)
