"""The one place where Pictor's error tree becomes framework responses: the rendering
itself is :func:`app.asgi.error_answer`, shared with the fast paths."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException
from litestar.response import Response

from app.asgi import error_answer
from app.errors import PictorError, RequestError

log = logging.getLogger("pictor")


def _response(exc: PictorError) -> Response[bytes]:
    status, headers, body = error_answer(exc)
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={k: v for k, v in headers if k != "content-type"},
    )


def pictor_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, PictorError)
    return _response(exc)


class _FrameworkError(RequestError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status


def http_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, HTTPException)
    return _response(_FrameworkError(exc.status_code, str(exc.detail)))


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """A bug: logged with its traceback (the framework's own 500 logs nothing), answered
    with a 500 that says nothing of it."""
    log.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
    return _response(PictorError("internal error; the archive logged it"))


EXCEPTION_HANDLERS = {
    PictorError: pictor_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
