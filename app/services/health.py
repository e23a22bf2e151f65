"""Readiness: whether this node can serve (for ``/health``, load balancers and
orchestrators). It says what fails, never why: the cause goes to the log."""

from __future__ import annotations

import asyncio
import errno
import logging
import time

from app.errors import ServiceUnavailable
from app.index import fixity, tiering
from app.index.database import Pool, background_sessions, ping
from app.storage import BlobStore

log = logging.getLogger("pictor")


async def readiness(
    pool: Pool,
    store: BlobStore,
    min_free: int = 0,
    dimse: tuple[str, int] | None = None,
    background: bool = False,
) -> dict[str, object]:
    """The index answers a query and the storage takes a new blob; ServiceUnavailable
    naming what fails otherwise. A storage that is full, or whose free space is below
    ``min_free`` (``PICTOR_MIN_FREE_BYTES``), is "degraded", not down: searches and
    retrievals go on, only new data are refused (507). With ``background`` (``pictor
    serve``'s background process does the deliveries), no connected background process
    is "degraded" too: ingest goes on, deliveries wait."""
    try:
        await ping(pool)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        log.error("health: the index does not answer: %s", exc)
        raise ServiceUnavailable("index unreachable") from exc
    storage: dict[str, object] = {"writable": True, "min_free_bytes": min_free}
    problems: list[str] = []
    try:
        free = await store.probe()
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            log.error("health: the storage is not writable: %s", exc)
            raise ServiceUnavailable("storage not writable") from exc
        free = 0
        storage["writable"] = False
    storage["free_bytes"] = free
    if free < min_free or not storage["writable"]:
        storage["full"] = True
        problems.append("storage full: new data are refused until space is freed")
    try:
        damaged = await fixity.count_problems(pool)
    except Exception as exc:  # noqa: BLE001 - reported as unknown, not as down
        log.error("health: the fixity problems could not be counted: %s", exc)
        damaged = 0
    storage["damaged_files"] = damaged
    if damaged:
        problems.append(
            f"{damaged} stored files are missing or changed: see pictor verify "
            "(--repair-from a backup)"
        )
    body: dict[str, object] = {"database": "ok", "storage": storage}
    if dimse is not None:
        listening = await _listening(*dimse)
        body["dimse"] = {"port": dimse[1], "listening": listening}
        if not listening:
            problems.append(f"DIMSE does not answer on port {dimse[1]}")
    if background:
        try:
            sessions = await background_sessions(pool)
        except Exception as exc:  # noqa: BLE001 - reported as unknown, not as down
            log.error("health: the background sessions could not be counted: %s", exc)
            sessions = -1
        body["background"] = {"connected": sessions > 0 if sessions >= 0 else None}
        if sessions == 0:
            problems.append(
                "the background process is not connected: webhook and route deliveries, "
                "tier moves and the fixity scrub wait until it is"
            )
    body = {"status": "degraded" if problems else "ok", **body}
    if problems:
        body["problems"] = problems
    return body


async def gauges(pool: Pool, store: BlobStore, min_free: int) -> list[tuple[str, str, float]]:
    """Archive-wide figures for ``/metrics`` (name, help, value), read at scrape time:
    what the archive holds, the space left, damaged files."""
    instances, size, trashed = await fixity.totals(pool)
    try:
        free = float(store.free_bytes())
    except OSError:
        free = float("nan")
    return [
        ("pictor_stored_instances", "Instances stored (not in the trash).", instances),
        ("pictor_stored_bytes", "Bytes of the stored instances.", size),
        ("pictor_trash_instances", "Instances in the trash, restorable until purged.", trashed),
        ("pictor_storage_free_bytes", "Bytes free on the storage's file system.", free),
        ("pictor_storage_min_free_bytes", "PICTOR_MIN_FREE_BYTES: the floor.", min_free),
        (
            "pictor_fixity_problems",
            "Stored files missing or changed (pictor verify).",
            await fixity.count_problems(pool),
        ),
        *await _tier_gauges(pool),
        ("pictor_db_pool_size", "Connections of this process's index pool.", pool.get_size()),
        ("pictor_db_pool_idle", "Idle connections of that pool.", pool.get_idle_size()),
    ]


_TIER_SECONDS = 60.0
_tier_cache: tuple[float, list[tuple[str, str, float]]] | None = None


async def _tier_gauges(pool: Pool) -> list[tuple[str, str, float]]:
    """Bytes, instances and studies per storage tier (issue #16); read at most once a
    minute per process (the cold side costs a read of the cold rows' index)."""
    global _tier_cache
    now = time.monotonic()
    if _tier_cache is not None and _tier_cache[0] > now:
        return _tier_cache[1]
    found = await tiering.status(pool)
    by_tier = {t.tier: t for t in found.tiers}
    gauges: list[tuple[str, str, float]] = []
    for number, name in ((0, "hot"), (1, "cold")):
        counts = by_tier[number]
        gauges.append((f"pictor_tier_{name}_bytes", f"Bytes in the {name} tier.", counts.bytes))
        gauges.append(
            (f"pictor_tier_{name}_instances", f"Instances in the {name} tier.", counts.instances)
        )
    gauges += [
        ("pictor_tier_hot_studies", "Studies all in the hot tier.", found.hot_studies),
        ("pictor_tier_cold_studies", "Studies all in the cold tier.", found.cold_studies),
        ("pictor_tier_mixed_studies", "Studies with instances in both tiers.", found.mixed_studies),
    ]
    _tier_cache = (now + _TIER_SECONDS, gauges)
    return gauges


async def _listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on the DIMSE port (the DIMSE process:
    pictor serve checks at start that the port was free)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(target, port), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True
