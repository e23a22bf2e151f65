"""The work of the archive that can wait: webhook and route deliveries (issue #17), tier
moves and the fixity scrub.

``pictor serve`` runs it in a process of its own beside the HTTP workers (``python -m
app.background``), at a lower priority (``PICTOR_BACKGROUND_NICE``, 10): an HTTP worker
that also delivered webhooks spent its core on JSON, HMAC and HTTP clients while a
modality waited for its STOW answer, and ingest with two webhooks ran at three quarters
of the rate without. Where the database runs on this machine, the database sessions of
this process are lowered too (PostgreSQL runs one process per session). The supervisor
restarts the process if it dies; nothing is lost meanwhile, since the work waits in the
index (the outboxes, the queue of forwards, the change feed).

A single-process server (``create_app`` in tests, ``PICTOR_BACKGROUND_PROCESS`` unset)
runs the same :class:`Background` inside its lifespan.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from app.auth import links
from app.bootstrap import create_pool, open_store
from app.config import ConfigError, Settings, load_settings
from app.dicom import deidentify
from app.dicomweb import forward as dicomweb_forward
from app.dimse import forward as dimse_forward
from app.errors import PictorError
from app.index.database import BACKGROUND_APPLICATION, Pool
from app.process import say_ready
from app.services.fhir_push import FhirSenders
from app.services.fixity import Scrubber
from app.services.reading import ReadingSenders
from app.services.routes import Routes
from app.services.tiering import Tiering
from app.services.webhooks import Webhooks
from app.storage import BlobStore

log = logging.getLogger("pictor")


class Background:
    """Webhooks, routes, tier moves and the scrub of one process, started and stopped
    together. Each takes its own share of the work through the index (leases, advisory
    locks), so any number of processes may run one."""

    def __init__(self, settings: Settings, pool: Pool, store: BlobStore) -> None:
        secret = links.LinkSecret(settings, pool)

        async def archive_key() -> bytes:
            return deidentify.archive_key(await secret.get())

        self.webhooks = Webhooks(settings, pool)
        self.routes = Routes(
            settings,
            pool,
            {
                "dicomweb": dicomweb_forward.DicomwebSenders(store, settings),
                "dimse": dimse_forward.senders(store, settings),
                "fhir": FhirSenders(pool, settings),
                "worklist": ReadingSenders(pool, settings),
            },
            archive_key,
        )
        self.tiering = Tiering(settings, pool, store)
        self.scrubber = Scrubber(pool, store, settings.scrub_rate)

    def start(self) -> None:
        self.scrubber.start()
        self.webhooks.start()
        self.routes.start()
        self.tiering.start()

    async def stop(self) -> None:
        await self.tiering.stop()
        await self.routes.stop()
        await self.webhooks.stop()
        await self.scrubber.stop()


def on_this_machine(dsn: str) -> bool:
    """Whether the database of ``dsn`` runs on this machine: a Unix socket or a loopback
    address (the embedded PostgreSQL is both)."""
    try:
        parts = urlsplit(dsn)
        host = unquote(parts.hostname or "")
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
    except ValueError:
        return False
    if not host:
        # libpq's default (or ?host=): a socket directory is local, a name is looked at
        host = socket_dir
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def lower_priority(pid: int, nice: int) -> bool:
    """Raise the niceness of the process ``pid`` to ``nice`` if it is a PostgreSQL
    process of this machine that may be changed; False if it was left as it is."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        if not name.startswith("postgres"):
            return False
        if os.getpriority(os.PRIO_PROCESS, pid) >= nice:
            return True
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    except (OSError, ValueError):
        return False  # another user's server, or gone: it runs at its own priority
    return True


def session_lowering(settings: Settings) -> Callable[[Any], Awaitable[None]] | None:
    """The ``on_connect`` of this process's pool: each new session's server process is
    lowered to ``PICTOR_BACKGROUND_NICE`` when the database is local, else None."""
    nice = settings.background_nice
    if not nice or not on_this_machine(settings.database_url):
        return None

    async def lower(conn: Any) -> None:  # an asyncpg connection
        pid = conn.get_server_pid()
        if not lower_priority(pid, nice):
            log.debug("the database session %d keeps its priority", pid)

    return lower


async def serve(settings: Settings) -> None:
    """Run the background work until SIGTERM / SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool = await create_pool(
        settings.database_url,
        min_size=1,
        on_connect=session_lowering(settings),
        application_name=BACKGROUND_APPLICATION,
    )
    try:
        background = Background(settings, pool, open_store(settings))
        background.start()
        say_ready()
        try:
            await stop.wait()
        finally:
            await background.stop()
    finally:
        await pool.close()


def main() -> int:
    from app.observability import setup_logging
    from app.process import die_with_supervisor

    die_with_supervisor()  # no orphan when pictor serve is killed
    try:
        settings = load_settings()
        if not settings.database_url:
            raise ConfigError("the background process needs DATABASE_URL (pictor serve sets it)")
        setup_logging(settings.log_level, settings.log_format)
        os.nice(max(0, settings.background_nice - os.nice(0)))
        import uvloop

        uvloop.run(serve(settings))
    except ConfigError as exc:
        print(f"pictor background: {exc}", file=sys.stderr)
        return 2
    except PictorError as exc:  # the index does not answer: pictor serve starts it again
        print(f"pictor background: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
