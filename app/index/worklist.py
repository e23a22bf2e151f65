"""The index side of worklists (issue #18; ``schemas/016``): the patient registry that
HL7 ADT keeps, the Modality Worklist items that HL7 orders make, and the C-FIND
matching over them (PS3.4 K.6.1.2, with the matching rules of C.2.2.2).

Each HL7 message is one transaction here: a demographics update changes the registry,
the patient's worklist items and every stored study of the patient (through the
corrections of :mod:`app.index.corrections`, audited and in the change feed) together,
or not at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from app.errors import NotFound
from app.index import corrections
from app.index.compiler import like_pattern
from app.index.database import INDEX_ERRORS, index_failure
from app.index.lifecycle import audit

#: SPS statuses a worklist shows when the query names none (PS3.4 K.6.1.2.2: the
#: worklist is of steps still to do); COMPLETED, DISCONTINUED and CANCELED are kept
#: for the record and found when asked for
OPEN_STATUSES = ("SCHEDULED", "ARRIVED", "READY", "STARTED")
_PATIENT_KEYS = ("00100010", "00100030", "00100040")


@dataclass(frozen=True)
class Item:
    """A worklist item to write (the order's attributes and the patient's)."""

    placer: str | None
    filler: str | None
    accession_number: str
    requested_procedure_id: str
    sps_id: str
    study_uid: str
    patient_id: str
    issuer: str
    patient_name: str | None
    modality: str | None
    station_aet: str | None
    performing_physician: str | None
    start: dt.datetime | None
    priority: str | None
    attrs: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """What one message changed."""

    studies: int = 0
    items: int = 0
    registered: bool = False


# -- patients ---------------------------------------------------------------------------


async def _known(conn: asyncpg.Connection, patient_id: str, issuer: str) -> bool:
    return bool(
        await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM patient
                              WHERE patient_id = $1 AND issuer_of_patient_id = $2)
                   OR EXISTS (SELECT 1 FROM mwl_item
                              WHERE patient_id = $1 AND issuer_of_patient_id = $2)
                   OR EXISTS (SELECT 1 FROM study WHERE patient_id = $1
                              AND coalesce(issuer_of_patient_id, '') = $2)""",
            patient_id,
            issuer,
        )
    )


async def _register(
    conn: asyncpg.Connection, patient_id: str, issuer: str, attrs: dict[str, Any]
) -> None:
    await conn.execute(
        """INSERT INTO patient (patient_id, issuer_of_patient_id, attrs) VALUES ($1, $2, $3)
           ON CONFLICT (patient_id, issuer_of_patient_id)
           DO UPDATE SET attrs = patient.attrs || excluded.attrs, updated_at = now()""",
        patient_id,
        issuer,
        msgspec.json.encode(attrs),
    )


async def _studies(conn: asyncpg.Connection, patient_id: str, issuer: str) -> list[str]:
    rows = await conn.fetch(
        """SELECT study_uid FROM study WHERE patient_id = $1
               AND coalesce(issuer_of_patient_id, '') = $2 ORDER BY study_uid""",
        patient_id,
        issuer,
    )
    return [r[0] for r in rows]


async def _patch_items(
    conn: asyncpg.Connection, patient_id: str, issuer: str, patch: dict[str, Any]
) -> int:
    name = _name_of(patch)
    done = await conn.execute(
        """UPDATE mwl_item SET attrs = attrs || $3::jsonb, updated_at = now(),
                  patient_name = CASE WHEN $4::boolean THEN $5 ELSE patient_name END
           WHERE patient_id = $1 AND issuer_of_patient_id = $2""",
        patient_id,
        issuer,
        msgspec.json.encode(patch),
        name is not False,
        name if name is not False else None,
    )
    return int(done.split()[-1])


def _name_of(patch: dict[str, Any]) -> str | None | bool:
    """The Alphabetic Patient's Name the patch sets, None if it clears it, False if it
    leaves it alone."""
    if "00100010" not in patch:
        return False
    values = patch["00100010"].get("Value") or [None]
    value = values[0]
    if isinstance(value, dict):
        return str(value.get("Alphabetic") or "") or None
    return str(value) if value else None


async def _correct_studies(
    conn: asyncpg.Connection, patient_id: str, issuer: str, patch: dict[str, Any], who: str
) -> int:
    """Apply ``patch`` to each stored study of the patient whose values differ."""
    changed = 0
    for study_uid in await _studies(conn, patient_id, issuer):
        attrs = await conn.fetchval(
            """SELECT coalesce((SELECT metadata FROM instance i WHERE i.study_pk = s.pk
                                ORDER BY pk LIMIT 1), '{}'::jsonb) || s.attrs
               FROM study s WHERE s.study_uid = $1""",
            study_uid,
        )
        current = msgspec.json.decode(bytes(attrs)) if attrs is not None else {}
        wanted = {k: v for k, v in patch.items() if _value(current.get(k)) != _value(v)}
        if wanted:
            await corrections.update_in(conn, study_uid, wanted, who=who)
            changed += 1
    return changed


def _value(entry: dict[str, Any] | None) -> Any:
    if not entry:
        return None
    values = entry.get("Value") or None
    if values and isinstance(values[0], dict):  # PN: the Alphabetic group
        return [v.get("Alphabetic") for v in values]
    return values


async def update_patient(
    pool: asyncpg.Pool,
    patient_id: str,
    issuer: str,
    attrs: dict[str, Any],
    patch: dict[str, Any],
    *,
    register: bool,
    who: str,
) -> Outcome:
    """ADT A01 / A04 (``register``: a new patient is welcome) and A08 (the patient must
    be known): record the demographics and correct what the archive holds."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            if not register and not await _known(conn, patient_id, issuer):
                raise NotFound(f"unknown patient {_describe(patient_id, issuer)}")
            await _register(conn, patient_id, issuer, attrs)
            items = await _patch_items(conn, patient_id, issuer, patch) if patch else 0
            studies = await _correct_studies(conn, patient_id, issuer, patch, who) if patch else 0
            return Outcome(studies=studies, items=items, registered=True)
    except INDEX_ERRORS as exc:
        raise index_failure("the patient update failed", exc) from exc


async def merge_patients(
    pool: asyncpg.Pool,
    source: tuple[str, str],
    target: tuple[str, str],
    target_attrs: dict[str, Any],
    patch: dict[str, Any],
    *,
    who: str,
) -> Outcome:
    """ADT A40: the source patient's studies (a correction each, as
    :func:`app.index.corrections.merge`), worklist items and registry entry become the
    target's; the source must be known."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            if not await _known(conn, *source):
                raise NotFound(f"unknown prior patient {_describe(*source)} (MRG-1)")
            studies = []
            if await _studies(conn, *source):
                studies = await corrections.merge_in(
                    conn,
                    (source[0], source[1] or None),
                    (target[0], target[1] or None),
                    patch,
                    who=who,
                )
            await _register(conn, target[0], target[1], target_attrs)
            moved = patch | {
                "00100020": {"vr": "LO", "Value": [target[0]]},
                "00100021": {"vr": "LO", "Value": [target[1]]} if target[1] else {"vr": "LO"},
            }
            name = _name_of(moved)
            done = await conn.execute(
                """UPDATE mwl_item SET patient_id = $3, issuer_of_patient_id = $4,
                          attrs = attrs || $5::jsonb, updated_at = now(),
                          patient_name = CASE WHEN $6::boolean THEN $7 ELSE patient_name END
                   WHERE patient_id = $1 AND issuer_of_patient_id = $2""",
                *source,
                *target,
                msgspec.json.encode(moved),
                name is not False,
                name if name is not False else None,
            )
            await conn.execute(
                "DELETE FROM patient WHERE patient_id = $1 AND issuer_of_patient_id = $2",
                *source,
            )
            return Outcome(studies=len(studies), items=int(done.split()[-1]), registered=True)
    except INDEX_ERRORS as exc:
        raise index_failure("the patient merge failed", exc) from exc


def _describe(patient_id: str, issuer: str) -> str:
    return patient_id + (f" (issuer {issuer})" if issuer else "")


# -- orders -----------------------------------------------------------------------------

_ITEM_COLUMNS = (
    "placer_order, filler_order, accession_number, requested_procedure_id, sps_id, "
    "study_uid, patient_id, issuer_of_patient_id, patient_name, modality, station_aet, "
    "performing_physician, sps_start, priority, attrs"
)


def _row(item: Item) -> tuple[Any, ...]:
    return (
        item.placer,
        item.filler,
        item.accession_number,
        item.requested_procedure_id,
        item.sps_id,
        item.study_uid,
        item.patient_id,
        item.issuer,
        item.patient_name,
        item.modality,
        item.station_aet,
        item.performing_physician,
        item.start,
        item.priority,
        msgspec.json.encode(item.attrs),
    )


async def _orders_named(
    conn: asyncpg.Connection, placer: str | None, filler: str | None
) -> list[int]:
    """The items of the order with these numbers (both must agree when both are given)."""
    rows = await conn.fetch(
        """SELECT pk FROM mwl_item
           WHERE ($1::text IS NULL OR placer_order = $1)
             AND ($2::text IS NULL OR filler_order = $2)
             AND ($1::text IS NOT NULL OR $2::text IS NOT NULL)
           ORDER BY pk FOR UPDATE""",
        placer,
        filler,
    )
    return [r[0] for r in rows]


async def set_status(
    conn: asyncpg.Connection, pks: Sequence[int], status: str, *, keep: Sequence[str] = ()
) -> int:
    """Items ``pks`` take Scheduled Procedure Step Status ``status`` (the column and
    the item's own attribute), except those whose status is one of ``keep``."""
    done = await conn.fetch(
        """UPDATE mwl_item SET status = $2::text, updated_at = now(),
               attrs = jsonb_set(attrs, '{00400100,Value,0,00400020}',
                                 jsonb_build_object('vr', 'CS', 'Value',
                                                    jsonb_build_array($2::text)))
           WHERE pk = ANY($1::bigint[]) AND status <> ALL($3::text[])
           RETURNING pk""",
        list(pks),
        status,
        list(keep),
    )
    return len(done)


@dataclass(frozen=True)
class OrderChange:
    control: str  # NW, CA, DC, XO
    item: Item


async def apply_orders(
    pool: asyncpg.Pool,
    patient: tuple[str, str],
    patient_attrs: dict[str, Any],
    changes: Sequence[OrderChange],
    *,
    who: str,
) -> Outcome:
    """ORM^O01 / OMI^O23: every order of the message, in one transaction.

    NW writes the item (a resent order replaces its own item: the same accession
    number, requested procedure and step); CA and DC mark the order's items CANCELED
    and DISCONTINUED; XO replaces their attributes, keeping their status. A cancel or a
    change of an order that is not here is :class:`NotFound`."""
    written = 0
    try:
        async with pool.acquire() as conn, conn.transaction():
            await _register(conn, *patient, patient_attrs)
            for change in changes:
                item = change.item
                if change.control == "NW":
                    await conn.execute(
                        f"""INSERT INTO mwl_item ({_ITEM_COLUMNS})
                            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                                    $13, $14, $15)
                            ON CONFLICT (accession_number, requested_procedure_id, sps_id)
                            DO UPDATE SET ({_ITEM_COLUMNS}, status, updated_at) =
                                (excluded.placer_order, excluded.filler_order,
                                 excluded.accession_number, excluded.requested_procedure_id,
                                 excluded.sps_id, excluded.study_uid, excluded.patient_id,
                                 excluded.issuer_of_patient_id, excluded.patient_name,
                                 excluded.modality, excluded.station_aet,
                                 excluded.performing_physician, excluded.sps_start,
                                 excluded.priority, excluded.attrs, 'SCHEDULED', now())""",
                        *_row(item),
                    )
                    written += 1
                    continue
                pks = await _orders_named(conn, item.placer, item.filler)
                if not pks:
                    raise NotFound(
                        f"no order with placer number {item.placer or '-'} and filler "
                        f"number {item.filler or '-'} is on the worklist"
                    )
                if change.control in ("CA", "DC"):
                    status = "CANCELED" if change.control == "CA" else "DISCONTINUED"
                    await set_status(conn, pks, status)
                else:  # XO: new attributes, same identity and status
                    await conn.execute(
                        """UPDATE mwl_item SET patient_id = $2, issuer_of_patient_id = $3,
                               patient_name = $4, modality = $5, station_aet = $6,
                               performing_physician = $7, sps_start = $8, priority = $9,
                               attrs = jsonb_set($10::jsonb, '{00400100,Value,0,00400020}',
                                                 jsonb_build_object('vr', 'CS', 'Value',
                                                                    jsonb_build_array(status))),
                               updated_at = now()
                           WHERE pk = ANY($1::bigint[])""",
                        pks,
                        *_row(item)[6:14],  # patient_id ... priority
                        msgspec.json.encode(
                            item.attrs
                            | {
                                "00080050": {"vr": "SH", "Value": [item.accession_number]},
                                "00401001": {"vr": "SH", "Value": [item.requested_procedure_id]},
                            }
                        ),
                    )
                written += len(pks)
            await audit(
                conn,
                who,
                "worklist",
                studies=[c.item.study_uid for c in changes],
                detail={
                    "orders": [
                        {"control": c.control, "accession": c.item.accession_number}
                        for c in changes
                    ]
                },
            )
            return Outcome(items=written, registered=True)
    except INDEX_ERRORS as exc:
        raise index_failure("the order could not be recorded", exc) from exc


# -- C-FIND over the worklist (PS3.4 K.6.1.2) -------------------------------------------


@dataclass(frozen=True)
class Filter:
    """One matching key: ``kind`` single (exact), wild (C.2.2.2.4), range
    (C.2.2.2.5: ``low``/``high``, either None for an open end) or list (C.2.2.2.2)."""

    column: str
    kind: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Listing:
    """A worklist table as :func:`compile_find` queries it: the columns a filter may
    name (never interpolated from anything else), the SQL some of them stand for, the
    ones matched case-insensitively, the filter applied when none names its column,
    and the order of the answers."""

    table: str
    columns: frozenset[str]
    order: str
    expressions: Mapping[str, str]
    folded: frozenset[str]
    default: tuple[str, tuple[str, ...]] | None = None


#: the Modality Worklist: open items by default, by scheduled start
MWL = Listing(
    "mwl_item",
    frozenset(
        {
            "station_aet",
            "modality",
            "performing_physician",
            "sps_id",
            "status",
            "accession_number",
            "requested_procedure_id",
            "patient_id",
            "issuer_of_patient_id",
            "patient_name",
            "study_uid",
            "sps_date",
            "sps_time",
        }
    ),
    "sps_start NULLS LAST, pk",
    {"sps_date": "sps_start::date", "sps_time": "sps_start::time"},
    frozenset({"patient_name", "performing_physician"}),
    ("status", OPEN_STATUSES),
)


def compile_find(
    filters: Sequence[Filter],
    limit: int,
    offset: int,
    listing: Listing = MWL,
    select: str = "attrs",
) -> tuple[str, list[Any]]:
    """The SQL of a worklist query (pure; tested without a database): ``select`` (a
    fixed list of columns) of the matching rows."""
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    named = set()
    for f in filters:
        if f.column not in listing.columns:
            raise ValueError(f"no {listing.table} column {f.column!r}")
        named.add(f.column)
        expr = listing.expressions.get(f.column, f.column)
        folded = f.column in listing.folded
        if folded:
            expr = f"lower({expr})"
        if f.kind == "single":
            value = f.values[0].lower() if folded else f.values[0]
            where.append(f"{expr} = {arg(value)}")
        elif f.kind == "wild":
            pattern = like_pattern(f.values[0].lower() if folded else f.values[0])
            where.append(f"{expr} LIKE {arg(pattern)}")
        elif f.kind == "list":
            where.append(f"{expr} = ANY({arg(list(f.values))}::text[])")
        elif f.kind == "range":
            low, high = f.values
            if low is not None:
                where.append(f"{expr} >= {arg(low)}")
            if high is not None:
                where.append(f"{expr} <= {arg(high)}")
        else:
            raise ValueError(f"no matching kind {f.kind!r}")
    if listing.default is not None and listing.default[0] not in named:
        column, values = listing.default
        where.append(f"{column} = ANY({arg(list(values))}::text[])")
    sql = (
        f"SELECT {select} FROM {listing.table}"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY {listing.order} LIMIT {arg(limit + 1)} OFFSET {arg(offset)}"
    )
    return sql, args


async def find(
    pool: asyncpg.Pool,
    filters: Sequence[Filter],
    limit: int,
    offset: int,
    listing: Listing = MWL,
) -> tuple[list[bytes], bool]:
    """A page of matching items (DICOM JSON each) and whether more follow."""
    sql, args = compile_find(filters, limit, offset, listing)
    try:
        async with pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
    except INDEX_ERRORS as exc:
        raise index_failure("the worklist query failed", exc) from exc
    return [bytes(r[0]) for r in rows[:limit]], len(rows) > limit


# -- HL7 messages already answered (``schemas/019``) -------------------------------------

#: how long an answered message is remembered
ANSWERED_DAYS = 7


async def answered(pool: asyncpg.Pool, sender: tuple[str, str, str], digest: bytes) -> str | None:
    """The ACK given in the last week to the message (MSH-3, MSH-4, MSH-10) with this
    content (its SHA-256), if any."""
    try:
        async with pool.acquire() as conn:
            value = await conn.fetchval(
                """SELECT ack FROM hl7_message
                   WHERE sending_application = $1 AND sending_facility = $2
                     AND control_id = $3 AND digest = $4
                     AND received_at > now() - make_interval(days => $5)""",
                *sender,
                digest,
                ANSWERED_DAYS,
            )
    except INDEX_ERRORS as exc:
        raise index_failure("the HL7 messages answered could not be read", exc) from exc
    return str(value) if value is not None else None


async def remember_answer(
    pool: asyncpg.Pool, sender: tuple[str, str, str], digest: bytes, ack: str
) -> None:
    """The ACK given to the message, kept for :func:`answered` (older ones dropped)."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO hl7_message (sending_application, sending_facility,
                       control_id, digest, ack)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (sending_application, sending_facility, control_id)
                   DO UPDATE SET digest = EXCLUDED.digest, ack = EXCLUDED.ack,
                       received_at = now()""",
                *sender,
                digest,
                ack,
            )
            await conn.execute(
                "DELETE FROM hl7_message WHERE received_at < now() - make_interval(days => $1)",
                ANSWERED_DAYS,
            )
    except INDEX_ERRORS as exc:
        raise index_failure("the HL7 answer could not be recorded", exc) from exc
