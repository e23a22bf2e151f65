"""Cross-origin resource sharing: which other web sites may read Pictor's answers.

A browser lets a page read a response from another origin only if the response says so,
following the CORS protocol of the WHATWG Fetch standard (section 3.2, "CORS protocol",
https://fetch.spec.whatwg.org/#http-cors-protocol):

* a *CORS request* carries ``Origin``; its response is readable by the page when it has
  ``Access-Control-Allow-Origin`` equal to that origin (or ``*``), and the page may read
  the non-safelisted response headers named in ``Access-Control-Expose-Headers``
  (Fetch 3.2.3, "HTTP responses");
* a request that is not "simple" (a DICOMweb ``Accept`` with quotes, ``Content-Type:
  multipart/related``, ``Authorization``, any method but GET/HEAD/POST) is preceded by a
  *CORS-preflight request*: ``OPTIONS`` with ``Access-Control-Request-Method`` (and
  ``-Headers``), answered with ``Access-Control-Allow-Methods``, ``-Headers`` and
  ``-Max-Age`` (Fetch 3.2.2, "HTTP requests", and 4.8, "CORS-preflight fetch").

The server states its policy and the browser enforces it: this middleware never blocks
a request, it only decides which headers an answer carries. Allowed origins come from
the ``cors_origins`` setting; by default none, so a web page on any other site cannot
read a local archive through the user's browser. ``*`` allows any origin (Pictor uses
no cookies, so ``Access-Control-Allow-Credentials`` is never sent).

It wraps the whole application, outside the exception handlers, so error answers (4xx,
5xx, unknown routes) carry the same headers and a viewer can read their ``Warning``.
Preflights reach the route's own ``OPTIONS`` handler; ``Access-Control-Allow-Methods``
names the methods of that route (from the application's route table: litestar's ``Allow``
misses methods of handlers merged into one path), and a preflight for a path that does
not exist fails with its 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from app.asgi import header

# ASGI types kept loose: any ASGI server or framework (litestar's own aliases included)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

#: request headers a cross-origin page may send (beyond the CORS-safelisted ones):
#: DICOMweb negotiation, uploads, bearer tokens, conditional and range requests
ALLOWED_REQUEST_HEADERS = (
    "accept",
    "accept-language",
    "authorization",
    "cache-control",
    "content-language",
    "content-type",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "pragma",
    "range",
    "x-requested-with",
)
#: response headers a cross-origin page may read (Fetch: CORS-safelisted response-header
#: names such as Content-Type are readable anyway): PS3.18 8.4.4 Warning, caching
#: validators, ranges, where a new resource is
EXPOSED_RESPONSE_HEADERS = (
    "Accept-Ranges",
    "Content-Disposition",
    "Content-Length",
    "Content-Location",
    "Content-Range",
    "ETag",
    "Location",
    "Retry-After",
    "Warning",
)
#: seconds a browser may cache a preflight answer (Chromium caps this at 7200)
MAX_AGE = 600


class OriginPolicy:
    """The allowed origins: none, a list of serialized origins, or any (``*``)."""

    def __init__(self, origins: Sequence[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.lower() for o in origins if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.origins)

    def allows(self, origin: str) -> bool:
        return self.any or origin.lower() in self.origins

    def allow_origin(self, origin: str) -> str:
        """The ``Access-Control-Allow-Origin`` value for an allowed ``origin``."""
        return "*" if self.any else origin


def _with_vary_origin(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Add ``Origin`` to ``Vary`` (RFC 9110 12.5.5): the answer depends on it, so a
    shared cache must not hand one origin's answer to another."""
    out = []
    found = False
    for key, value in headers:
        if key.lower() == b"vary":
            found = True
            names = {v.strip().lower() for v in value.split(b",")}
            if b"origin" not in names and b"*" not in names:
                value = value + b", Origin"
        out.append((key, value))
    if not found:
        out.append((b"vary", b"Origin"))
    return out


class CrossOriginMiddleware:
    """Pure ASGI middleware adding the Fetch standard's CORS response headers."""

    def __init__(
        self, app: ASGIApp, origins: Sequence[str], methods: Mapping[str, Iterable[str]]
    ) -> None:
        """``methods``: the methods of each route, by the path template that the router
        leaves in the ASGI scope (``path_template``)."""
        self.app = app
        self.policy = OriginPolicy(origins)
        self.methods = {
            path: ", ".join(sorted(m for m in ms if m not in ("OPTIONS", "HEAD")))
            for path, ms in methods.items()
        }
        self.exposed = ", ".join(EXPOSED_RESPONSE_HEADERS).encode()
        self.allowed_headers = ", ".join(ALLOWED_REQUEST_HEADERS).encode()

    async def __call__(self, scope: Any, receive: Any, send: Send) -> None:
        if scope["type"] != "http" or not self.policy.enabled:
            await self.app(scope, receive, send)
            return
        origin = header(scope, b"origin")
        allowed = origin is not None and self.policy.allows(origin)
        preflight = (
            scope["method"] == "OPTIONS"
            and origin is not None
            and header(scope, b"access-control-request-method") is not None
        )
        private_network = (header(scope, b"access-control-request-private-network") or "") == (
            "true"
        )

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (bytes(k), bytes(v))
                    for k, v in message.get("headers", ())
                    if bytes(k).lower() not in _CORS_HEADER_NAMES
                ]
                if not self.policy.any:
                    headers = _with_vary_origin(headers)
                if allowed:
                    assert origin is not None
                    headers.append(
                        (b"access-control-allow-origin", self.policy.allow_origin(origin).encode())
                    )
                    if preflight:
                        methods = self.methods.get(scope.get("path_template", ""), "")
                        headers.extend(self._preflight_headers(methods, private_network))
                    else:
                        headers.append((b"access-control-expose-headers", self.exposed))
                elif self.policy.any:
                    headers.append((b"access-control-allow-origin", b"*"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _preflight_headers(self, methods: str, private_network: bool) -> list[tuple[bytes, bytes]]:
        out = [
            (b"access-control-allow-methods", methods.encode()),
            (b"access-control-allow-headers", self.allowed_headers),
            (b"access-control-max-age", str(MAX_AGE).encode()),
        ]
        if private_network:
            # WICG Private Network Access: a page of an allowed public origin may reach
            # an archive on a private address
            out.append((b"access-control-allow-private-network", b"true"))
        return out


_CORS_HEADER_NAMES = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-allow-credentials",
        b"access-control-expose-headers",
        b"access-control-max-age",
    }
)
