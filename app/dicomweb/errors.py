"""The one place where Pictor's error tree becomes HTTP responses."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException
from litestar.response import Response

from app.errors import PictorError


def warning_header(texts: list[str]) -> str:
    """``Warning: 299 pictor "..."`` values (RFC 7234 5.5, PS3.18 8.4.4), at most ten.

    A header value must be visible ASCII: the text (which may quote a client's own
    non-ASCII input) loses control characters, has quotes and backslashes escaped and
    other characters written as escapes; each text is cut at 300 characters.
    """
    quoted = []
    for text in texts[:10]:
        clean = "".join(ch if ch.isprintable() else " " for ch in text)
        clean = clean.encode("ascii", "backslashreplace").decode("ascii")
        clean = clean.replace("\\", "\\\\").replace('"', '\\"')
        quoted.append(f'299 pictor "{clean[:300]}"')
    return ", ".join(quoted)


def _response(status: int, message: str, headers: dict[str, str] | None = None) -> Response[bytes]:
    body = msgspec.json.encode({"status": status, "message": message})
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={"Warning": warning_header([message]), **(headers or {})},
    )


def pictor_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, PictorError)
    return _response(exc.status_code, exc.message, exc.headers)


def http_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, HTTPException)
    return _response(exc.status_code, str(exc.detail))


EXCEPTION_HANDLERS = {PictorError: pictor_error, HTTPException: http_error}
