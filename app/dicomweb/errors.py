"""The one place where Pictor's error tree becomes HTTP responses."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException
from litestar.response import Response

from app.asgi import error_body, warning_header
from app.errors import PictorError


def _response(status: int, message: str, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        error_body(status, message),
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
