"""The index side of webhooks (issue #17; ``schemas/014``): subscriptions, the outbox
of deliveries, and the events made from the change feed.

:func:`make_events` reads the feed after ``event_cursor`` and, in one transaction,
writes a delivery per event and subscribed webhook, notes new instances per study
(``study_activity``), announces the studies that became stable, queues the routes'
forwarding jobs those events trigger (:mod:`app.index.routes`), and moves the cursor:
an event is made once, and never lost across a crash (at least once, then, for the
receiver). Each (webhook, study) with deliveries pending has a row in
``webhook_queue`` (``schemas/020``) saying when its first is due; :func:`claim` leases
due pairs, the first due first, one run in flight per pair, so that each receiver gets
a study's events in order.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.errors import NotFound
from app.index import routes as index_routes

#: the bookkeeping of events and deliveries commits without waiting for the disk: a
#: crash may lose its last moments, and then an event is made again (with the same id,
#: derived from what it is) or delivered again, which at-least-once allows; it saves a
#: WAL flush per delivery, which STOW's own fsyncs would wait behind
_ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"
_IDS = uuid.UUID("5b0c3a52-8d0e-4c63-9a53-6f1c2e7d4a10")

#: advisory lock key of the event maker ("PIEV")
EVENTS_LOCK = 0x50494556
BUSY = -1
#: feed entries read per event-making transaction
EVENT_BATCH = 1000
EVENTS = ("instance.created", "study.stable", "study.updated", "study.deleted")

#: (event type, study, series, instance, feed sequence, time) -> CloudEvent JSON body
Encoder = Callable[[uuid.UUID, str, str, str | None, str | None, int | None, dt.datetime], bytes]


@dataclass(frozen=True)
class Hook:
    id: int
    url: str
    events: tuple[str, ...]
    signed: bool
    created_at: dt.datetime


@dataclass(frozen=True)
class HookStatus:
    hook: Hook
    pending: int
    delivered: int
    given_up: int
    last_delivered_at: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None


@dataclass(frozen=True)
class Due:
    id: int
    webhook_id: int
    study_uid: str
    body: bytes
    attempts: int
    created_at: dt.datetime
    url: str
    secret: str | None


async def add(conn: Any, url: str, events: Sequence[str], secret: str | None) -> int:
    hook_id: int = await conn.fetchval(
        "INSERT INTO webhook (url, events, secret) VALUES ($1, $2, $3) RETURNING id",
        url,
        list(events),
        secret,
    )
    return hook_id


async def remove(conn: Any, hook_id: int) -> None:
    """The webhook and its pending deliveries."""
    done = await conn.execute("DELETE FROM webhook WHERE id = $1", hook_id)
    if done.endswith(" 0"):
        raise NotFound(f"no webhook {hook_id}")


def _hook(r: asyncpg.Record) -> Hook:
    return Hook(r["id"], r["url"], tuple(r["events"]), r["secret"] is not None, r["created_at"])


async def hooks(conn: Any) -> list[Hook]:
    rows = await conn.fetch("SELECT id, url, events, secret, created_at FROM webhook ORDER BY id")
    return [_hook(r) for r in rows]


async def status(conn: Any) -> list[HookStatus]:
    rows = await conn.fetch(
        """SELECT w.id, w.url, w.events, w.secret, w.created_at, w.delivered,
                  w.last_delivered_at, w.last_error, w.last_error_at,
                  count(d.id) FILTER (WHERE d.given_up_at IS NULL) AS pending,
                  count(d.id) FILTER (WHERE d.given_up_at IS NOT NULL) AS given_up
             FROM webhook w LEFT JOIN webhook_delivery d ON d.webhook_id = w.id
            GROUP BY w.id ORDER BY w.id"""
    )
    return [
        HookStatus(
            _hook(r),
            r["pending"],
            r["delivered"],
            r["given_up"],
            r["last_delivered_at"],
            r["last_error"],
            r["last_error_at"],
        )
        for r in rows
    ]


async def make_events(
    pool: asyncpg.Pool, encode: Encoder, stable_seconds: float, batch: int = EVENT_BATCH
) -> int:
    """Events from the feed entries after the cursor, and for the studies that became
    stable; how many feed entries were read (:data:`BUSY`: another maker is at it)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_ASYNC_COMMIT)
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", EVENTS_LOCK):
            return BUSY
        after = await conn.fetchval("SELECT seq FROM event_cursor FOR UPDATE")
        rows = await conn.fetch(
            """SELECT seq, at, action, study_uid, series_uid, sop_uid FROM change_feed
                WHERE seq > $1 ORDER BY seq LIMIT $2""",
            after,
            batch,
        )
        subscribed = [
            (r["id"], set(r["events"])) for r in await conn.fetch("SELECT id, events FROM webhook")
        ]
        events: list[tuple[str, str, str | None, str | None, int | None, dt.datetime]] = []
        created: dict[str, dt.datetime] = {}
        touched: set[str] = set()
        deleted: list[str] = []
        for r in rows:
            study = r["study_uid"]
            if r["action"] == "create":
                created[study] = r["at"]
                events.append(
                    ("instance.created", study, r["series_uid"], r["sop_uid"], r["seq"], r["at"])
                )
            elif r["action"] == "update" and study not in touched:
                touched.add(study)
                events.append(("study.updated", study, None, None, r["seq"], r["at"]))
            elif r["action"] == "delete" and study not in deleted:
                deleted.append(study)
        if deleted:  # a study is deleted when none of its instances is left
            remaining = {
                x[0]
                for x in await conn.fetch(
                    "SELECT study_uid FROM study WHERE study_uid = ANY($1::text[])", deleted
                )
            }
            last = {r["study_uid"]: (r["seq"], r["at"]) for r in rows if r["action"] == "delete"}
            for study in deleted:
                if study not in remaining:
                    seq, at = last[study]
                    events.append(("study.deleted", study, None, None, seq, at))
        if created:
            await conn.execute(
                """INSERT INTO study_activity (study_uid, last_created_at)
                   SELECT * FROM unnest($1::text[], $2::timestamptz[])
                   ON CONFLICT (study_uid) DO UPDATE
                       SET last_created_at = greatest(study_activity.last_created_at,
                                                      excluded.last_created_at),
                           announced = false""",
                list(created),
                list(created.values()),
            )
        stable = await conn.fetch(
            """UPDATE study_activity SET announced = true
                WHERE study_uid IN (
                      SELECT study_uid FROM study_activity
                       WHERE NOT announced
                         AND last_created_at < now() - make_interval(secs => $1)
                       ORDER BY last_created_at LIMIT 1000)
                  AND EXISTS (SELECT 1 FROM study s WHERE s.study_uid = study_activity.study_uid)
            RETURNING study_uid, last_created_at""",
            float(stable_seconds),
        )
        now = dt.datetime.now(dt.UTC)
        events.extend(("study.stable", r["study_uid"], None, None, None, now) for r in stable)
        out: list[tuple[int, uuid.UUID, str, str, bytes]] = []
        for kind, study, series, sop, seq, at in events:
            wanted = [hook for hook, kinds in subscribed if kind in kinds]
            if not wanted:
                continue
            event_id = uuid.uuid5(_IDS, f"{kind} {study} {seq} {at.isoformat()}")
            body = encode(event_id, kind, study, series, sop, seq, at)
            out.extend((hook, event_id, kind, study, body) for hook in wanted)
        routes = await index_routes.triggers(conn)
        if routes:
            await index_routes.enqueue(
                conn,
                (
                    (route, study, kind)
                    for kind, study, *_ in events
                    for route, trigger in routes
                    if trigger == kind
                ),
            )
        if out:
            await conn.copy_records_to_table(
                "webhook_delivery",
                records=out,
                columns=("webhook_id", "event_id", "event_type", "study_uid", "body"),
            )
            # each (webhook, study) queued, its row locked until this commits (in one
            # order), so that a finish deciding the pair has nothing left waits for
            # these deliveries to be visible (see finish)
            pairs = sorted({(hook, study) for hook, _, _, study, _ in out})
            await conn.execute(
                """INSERT INTO webhook_queue (webhook_id, study_uid)
                   SELECT * FROM unnest($1::int[], $2::text[])
                   ON CONFLICT (webhook_id, study_uid)
                      DO UPDATE SET next_at = webhook_queue.next_at""",
                [p[0] for p in pairs],
                [p[1] for p in pairs],
            )
        if rows:
            await conn.execute("UPDATE event_cursor SET seq = $1", rows[-1]["seq"])
        return len(rows)


async def claim(
    pool: asyncpg.Pool,
    limit: int,
    lease: float,
    room: Mapping[int, int] | None = None,
    per_hook: int | None = None,
    run: int = 50,
) -> list[list[Due]]:
    """Lease runs of due deliveries for ``lease`` seconds: for up to ``limit`` due
    (webhook, study) pairs of the queue, the first due first, the pair's pending
    deliveries in order, at most ``run`` (a study's events reach a receiver in order;
    one statement for many events). The pair is leased: nothing of it is claimed again
    until :func:`finish` or the lease's end. At most ``room[webhook]`` runs of a webhook
    (0: none), of the others at most ``per_hook`` (default ``limit``): a slow or dead
    receiver cannot take every slot, even in one claim."""
    room = {hook: max(0, n) for hook, n in (room or {}).items()}
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_ASYNC_COMMIT)
        rows = await conn.fetch(
            """WITH due AS (
                   -- each webhook's first due pairs, as many as it has room for: one
                   -- receiver's backlog does not hide the others'
                   SELECT d.webhook_id, d.study_uid FROM webhook w
                    CROSS JOIN LATERAL (
                        SELECT q.webhook_id, q.study_uid FROM webhook_queue q
                         WHERE q.webhook_id = w.id AND q.next_at <= now()
                         ORDER BY q.next_at, q.study_uid
                         LIMIT coalesce(($6::int[])[array_position($3::int[], w.id)], $5)) d
               ), picked AS (
                   SELECT q.webhook_id, q.study_uid FROM due d
                     JOIN webhook_queue q
                       ON q.webhook_id = d.webhook_id AND q.study_uid = d.study_uid
                    WHERE q.next_at <= now()
                    ORDER BY q.next_at, q.webhook_id, q.study_uid LIMIT $1
                    FOR UPDATE OF q SKIP LOCKED
               ), leased AS (
                   UPDATE webhook_queue q SET next_at = now() + make_interval(secs => $2)
                     FROM picked p
                    WHERE q.webhook_id = p.webhook_id AND q.study_uid = p.study_uid
                RETURNING q.webhook_id, q.study_uid
               )
               SELECT n.id, n.webhook_id, n.study_uid, n.body, n.attempts, n.created_at,
                      w.url, w.secret
                 FROM leased l
                 JOIN webhook w ON w.id = l.webhook_id
                 CROSS JOIN LATERAL (
                     SELECT n.* FROM webhook_delivery n
                      WHERE n.webhook_id = l.webhook_id AND n.study_uid = l.study_uid
                        AND n.given_up_at IS NULL
                      ORDER BY n.id LIMIT $4) n""",
            limit,
            float(lease),
            list(room),
            run,
            per_hook if per_hook is not None else limit,
            list(room.values()),
        )
    grouped: dict[tuple[int, str], list[Due]] = {}
    for r in sorted(rows, key=lambda r: int(r["id"])):
        grouped.setdefault((r["webhook_id"], r["study_uid"]), []).append(_due(r))
    return sorted(grouped.values(), key=lambda run: run[0].id)


def _due(r: asyncpg.Record) -> Due:
    return Due(
        r["id"],
        r["webhook_id"],
        r["study_uid"],
        bytes(r["body"]),
        r["attempts"] + 1,  # this one
        r["created_at"],
        r["url"],
        r["secret"],
    )


async def finish(
    pool: asyncpg.Pool,
    hook: int,
    study: str,
    delivered: Sequence[tuple[int, int]],
    failure: tuple[int, int | None, str, float | None] | None,
) -> None:
    """After a run of webhook ``hook`` and ``study``: the deliveries done ((id,
    status)): deleted, and counted on the webhook; the one that failed ((id, status,
    error, retry in seconds or None: given up)). The pair's queue row then says when
    its next delivery is due: at the retry, at once, or, nothing being left, it goes.

    The webhook's row is written first, as a removal of the webhook (which cascades to
    its deliveries) locks it: never the other way round, so the two cannot deadlock.
    The queue row is locked before deciding that nothing is left: an event maker that
    queued a delivery for the pair holds that row until it commits, so its delivery
    is seen (each statement here reads what was committed before it began)."""
    error = failure[2][:500] if failure is not None else None
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_ASYNC_COMMIT)
        await conn.execute(
            """UPDATE webhook
                  SET delivered = delivered + $2,
                      last_delivered_at = CASE WHEN $2 > 0 THEN now() ELSE last_delivered_at END,
                      last_error = coalesce($3, last_error),
                      last_error_at = CASE WHEN $3 IS NULL THEN last_error_at ELSE now() END
                WHERE id = $1""",
            hook,
            len(delivered),
            error,
        )
        if delivered:
            await conn.execute(
                "DELETE FROM webhook_delivery WHERE id = ANY($1::bigint[])",
                [d[0] for d in delivered],
            )
        retry_in = 0.0  # the rest of the run is due at once, as is the next after a give-up
        if failure is not None:
            await _failed(conn, *failure)
            if failure[3] is not None:
                retry_in = failure[3]
        await conn.execute(
            "SELECT 1 FROM webhook_queue WHERE webhook_id = $1 AND study_uid = $2 FOR UPDATE",
            hook,
            study,
        )
        left = await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM webhook_delivery
                               WHERE webhook_id = $1 AND study_uid = $2
                                 AND given_up_at IS NULL)""",
            hook,
            study,
        )
        if left:
            await conn.execute(
                """UPDATE webhook_queue SET next_at = now() + make_interval(secs => $3)
                    WHERE webhook_id = $1 AND study_uid = $2""",
                hook,
                study,
                retry_in,
            )
        else:
            await conn.execute(
                "DELETE FROM webhook_queue WHERE webhook_id = $1 AND study_uid = $2",
                hook,
                study,
            )


async def _failed(
    conn: Any, delivery: int, status: int | None, error: str, retry_in: float | None
) -> None:
    """A failed attempt, given up if ``retry_in`` is None (when it is tried again is
    the pair's queue row's to say: :func:`finish`)."""
    await conn.execute(
        """UPDATE webhook_delivery
              SET last_status = $2, last_error = $3, last_attempt_at = now(),
                  attempts = attempts + 1,
                  given_up_at = CASE WHEN $4::float8 IS NULL THEN now() END
            WHERE id = $1""",
        delivery,
        status,
        error[:500],
        retry_in,
    )
