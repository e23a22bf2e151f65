"""Index reads for WADO-RS: stored metadata, file locations and frame byte ranges."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import asyncpg

from app.dicom.patch import patched_metadata
from app.errors import NotFound
from app.index.database import INDEX_ERRORS, index_failure


@dataclass(frozen=True)
class Scope:
    """A retrieve target (PS3.18 10.4.1): a study, a series of it, or one instance."""

    study: str
    series: str | None = None
    instance: str | None = None

    def describe(self) -> str:
        if self.instance is not None:
            return f"instance {self.instance} in series {self.series} of study {self.study}"
        if self.series is not None:
            return f"series {self.series} of study {self.study}"
        return f"study {self.study}"


@dataclass(frozen=True)
class StoredInstance:
    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax: str
    file_key: str
    file_size: int
    file_sha256: str
    number_of_frames: int | None
    frame_offsets: list[int] | None
    frame_lengths: list[int] | None
    frame_first: list[int] | None
    bits_allocated: int | None
    bulk: bytes
    bits_stored: int | None = None
    samples_per_pixel: int | None = None
    photometric: str | None = None
    rows: int | None = None
    columns: int | None = None
    pixel_representation: int | None = None
    planar_configuration: int | None = None
    #: DICOM JSON of its study's corrected attributes, which a retrieved Part 10 file
    #: carries instead of the stored file's (app.dicom.patch); None: the file as stored
    patch: bytes | None = None

    def frame_ranges(self, number: int) -> list[tuple[int, int]]:
        """Byte ranges of frame ``number`` (1-based, PS3.18 10.4.1.1.4) in the stored file."""
        assert self.frame_offsets is not None and self.frame_lengths is not None
        assert self.frame_first is not None
        first = self.frame_first[number - 1]
        end = (
            self.frame_first[number] if number < len(self.frame_first) else len(self.frame_offsets)
        )
        return list(zip(self.frame_offsets[first:end], self.frame_lengths[first:end]))


_WHERE = """st.study_uid = $1 AND ($2::text IS NULL OR se.series_uid = $2)
    AND ($3::text IS NULL OR i.sop_instance_uid = $3)"""
_FROM = "instance i JOIN series se ON se.pk = i.series_pk JOIN study st ON st.pk = i.study_pk"
#: PS3.18 10.4: the order a viewer expects: series by number, instances by number
_ORDER = "se.series_number NULLS LAST, se.pk, i.instance_number NULLS LAST, i.pk"


async def _fetch(pool: asyncpg.Pool, sql: str, scope: Scope) -> list[asyncpg.Record]:
    try:
        rows: list[asyncpg.Record] = await pool.fetch(
            sql, scope.study, scope.series, scope.instance
        )
    except INDEX_ERRORS as exc:
        raise index_failure("the index could not be read", exc) from exc
    if not rows:
        raise NotFound(f"no {scope.describe()} is stored here")
    return rows


async def metadata(pool: asyncpg.Pool, scope: Scope) -> list[tuple[bytes, str]]:
    """(DICOM JSON, its version) of each instance in scope, in viewing order: the JSON
    stored at ingest, with the study's corrections applied (app.dicom.patch); the
    version is the file's SHA-256, and the corrections' when there are some."""
    rows = await _fetch(
        pool,
        f"SELECT i.metadata, i.file_sha256, st.patch FROM {_FROM} WHERE {_WHERE} ORDER BY {_ORDER}",
        scope,
    )
    patch = rows[0][2]
    if patch is None:
        return [(bytes(r[0]), str(r[1])) for r in rows]
    patch = bytes(patch)
    version = hashlib.sha1(patch).hexdigest()
    return [(patched_metadata(bytes(r[0]), patch), f"{r[1]}:{version}") for r in rows]


#: (rows stored before schemas/007 have the two pixel attributes in their metadata only)
_COLUMNS = """i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.file_key,
    i.file_size, i.file_sha256, i.number_of_frames, i.frame_offsets, i.frame_lengths,
    i.frame_first, i.bits_allocated, i.bulk, se.series_uid, i.bits_stored,
    i.samples_per_pixel, i.photometric_interpretation, i.rows, i.columns,
    COALESCE(i.pixel_representation, (i.metadata #>> '{00280103,Value,0}')::smallint)
        AS pixel_representation,
    COALESCE(i.planar_configuration, (i.metadata #>> '{00280006,Value,0}')::smallint)
        AS planar_configuration, st.patch"""


def _stored(r: asyncpg.Record) -> StoredInstance:
    def ints(name: str) -> list[int] | None:
        value = r[name]
        return list(value) if value is not None else None

    return StoredInstance(
        sop_instance_uid=r["sop_instance_uid"],
        series_uid=r["series_uid"],
        sop_class_uid=r["sop_class_uid"],
        transfer_syntax=r["transfer_syntax_uid"],
        file_key=r["file_key"],
        file_size=r["file_size"],
        file_sha256=r["file_sha256"],
        number_of_frames=r["number_of_frames"],
        frame_offsets=ints("frame_offsets"),
        frame_lengths=ints("frame_lengths"),
        frame_first=ints("frame_first"),
        bits_allocated=r["bits_allocated"],
        bulk=bytes(r["bulk"]),
        bits_stored=r["bits_stored"],
        samples_per_pixel=r["samples_per_pixel"],
        photometric=r["photometric_interpretation"],
        rows=r["rows"],
        columns=r["columns"],
        pixel_representation=r["pixel_representation"],
        planar_configuration=r["planar_configuration"],
        patch=bytes(r["patch"]) if r["patch"] is not None else None,
    )


async def instances(pool: asyncpg.Pool, scope: Scope) -> list[StoredInstance]:
    if scope.instance is not None and scope.series is not None:
        return [await instance(pool, scope)]
    rows = await _fetch(
        pool, f"SELECT {_COLUMNS} FROM {_FROM} WHERE {_WHERE} ORDER BY {_ORDER}", scope
    )
    return [_stored(r) for r in rows]


async def instance(pool: asyncpg.Pool, scope: Scope) -> StoredInstance:
    """One instance (frames, bulk data, rendered): found by its SOP Instance UID alone
    (a unique index), then checked against the study and series of the URL."""
    try:
        row = await pool.fetchrow(
            f"""SELECT {_COLUMNS}, st.study_uid FROM instance i
                JOIN series se ON se.pk = i.series_pk JOIN study st ON st.pk = i.study_pk
                WHERE i.sop_instance_uid = $1""",
            scope.instance,
        )
    except INDEX_ERRORS as exc:
        raise index_failure("the index could not be read", exc) from exc
    if row is None or row["series_uid"] != scope.series or row["study_uid"] != scope.study:
        raise NotFound(f"no {scope.describe()} is stored here")
    return _stored(row)
