"""Lifecycle over HTTP (issue #15): delete, the trash, corrections and patient merge.

* ``DELETE /dicom-web/studies/{study}[/series/{series}[/instances/{sop}]]`` (scope
  ``delete``): the DICOMweb extension dicomweb-client's ``delete_study``,
  ``delete_series`` and ``delete_instance`` call (also dcm4chee's and Orthanc's); 204
  when something was deleted, 404 when nothing matched. Deleted instances go to the
  trash for PICTOR_TRASH_DAYS.
* ``GET /admin/trash``; ``POST /admin/trash/restore`` ``{"study": UID, "series":
  [UID, ...]}``; ``DELETE /admin/trash[?older-than=3d]`` (purge).
* ``POST /admin/studies/{study}/update`` with a DICOM JSON object of patient and study
  attributes -> the study's QIDO-RS entry with the new values;
  ``POST /admin/studies/{study}/update/undo``; ``GET /admin/studies/{study}/updates``.
* ``POST /admin/patients/merge`` ``{"source": {"PatientID": ..., "IssuerOfPatientID":
  ...}, "target": {...}}``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.response import Response

from app.auth.principal import who_of
from app.dicom.uids import uid_problem
from app.dicomweb.admin import json_body, root_url
from app.dicomweb.qido import query_parameters
from app.dicomweb.responses import target_scope
from app.dicomweb.urls import DICOMWEB_PREFIX
from app.errors import BadRequest
from app.services import search
from app.services.lifecycle import Correction, Lifecycle, Trashed, parse_age


def _lifecycle(request: Request[Any, Any, Any]) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


def _json(value: Any, status: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def _uid(value: Any, what: str) -> str:
    if not isinstance(value, str) or (problem := uid_problem(value)) is not None:
        raise BadRequest(f"{what}: {problem or 'a UID string is required'}")
    return value


# -- DELETE ------------------------------------------------------------------------------


async def _delete(request: Request[Any, Any, Any]) -> None:
    scope = target_scope(request)
    await _lifecycle(request).delete(
        scope.study, scope.series, scope.instance, who=who_of(request.scope)
    )


async def delete_study(request: Request[Any, Any, Any]) -> None:
    await _delete(request)


async def delete_series(request: Request[Any, Any, Any]) -> None:
    await _delete(request)


async def delete_instance(request: Request[Any, Any, Any]) -> None:
    await _delete(request)


# -- the trash ----------------------------------------------------------------------------


def _trashed(out: Trashed) -> dict[str, Any]:
    return {
        "study": out.study_uid,
        "series": out.series_uids,
        "instances": len(out.sop_uids),
        "conflicts": out.conflicts,
    }


async def list_trash(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _json(await _lifecycle(request).list_trash())


class RestoreRequest(msgspec.Struct, forbid_unknown_fields=True):
    study: str
    series: list[str] = []


async def restore_trash(request: Request[Any, Any, Any]) -> Response[bytes]:
    wanted: RestoreRequest = await json_body(request, RestoreRequest)
    study = _uid(wanted.study, "study")
    if len(wanted.series) > 1000:
        raise BadRequest("series: at most 1000 UIDs")
    series = [_uid(s, "series") for s in wanted.series]
    out = await _lifecycle(request).restore(study, series, who=who_of(request.scope))
    return _json(_trashed(out))


async def empty_trash(request: Request[Any, Any, Any]) -> Response[bytes]:
    pairs = query_parameters(request.scope.get("query_string", b"").decode("latin-1"))
    params = dict(pairs)
    unknown = set(params) - {"older-than"}
    if unknown:
        raise BadRequest(f"unknown query parameters: {sorted(unknown)}; only older-than")
    if len(pairs) > len(params):
        raise BadRequest("older-than is given more than once")
    age = parse_age(params["older-than"]) if "older-than" in params else None
    purged = await _lifecycle(request).empty(age, who=who_of(request.scope))
    return _json({"purged": purged})


# -- corrections and merge ----------------------------------------------------------------


async def _study_entry(request: Request[Any, Any, Any], study: str) -> Any:
    query = search.build_query(
        search.Level.STUDY, [("StudyInstanceUID", study), ("includefield", "all")]
    )
    base = root_url(request) + DICOMWEB_PREFIX
    found = await search.run(request.app.state.pool, query, base)
    entries = msgspec.json.decode(found.body)
    return entries[0] if entries else None


def _correction(c: Correction) -> dict[str, Any]:
    return {"study": c.study_uid, "id": c.id, "old": c.old, "new": c.new, "instances": c.instances}


async def update_study(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The study's QIDO-RS entry (PS3.18 10.6.3, all attributes) with the new values."""
    study = target_scope(request).study
    body = await json_body(request)
    await _lifecycle(request).update(study, body, who=who_of(request.scope))
    return _json(await _study_entry(request, study))


async def undo_update(request: Request[Any, Any, Any]) -> Response[bytes]:
    study = target_scope(request).study
    correction = await _lifecycle(request).undo(study, who=who_of(request.scope))
    return _json(_correction(correction))


async def study_updates(request: Request[Any, Any, Any]) -> Response[bytes]:
    study = target_scope(request).study
    return _json(await _lifecycle(request).history(study))


class MergeRequest(msgspec.Struct, forbid_unknown_fields=True):
    source: dict[str, Any]
    target: dict[str, Any]


async def merge_patients(request: Request[Any, Any, Any]) -> Response[bytes]:
    wanted: MergeRequest = await json_body(request, MergeRequest)
    done = await _lifecycle(request).merge(wanted.source, wanted.target, who=who_of(request.scope))
    return _json({"studies": [c.study_uid for c in done], "corrections": [c.id for c in done]})
