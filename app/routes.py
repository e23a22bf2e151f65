"""The HTTP surface as one table (DESIGN.md decision 11): every route's name, method,
path template, the scope it needs, its handler and, for the hottest, the handler that
answers below the framework. Generated from it: litestar's routes
(:func:`framework_routes`), the hot dispatch (:class:`HotDispatch`), access control's
classification (:mod:`app.auth.routes`), the metrics labels (the route names) and the
operations ``openapi.yaml`` must document (``tests/unit/test_openapi.py``). Adding a
route is one entry here and its handler.

:func:`canonical_path` is applied once, outermost (:class:`PathGuard`), so every layer
below (metrics, CORS, access, the hot dispatch, litestar's router) sees one string, and
litestar's own normalisation (leading / trailing / repeated slashes) leaves it
unchanged. A request this table does not know is refused before it is dispatched (404,
or 405 with ``Allow`` for a known path with another method); it is never given a
default scope.

Resource paths: PS3.18 Table 10.4.1-1 (WADO-RS), 10.5.1-1 (STOW-RS), 10.6.1-2 (QIDO-RS),
10.4.1.1.4 (frames), 10.4.1.1.5 (bulk data), 10.4.1.1.3 / 10.4.1.1.6 (rendered,
thumbnail); IHE ITI / RAD Invoke Image Display.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from litestar.handlers import HTTPRouteHandler

from app.asgi import HandshakeSend, error_body, send_error, send_whole, warning_header
from app.auth.principal import ADMIN, DELETE, READ, WRITE
from app.dicomweb import (
    admin,
    bulk,
    changefeed,
    fhir,
    frames,
    lifecycle,
    login,
    metadata,
    monitoring,
    qido,
    rendered,
    stow,
    ups,
    viewer,
    wado,
)
from app.dicomweb.urls import DICOMWEB_PREFIX
from app.errors import BadRequest, MethodNotAllowed, NotFound
from app.observability import ROUTE_KEY
from app.services.search import Level

#: a handler answering below the framework: (app state, scope, receive, send, path
#: parameters) -> whether it answered (False: the framework route takes the request)
HotHandler = Callable[[Any, Any, Any, Any, Mapping[str, str]], Awaitable[bool]]
#: a WebSocket's handler: (app state, scope, receive, send, path parameters)
SocketHandler = Callable[[Any, Any, Any, Any, Mapping[str, str]], Awaitable[None]]

#: longest request target (path and query) accepted; longer: 414 (RFC 9110 15.5.15).
#: A UID list of 200 UIDs fits; nginx's default header buffers take 8 KiB.
MAX_TARGET_BYTES = 16384


#: C0 controls and DEL
_CONTROL = re.compile("[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Route:
    """One route: ``template`` segments in braces are parameters (``{path:path}``, the
    rest of the path). ``scope`` None: open to anyone (not audited). ``hot``: answered
    by this handler below the framework when it can. ``socket``: a WebSocket endpoint,
    a GET whose opening handshake (RFC 6455 4.1) this handler takes; ``handler``
    answers the same GET without an upgrade."""

    name: str
    method: str
    template: str
    scope: str | None
    handler: Callable[..., Awaitable[Any]]
    hot: HotHandler | None = None
    status: int = 200
    socket: SocketHandler | None = None
    segments: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.template.strip("/").split("/")))

    @property
    def is_search_everywhere(self) -> bool:
        """A QIDO search not confined to one study by its path."""
        return self.name in ("qido-studies", "qido-series", "qido-instances")


_S = DICOMWEB_PREFIX + "/studies/{study}"
_SE = _S + "/series/{series}"
_I = _SE + "/instances/{instance}"
_F = _I + "/frames/{frames}"
_W = DICOMWEB_PREFIX + "/workitems"
_WS = _W + "/{workitem}/subscribers/{aetitle}"


def _search(level: Level) -> HotHandler:
    return functools.partial(qido.hot_search, level)


ROUTES: tuple[Route, ...] = (
    Route("health", "GET", "/health", None, monitoring.health),
    Route("viewer-root", "GET", "/viewer", None, viewer.viewer_root),
    Route("viewer", "GET", "/viewer/{path:path}", None, viewer.viewer_files),
    Route("metrics", "GET", "/metrics", ADMIN, monitoring.metrics),
    # people signing in (issue #21): open, audited by their handlers
    Route("login", "GET", "/login", None, login.login_page),
    Route("login-submit", "POST", "/login", None, login.login),
    Route("logout", "POST", "/logout", None, login.logout),
    Route("admin-links", "POST", "/admin/links", ADMIN, admin.create_link, status=201),
    Route("admin-tokens", "GET", "/admin/tokens", ADMIN, admin.list_tokens),
    Route("admin-tokens-create", "POST", "/admin/tokens", ADMIN, admin.create_token, status=201),
    Route(
        "admin-tokens-revoke",
        "DELETE",
        "/admin/tokens/{name}",
        ADMIN,
        admin.revoke_token,
        status=204,
    ),
    # webhooks (issue #17)
    Route("admin-webhooks", "GET", "/admin/webhooks", ADMIN, admin.list_webhooks),
    Route(
        "admin-webhooks-create", "POST", "/admin/webhooks", ADMIN, admin.create_webhook, status=201
    ),
    Route(
        "admin-webhooks-delete",
        "DELETE",
        "/admin/webhooks/{hook}",
        ADMIN,
        admin.delete_webhook,
        status=204,
    ),
    # routing (issue #17)
    Route("admin-routes", "GET", "/admin/routes", ADMIN, admin.list_routes),
    Route("admin-routes-create", "POST", "/admin/routes", ADMIN, admin.create_route, status=201),
    Route("admin-route", "GET", "/admin/routes/{name}", ADMIN, admin.route_studies),
    Route(
        "admin-routes-delete",
        "DELETE",
        "/admin/routes/{name}",
        ADMIN,
        admin.delete_route,
        status=204,
    ),  # fmt: skip
    Route(
        "admin-study-export",
        "POST",
        "/admin/studies/{study}/export/{route}",
        ADMIN,
        admin.export_study,
        status=202,
    ),  # fmt: skip
    # lifecycle (issue #15): the trash, corrections, patient merge
    Route("admin-trash", "GET", "/admin/trash", ADMIN, lifecycle.list_trash),
    Route("admin-trash-restore", "POST", "/admin/trash/restore", ADMIN, lifecycle.restore_trash),
    Route("admin-trash-empty", "DELETE", "/admin/trash", ADMIN, lifecycle.empty_trash),
    Route(
        "admin-study-update",
        "POST",
        "/admin/studies/{study}/update",
        ADMIN,
        lifecycle.update_study,
    ),
    Route(
        "admin-study-undo",
        "POST",
        "/admin/studies/{study}/update/undo",
        ADMIN,
        lifecycle.undo_update,
    ),
    Route(
        "admin-study-updates",
        "GET",
        "/admin/studies/{study}/updates",
        ADMIN,
        lifecycle.study_updates,
    ),
    Route("admin-merge", "POST", "/admin/patients/merge", ADMIN, lifecycle.merge_patients),
    Route("iid", "GET", "/IHEInvokeImageDisplay", READ, viewer.invoke_image_display),
    # the change feed (issue #17), in the shape of Microsoft's DICOM service
    Route("changefeed", "GET", DICOMWEB_PREFIX + "/changefeed", READ, changefeed.read_feed),
    Route(
        "changefeed-latest",
        "GET",
        DICOMWEB_PREFIX + "/changefeed/latest",
        READ,
        changefeed.latest_entry,
    ),
    # FHIR R4 for the EMR (issue #18): the CapabilityStatement is open, as FHIR clients
    # read it before they authenticate; the studies need READ
    Route("fhir-metadata", "GET", "/fhir/metadata", None, fhir.metadata),
    Route(
        "fhir-imagingstudy-search", "GET", "/fhir/ImagingStudy", READ, fhir.search_imaging_studies
    ),
    Route("fhir-imagingstudy", "GET", "/fhir/ImagingStudy/{id}", READ, fhir.read_imaging_study),
    # UPS-RS, the worklist (PS3.18 11; issue #18): performers write, watchers read
    Route("ups-create", "POST", _W, WRITE, ups.create_workitem, status=201),
    Route("ups-search", "GET", _W, READ, ups.search_workitems),
    Route("ups-retrieve", "GET", _W + "/{workitem}", READ, ups.retrieve_workitem),
    Route("ups-update", "POST", _W + "/{workitem}", WRITE, ups.update_workitem),
    Route("ups-state", "PUT", _W + "/{workitem}/state", WRITE, ups.change_state),
    Route(
        "ups-cancel",
        "POST",
        _W + "/{workitem}/cancelrequest",
        WRITE,
        ups.request_cancellation,
        status=202,
    ),
    Route("ups-subscribe", "POST", _WS, READ, ups.subscribe, status=201),
    Route("ups-unsubscribe", "DELETE", _WS, READ, ups.unsubscribe),
    Route("ups-suspend", "POST", _WS + "/suspend", READ, ups.suspend),
    Route(
        "ups-channel",
        "GET",
        DICOMWEB_PREFIX + "/subscribers/{aetitle}",
        READ,
        ups.channel_without_upgrade,
        socket=ups.channel,
    ),
    # STOW-RS (PS3.18 10.5)
    Route("stow", "POST", DICOMWEB_PREFIX + "/studies", WRITE, stow.store_instances),
    Route("stow", "POST", _S, WRITE, stow.store_instances),
    # QIDO-RS (PS3.18 10.6)
    Route(
        "qido-studies",
        "GET",
        DICOMWEB_PREFIX + "/studies",
        READ,
        qido.search_studies,
        _search(Level.STUDY),
    ),
    Route(
        "qido-series",
        "GET",
        DICOMWEB_PREFIX + "/series",
        READ,
        qido.search_series,
        _search(Level.SERIES),
    ),
    Route(
        "qido-instances",
        "GET",
        DICOMWEB_PREFIX + "/instances",
        READ,
        qido.search_instances,
        _search(Level.INSTANCE),
    ),
    Route(
        "qido-study-series",
        "GET",
        _S + "/series",
        READ,
        qido.search_study_series,
        _search(Level.SERIES),
    ),
    Route(
        "qido-study-instances",
        "GET",
        _S + "/instances",
        READ,
        qido.search_study_instances,
        _search(Level.INSTANCE),
    ),
    Route(
        "qido-series-instances",
        "GET",
        _SE + "/instances",
        READ,
        qido.search_series_instances,
        _search(Level.INSTANCE),
    ),
    # WADO-RS (PS3.18 10.4)
    # delete (the DICOMweb extension dicomweb-client calls; issue #15)
    Route("delete-study", "DELETE", _S, DELETE, lifecycle.delete_study, status=204),
    Route("delete-series", "DELETE", _SE, DELETE, lifecycle.delete_series, status=204),
    Route("delete-instance", "DELETE", _I, DELETE, lifecycle.delete_instance, status=204),
    Route("wado-study", "GET", _S, READ, wado.retrieve_study),
    Route("wado-series", "GET", _SE, READ, wado.retrieve_series),
    Route("wado-instance", "GET", _I, READ, wado.retrieve_instance),
    Route("wado-study-metadata", "GET", _S + "/metadata", READ, metadata.study_metadata),
    Route("wado-series-metadata", "GET", _SE + "/metadata", READ, metadata.series_metadata),
    Route("wado-instance-metadata", "GET", _I + "/metadata", READ, metadata.instance_metadata),
    Route("wado-frames", "GET", _F, READ, frames.retrieve_frames, frames.hot_frames),
    Route("wado-bulk", "GET", _I + "/bulk/{path}", READ, bulk.retrieve_bulk),
    Route("wado-study-rendered", "GET", _S + "/rendered", READ, rendered.study_rendered),
    Route("wado-series-rendered", "GET", _SE + "/rendered", READ, rendered.series_rendered),
    Route(
        "wado-instance-rendered",
        "GET",
        _I + "/rendered",
        READ,
        rendered.instance_rendered,
        rendered.hot_rendered,
    ),
    Route(
        "wado-frames-rendered",
        "GET",
        _F + "/rendered",
        READ,
        rendered.frames_rendered,
        rendered.hot_rendered,
    ),
    Route("wado-study-thumbnail", "GET", _S + "/thumbnail", READ, rendered.study_thumbnail),
    Route("wado-series-thumbnail", "GET", _SE + "/thumbnail", READ, rendered.series_thumbnail),
    Route("wado-instance-thumbnail", "GET", _I + "/thumbnail", READ, rendered.instance_thumbnail),
    Route("wado-frame-thumbnail", "GET", _F + "/thumbnail", READ, rendered.frame_thumbnail),
)


def _litestar_path(template: str) -> str:
    return re.sub(r"\{(\w+)\}", r"{\1:str}", template)


def framework_routes() -> list[HTTPRouteHandler]:
    """litestar's route handlers, one per handler function (STOW's two paths are one)."""
    grouped: dict[tuple[str, str], list[Route]] = {}
    for route in ROUTES:
        grouped.setdefault((route.name, route.method), []).append(route)
    handlers = []
    for (name, method), routes in grouped.items():
        first = routes[0]
        assert all(r.handler is first.handler for r in routes), name
        handler = HTTPRouteHandler(
            path=[_litestar_path(r.template) for r in routes],
            http_method=method,  # type: ignore[arg-type]
            name=name,
            status_code=first.status,
            request_max_body_size=None,  # bodies are streamed and bounded by the handler
        )
        handlers.append(handler(first.handler))
    return handlers


@dataclass(frozen=True)
class Match:
    """What a request asks for: its route (None: no route has this path) and the
    parameters the path gives; ``allowed``: the methods this path has."""

    route: Route | None
    params: dict[str, str]
    allowed: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Pattern:
    """A route's template taken apart once: the literal segments to compare, the
    parameters to take, and the name of a last parameter that takes the rest."""

    route: Route
    literals: tuple[tuple[int, str], ...]
    params: tuple[tuple[int, str], ...]
    tail: str | None


def _pattern(route: Route) -> _Pattern:
    literals, params, tail = [], [], None
    for i, seg in enumerate(route.segments):
        if seg.startswith("{"):
            name, _, kind = seg[1:-1].partition(":")
            if kind == "path":
                tail = name
            else:
                params.append((i, name))
        else:
            literals.append((i, seg))
    return _Pattern(route, tuple(literals), tuple(params), tail)


def _by_length() -> tuple[dict[int, list[_Pattern]], list[_Pattern]]:
    fixed: dict[int, list[_Pattern]] = {}
    tails = []
    for pattern in map(_pattern, ROUTES):
        if pattern.tail is not None:
            tails.append(pattern)
        else:
            fixed.setdefault(len(pattern.route.segments), []).append(pattern)
    return fixed, tails


_FIXED, _TAILS = _by_length()

#: the ASGI scope key where the first layer to match a request leaves its :class:`Match`
MATCH_KEY = "pictor.match"


def _params(pattern: _Pattern, parts: list[str]) -> dict[str, str] | None:
    n = len(pattern.route.segments)
    if pattern.tail is not None and len(parts) < n:
        return None
    for i, literal in pattern.literals:
        if parts[i] != literal:
            return None
    found = {name: parts[i] for i, name in pattern.params}
    if pattern.tail is not None:
        found[pattern.tail] = "/".join(parts[n - 1 :])
    return found


def match(method: str, path: str) -> Match:
    """The route ``method`` and the canonical ``path`` dispatch to (the framework, as
    here, answers HEAD only where a route declares it)."""
    parts = path[1:].split("/")
    candidates = [*_FIXED.get(len(parts), ()), *_TAILS]
    for pattern in candidates:
        if pattern.route.method == method:
            params = _params(pattern, parts)
            if params is not None:
                return Match(pattern.route, params)
    allowed = tuple(p.route.method for p in candidates if _params(p, parts) is not None)
    return Match(None, {}, allowed)


class BadPath(ValueError):
    """A request path Pictor refuses to interpret (400)."""


def canonical_path(path: str) -> str:
    """The one form of ``path`` every layer routes on: one leading slash, no empty
    segments, no trailing slash (what litestar's router reduces a path to). ``.`` and
    ``..`` segments (RFC 3986 5.2.4: a client resolves them, a server must not guess)
    and control characters are refused, since a layer reading them literally and one
    resolving them would see two different resources."""
    if (
        path.startswith("/")
        and "//" not in path
        and "/." not in path
        and not path.endswith("/")
        and path.isprintable()
    ):
        return path  # already canonical: nearly every request, in a few string scans
    if _CONTROL.search(path):
        raise BadPath("the path contains control characters")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise BadPath("the path contains a '.' or '..' segment")
    return "/" + "/".join(parts)


ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class PathGuard:
    """Outermost ASGI layer: bounds the request target (414) and rewrites ``path`` to its
    canonical form (400 when it has none), so that nothing below can disagree on which
    resource a request names. A WebSocket's opening handshake is given the method it
    has on the wire (GET, RFC 6455 4.1), so every layer below routes, guards and audits
    it as the GET it is, and HTTP answers to it go out as denial responses
    (:class:`app.asgi.HandshakeSend`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope["method"] = "GET"
            send = HandshakeSend(scope, send)
        if scope["type"] in ("http", "websocket"):
            raw = scope.get("raw_path") or scope["path"].encode()
            if len(raw) + len(scope.get("query_string", b"")) > MAX_TARGET_BYTES:
                await _refuse(
                    send, 414, f"the request target is longer than {MAX_TARGET_BYTES} bytes"
                )
                return
            try:
                scope["path"] = canonical_path(scope["path"])
            except BadPath as exc:
                await _refuse(send, 400, str(exc))
                return
        await self.app(scope, receive, send)


def matched(scope: Any) -> Match:
    """The request's :class:`Match`, computed once per request."""
    found = scope.get(MATCH_KEY)
    if found is None:
        found = scope[MATCH_KEY] = match(scope["method"], scope["path"])
    return found  # type: ignore[no-any-return]


class HotDispatch:
    """The routes the table marks hot, answered below the framework (the requests a
    viewer makes most: searches and stored frames); what their hot handler declines
    goes on to litestar. A request no route takes is answered here, 404 or 405 with
    ``Allow`` (RFC 9110 15.5.6), whether access control runs or not (it refuses them
    first when it does). Inside access control and CORS. ``hot=False``: every route
    through litestar (tests compare both doors)."""

    def __init__(self, app: ASGIApp, state: Any, *, hot: bool = True) -> None:
        self.app = app
        self.state = state
        self.hot = hot

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":  # never the framework's: only the table's sockets
            found = matched(scope)
            route = found.route
            if route is None or route.socket is None:
                scope[ROUTE_KEY] = route.name if route is not None else "unmatched"
                await send_error(
                    send,
                    NotFound("no such resource")
                    if route is None
                    else BadRequest(f"{scope['path'][:200]} is not a WebSocket endpoint"),
                )
                return
            scope[ROUTE_KEY] = route.name
            await route.socket(self.state, scope, receive, send, found.params)
            return
        if scope["type"] == "http":
            found = matched(scope)
            route = found.route
            if route is None and scope["method"] != "OPTIONS":  # preflights: CORS's
                scope[ROUTE_KEY] = "unmatched"
                await send_error(
                    send,
                    MethodNotAllowed(
                        f"{scope['method']} is not allowed here; allowed: "
                        + ", ".join(found.allowed),
                        found.allowed,
                    )
                    if found.allowed
                    else NotFound("no such resource"),
                )
                return
            if self.hot and route is not None and route.hot is not None:
                scope[ROUTE_KEY] = route.name
                if await route.hot(self.state, scope, receive, send, found.params):
                    return
        await self.app(scope, receive, send)


async def _refuse(send: Any, status: int, message: str) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"warning", warning_header([message]).encode()),
        (b"connection", b"close"),
    ]
    await send_whole(send, status, error_body(status, message), headers)
