"""Monitoring: ``/health`` for load balancers and orchestrators, ``/metrics`` for
Prometheus (see app.observability)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from litestar import Request
from litestar.response import Response

from app.errors import ServiceUnavailable
from app.index.database import ping
from app.observability import METRICS_CONTENT_TYPE, metrics_text

log = logging.getLogger("pictor")


async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Liveness and readiness: the index answers a query and the storage directories
    take a new file (created, synced and removed); 503 naming what fails otherwise."""
    state = request.app.state
    try:
        await ping(state.pool)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        log.error("health: the index does not answer: %s", exc)
        raise ServiceUnavailable("index unreachable") from exc
    try:
        free = await state.store.probe()
    except OSError as exc:
        log.error("health: the storage is not writable: %s", exc)
        raise ServiceUnavailable("storage not writable") from exc
    body = msgspec.json.encode(
        {"status": "ok", "database": "ok", "storage": {"writable": True, "free_bytes": free}}
    )
    return Response(body, media_type="application/json")


async def metrics() -> Response[bytes]:
    """Prometheus text exposition format: request counts and latencies per route, ingest
    counts and bytes, all server processes together (see app.observability)."""
    return Response(await asyncio.to_thread(metrics_text), media_type=METRICS_CONTENT_TYPE)
