"""The web viewer at ``/viewer`` and IHE Invoke Image Display at ``/IHEInvokeImageDisplay``.

``/viewer/...`` serves the OHIF bundle prepared by :mod:`app.viewer`: its files, a
generated ``app-config.js``, and for every other path OHIF's ``index.html`` (a
single-page application routes deep links such as ``/viewer/viewer?StudyInstanceUIDs=``
in the browser). ``/viewer?StudyInstanceUIDs=...`` (the link EMR apps are usually given)
redirects to OHIF's viewer route. Without an installed bundle, every viewer page says
how to install one.

``/IHEInvokeImageDisplay`` is the Image Display actor of the IHE Radiology Invoke Image
Display (IID) profile, transaction RAD-106 "Invoke Image Display" (IHE RAD TF-2 4.106):
an HTTP GET whose ``requestType`` is ``STUDY`` (with ``studyUID`` or ``accessionNumber``,
comma-separated lists) or ``PATIENT`` (with ``patientID`` as an HL7 CX value, optionally
``mostRecentResults``, ``lowerDateTime``, ``upperDateTime``, ``modalitiesInStudy``).
The studies are looked up in the index and the browser is redirected (303) to the viewer
showing them; an unknown study or patient, or a malformed request, gets an HTML page
saying so (404 / 400) instead of an empty viewer. ``viewerType``, ``diagnosticQuality``
and ``keyImagesOnly`` are accepted and ignored: there is one viewer, always at full
quality, showing all images.

All redirects are relative, so they work through any host name or proxy prefix.
"""

from __future__ import annotations

import html
import mimetypes
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import msgspec
from litestar import Request
from litestar.response import File, Redirect, Response

from app import viewer
from app.auth.principal import confined_study
from app.dicom.uids import uid_problem
from app.dicomweb.urls import request_base_url
from app.errors import BadRequest, PictorError
from app.services.search import Level, build_query, run
from app.text import ascii_int

#: media types the browser needs exactly (WebAssembly.instantiateStreaming insists on
#: application/wasm); others come from :mod:`mimetypes`
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".ico": "image/x-icon",
}
#: webpack names chunks after their content: such a file never changes
_HASHED = re.compile(r"(^|[.-])[0-9a-f]{16,}\.")
_NO_CACHE = "no-cache"
_IMMUTABLE = "public, max-age=31536000, immutable"
_HTML = "text/html; charset=utf-8"


def html_page(status: int, title: str, body_html: str) -> Response[bytes]:
    text = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)} - Pictor</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:3rem auto;"
        "padding:0 1rem;color:#222}code,pre{background:#f2f2f2;padding:.1rem .3rem}"
        "pre{padding:.6rem}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body_html}</body></html>"
    )
    return Response(
        text.encode(), status_code=status, media_type=_HTML, headers={"Cache-Control": "no-store"}
    )


def _not_installed(directory: Path) -> Response[bytes]:
    return html_page(
        404,
        "The web viewer is not installed",
        "<p>Pictor serves the OHIF viewer here once its bundle is installed. On this "
        "server, run (needs Node.js's <code>npm</code>; fetches "
        f"<code>{viewer.OHIF_PACKAGE}@{viewer.OHIF_VERSION}</code> from the npm registry):</p>"
        f"<pre>{viewer.INSTALL_COMMAND}</pre>"
        f"<p>It goes to <code>{html.escape(str(directory))}</code> (setting "
        "<code>PICTOR_VIEWER_DIR</code>); no restart is needed. The DICOMweb service "
        "works without it, at <a href='../dicom-web/studies'>dicom-web</a>.</p>",
    )


def _signs_in(request: Request[Any, Any, Any]) -> bool:
    """Whether people sign in to use the viewer (access control on)."""
    return bool(request.app.state.settings.auth)


def _config(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """OHIF's configuration; with the identity provider's sign-in, OHIF's own OIDC
    client (:func:`app.viewer.oidc_client`)."""
    settings = request.app.state.settings
    config = viewer.ohif_config()
    if settings.oidc_sign_in:
        config["oidc"] = [
            viewer.oidc_client(
                settings.oidc_issuer, settings.oidc_client_id, settings.oidc_viewer_scope
            )
        ]
    return config


async def _index(request: Request[Any, Any, Any], path: str) -> Response[bytes]:
    """OHIF's page for ``/viewer/<path>``. With access control on, someone who has not
    signed in (no session, no study link) is sent to the sign-in form first, which
    brings them back here (issue #21); with the identity provider's sign-in, OHIF's own
    OIDC client does that."""
    settings = request.app.state.settings
    directory: Path = settings.viewer_path
    signed_in = None
    # (with the identity provider's sign-in, OHIF itself sends strangers there)
    if _signs_in(request) and not settings.oidc_sign_in:
        who = await request.app.state.access.identify(request.scope)
        if who is None:
            here = "viewer/" + path.lstrip("/")
            if request.url.query:
                here += "?" + request.url.query
            login = viewer.relative_root(path) + "../login?" + urlencode({"next": here})
            return Redirect(login, status_code=303, headers={"Cache-Control": "no-store"})
        if who.who.startswith("user:"):
            signed_in = who.who[len("user:") :]
    template = (directory / "index.html").read_text(encoding="utf-8")
    return Response(
        viewer.index_html(template, path, signed_in=signed_in).encode(),
        media_type=_HTML,
        headers={"Cache-Control": _NO_CACHE},
    )


def _query_string(request: Request[Any, Any, Any]) -> str:
    return request.url.query or ""


async def viewer_root(request: Request[Any, Any, Any]) -> Response[Any]:
    """``/viewer/``: OHIF's study list; ``/viewer?StudyInstanceUIDs=...``: that study."""
    settings = request.app.state.settings
    query = _query_string(request)
    # litestar routes /viewer/ here too; the raw path tells them apart
    if bytes(request.scope.get("raw_path") or b"").endswith(b"/"):
        if viewer.installed(settings.viewer_path) is None:
            return _not_installed(settings.viewer_path)
        return await _index(request, "/")
    if any(k.lower() == "studyinstanceuids" for k, _ in parse_qsl(query)):
        # OHIF's study route is "viewer" under its base "/viewer"
        return Redirect(f"viewer/viewer?{query}", status_code=302)
    # the study list, with its filters (OHIF itself writes them as /viewer?patientName=)
    return Redirect(f"viewer/?{query}" if query else "viewer/", status_code=302)


async def viewer_files(request: Request[Any, Any, Any]) -> Response[Any]:
    """The bundle's files, the generated configuration, and ``index.html`` for any deep
    link into the single-page application."""
    settings = request.app.state.settings
    directory: Path = settings.viewer_path
    path: str = request.path_params["path"]
    if viewer.installed(directory) is None:
        return _not_installed(directory)
    name = path.strip("/")
    if name == "app-config.js":
        return Response(
            viewer.app_config_js(_config(request), signs_in=_signs_in(request)).encode(),
            media_type=_MEDIA_TYPES[".js"],
            headers={"Cache-Control": _NO_CACHE},
        )
    if name and name not in ("index.html", viewer.MARKER):
        target = (directory / name).resolve()
        if target.is_relative_to(directory.resolve()) and target.is_file():
            media = _MEDIA_TYPES.get(target.suffix) or (
                mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            )
            cache = _IMMUTABLE if _HASHED.search(target.name) else _NO_CACHE
            return File(
                target,
                media_type=media,
                content_disposition_type="inline",
                filename=target.name,
                headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"},
            )
        if "." in name.rsplit("/", 1)[-1]:
            # a missing asset, not a route of the application
            return Response(b"not found", status_code=404, media_type="text/plain; charset=utf-8")
    return await _index(request, path)


# --------------------------------------------------------------------------------------
# IHE Invoke Image Display (IHE RAD TF-2 4.106)
# --------------------------------------------------------------------------------------

#: the most studies one link opens together
MAX_STUDIES = 50


class _Study(msgspec.Struct):
    uid: str
    issuer: str


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    value = item.get(tag, {}).get("Value")
    return value if isinstance(value, list) else []


async def _find_studies(
    request: Request[Any, Any, Any], params: list[tuple[str, str]]
) -> list[_Study]:
    """QIDO-RS study search (PS3.18 10.6) on the index: the matching studies, newest first."""
    state = request.app.state
    query = build_query(
        Level.STUDY,
        [
            *params,
            ("includefield", "00100021"),
            ("orderby", "-StudyDate"),
            ("limit", str(MAX_STUDIES + 1)),
        ],
        confined=confined_study(request.scope),  # a study link opens its own study only
    )
    base = request_base_url(state.settings.public_base_url, request.headers, request.url)
    result = await run(state.pool, query, base)
    found = []
    for item in msgspec.json.decode(result.body):
        uid = _values(item, "0020000D")
        if uid:
            issuer = _values(item, "00100021")
            found.append(_Study(str(uid[0]), str(issuer[0]) if issuer else ""))
    return found


def _list(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise BadRequest(f"{what} is empty")
    for item in items:
        if any(c in item for c in "*?\\"):
            raise BadRequest(f"{what} {item!r}: wildcards and backslashes are not allowed here")
    return items


def _date(value: str, what: str) -> str:
    """The date of an IID date-time parameter (ISO 8601, e.g. 2024-01-31T08:00:00Z)."""
    digits = value.strip()[:10].replace("-", "")
    if not re.fullmatch(r"\d{8}", digits):
        raise BadRequest(f"{what} {value!r} is not an ISO 8601 date-time (YYYY-MM-DDThh:mm:ss)")
    return digits


def _patient_id(cx: str) -> tuple[str, set[str]]:
    """HL7 v2 CX ``ID^^^AssigningAuthority`` (authority ``NS&UID&UIDType``): the ID and the
    names the assigning authority may be recorded under in Issuer of Patient ID."""
    parts = cx.split("^")
    pid = parts[0].strip()
    if not pid or any(c in pid for c in "*?\\,"):
        raise BadRequest(f"patientID {cx!r}: expected an identifier (HL7 CX: ID^^^authority)")
    authority = parts[3] if len(parts) > 3 else ""
    names = {a.strip() for a in authority.split("&")[:2] if a.strip()}
    return pid, names


def _viewer_location(studies: list[str]) -> str:
    return "viewer/viewer?" + urlencode({"StudyInstanceUIDs": ",".join(studies)}, safe=",")


async def _invoke(request: Request[Any, Any, Any]) -> str:
    """The relative viewer URL for an IID request; raises BadRequest / NotFound."""
    params: dict[str, str] = {}
    for key, value in parse_qsl(_query_string(request), keep_blank_values=True):
        params[key.lower()] = value
    request_type = params.get("requesttype", "").strip().upper()
    if request_type == "STUDY":
        if "studyuid" in params and "accessionnumber" in params:
            raise BadRequest("give studyUID or accessionNumber, not both")
        if "studyuid" in params:
            uids = _list(params["studyuid"], "studyUID")
            for uid in uids:
                if (problem := uid_problem(uid)) is not None:
                    raise BadRequest(f"studyUID {uid!r} {problem}")
            found = {
                s.uid for s in await _find_studies(request, [("StudyInstanceUID", ",".join(uids))])
            }
            missing = [u for u in uids if u not in found]
            if len(missing) == len(uids):
                raise _NoStudy(
                    f"No study with Study Instance UID {', '.join(missing)} is stored here."
                )
            return _viewer_location([u for u in uids if u in found])
        if "accessionnumber" in params:
            numbers = _list(params["accessionnumber"], "accessionNumber")
            studies: list[str] = []
            for number in numbers:
                for study in await _find_studies(request, [("AccessionNumber", number)]):
                    if study.uid not in studies:
                        studies.append(study.uid)
            if not studies:
                raise _NoStudy(
                    f"No study with accession number {', '.join(numbers)} is stored here."
                )
            return _viewer_location(studies[:MAX_STUDIES])
        raise BadRequest("requestType=STUDY needs studyUID or accessionNumber")
    if request_type == "PATIENT":
        if "patientid" not in params:
            raise BadRequest("requestType=PATIENT needs patientID")
        pid, authorities = _patient_id(params["patientid"])
        search_params = [("PatientID", pid)]
        lower = params.get("lowerdatetime", "").strip()
        upper = params.get("upperdatetime", "").strip()
        if lower or upper:
            low = _date(lower, "lowerDateTime") if lower else ""
            high = _date(upper, "upperDateTime") if upper else ""
            search_params.append(("StudyDate", f"{low}-{high}"))
        if params.get("modalitiesinstudy", "").strip():
            modalities = _list(params["modalitiesinstudy"], "modalitiesInStudy")
            search_params.append(("ModalitiesInStudy", ",".join(modalities)))
        recent = params.get("mostrecentresults", "").strip()
        if recent and ((ascii_int(recent) or 0) < 1):
            raise BadRequest(f"mostRecentResults {recent!r} is not a positive number")
        studies = [
            s.uid
            for s in await _find_studies(request, search_params)
            # a study recorded under another assigning authority is another patient
            if not authorities or not s.issuer or s.issuer in authorities
        ]
        if not studies:
            raise _NoStudy(f"No study of patient ID {pid} is stored here.")
        if recent:
            return _viewer_location(studies[: min(int(recent), MAX_STUDIES)])
        if len(studies) == 1:
            return _viewer_location(studies)
        # several studies: OHIF's study list of this patient
        return "viewer/?" + urlencode({"mrn": pid}, quote_via=quote)
    if not request_type:
        raise BadRequest("requestType is missing (STUDY or PATIENT)")
    raise BadRequest(f"requestType {request_type!r} is not supported (STUDY or PATIENT)")


class _NoStudy(PictorError):
    status_code = 404


async def invoke_image_display(request: Request[Any, Any, Any]) -> Response[Any]:
    """IHE RAD-106 Invoke Image Display: redirect to the viewer showing the studies."""
    try:
        location = await _invoke(request)
    except (BadRequest, _NoStudy) as exc:
        title = "Study not found" if isinstance(exc, _NoStudy) else "Invalid image display request"
        return html_page(
            exc.status_code,
            title,
            f"<p>{html.escape(exc.message)}</p><p>Request: <code>"
            f"{html.escape(_query_string(request) or '(no parameters)')}</code></p>"
            "<p>IHE Invoke Image Display: <code>requestType=STUDY&amp;studyUID=...</code>, "
            "<code>requestType=STUDY&amp;accessionNumber=...</code> or "
            "<code>requestType=PATIENT&amp;patientID=...</code>.</p>",
        )
    return Redirect(location, status_code=303)
