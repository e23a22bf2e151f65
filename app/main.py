"""The application factory: resources are opened in the lifespan and kept on ``app.state``."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, Router, get
from litestar.response import Response

from app.auth import links
from app.auth.audit import AuditLog
from app.auth.middleware import Access, AccessMiddleware
from app.auth.oidc import JwtVerifier
from app.auth.tokens import TokenVerifier
from app.codec import pool as codec_pool
from app.config import Settings
from app.dicomweb import admin, qido, rendered, viewer, wado
from app.dicomweb.cors import CrossOriginMiddleware
from app.dicomweb.errors import EXCEPTION_HANDLERS
from app.dicomweb.stow import store_instances
from app.dicomweb.urls import DICOMWEB_PREFIX
from app.errors import ServiceUnavailable
from app.index.database import EmbeddedPostgres, apply_migrations, create_pool
from app.index.instances import referenced_keys
from app.ingest import Ingest
from app.observability import (
    METRICS_CONTENT_TYPE,
    MetricsMiddleware,
    metrics_text,
    setup_logging,
)
from app.routes import PathGuard
from app.storage import FileBlobStore

log = logging.getLogger("pictor")


@get("/health", name="health")
async def health(request: Any) -> Response[bytes]:
    """Liveness and readiness: the index answers a query and the storage directories
    take a new file (created, synced and removed); 503 naming what fails otherwise."""
    state = request.app.state
    settings: Settings = state.settings
    try:
        await state.pool.fetchval("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        log.error("health: the index does not answer: %s", exc)
        raise ServiceUnavailable("index unreachable") from exc
    try:
        free = await asyncio.to_thread(_storage_probe, settings.tmp_dir, settings.storage_dir)
    except OSError as exc:
        log.error("health: the storage is not writable: %s", exc)
        raise ServiceUnavailable("storage not writable") from exc
    body = msgspec.json.encode(
        {"status": "ok", "database": "ok", "storage": {"writable": True, "free_bytes": free}}
    )
    return Response(body, media_type="application/json")


def _storage_probe(tmp: Path, storage: Path) -> int:
    probe = tmp / f".health-{os.getpid()}"
    with open(probe, "wb") as f:
        f.write(b"ok")
        os.fsync(f.fileno())
    probe.unlink()
    if not os.access(storage, os.W_OK):
        raise OSError(f"{storage} is not writable")
    stat = os.statvfs(storage)
    return stat.f_bavail * stat.f_frsize


@get("/metrics", name="metrics")
async def metrics() -> Response[bytes]:
    """Prometheus text exposition format: request counts and latencies per route, ingest
    counts and bytes, all server processes together (see app.observability)."""
    return Response(await asyncio.to_thread(metrics_text), media_type=METRICS_CONTENT_TYPE)


def app_from_environment() -> Litestar:
    """Factory for server worker processes: settings come from the environment."""
    from app.config import load_settings

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    return create_app(settings)


async def prepare(settings: Settings, dsn: str) -> None:
    """Once per start, before serving: apply migrations and recover from a crash."""
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            applied = await apply_migrations(conn)
        if applied:
            log.info("applied schema migrations %s", applied)
        store = FileBlobStore(settings.storage_dir, settings.tmp_dir)
        swept = await store.sweep(lambda keys: referenced_keys(pool, keys))
        if any(swept.values()):
            log.warning("start-up sweep: removed %s", swept)
    finally:
        await pool.close()


def create_app(settings: Settings) -> Litestar:
    """The ASGI application. With no database URL in ``settings``, it runs its own
    embedded PostgreSQL for its lifetime (single-process use: tests, ``pictor serve
    --workers 1``)."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        embedded: EmbeddedPostgres | None = None
        dsn = settings.database_url
        if not dsn:
            embedded = EmbeddedPostgres(settings.pg_dir)
            dsn = await asyncio.to_thread(embedded.start)
        pool = None
        try:
            if embedded is not None:
                await prepare(settings, dsn)
            pool = await create_pool(dsn)
            store = FileBlobStore(settings.storage_dir, settings.tmp_dir)
            app.state.settings = settings
            app.state.pool = pool
            app.state.store = store
            app.state.ingest = Ingest(settings, pool, store)
            audit = AuditLog(pool) if settings.audit_enabled else None
            app.state.access = Access(
                enforce=settings.auth,
                tokens=TokenVerifier(pool, settings.auth_cache_seconds),
                jwts=JwtVerifier(settings) if settings.oidc_enabled else None,
                link_secret=await asyncio.to_thread(links.load_secret, settings),
                audit=audit,
            )
            if audit is not None:
                audit.start()
            # started in the background: serving does not wait for the codec workers
            warming = asyncio.get_running_loop().create_task(codec_pool.warm_up())
            yield
            warming.cancel()
            if audit is not None:
                await audit.stop()  # the last events are written before the pool closes
        finally:
            codec_pool.shutdown()
            if pool is not None:
                await pool.close()
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)

    dicomweb = Router(
        path=DICOMWEB_PREFIX,
        route_handlers=[store_instances, *qido.ROUTES, *wado.ROUTES, *rendered.ROUTES],
    )
    app = Litestar(
        route_handlers=[dicomweb, health, metrics, *viewer.ROUTES, *admin.ROUTES],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=None,
        openapi_config=None,
        logging_config=None,  # logging is set up once per process (app.observability)
        debug=False,
    )
    # outermost, outside the exception handlers: error answers carry CORS headers too
    methods = {route.path_format: route.methods for route in app.routes}
    inner: Any = wado.FramesFastPath(app, qido.SearchFastPath(app, app.asgi_handler))
    if settings.audit_enabled:  # auth on, or auditing asked for
        # outside the fast path (which answers below the framework), inside CORS (401 /
        # 403 answers carry CORS headers; preflights stay open): app.auth.middleware
        inner = AccessMiddleware(inner, app.state)
    cors = CrossOriginMiddleware(inner, settings.cors_origin_list, methods)
    # counts and times everything, preflights and errors included
    metered = MetricsMiddleware(cors, settings.access_log)
    # outermost: every layer below routes on the one canonical path (app.routes)
    app.asgi_handler = PathGuard(metered)
    return app
