"""The index side of routing (issue #17; ``schemas/015``): the routes, their queue of
forwarding jobs, and what each destination acknowledged.

Jobs are made by the event maker (:func:`app.index.webhooks.make_events`) in the
transaction that reads the change feed: one per route and study, waiting, that later
new instances of the study join (``route_job_waiting``). :func:`claim` leases due jobs,
never two of one route and study at once, and never more than ``per_destination`` for
one destination across every process of the archive; :func:`pending` says which
instances a job still has to send; :func:`acknowledged` records what the destination
took, in its own transaction as soon as it took it, so that a forward resumed after a
crash or a retry never sends again what was acknowledged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from app.errors import Conflict, NotFound

#: advisory lock key of the job claimer ("PIRO"): claims count leased jobs per
#: destination, which two claimers at once would each count short
CLAIM_LOCK = 0x5049524F
#: a claim's transaction commits without waiting for its WAL to be flushed (a claim
#: lost in a crash is made again) and holds the claimer's lock: one round trip
_ASYNC_COMMIT_AND_LOCK = (
    "SELECT set_config('synchronous_commit', 'off', true), pg_advisory_xact_lock($1)"
)


@dataclass(frozen=True)
class Condition:
    keyword: str
    tag: str  # eight hex digits, the DICOM JSON key
    like: tuple[str, ...]  # SQL LIKE patterns; one must match a value


@dataclass(frozen=True)
class Route:
    id: int
    name: str
    conditions: tuple[Condition, ...]
    destination: str
    trigger: str
    has_token: bool
    created_at: dt.datetime
    #: PS3.15 E options (``basic`` implied); None: sent as stored
    deidentify: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RouteStatus:
    route: Route
    waiting: int
    done: int
    failed: int
    sent: int
    last_error: str | None
    last_error_at: dt.datetime | None


@dataclass(frozen=True)
class StudyStatus:
    study_uid: str
    state: str  # waiting, done, failed
    cause: str
    attempts: int
    sent: int
    last_error: str | None
    updated_at: dt.datetime


@dataclass(frozen=True)
class Job:
    id: int
    route: Route
    token: str | None
    study_uid: str
    force: bool
    attempts: int
    created_at: dt.datetime


_conditions = msgspec.json.Decoder(list[dict[str, Any]])


def _route(r: asyncpg.Record) -> Route:
    raw = r["conditions"]
    items = _conditions.decode(raw.encode() if isinstance(raw, str) else raw)
    return Route(
        r["id"],
        r["name"],
        tuple(Condition(c["keyword"], c["tag"], tuple(c["like"])) for c in items),
        r["destination"],
        r["trigger"],
        r["token"] is not None,
        r["created_at"],
        None if r["deidentify"] is None else tuple(o for o in r["deidentify"].split(",")[1:] if o),
    )


_ROUTE = (
    "r.id, r.name, r.conditions::text AS conditions, r.destination, r.trigger, r.token,"
    " r.created_at, r.deidentify"
)


async def add(
    conn: Any,
    name: str,
    conditions: Sequence[Condition],
    destination: str,
    trigger: str,
    token: str | None,
    deidentify: Sequence[str] | None = None,
) -> Route:
    body = msgspec.json.encode(
        [{"keyword": c.keyword, "tag": c.tag, "like": list(c.like)} for c in conditions]
    )
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO route AS r (name, conditions, destination, trigger, token,
                                        deidentify)
                VALUES ($1, $2::jsonb, $3, $4, $5, $6) RETURNING {_ROUTE}""",
            name,
            body,
            destination,
            trigger,
            token,
            None if deidentify is None else ",".join(["basic", *deidentify]),
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a route named {name!r} exists already") from None
    return _route(row)


async def ensure(conn: Any, name: str, destination: str, trigger: str, token: str | None) -> Route:
    """The route ``name`` with this destination, trigger and token: made, or changed to
    them (its conditions, its jobs and what it had acknowledged are kept)."""
    row = await conn.fetchrow(
        f"""INSERT INTO route AS r (name, destination, trigger, token) VALUES ($1, $2, $3, $4)
            ON CONFLICT (name) DO UPDATE SET destination = EXCLUDED.destination,
                trigger = EXCLUDED.trigger, token = EXCLUDED.token, deidentify = NULL
            RETURNING {_ROUTE}""",
        name,
        destination,
        trigger,
        token,
    )
    return _route(row)


async def remove(conn: Any, name: str) -> None:
    """The route, its jobs and its record of what was sent."""
    done = await conn.execute("DELETE FROM route WHERE name = $1", name)
    if done.endswith(" 0"):
        raise NotFound(f"no route named {name!r}")


async def find(conn: Any, name: str) -> Route:
    row = await conn.fetchrow(f"SELECT {_ROUTE} FROM route r WHERE r.name = $1", name)
    if row is None:
        raise NotFound(f"no route named {name!r}")
    return _route(row)


async def status(conn: Any) -> list[RouteStatus]:
    rows = await conn.fetch(
        f"""SELECT {_ROUTE},
                   count(j.id) FILTER (WHERE j.done_at IS NULL AND j.given_up_at IS NULL)
                       AS waiting,
                   count(j.id) FILTER (WHERE j.done_at IS NOT NULL) AS done,
                   count(j.id) FILTER (WHERE j.given_up_at IS NOT NULL) AS failed,
                   (SELECT count(*) FROM route_sent s WHERE s.route_id = r.id) AS sent,
                   (SELECT e.last_error FROM route_job e
                     WHERE e.route_id = r.id AND e.last_error IS NOT NULL
                     ORDER BY e.last_attempt_at DESC LIMIT 1) AS last_error,
                   (SELECT max(e.last_attempt_at) FROM route_job e
                     WHERE e.route_id = r.id AND e.last_error IS NOT NULL) AS last_error_at
              FROM route r LEFT JOIN route_job j ON j.route_id = r.id
             GROUP BY r.id ORDER BY r.name"""
    )
    return [
        RouteStatus(
            _route(r),
            r["waiting"],
            r["done"],
            r["failed"],
            r["sent"],
            r["last_error"],
            r["last_error_at"],
        )
        for r in rows
    ]


async def studies(conn: Any, route_id: int, limit: int = 1000) -> list[StudyStatus]:
    """How each study stands on a route: its latest job, the most recent first."""
    rows = await conn.fetch(
        """SELECT DISTINCT ON (study_uid) study_uid, cause, attempts, sent, last_error,
                  done_at, given_up_at,
                  greatest(created_at, last_attempt_at, done_at, given_up_at) AS updated_at
             FROM route_job WHERE route_id = $1
            ORDER BY study_uid, id DESC""",
        route_id,
    )
    out = [
        StudyStatus(
            r["study_uid"],
            "done" if r["done_at"] else "failed" if r["given_up_at"] else "waiting",
            r["cause"],
            r["attempts"],
            r["sent"],
            r["last_error"],
            r["updated_at"],
        )
        for r in rows
    ]
    out.sort(key=lambda s: s.updated_at, reverse=True)
    return out[:limit]


async def enqueue(conn: Any, jobs: Iterable[tuple[int, str, str]]) -> None:
    """Jobs (route id, study, cause); a study's waiting job is joined, not doubled."""
    items = sorted(set(jobs))
    if not items:
        return
    await conn.execute(
        """INSERT INTO route_job (route_id, study_uid, cause)
           SELECT * FROM unnest($1::int[], $2::text[], $3::text[])
           ON CONFLICT (route_id, study_uid)
              WHERE done_at IS NULL AND given_up_at IS NULL AND attempts = 0 AND NOT force
           DO NOTHING""",
        [i[0] for i in items],
        [i[1] for i in items],
        [i[2] for i in items],
    )


async def triggers(conn: Any) -> list[tuple[int, str]]:
    """(route id, trigger) of every route."""
    return [(r["id"], r["trigger"]) for r in await conn.fetch("SELECT id, trigger FROM route")]


async def claim(pool: asyncpg.Pool, limit: int, lease: float, per_destination: int) -> list[Job]:
    """Lease up to ``limit`` due jobs for ``lease`` seconds: the oldest first, none of a
    route and study that has an earlier unfinished job, at most ``per_destination``
    leased at once per destination (counted across every process)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_ASYNC_COMMIT_AND_LOCK, CLAIM_LOCK)
        rows = await conn.fetch(
            f"""WITH busy AS (
                    SELECT r.destination, count(*) AS n FROM route_job j
                      JOIN route r ON r.id = j.route_id
                     WHERE j.done_at IS NULL AND j.given_up_at IS NULL
                       AND j.leased_until > now()
                     GROUP BY r.destination
                ), due AS (
                    SELECT j.id, r.destination,
                           row_number() OVER (PARTITION BY r.destination ORDER BY j.id) AS k
                      FROM route_job j JOIN route r ON r.id = j.route_id
                     WHERE j.done_at IS NULL AND j.given_up_at IS NULL AND j.next_at <= now()
                       AND (j.leased_until IS NULL OR j.leased_until <= now())
                       AND NOT EXISTS (
                           SELECT 1 FROM route_job e
                            WHERE e.route_id = j.route_id AND e.study_uid = j.study_uid
                              AND e.id < j.id AND e.done_at IS NULL AND e.given_up_at IS NULL)
                ), chosen AS (
                    SELECT d.id FROM due d LEFT JOIN busy b ON b.destination = d.destination
                     WHERE d.k + coalesce(b.n, 0) <= $3
                     ORDER BY d.id LIMIT $1
                )
                UPDATE route_job j
                   SET leased_until = now() + make_interval(secs => $2),
                       attempts = j.attempts + 1, last_attempt_at = now()
                  FROM route r
                 WHERE r.id = j.route_id AND j.id IN (SELECT id FROM chosen)
             RETURNING j.id AS job_id, j.study_uid, j.force, j.attempts,
                       j.created_at AS job_created_at, {_ROUTE}""",
            limit,
            float(lease),
            per_destination,
        )
    return [
        Job(
            r["job_id"],
            _route(r),
            r["token"],
            r["study_uid"],
            r["force"],
            r["attempts"],
            r["job_created_at"],
        )
        for r in sorted(rows, key=lambda r: int(r["job_id"]))
    ]


async def renew(pool: asyncpg.Pool, job_id: int, lease: float) -> None:
    await pool.execute(
        "UPDATE route_job SET leased_until = now() + make_interval(secs => $2) WHERE id = $1",
        job_id,
        float(lease),
    )


async def release(pool: asyncpg.Pool, job_ids: Sequence[int]) -> None:
    """Jobs a stopping process gives back: due again at once, for any process."""
    if job_ids:
        await pool.execute(
            """UPDATE route_job SET leased_until = NULL, next_at = now()
                WHERE id = ANY($1::bigint[]) AND done_at IS NULL AND given_up_at IS NULL""",
            list(job_ids),
        )


#: an instance matches every condition of a route: each is one of its own, its series'
#: or its study's attributes, one of whose values is LIKE one of the condition's patterns
_MATCHES = """
              AND NOT EXISTS (
                  SELECT 1 FROM jsonb_array_elements($4::jsonb) c
                   WHERE NOT EXISTS (
                       SELECT 1 FROM json_array_elements(coalesce(
                                (i.metadata -> (c ->> 'tag') -> 'Value')::json,
                                (se.attrs -> (c ->> 'tag') -> 'Value')::json,
                                (st.attrs -> (c ->> 'tag') -> 'Value')::json, '[]'::json)) v
                        WHERE coalesce(v ->> 'Alphabetic', v #>> '{}') LIKE ANY (
                              SELECT jsonb_array_elements_text(c -> 'like'))))"""

_PENDING = """SELECT i.sop_instance_uid, i.file_sha256
             FROM instance i
             {join}
             JOIN study st ON st.pk = i.study_pk
            WHERE st.study_uid = $1
              AND ($2 OR NOT EXISTS (
                  SELECT 1 FROM route_sent s
                   WHERE s.route_id = $3 AND s.sop_uid = i.sop_instance_uid
                     AND s.file_sha256 = i.file_sha256)){matches}"""


async def pending(pool: asyncpg.Pool, job: Job) -> dict[str, str]:
    """The instances of the job's study that match its route, SOP Instance UID ->
    SHA-256 of the stored file; without those acknowledged already (unless forced).
    A route without conditions takes every instance: its query has no test of them
    (which cost PostgreSQL most of this query's time)."""
    args: list[Any] = [job.study_uid, job.force, job.route.id]
    if job.route.conditions:
        args.append(
            msgspec.json.encode(
                [{"tag": c.tag, "like": list(c.like)} for c in job.route.conditions]
            )
        )
        sql = _PENDING.format(join="JOIN series se ON se.pk = i.series_pk", matches=_MATCHES)
    else:
        sql = _PENDING.format(join="", matches="")
    rows = await pool.fetch(sql, *args)
    return {r["sop_instance_uid"]: r["file_sha256"] for r in rows}


async def acknowledged(pool: asyncpg.Pool, job: Job, sent: Sequence[tuple[str, str]]) -> None:
    """Instances ((SOP Instance UID, SHA-256)) the destination took: recorded at once
    (a synchronous commit: this is what stops them being sent twice)."""
    if not sent:
        return
    # one statement, so one transaction and one round trip
    await pool.execute(
        """WITH taken AS (
               INSERT INTO route_sent (route_id, sop_uid, file_sha256)
               SELECT $1, * FROM unnest($2::text[], $3::text[])
               ON CONFLICT (route_id, sop_uid)
                  DO UPDATE SET file_sha256 = excluded.file_sha256, sent_at = now())
           UPDATE route_job SET sent = sent + $5 WHERE id = $4""",
        job.route.id,
        [s[0] for s in sent],
        [s[1] for s in sent],
        job.id,
        len(sent),
    )


async def finish(
    pool: asyncpg.Pool,
    job_id: int,
    error: str | None,
    retry_in: float | None,
    idle: bool = False,
) -> None:
    """A job done (``error`` None), to be tried again in ``retry_in`` seconds, or given
    up (``retry_in`` None). A rule's job that found nothing to send (``idle``: a study
    the conditions leave out) is forgotten: the status lists what a route forwarded."""
    if idle:
        await pool.execute("DELETE FROM route_job WHERE id = $1 AND NOT force AND sent = 0", job_id)
    if error is None:
        await pool.execute(
            "UPDATE route_job SET done_at = now(), leased_until = NULL WHERE id = $1", job_id
        )
        return
    await pool.execute(
        """UPDATE route_job
              SET last_error = $2, leased_until = NULL,
                  next_at = now() + make_interval(secs => coalesce($3, 0)),
                  given_up_at = CASE WHEN $3 IS NULL THEN now() END
            WHERE id = $1""",
        job_id,
        error[:500],
        retry_in,
    )


async def export(pool: asyncpg.Pool, name: str, study_uid: str) -> int:
    """A manual export of one study on a route: a job of its own that sends every
    matching instance again; its id."""
    async with pool.acquire() as conn, conn.transaction():
        route = await find(conn, name)
        if not await conn.fetchval("SELECT 1 FROM study WHERE study_uid = $1", study_uid):
            raise NotFound(f"no study {study_uid} is stored here")
        job_id: int = await conn.fetchval(
            """INSERT INTO route_job (route_id, study_uid, cause, force)
               VALUES ($1, $2, 'manual', true) RETURNING id""",
            route.id,
            study_uid,
        )
        return job_id
