"""The application factory: resources are opened in the lifespan and kept on ``app.state``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar

from app.auth import links
from app.auth.audit import AuditLog
from app.auth.middleware import Access, AccessMiddleware
from app.auth.oidc import JwtVerifier
from app.auth.sessions import SessionVerifier
from app.auth.tokens import TokenVerifier
from app.background import Background
from app.bootstrap import EmbeddedPostgres, create_pool, open_store, prepare
from app.codec import pool as codec_pool
from app.config import Settings
from app.dicomweb.cors import CrossOriginMiddleware
from app.dicomweb.errors import EXCEPTION_HANDLERS
from app.errors import ServiceUnavailable
from app.observability import (
    MetricsMiddleware,
    setup_logging,
)
from app.routes import HotDispatch, PathGuard, framework_routes
from app.services.events import FeedMover
from app.services.ingest import Ingest
from app.services.lifecycle import Lifecycle
from app.services.retrieve import InstanceCache
from app.services.routes import ensure_fhir_push, ensure_reading
from app.services.tiering import Tiering
from app.services.ups import Wakeups

log = logging.getLogger("pictor")


def app_from_environment() -> Litestar:
    """Factory for server worker processes: settings come from the environment."""
    from app.config import load_settings
    from app.process import die_with_supervisor

    die_with_supervisor()
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def create_app(settings: Settings, *, hot: bool = True) -> Litestar:
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
            try:
                pool = await create_pool(dsn)
            except ServiceUnavailable:
                # a worker (re)started while the database is down serves 503 with
                # Retry-After until it answers, instead of failing its start-up (which
                # stops the whole server: issue #19)
                log.error("the index does not answer; serving 503 until it does")
                pool = await create_pool(dsn, min_size=0)
            store = open_store(settings)
            app.state.settings = settings
            app.state.pool = pool
            app.state.store = store
            app.state.lifecycle = Lifecycle(settings, pool, store)
            app.state.ingest = Ingest(settings, pool, store, app.state.lifecycle)
            app.state.instances = InstanceCache(pool)
            app.state.lifecycle.settle = app.state.instances.settle
            audit = AuditLog(pool) if settings.audit_enabled else None
            link_secret = app.state.link_secret = links.LinkSecret(settings, pool)
            with contextlib.suppress(ServiceUnavailable):  # else read once the index answers
                await link_secret.get()
            app.state.access = Access(
                enforce=settings.auth,
                tokens=TokenVerifier(pool, settings.auth_cache_seconds),
                jwts=JwtVerifier(settings) if settings.oidc_enabled else None,
                link_secret=link_secret,
                audit=audit,
                sessions=SessionVerifier(
                    pool, settings.auth_cache_seconds, settings.session_idle_seconds
                ),
                public_base_url=settings.public_base_url,
                sign_in_page=settings.auth and not settings.oidc_sign_in,
            )
            if audit is not None:
                audit.start()
            if settings.auth:
                await app.state.access.sessions.start()
            await app.state.instances.start()
            app.state.lifecycle.start(settings.purge_interval)
            app.state.feed = FeedMover(pool)
            await app.state.feed.start()
            app.state.ups_wakeups = Wakeups(pool)
            await app.state.ups_wakeups.start()
            if settings.fhir_push_url:  # the route it stands for, as the setting says
                await ensure_fhir_push(
                    pool, settings.fhir_push_url, settings.fhir_push_token or None
                )
            await ensure_reading(pool, settings.reading_worklist)
            background: Background | Tiering
            if settings.background_process:
                # pictor serve's background process delivers, moves and scrubs
                # (app.background); this one only writes down the studies it read
                background = Tiering(settings, pool, store, moves=False)
            else:
                background = Background(settings, pool, store)
            background.start()
            # started in the background: serving does not wait for the codec workers
            warming = asyncio.get_running_loop().create_task(codec_pool.warm_up())
            yield
            warming.cancel()
            await background.stop()
            await app.state.ups_wakeups.stop()
            await app.state.feed.stop()
            await app.state.lifecycle.stop()
            await app.state.instances.stop()
            if settings.auth:
                await app.state.access.sessions.stop()
            if audit is not None:
                await audit.stop()  # the last events are written before the pool closes
        finally:
            codec_pool.shutdown()
            if pool is not None:
                await pool.close()
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)

    app = Litestar(
        route_handlers=framework_routes(),
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=None,
        openapi_config=None,
        logging_config=None,  # logging is set up once per process (app.observability)
        debug=False,
    )
    # outermost, outside the exception handlers: error answers carry CORS headers too
    methods = {route.path_format: route.methods for route in app.routes}
    # hot=False: every request through the framework's routes (tests compare both doors)
    inner: Any = HotDispatch(app.asgi_handler, app.state, hot=hot)
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
