"""The access check of every HTTP request, and its audit event (one pure ASGI middleware).

Placed inside the CORS middleware (so 401 / 403 answers carry CORS headers and
preflights reach their handlers) and outside everything that reads data, the frames
fast path included. Per request (:func:`app.auth.routes.classify` names what it asks
for):

* open: CORS preflights (``OPTIONS``), ``/health`` (load balancers), the viewer's static
  bundle under ``/viewer`` (code and configuration, no patient data: every image and
  attribute it shows comes through the guarded DICOMweb routes);
* ``read``: QIDO-RS, WADO-RS (metadata, instances, frames, bulk data, rendered,
  thumbnails), IHE Invoke Image Display; ``write``: STOW-RS; ``admin``: ``/admin/...``
  (tokens, links) and ``/metrics``, as :data:`app.routes.ROUTES` says;
* a path the table does not know: 404, a known path with another method: 405, before
  anything is dispatched (the path is canonical: :class:`app.routes.PathGuard`).

Credentials, only these: ``Authorization: Bearer TOKEN`` (RFC 6750 2.1), else an
``access_token`` query parameter (2.3), else the session cookie of a person who signed
in (:mod:`app.auth.sessions`), else the study-link cookie, which carries a study link
and nothing else. A token is an API token (``pt_...``), a study link (``pl_...``) or a
JWT (:mod:`app.auth.oidc`). A state-changing request authenticated by a cookie must come
from this server's own origin (:func:`app.auth.sessions.cross_site`; else 403). Answers
(RFC 6750 3): no credentials: 401 with ``WWW-Authenticate: Bearer realm="pictor"``;
bad credentials (unknown, revoked, expired, tampered, wrong issuer / audience): 401 with
``error="invalid_token"``; a scope missing: 403 with ``error="insufficient_scope"``.
Bodies are ``{"status": ..., "message": ...}`` as every other error of Pictor.

A study link may read its study only: another study in the path answers 404 (not 403:
the link must not confirm that a study exists); a search across the archive is
confined to the study: the middleware leaves the study under :data:`CONFINED_KEY` and
the search applies it to the parsed query (:func:`app.index.query.confine`), after
every normalisation of the keys; writes and admin answer 403.

``GET /link/TOKEN`` is the URL a study link is handed out as: it sets an ``HttpOnly;
SameSite=Strict`` cookie with the token (lifetime: the link's) and redirects to the
viewer showing the study; an expired or tampered link answers 401.

Every guarded request, refused ones included, leaves one audit event
(:class:`app.auth.audit.AuditLog`) after its answer has gone out.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_plus, urlencode

from app.asgi import StatusRecorder, header, quoted, send_error, send_whole
from app.auth import links, sessions
from app.auth.audit import AuditLog
from app.auth.oidc import JwtError, JwtVerifier, looks_like_jwt
from app.auth.principal import (
    ANONYMOUS,
    AUDIT_UIDS_KEY,
    CONFINED_KEY,
    GRANTED_KEY,
    READ,
    WHO_KEY,
    Principal,
    grants,
)
from app.auth.routes import Target, target_of
from app.auth.sessions import SessionVerifier, cookie_value
from app.auth.tokens import TokenVerifier, looks_like_token
from app.errors import (
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PictorError,
    ServiceUnavailable,
    Unauthorized,
)
from app.observability import ROUTE_KEY
from app.routes import matched

REALM = 'Bearer realm="pictor"'

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class Access:
    """What the middleware needs, opened in the application's lifespan."""

    def __init__(
        self,
        *,
        enforce: bool,
        tokens: TokenVerifier | None,
        jwts: JwtVerifier | None,
        link_secret: links.LinkSecret,
        audit: AuditLog | None,
        sessions: SessionVerifier | None = None,
        public_base_url: str = "",
        sign_in_page: bool = False,
    ) -> None:
        self.enforce = enforce
        self.tokens = tokens
        self.jwts = jwts
        self.link_secret = link_secret
        self.audit = audit
        self.sessions = sessions
        self.public_base_url = public_base_url
        #: people sign in at /login (local accounts; not the identity provider's)
        self.sign_in_page = sign_in_page

    async def identify(self, scope: Any) -> Principal | None:
        """Who the request's cookies say is asking (a signed-in person, a study link),
        or None: for pages that are open to anyone but answer a person differently
        (the viewer sends a stranger to sign in first)."""
        try:
            return await _from_cookies(self, scope)
        except (Unauthorized, ServiceUnavailable):
            return None


def _invalid(message: str) -> Unauthorized:
    return Unauthorized(
        message,
        f'{REALM}, error="invalid_token", error_description="{quoted(message, 200)}"',
    )


def _sign_in_location(scope: Any) -> bytes:
    """``login?next=`` this page, relative (the page is at the server's root)."""
    here = scope["path"].lstrip("/")
    query = scope.get("query_string", b"").decode("latin-1")
    return ("login?" + urlencode({"next": here + ("?" + query if query else "")})).encode()


async def _from_cookies(access: Access, scope: Any) -> Principal | None:
    """The principal of the session cookie, else of the study-link cookie; None when
    the request has neither; Unauthorized when the one it has is not valid."""
    session = sessions.session_cookie(scope)
    cookie = cookie_value(scope, links.COOKIE)
    if session is not None and access.sessions is not None:
        principal = (
            await access.sessions.verify(session) if sessions.looks_like_session(session) else None
        )
        if principal is not None:
            return principal
        if cookie is None:
            raise _invalid("the session has ended: sign in again")
    if cookie is None:
        return None
    if not cookie.startswith(links.PREFIX):
        raise _invalid("the link cookie carries a study link only")
    return await _link_principal(access, cookie)


async def _link_principal(access: Access, token: str) -> Principal:
    try:
        study, _ = links.verify(await access.link_secret.get(), token)
    except links.LinkError as exc:
        raise _invalid(str(exc)) from exc
    return Principal(f"link:{study}", frozenset((READ,)), study)


def _client(scope: Any) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


class AccessMiddleware:
    def __init__(self, app: ASGIApp, state: Any) -> None:
        """``state``: where the lifespan leaves an :class:`Access` as ``access``."""
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):  # WebSockets: as their GET
            await self.app(scope, receive, send)
            return
        access: Access = self.state.access
        path: str = scope["path"]  # canonical (app.routes.PathGuard)
        link = path.startswith("/link/") and path.count("/") == 2
        if link and scope["method"] in ("GET", "HEAD"):
            try:
                await self._open_link(access, scope, send, path[len("/link/") :])
            except ServiceUnavailable as down:  # the link secret is in the index
                await send_error(send, down)
            return
        target = target_of(scope["method"], matched(scope))
        if target.refusal is not None:
            await self._refuse(access, scope, send, target)
            return
        if target.scope is None:
            await self.app(scope, receive, send)
            return
        principal = ANONYMOUS
        try:
            if access.enforce:
                principal = await self._authenticate(access, scope)
                self._authorize(principal, target, scope)
            scope[WHO_KEY] = principal.who
            scope[GRANTED_KEY] = principal.scopes
        except (Unauthorized, Forbidden, NotFound) as denied:
            scope[ROUTE_KEY] = target.action
            if isinstance(denied, Unauthorized) and self._sends_to_sign_in(access, scope, target):
                await send_whole(
                    send,
                    303,
                    b"",
                    [
                        (b"location", _sign_in_location(scope)),
                        (b"cache-control", b"no-store"),
                    ],
                )
            else:
                await send_error(send, denied)
            self._audit(access, scope, target, principal, denied.status_code)
            return
        except ServiceUnavailable as down:  # who is asking cannot be told now
            scope[ROUTE_KEY] = target.action
            await send_error(send, down)
            return
        if access.audit is None:
            await self.app(scope, receive, send)
            return
        recorder = StatusRecorder(send)
        try:
            await self.app(scope, receive, recorder)
        finally:
            self._audit(access, scope, target, principal, recorder.status)

    @staticmethod
    def _sends_to_sign_in(access: Access, scope: Any, target: Target) -> bool:
        """An EMR's Invoke Image Display link opened by a person who has not signed in
        (a browser asking for a page): the sign-in form, which brings them back."""
        if not access.sign_in_page or target.action != "iid" or scope["method"] != "GET":
            return False
        if header(scope, b"authorization"):
            return False
        return "text/html" in (header(scope, b"accept") or "")

    # -- who is asking -------------------------------------------------------------------

    async def _authenticate(self, access: Access, scope: Any) -> Principal:
        token = None
        authorization = header(scope, b"authorization")
        if authorization:
            kind, _, value = authorization.strip().partition(" ")
            if kind.lower() == "bearer" and value.strip():
                token = value.strip()
        if token is None and b"access_token=" in scope.get("query_string", b""):
            token = self._token_parameter(scope)
        if token is None:
            principal = await _from_cookies(access, scope)
            if principal is None:
                raise Unauthorized(
                    "authentication required: send Authorization: Bearer TOKEN, or sign in",
                    REALM,
                )
            # a WebSocket is not bound by the same-origin policy (RFC 6455 10.2): a
            # page elsewhere could open one with this server's cookies
            if scope["method"] not in sessions.SAFE_METHODS or scope["type"] == "websocket":
                refusal = sessions.cross_site(scope, access.public_base_url)
                if refusal is not None:
                    raise Forbidden(refusal)
            return principal
        if token.startswith(links.PREFIX):
            return await _link_principal(access, token)
        if looks_like_token(token):
            principal = None if access.tokens is None else await access.tokens.verify(token)
            if principal is None:
                raise _invalid("unknown or revoked token")
            return principal
        if looks_like_jwt(token) and access.jwts is not None:
            try:
                return await access.jwts.verify(token)
            except JwtError as exc:
                raise _invalid(f"JWT not accepted: {exc}") from exc
        raise _invalid("unrecognised token")

    @staticmethod
    def _token_parameter(scope: Any) -> str | None:
        """The ``access_token`` parameter (RFC 6750 2.3), taken out of the query string
        (the DICOMweb routes would read it as a search key). Only that exact name: a
        spelling the routes would normalise differently (`` access_token``) stays in the
        query, where QIDO refuses it as an unknown attribute."""
        raw: bytes = scope["query_string"]
        pairs = raw.split(b"&")
        token = None
        kept = []
        for pair in pairs:
            key, _, value = pair.partition(b"=")
            if key == b"access_token":
                if token is not None:
                    raise _invalid("more than one access_token parameter")
                token = unquote_plus(value.decode("latin-1"))
            else:
                kept.append(pair)
        if token is not None:
            scope["query_string"] = b"&".join(kept)
        return token

    # -- may it? -------------------------------------------------------------------------

    def _authorize(self, principal: Principal, target: Target, scope: Any) -> None:
        assert target.scope is not None
        if principal.study is not None:
            self._confine(principal.study, target, scope)
        if not grants(principal.scopes, target.scope):
            raise Forbidden(
                f"this token lacks the {target.scope!r} scope",
                f'{REALM}, error="insufficient_scope", scope="{target.scope}"',
            )

    @staticmethod
    def _confine(study: str, target: Target, scope: Any) -> None:
        """A study link reads its own study and nothing else."""
        if target.scope != READ:
            raise Forbidden("a study link only reads its study")
        hidden = NotFound("not found")
        if target.study is not None:
            if target.study != study:
                raise hidden
            return
        if target.is_search_everywhere or target.action == "iid":
            scope[CONFINED_KEY] = study  # applied to the parsed query (app.index.query)
            return
        raise hidden

    async def _refuse(self, access: Access, scope: Any, send: Any, target: Target) -> None:
        """A request no route takes: answered here, never dispatched."""
        scope[ROUTE_KEY] = "unmatched"
        refusal: PictorError = (
            MethodNotAllowed(
                f"{scope['method']} is not allowed here; allowed: {', '.join(target.allowed)}",
                target.allowed,
            )
            if target.refusal == 405
            else NotFound("no such resource")
        )
        await send_error(send, refusal)
        self._audit(access, scope, target, ANONYMOUS, refusal.status_code)

    # -- study links -----------------------------------------------------------------------

    async def _open_link(self, access: Access, scope: Any, send: Any, token: str) -> None:
        scope[ROUTE_KEY] = "link-open"
        target = Target("link-open", READ)
        try:
            study, expires = links.verify(await access.link_secret.get(), token)
        except links.LinkError as exc:
            message = f"{exc}: ask for a new link"
            await send_error(send, Unauthorized(message, f'{REALM}, error="invalid_token"'))
            self._audit(access, scope, target, ANONYMOUS, 401)
            return
        cookie = (
            f"{links.COOKIE}={token}; Path=/; Max-Age={max(1, expires - int(time.time()))}; "
            "HttpOnly; SameSite=Strict" + ("; Secure" if sessions.is_https(scope) else "")
        )
        location = "../viewer?" + urlencode({"StudyInstanceUIDs": study})
        await send_whole(
            send,
            303,
            b"",
            [
                (b"location", location.encode()),
                (b"set-cookie", cookie.encode()),
                (b"cache-control", b"no-store"),
                (b"referrer-policy", b"no-referrer"),
            ],
        )
        principal = Principal(f"link:{study}", frozenset((READ,)), study)
        self._audit(access, scope, Target("link-open", READ, study), principal, 303)

    # -- audit -----------------------------------------------------------------------------

    @staticmethod
    def _audit(
        access: Access, scope: Any, target: Target, principal: Principal, status: int
    ) -> None:
        if access.audit is None:
            return
        studies, series, instances = [target.study], [target.series], [target.instance]
        for study, serie, instance in scope.get(AUDIT_UIDS_KEY, ()):
            studies.append(study)
            series.append(serie)
            instances.append(instance)
        query = None
        if target.action.startswith("qido") or target.action == "iid":
            query = scope.get("query_string", b"").decode("latin-1") or None
        access.audit.record(
            principal.who,
            _client(scope),
            target.action,
            status,
            method=scope["method"],
            studies=[s for s in studies if s],
            series=[s for s in series if s],
            instances=[s for s in instances if s],
            query=query,
        )
