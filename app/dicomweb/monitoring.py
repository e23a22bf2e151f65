"""Monitoring: ``/health`` for load balancers and orchestrators, ``/metrics`` for
Prometheus (see app.observability)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from litestar import Request
from litestar.response import Response

from app.observability import METRICS_CONTENT_TYPE, metrics_text
from app.services.health import gauges, readiness

log = logging.getLogger("pictor")


async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Liveness and readiness: the index answers a query and the storage takes a new
    file (created, synced and removed); 503 naming what fails otherwise. A full storage
    answers 200 with ``"status": "degraded"``: reads go on."""
    state = request.app.state
    settings = state.settings
    dimse = (settings.host, settings.dimse_port) if settings.dimse_port else None
    body = msgspec.json.encode(
        await readiness(
            state.pool, state.store, settings.min_free_bytes, dimse, settings.background_process
        )
    )
    return Response(body, media_type="application/json")


async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text exposition format: request counts and latencies per route, ingest
    counts and bytes, all server processes together (see app.observability); and the
    archive's own figures (instances, bytes, free space, damaged files)."""
    state = request.app.state
    text = await asyncio.to_thread(metrics_text)
    lines = []
    try:
        for name, help_text, value in await gauges(
            state.pool, state.store, state.settings.min_free_bytes
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
    except Exception as exc:  # noqa: BLE001 - the process metrics are still worth having
        log.error("metrics: the archive's figures could not be read: %s", exc)
    return Response(
        text + ("\n".join(lines) + "\n").encode() if lines else text,
        media_type=METRICS_CONTENT_TYPE,
    )
