"""Signing in and out in a browser (issue #21): ``/login`` and ``/logout``.

* ``GET /login[?next=viewer/...]``: the sign-in form (``username``, ``password``), or,
  for someone signed in already, who they are and a sign-out button;
* ``POST /login`` (``application/x-www-form-urlencoded``, at most 8 KiB): success is
  303 to ``next`` (the viewer by default) with the session cookie set
  (:mod:`app.auth.sessions`); a wrong name or password is 401 with the form again; a
  locked account or address (:mod:`app.services.users`) is 429 with ``Retry-After``;
* ``POST /logout``: the session ends, the cookie is removed, 303 to the form.

With ``PICTOR_OIDC_CLIENT_ID`` people sign in at the identity provider instead:
``GET /login`` is then a redirect to ``next`` in the viewer, whose OIDC client (OHIF's,
authorization code with PKCE) sends them to the provider and back.

Every attempt is audited (action ``login`` / ``logout``, who ``user:NAME``). A form
POSTed from another origin is refused (403; login CSRF would sign a victim into the
attacker's account); one without ``Origin`` and ``Referer`` is a program's and allowed
for ``/login``, while ``/logout``, which acts on a cookie, needs its own origin like every
cookie-authenticated change (:func:`app.auth.sessions.cross_site`).

``next`` is relative to the server's root and must start with ``viewer`` or
``IHEInvokeImageDisplay``: a sign-in never sends anyone to another site (no open
redirect). Redirects are relative, so they work through any proxy prefix.

The pages forbid framing (``frame-ancestors 'none'``: no clickjacking of the form) and
caching.
"""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

from litestar import Request
from litestar.response import Response

from app.auth import sessions
from app.dicomweb.admin import read_body
from app.dicomweb.viewer import html_page
from app.errors import Forbidden, NotFound, UnsupportedMediaType
from app.services import users

MAX_FORM = 8192
_NEXT = re.compile(r"(?:viewer|IHEInvokeImageDisplay)(?:[/?][^\s\\]*)?")
DEFAULT_NEXT = "viewer/"
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def safe_next(value: str | None) -> str:
    """Where to go after signing in: ``value`` when it is a page of this server (see the
    module's docstring), else the viewer."""
    if value and len(value) <= 4000 and _NEXT.fullmatch(value) and "//" not in value:
        return value
    return DEFAULT_NEXT


def _client(request: Request[Any, Any, Any]) -> str | None:
    client = request.scope.get("client")
    return str(client[0]) if client else None


def _form(message: str = "", *, next_page: str = DEFAULT_NEXT, name: str = "") -> str:
    alert = f"<p role='alert' style='color:#a00'>{html.escape(message)}</p>" if message else ""
    return (
        f"{alert}<form method='post' action='login'>"
        f"<input type='hidden' name='next' value='{html.escape(next_page)}'>"
        "<p><label>User name<br><input name='username' autocomplete='username' required "
        f"maxlength='64' autofocus value='{html.escape(name)}'></label></p>"
        "<p><label>Password<br><input name='password' type='password' required "
        "autocomplete='current-password' maxlength='256'></label></p>"
        "<p><button type='submit'>Sign in</button></p></form>"
    )


def _page(status: int, title: str, body: str, extra: dict[str, str] | None = None) -> Response[Any]:
    page = html_page(status, title, body)
    page.headers.update(_HEADERS)
    if extra:
        page.headers.update(extra)
    return page


def _enabled(request: Request[Any, Any, Any]) -> None:
    if not request.app.state.settings.auth:
        raise NotFound("signing in is off: access control is off (pictor serve --auth turns it on)")


def _audit(request: Request[Any, Any, Any], who: str, action: str, status: int) -> None:
    audit = request.app.state.access.audit
    if audit is not None:
        audit.record(who, _client(request), action, status, method=request.method)


async def login_page(request: Request[Any, Any, Any]) -> Response[Any]:
    _enabled(request)
    next_page = safe_next(request.query_params.get("next"))
    if request.app.state.settings.oidc_sign_in:
        # people sign in at the identity provider: the viewer sends them there (OHIF's
        # OIDC client, PKCE) and brings them back to this page
        return Response(b"", status_code=303, headers={"Location": next_page, **_HEADERS})
    who = await request.app.state.access.identify(request.scope)
    if who is not None and who.who.startswith("user:"):
        name = who.who[len("user:") :]
        body = (
            f"<p>Signed in as <b>{html.escape(name)}</b>.</p>"
            f"<p><a href='{html.escape(next_page)}'>Open the viewer</a></p>"
            "<form method='post' action='logout'><button type='submit'>Sign out</button></form>"
        )
        return _page(200, "Signed in", body)
    return _page(200, "Sign in", _form(next_page=next_page))


def _cross_site_form(request: Request[Any, Any, Any], *, strict: bool) -> None:
    """A form from another origin is refused; with ``strict``, one that does not say
    where it comes from too."""
    scope = request.scope
    said = any(sessions.header_present(scope, h) for h in (b"origin", b"referer"))
    if not strict and not said and not sessions.header_present(scope, b"sec-fetch-site"):
        return
    refusal = sessions.cross_site(scope, request.app.state.settings.public_base_url)
    if refusal is not None:
        raise Forbidden(refusal)


async def _fields(request: Request[Any, Any, Any]) -> dict[str, str]:
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType(
            "a sign-in is a form: Content-Type application/x-www-form-urlencoded"
        )
    body = await read_body(request, MAX_FORM)
    fields: dict[str, str] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(key, value)
    return fields


async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    _enabled(request)
    state = request.app.state
    try:
        _cross_site_form(request, strict=False)
    except Forbidden:
        _audit(request, "anonymous", "login", 403)
        raise
    fields = await _fields(request)
    name = fields.get("username", "")
    next_page = safe_next(fields.get("next"))
    outcome = await users.sign_in(
        state.pool, state.settings, name, fields.get("password", ""), _client(request)
    )
    who = f"user:{outcome.user}" if users.valid_name(outcome.user) else "anonymous"
    name = name[:64]  # echoed in the form
    if outcome.session is not None:
        _audit(request, who, "login", 303)
        cookie = sessions.set_cookie(
            request.scope,
            sessions.session_cookie_name(request.scope),
            outcome.session,
            int(state.settings.session_max_seconds),
        )
        return Response(
            b"",
            status_code=303,
            headers={"Location": next_page, "Set-Cookie": cookie.decode(), **_HEADERS},
        )
    if outcome.retry_after:
        _audit(request, who, "login", 429)
        minutes = max(1, round(outcome.retry_after / 60))
        return _page(
            429,
            "Sign in",
            _form(
                f"Too many failed sign-ins: try again in about {minutes} minute"
                + ("s" if minutes != 1 else ""),
                next_page=next_page,
                name=name,
            ),
            {"Retry-After": str(outcome.retry_after)},
        )
    _audit(request, who, "login", 401)
    return _page(
        401, "Sign in", _form("Wrong user name or password", next_page=next_page, name=name)
    )


async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    _enabled(request)
    state = request.app.state
    token = sessions.session_cookie(request.scope)
    if token is not None:
        try:
            _cross_site_form(request, strict=True)
        except Forbidden:
            _audit(request, "anonymous", "logout", 403)
            raise
        name = await users.sign_out(state.pool, token)
        if state.access.sessions is not None:
            state.access.sessions.forget(token)
        _audit(request, f"user:{name}" if name else "anonymous", "logout", 303)
    cookie = sessions.set_cookie(request.scope, sessions.session_cookie_name(request.scope), "", 0)
    return Response(
        b"",
        status_code=303,
        headers={
            "Location": "login?" + urlencode({"next": DEFAULT_NEXT}),
            "Set-Cookie": cookie.decode(),
            **_HEADERS,
        },
    )
