"""WADO-RS metadata (PS3.18 10.4.1.1.2): the DICOM JSON stored at ingest, never read
from the files; ETag / If-None-Match and gzip."""

from __future__ import annotations

import gzip
import hashlib
from typing import Any

from litestar import Request
from litestar.response import Response

from app.dicom.json_model import BASE_MARKER
from app.dicomweb.negotiation import SEARCH_MEDIA_TYPES, choose
from app.dicomweb.responses import (
    target_scope,
)
from app.dicomweb.urls import request_base_url
from app.services import retrieve

# -- metadata -------------------------------------------------------------------------


async def _metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Retrieve metadata (PS3.18 10.4.1.1.2): the stored DICOM JSON of each instance."""
    media = choose(request.headers.get("accept"), SEARCH_MEDIA_TYPES)
    scope = target_scope(request)
    state = request.app.state
    rows = await retrieve.metadata(state.pool, scope)
    base = request_base_url(state.settings.public_base_url, request.headers, request.url)
    tag = hashlib.sha1(base.encode())
    for _, sha in rows:
        tag.update(sha.encode())
    etag = f'"{tag.hexdigest()}"'
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(b"", status_code=304, headers={"ETag": etag})
    marker, replacement = f'"{BASE_MARKER}/'.encode(), f'"{base}/'.encode()
    body = b"[" + b",".join(meta.replace(marker, replacement) for meta, _ in rows) + b"]"
    headers = {"ETag": etag, "Vary": "Accept, Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", "") and len(body) > 1024:
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=media, headers=headers)


async def study_metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _metadata(request)


async def series_metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _metadata(request)


async def instance_metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _metadata(request)
