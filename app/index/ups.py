"""The index side of the Unified Worklist (issue #18; ``schemas/018``; PS3.4 CC): the
workitems, their subscribers and the event reports waiting to be sent.

What a change does is decided by :mod:`app.services.ups` on the row as it is, locked
(:func:`change`); here it is written with its audit event and the event reports for
every subscriber of the workitem, in one transaction: a report is queued if and only if
the change it reports is made (DESIGN.md decision 10).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from app.errors import Conflict, NotFound
from app.index import worklist
from app.index.database import INDEX_ERRORS, index_failure
from app.index.lifecycle import audit
from app.index.worklist import Filter, Listing, compile_find

#: the well-known UIDs of the worklist subscriptions (PS3.4 CC.2.3, PS3.18 11.10)
GLOBAL = "1.2.840.10008.5.1.4.34.5"
FILTERED = "1.2.840.10008.5.1.4.34.5.1"
#: event reports older than this are dropped unsent (their subscriber never came back)
EVENT_DAYS = 7
#: NOTIFY channel announcing, at commit, the AE titles that have new event reports
EVENTS_CHANNEL = "pictor_ups"


@dataclass(frozen=True)
class Columns:
    """A workitem's matching keys, as :data:`UPS` filters them."""

    state: str
    priority: str
    worklist_label: str
    step_label: str
    input_readiness: str
    scheduled_start: dt.datetime | None
    patient_id: str | None
    patient_name: str | None
    study_uid: str | None
    accession_number: str | None
    station_aet: str | None
    workitem_code: str | None


_COLUMNS = (
    "state",
    "priority",
    "worklist_label",
    "step_label",
    "input_readiness",
    "scheduled_start",
    "patient_id",
    "patient_name",
    "study_uid",
    "accession_number",
    "station_aet",
    "workitem_code",
)


#: the worklist as UPS-RS searches it: STAT (HIGH) first, then by scheduled start
UPS = Listing(
    "ups",
    frozenset({"uid", *_COLUMNS}),
    "CASE priority WHEN 'HIGH' THEN 0 WHEN 'MEDIUM' THEN 1 ELSE 2 END,"
    " scheduled_start NULLS LAST, created_at, uid",
    {},
    frozenset({"patient_name"}),
)


def _values(columns: Columns) -> list[Any]:
    return [getattr(columns, c) for c in _COLUMNS]


@dataclass(frozen=True)
class Workitem:
    """A workitem as stored."""

    uid: str
    state: str
    transaction_uid: str | None
    cancel_requested: bool
    attrs: dict[str, Any]


@dataclass
class Change:
    """What a transaction does to a workitem: its new attributes and matching keys, the
    performer's Transaction UID, the event reports for its subscribers (DICOM JSON
    datasets), the audit action and what the audit event says of it."""

    attrs: dict[str, Any]
    columns: Columns
    transaction_uid: str | None
    cancel_requested: bool
    action: str
    events: list[dict[str, Any]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


def _workitem(row: asyncpg.Record) -> Workitem:
    return Workitem(
        row["uid"],
        row["state"],
        row["transaction_uid"],
        row["cancel_requested"],
        msgspec.json.decode(row["attrs"]),
    )


async def _queue(
    conn: asyncpg.Connection, aets: Sequence[str], events: Sequence[dict[str, Any]]
) -> None:
    """One event report per subscriber and event, in the order given."""
    if not aets or not events:
        return
    messages = [msgspec.json.encode(e).decode() for e in events]
    await conn.execute(
        """INSERT INTO ups_event (aet, message)
           SELECT a, m::jsonb FROM unnest($1::text[]) WITH ORDINALITY AS x(a, i),
                unnest($2::text[]) WITH ORDINALITY AS y(m, j)
           ORDER BY i, j""",
        list(aets),
        messages,
    )
    await conn.execute(
        "SELECT pg_notify($1, a) FROM unnest($2::text[]) AS a", EVENTS_CHANNEL, list(aets)
    )
    await conn.execute(
        "DELETE FROM ups_event WHERE created_at < now() - make_interval(days => $1)",
        EVENT_DAYS,
    )


async def _subscribers(conn: asyncpg.Connection, uid: str) -> list[str]:
    rows = await conn.fetch("SELECT aet FROM ups_subscription WHERE workitem = $1", uid)
    return [r[0] for r in rows]


async def create(
    pool: asyncpg.Pool,
    uid: str,
    change: Change,
    filters_of: Callable[[str], Sequence[Filter] | None],
    *,
    who: str,
) -> None:
    """A new workitem; the worklist's subscribers (those of a filtered subscription
    when it matches, ``filters_of`` compiling its filter) are subscribed to it and sent
    ``change.events``; ``filters_of`` None: a filter that cannot be read, which matches
    nothing. A workitem with this UID already: :class:`Conflict`."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            created = await conn.fetchval(
                f"""INSERT INTO ups (uid, transaction_uid, cancel_requested, attrs,
                        {", ".join(_COLUMNS)})
                    VALUES ($1, NULL, false, $2,
                        {", ".join(f"${i}" for i in range(3, 3 + len(_COLUMNS)))})
                    ON CONFLICT DO NOTHING RETURNING true""",
                uid,
                msgspec.json.encode(change.attrs),
                *_values(change.columns),
            )
            if not created:
                raise Conflict(f"a workitem {uid} exists already")
            await conn.execute(
                """INSERT INTO ups_subscription (aet, workitem, deletion_lock)
                   SELECT aet, $1, deletion_lock FROM ups_subscription
                   WHERE workitem = $2 AND NOT suspended ON CONFLICT DO NOTHING""",
                uid,
                GLOBAL,
            )
            for aet, lock, text in await conn.fetch(
                """SELECT aet, deletion_lock, filter FROM ups_subscription
                   WHERE workitem = $1 AND NOT suspended""",
                FILTERED,
            ):
                filters = filters_of(text or "")
                if filters is None:  # a filter this version cannot read: matches nothing
                    continue
                sql, args = compile_find([*filters, Filter("uid", "single", (uid,))], 1, 0, UPS)
                if await conn.fetch(sql, *args):
                    await conn.execute(
                        """INSERT INTO ups_subscription (aet, workitem, deletion_lock)
                           VALUES ($1, $2, $3) ON CONFLICT DO NOTHING""",
                        aet,
                        uid,
                        lock,
                    )
            await _queue(conn, await _subscribers(conn, uid), change.events)
            await audit(
                conn,
                who,
                change.action,
                studies=[change.columns.study_uid] if change.columns.study_uid else [],
                detail={"workitem": uid, **change.detail},
            )
    except INDEX_ERRORS as exc:
        raise index_failure("the workitem could not be created", exc) from exc


async def get(pool: asyncpg.Pool, uid: str) -> Workitem:
    """The workitem, else :class:`NotFound`."""
    try:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT uid, state, transaction_uid, cancel_requested, attrs
                   FROM ups WHERE uid = $1""",
                uid,
            )
    except INDEX_ERRORS as exc:
        raise index_failure("the workitem could not be read", exc) from exc
    if row is None:
        raise NotFound(f"no workitem {uid}")
    return _workitem(row)


async def change(
    pool: asyncpg.Pool,
    uid: str,
    decide: Callable[[Workitem], Awaitable[Change | None]],
    *,
    who: str,
) -> Change | None:
    """Applies what ``decide`` makes of the workitem, locked (None: nothing to write);
    no workitem: :class:`NotFound`. What ``decide`` raises leaves everything as it was."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT uid, state, transaction_uid, cancel_requested, attrs
                   FROM ups WHERE uid = $1 FOR UPDATE""",
                uid,
            )
            if row is None:
                raise NotFound(f"no workitem {uid}")
            done = await decide(_workitem(row))
            if done is None:
                return None
            assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(_COLUMNS, start=5))
            await conn.execute(
                f"""UPDATE ups SET transaction_uid = $2, cancel_requested = $3, attrs = $4,
                        {assignments}, updated_at = now()
                    WHERE uid = $1""",
                uid,
                done.transaction_uid,
                done.cancel_requested,
                msgspec.json.encode(done.attrs),
                *_values(done.columns),
            )
            await _queue(conn, await _subscribers(conn, uid), done.events)
            await audit(
                conn,
                who,
                done.action,
                studies=[done.columns.study_uid] if done.columns.study_uid else [],
                detail={"workitem": uid, **done.detail},
            )
            return done
    except INDEX_ERRORS as exc:
        raise index_failure("the workitem could not be changed", exc) from exc


async def find(
    pool: asyncpg.Pool, filters: Sequence[Filter], limit: int, offset: int
) -> tuple[list[bytes], bool]:
    """A page of matching workitems (DICOM JSON each) and whether more follow."""
    return await worklist.find(pool, filters, limit, offset, UPS)


# -- subscriptions (PS3.4 CC.2.3) --------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """What an initial State Report says of a workitem."""

    uid: str
    attrs: dict[str, Any]


async def subscribe(
    pool: asyncpg.Pool,
    aet: str,
    workitem: str,
    deletion_lock: bool,
    filters: Sequence[Filter] | None,
    filter_text: str | None,
    report: Callable[[Report], dict[str, Any]],
    *,
    who: str,
    limit: int,
) -> int:
    """``aet`` subscribed to ``workitem``, or to the worklist (:data:`GLOBAL`, or
    :data:`FILTERED` with ``filters``): then to every open workitem (that matches),
    at most ``limit`` of them. Each workitem subscribed to gets an initial State Report
    (``report`` makes it; PS3.4 CC.2.3.2). A workitem that does not exist:
    :class:`NotFound`. The number of workitems subscribed to."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            if workitem in (GLOBAL, FILTERED):
                await conn.execute(
                    """INSERT INTO ups_subscription (aet, workitem, deletion_lock, filter)
                       VALUES ($1, $2, $3, $4)
                       ON CONFLICT (aet, workitem) DO UPDATE SET
                           deletion_lock = EXCLUDED.deletion_lock,
                           filter = EXCLUDED.filter, suspended = false""",
                    aet,
                    workitem,
                    deletion_lock,
                    filter_text,
                )
                sql, args = compile_find(
                    [*(filters or ()), Filter("state", "list", ("SCHEDULED", "IN PROGRESS"))],
                    limit,
                    0,
                    UPS,
                    "uid, attrs",
                )
                rows = (await conn.fetch(sql, *args))[:limit]
            else:
                rows = await conn.fetch(
                    "SELECT uid, attrs FROM ups WHERE uid = $1 FOR SHARE", workitem
                )
                if not rows:
                    raise NotFound(f"no workitem {workitem}")
            subscribed = [r["uid"] for r in rows]
            await conn.execute(
                """INSERT INTO ups_subscription (aet, workitem, deletion_lock)
                   SELECT $1, w, $3 FROM unnest($2::text[]) AS w
                   ON CONFLICT (aet, workitem) DO UPDATE SET
                       deletion_lock = EXCLUDED.deletion_lock""",
                aet,
                subscribed,
                deletion_lock,
            )
            reports = [report(Report(r["uid"], msgspec.json.decode(r["attrs"]))) for r in rows]
            await _queue(conn, [aet], reports)
            await audit(
                conn,
                who,
                "ups-subscribe",
                detail={"aet": aet, "workitem": workitem, "workitems": len(subscribed)},
            )
            return len(subscribed)
    except INDEX_ERRORS as exc:
        raise index_failure("the subscription could not be recorded", exc) from exc


async def unsubscribe(pool: asyncpg.Pool, aet: str, workitem: str, *, who: str) -> int:
    """``aet``'s subscription to ``workitem`` ended; from the worklist (either
    well-known UID): every subscription it has (PS3.4 Table CC.2.3-2). None to end:
    :class:`NotFound`. The number ended."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            if workitem in (GLOBAL, FILTERED):
                status = await conn.execute("DELETE FROM ups_subscription WHERE aet = $1", aet)
            else:
                status = await conn.execute(
                    "DELETE FROM ups_subscription WHERE aet = $1 AND workitem = $2",
                    aet,
                    workitem,
                )
            ended = int(status.split()[-1])
            if not ended:
                raise NotFound(f"{aet} has no subscription to {workitem}")
            await audit(
                conn,
                who,
                "ups-unsubscribe",
                detail={"aet": aet, "workitem": workitem, "subscriptions": ended},
            )
            return ended
    except INDEX_ERRORS as exc:
        raise index_failure("the subscription could not be ended", exc) from exc


async def suspend(pool: asyncpg.Pool, aet: str, workitem: str, *, who: str) -> None:
    """``aet``'s worklist subscription suspended: workitems created from now on are not
    subscribed to; its subscriptions to existing ones stay. None: :class:`NotFound`."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                """UPDATE ups_subscription SET suspended = true
                   WHERE aet = $1 AND workitem = $2""",
                aet,
                workitem,
            )
            if status.endswith(" 0"):
                raise NotFound(f"{aet} has no worklist subscription {workitem}")
            await audit(conn, who, "ups-suspend", detail={"aet": aet, "workitem": workitem})
    except INDEX_ERRORS as exc:
        raise index_failure("the subscription could not be suspended", exc) from exc


# -- the notification channel (PS3.18 11.13) ---------------------------------------------


async def pending(pool: asyncpg.Pool, aet: str, limit: int) -> list[tuple[int, bytes]]:
    """The oldest event reports waiting for ``aet`` (id, DICOM JSON). No cursor: a
    report committed after a younger one was sent (transactions commit out of order)
    is still found, as sent ones are deleted. The reports of one workitem are made
    under its row lock, so they are numbered in the order they happened."""
    try:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, message FROM ups_event WHERE aet = $1 ORDER BY id LIMIT $2",
                aet,
                limit,
            )
    except INDEX_ERRORS as exc:
        raise index_failure("the event reports could not be read", exc) from exc
    return [(r[0], bytes(r[1])) for r in rows]


async def sent(pool: asyncpg.Pool, aet: str, ids: Sequence[int]) -> None:
    """These event reports went out to ``aet``: not kept."""
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM ups_event WHERE aet = $1 AND id = ANY($2::bigint[])", aet, list(ids)
            )
    except INDEX_ERRORS as exc:
        raise index_failure("the event reports could not be cleared", exc) from exc


# -- the reading worklist ----------------------------------------------------------------


@dataclass(frozen=True)
class StudyFacts:
    """What a reading workitem says of its study: the study row's patient and study
    attributes (corrections applied) and the Requested Procedure Priorities of the
    orders it was made for."""

    patient_name: str | None
    patient_id: str | None
    issuer_of_patient_id: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    accession_number: str | None
    study_description: str | None
    modalities: list[str]
    priorities: list[str]


async def study_facts(pool: asyncpg.Pool, study_uid: str) -> StudyFacts | None:
    """The study's facts (None: no such study). Its orders are the worklist items made
    for it: by Study Instance UID, by accession number, or through the performed
    procedure steps that made its series (``mpps_series``)."""
    try:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT s.patient_name, s.patient_id, s.issuer_of_patient_id,
                          s.patient_birth_date, s.patient_sex, s.accession_number,
                          s.study_description, s.modalities,
                          ARRAY(SELECT DISTINCT i.priority FROM mwl_item i
                                WHERE i.priority IS NOT NULL
                                  AND (i.study_uid = s.study_uid
                                       OR (coalesce(s.accession_number, '') <> ''
                                           AND i.accession_number = s.accession_number)
                                       OR i.pk IN (SELECT p.item_pk FROM series se
                                                   JOIN mpps_series m
                                                     ON m.series_uid = se.series_uid
                                                   JOIN mpps_step p ON p.mpps_uid = m.mpps_uid
                                                   WHERE se.study_pk = s.pk)))
                          AS priorities
                   FROM study s WHERE s.study_uid = $1""",
                study_uid,
            )
    except INDEX_ERRORS as exc:
        raise index_failure("the study could not be read", exc) from exc
    if row is None:
        return None
    return StudyFacts(**dict(row.items()))
