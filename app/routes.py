"""The HTTP surface as one table: every route's name, method, path template and the
scope it needs (DESIGN.md decision 11), and the canonical form of a request path.

Access control (:mod:`app.auth.middleware`) classifies a request by matching it against
this table, and the framework routes the same path: :func:`canonical_path` is applied
once, outermost (:class:`PathGuard`), so every layer below (metrics, CORS, access, the
fast paths, litestar's router) sees one string, and litestar's own normalisation
(leading / trailing / repeated slashes) leaves it unchanged. A request this table does
not know is refused before it is dispatched (404, or 405 with ``Allow`` for a known
path with another method); it is never given a default scope.
``tests/unit/test_routes.py`` checks that the framework's routes are exactly these.

Resource paths: PS3.18 Table 10.4.1-1 (WADO-RS), 10.5.1-1 (STOW-RS), 10.6.1-2 (QIDO-RS),
10.4.1.1.4 (frames), 10.4.1.1.5 (bulk data), 10.4.1.1.3 / 10.4.1.1.6 (rendered,
thumbnail); IHE ITI / RAD Invoke Image Display.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from app.asgi import error_body, send_whole, warning_header
from app.auth.principal import ADMIN, READ, WRITE
from app.dicomweb.urls import DICOMWEB_PREFIX

#: longest request target (path and query) accepted; longer: 414 (RFC 9110 15.5.15).
#: A UID list of 200 UIDs fits; nginx's default header buffers take 8 KiB.
MAX_TARGET_BYTES = 16384


#: C0 controls and DEL
_CONTROL = re.compile("[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Route:
    """One route: ``template`` segments in braces are parameters (``{path:path}``, the
    rest of the path). ``scope`` None: open to anyone (not audited)."""

    name: str
    method: str
    template: str
    scope: str | None
    segments: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.template.strip("/").split("/")))

    @property
    def is_search_everywhere(self) -> bool:
        """A QIDO search not confined to one study by its path."""
        return self.name in ("qido-studies", "qido-series", "qido-instances")

    @property
    def is_search(self) -> bool:
        return self.name.startswith("qido-")


_S = DICOMWEB_PREFIX + "/studies/{study}"
_SE = _S + "/series/{series}"
_I = _SE + "/instances/{instance}"
_F = _I + "/frames/{frames}"

ROUTES: tuple[Route, ...] = (
    Route("health", "GET", "/health", None),
    Route("viewer-root", "GET", "/viewer", None),
    Route("viewer", "GET", "/viewer/{path:path}", None),
    Route("metrics", "GET", "/metrics", ADMIN),
    Route("admin-links", "POST", "/admin/links", ADMIN),
    Route("admin-tokens", "GET", "/admin/tokens", ADMIN),
    Route("admin-tokens-create", "POST", "/admin/tokens", ADMIN),
    Route("admin-tokens-revoke", "DELETE", "/admin/tokens/{name}", ADMIN),
    Route("iid", "GET", "/IHEInvokeImageDisplay", READ),
    # STOW-RS
    Route("stow", "POST", DICOMWEB_PREFIX + "/studies", WRITE),
    Route("stow", "POST", _S, WRITE),
    # QIDO-RS
    Route("qido-studies", "GET", DICOMWEB_PREFIX + "/studies", READ),
    Route("qido-series", "GET", DICOMWEB_PREFIX + "/series", READ),
    Route("qido-instances", "GET", DICOMWEB_PREFIX + "/instances", READ),
    Route("qido-study-series", "GET", _S + "/series", READ),
    Route("qido-study-instances", "GET", _S + "/instances", READ),
    Route("qido-series-instances", "GET", _SE + "/instances", READ),
    # WADO-RS
    Route("wado-study", "GET", _S, READ),
    Route("wado-series", "GET", _SE, READ),
    Route("wado-instance", "GET", _I, READ),
    Route("wado-study-metadata", "GET", _S + "/metadata", READ),
    Route("wado-series-metadata", "GET", _SE + "/metadata", READ),
    Route("wado-instance-metadata", "GET", _I + "/metadata", READ),
    Route("wado-frames", "GET", _F, READ),
    Route("wado-bulk", "GET", _I + "/bulk/{path}", READ),
    Route("wado-study-rendered", "GET", _S + "/rendered", READ),
    Route("wado-series-rendered", "GET", _SE + "/rendered", READ),
    Route("wado-instance-rendered", "GET", _I + "/rendered", READ),
    Route("wado-frames-rendered", "GET", _F + "/rendered", READ),
    Route("wado-study-thumbnail", "GET", _S + "/thumbnail", READ),
    Route("wado-series-thumbnail", "GET", _SE + "/thumbnail", READ),
    Route("wado-instance-thumbnail", "GET", _I + "/thumbnail", READ),
    Route("wado-frame-thumbnail", "GET", _F + "/thumbnail", READ),
)


@dataclass(frozen=True)
class Match:
    """What a request asks for: its route (None: no route has this path) and the
    parameters the path gives; ``allowed``: the methods this path has."""

    route: Route | None
    params: dict[str, str]
    allowed: tuple[str, ...] = ()


def _match_segments(route: Route, parts: list[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for i, seg in enumerate(route.segments):
        if seg.startswith("{"):
            name, _, kind = seg[1:-1].partition(":")
            if kind == "path":
                params[name] = "/".join(parts[i:])
                return params
            if i >= len(parts):
                return None
            params[name] = parts[i]
        elif i >= len(parts) or parts[i] != seg:
            return None
    return params if len(parts) == len(route.segments) else None


def match(method: str, path: str) -> Match:
    """The route ``method`` and the canonical ``path`` dispatch to (the framework, as
    here, answers HEAD only where a route declares it)."""
    parts = path.strip("/").split("/")
    wanted = method
    allowed: list[str] = []
    found: tuple[Route, dict[str, str]] | None = None
    for route in ROUTES:
        params = _match_segments(route, parts)
        if params is None:
            continue
        allowed.append(route.method)
        if route.method == wanted and found is None:
            found = (route, params)
    if found is not None:
        return Match(found[0], found[1], tuple(allowed))
    return Match(None, {}, tuple(allowed))


class BadPath(ValueError):
    """A request path Pictor refuses to interpret (400)."""


def canonical_path(path: str) -> str:
    """The one form of ``path`` every layer routes on: one leading slash, no empty
    segments, no trailing slash (what litestar's router reduces a path to). ``.`` and
    ``..`` segments (RFC 3986 5.2.4: a client resolves them, a server must not guess)
    and control characters are refused, since a layer reading them literally and one
    resolving them would see two different resources."""
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
    resource a request names."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
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


async def _refuse(send: Any, status: int, message: str) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"warning", warning_header([message]).encode()),
        (b"connection", b"close"),
    ]
    await send_whole(send, status, error_body(status, message), headers)
