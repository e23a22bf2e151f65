"""The admin API (scope ``admin``, checked by :mod:`app.auth.middleware`): API tokens and
study links, the same operations as ``pictor token`` and ``pictor link``.

* ``POST /admin/links`` ``{"study": UID, "ttl": "1h"}``: a signed, expiring URL that opens
  the study in the viewer and reads that study only (:mod:`app.auth.links`);
* ``GET /admin/tokens``, ``POST /admin/tokens`` ``{"name": N, "scopes": ["read"]}`` (the
  token is in the answer, once), ``DELETE /admin/tokens/{name}`` (revoke).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from litestar import Request
from litestar.response import Response

from app.auth import links
from app.auth.principal import parse_scopes
from app.dicom.uids import uid_problem
from app.dicomweb.urls import DICOMWEB_PREFIX, request_base_url
from app.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from app.services import access, routes, webhooks
from app.text import ascii_int


class LinkRequest(msgspec.Struct, forbid_unknown_fields=True):
    study: str
    ttl: str | int = "1h"


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    scopes: list[str]


def _json(value: Any, status: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


#: the largest admin request body (JSON objects of a few attributes)
MAX_BODY = 1 << 20


async def read_body(request: Request[Any, Any, Any], limit: int = MAX_BODY) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (read no further)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request[Any, Any, Any], kind: Any = Any) -> Any:
    """The JSON body decoded (as ``kind``): 415 for another media type, 400 if malformed."""
    media = (request.headers.get("content-type") or "application/json").split(";")[0]
    if media.strip().lower() not in ("application/json", "application/dicom+json"):
        raise UnsupportedMediaType(f"the body must be application/json, not {media}")
    try:
        return msgspec.json.decode(await read_body(request), type=kind)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body: {exc}") from exc


def _name(text: str) -> str:
    name = text.strip()
    if not 0 < len(name) <= 100 or not name.isprintable():
        raise BadRequest("a token name has 1 to 100 printable characters")
    return name


def root_url(request: Request[Any, Any, Any]) -> str:
    """The server's public root (the DICOMweb base without its ``/dicom-web``)."""
    settings = request.app.state.settings
    base = request_base_url(settings.public_base_url, request.headers, request.url)
    return base.removesuffix(DICOMWEB_PREFIX)


def link_answer(root: str, study: str, token: str, expires: int) -> dict[str, Any]:
    return {
        "url": f"{root}/link/{token}",
        "study": study,
        "expires": dt.datetime.fromtimestamp(expires, dt.UTC).isoformat(),
        "token": token,
    }


async def create_link(request: Request[Any, Any, Any]) -> Response[bytes]:
    wanted: LinkRequest = await json_body(request, LinkRequest)
    if (problem := uid_problem(wanted.study)) is not None:
        raise BadRequest(f"study {problem}")
    try:
        ttl = wanted.ttl if isinstance(wanted.ttl, int) else links.parse_ttl(wanted.ttl)
        secret = await request.app.state.access.link_secret.get()
        token, expires = links.sign(secret, wanted.study, ttl)
    except links.LinkError as exc:
        raise BadRequest(str(exc)) from exc
    return _json(link_answer(root_url(request), wanted.study, token, expires), 201)


async def list_tokens(request: Request[Any, Any, Any]) -> Response[bytes]:
    rows = await access.list_tokens(request.app.state.pool)
    return _json(
        [
            {
                "name": r.name,
                "scopes": list(r.scopes),
                "created": r.created_at.isoformat(),
                "revoked": r.revoked_at.isoformat() if r.revoked_at else None,
            }
            for r in rows
        ]
    )


async def create_token(request: Request[Any, Any, Any]) -> Response[bytes]:
    wanted: TokenRequest = await json_body(request, TokenRequest)
    try:
        scopes = parse_scopes(",".join(wanted.scopes))
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    name = _name(wanted.name)
    token = await access.create_token(request.app.state.pool, name, scopes)
    return _json({"name": name, "scopes": scopes, "token": token}, 201)


async def revoke_token(request: Request[Any, Any, Any]) -> None:
    name: str = request.path_params["name"]
    await access.revoke_token(request.app.state.pool, _name(name))


# -- webhooks (issue #17) ------------------------------------------------------------


class WebhookRequest(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    events: list[str]
    secret: str | None = None


def hook_answer(s: webhooks.HookStatus) -> dict[str, Any]:
    """A webhook and how its deliveries stand (never its secret)."""
    return {
        "id": s.hook.id,
        "url": s.hook.url,
        "events": list(s.hook.events),
        "signed": s.hook.signed,
        "created": s.hook.created_at.isoformat(),
        "pending": s.pending,
        "delivered": s.delivered,
        "failed": s.given_up,
        "lastDelivered": s.last_delivered_at.isoformat() if s.last_delivered_at else None,
        "lastError": s.last_error,
        "lastErrorAt": s.last_error_at.isoformat() if s.last_error_at else None,
    }


async def list_webhooks(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _json([hook_answer(s) for s in await webhooks.status(request.app.state.pool)])


async def create_webhook(request: Request[Any, Any, Any]) -> Response[bytes]:
    wanted: WebhookRequest = await json_body(request, WebhookRequest)
    pool = request.app.state.pool
    hook_id = await webhooks.add(pool, wanted.url, wanted.events, wanted.secret)
    found = [s for s in await webhooks.status(pool) if s.hook.id == hook_id]
    return _json(hook_answer(found[0]), 201)


async def delete_webhook(request: Request[Any, Any, Any]) -> None:
    text: str = request.path_params["hook"]
    hook_id = ascii_int(text, 9)
    if hook_id is None:
        raise BadRequest(f"webhook id {text[:20]!r} is not a number")
    await webhooks.remove(request.app.state.pool, hook_id)


# -- routes (issue #17) ----------------------------------------------------------------


class RouteRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    to: str
    when: list[str] = []
    on: str = "study.stable"
    token: str | None = None
    deidentify: str | None = None


def route_answer(s: routes.RouteStatus) -> dict[str, Any]:
    """A route and how its jobs stand (never its token)."""
    r = s.route
    return {
        "name": r.name,
        "when": [{"keyword": c.keyword, "tag": c.tag, "like": list(c.like)} for c in r.conditions],
        "to": r.destination,
        "on": r.trigger,
        "token": r.has_token,
        "deidentify": None if r.deidentify is None else ",".join(["basic", *r.deidentify]),
        "created": r.created_at.isoformat(),
        "waiting": s.waiting,
        "done": s.done,
        "failed": s.failed,
        "sent": s.sent,
        "lastError": s.last_error,
        "lastErrorAt": s.last_error_at.isoformat() if s.last_error_at else None,
    }


def route_study_answer(s: routes.StudyStatus) -> dict[str, Any]:
    return {
        "study": s.study_uid,
        "state": s.state,
        "cause": s.cause,
        "attempts": s.attempts,
        "sent": s.sent,
        "lastError": s.last_error,
        "updated": s.updated_at.isoformat(),
    }


async def list_routes(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _json([route_answer(s) for s in await routes.status(request.app.state.pool)])


async def create_route(request: Request[Any, Any, Any]) -> Response[bytes]:
    wanted: RouteRequest = await json_body(request, RouteRequest)
    pool = request.app.state.pool
    made = await routes.add(
        pool, wanted.name, wanted.when, wanted.to, wanted.on, wanted.token, wanted.deidentify
    )
    found = [s for s in await routes.status(pool) if s.route.id == made.id]
    return _json(route_answer(found[0]), 201)


async def route_studies(request: Request[Any, Any, Any]) -> Response[bytes]:
    name: str = request.path_params["name"]
    route, found = await routes.studies(request.app.state.pool, name)
    return _json({"name": route.name, "studies": [route_study_answer(s) for s in found]})


async def delete_route(request: Request[Any, Any, Any]) -> None:
    await routes.remove(request.app.state.pool, request.path_params["name"])


async def export_study(request: Request[Any, Any, Any]) -> Response[bytes]:
    study: str = request.path_params["study"]
    name: str = request.path_params["route"]
    job = await routes.export(request.app.state.pool, name, study)
    return _json({"job": job, "route": name, "study": study}, 202)
