"""Lifecycle (issue #15): delete into the trash, restore, purge, IOCM rejection,
corrections and patient merge; the one place HTTP, the CLI and ingest reach them.

Files and rows are kept consistent through a crash the way ingest keeps them
(DESIGN.md decision 2, :mod:`app.storage.base`): a purge first records an intent for
the files it will delete (:meth:`BlobStore.retire`), then deletes their trash rows in
one transaction, then the files; a crash after the commit leaves the intent, and the
start-up sweep deletes the files no row (instance or trash) references. A delete or a
restore only moves rows; files do not move.

A change answers once it is heard (``settle``, set by the server to
:meth:`app.services.retrieve.InstanceCache.settle`): the announcement of a change goes
out at commit, and a client that deletes and at once reads again must not be served
what it deleted from some process's cache (DESIGN.md decision 8).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from app.config import Settings
from app.dicom.iocm import KEY_OBJECT_SELECTION, PURGED_AT_ONCE, Rejection, rejection_of
from app.dicom.patch import PatchError, validate
from app.errors import BadRequest
from app.index import corrections
from app.index import lifecycle as index
from app.index.backup import file_deletions
from app.index.corrections import Correction
from app.index.database import Pool
from app.index.lifecycle import Trashed, TrashedStudy
from app.storage import BlobStore
from app.tasks import stop_task

log = logging.getLogger(__name__)

__all__ = ["Correction", "Lifecycle", "Trashed", "TrashedStudy", "parse_age"]

#: who the background purge acts as in the audit trail
PURGE = "system:purge"
_UTC = dt.UTC


def parse_age(text: str) -> dt.timedelta:
    """``3d``, ``12h``, ``30m``, ``45s`` or a number of days -> a duration (``--older-than``)."""
    text = text.strip().lower()
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        if text and text[-1] in units:
            seconds = float(text[:-1]) * units[text[-1]]
        else:
            seconds = float(text) * 86400
    except ValueError:
        raise BadRequest(f"{text!r} is not an age such as 3d, 12h or 30m") from None
    if not 0 <= seconds <= 100 * 365 * 86400:
        raise BadRequest(f"{text!r}: an age is between 0 and 100 years")
    return dt.timedelta(seconds=seconds)


class Lifecycle:
    def __init__(self, settings: Settings, pool: Pool, store: BlobStore) -> None:
        self.settings = settings
        self.pool = pool
        self.store = store
        self._task: asyncio.Task[None] | None = None
        #: awaited after each change a caller waits for (see the module's docstring)
        self.settle: Callable[[], Awaitable[object]] = _nothing

    def _expires(self, days: float | None = None) -> dt.datetime:
        keep = self.settings.trash_days if days is None else days
        return dt.datetime.now(_UTC) + dt.timedelta(days=keep)

    # -- delete, restore, purge ---------------------------------------------------------

    async def delete(
        self, study: str, series: str | None = None, sop: str | None = None, *, who: str
    ) -> Trashed:
        """Delete into the trash (PICTOR_TRASH_DAYS); with 0 days, purged at once."""
        out = await index.delete(self.pool, study, series, sop, who=who, expires=self._expires())
        if self.settings.trash_days <= 0:
            await self._purge(ids=out.ids, who=who)
        await self.settle()
        return out

    async def restore(
        self, study: str, series: Sequence[str] | None = None, *, who: str
    ) -> Trashed:
        out = await index.restore(self.pool, study, series or None, who=who)
        await self.settle()
        return out

    async def list_trash(self) -> list[TrashedStudy]:
        return await index.list_trash(self.pool)

    async def empty(self, older_than: dt.timedelta | None = None, *, who: str) -> int:
        """Purge what was deleted more than ``older_than`` ago (everything: None)."""
        cutoff = dt.datetime.now(_UTC) - (older_than or dt.timedelta(0))
        return await self._purge(deleted_before=cutoff, who=who)

    async def purge_expired(self) -> int:
        """Purge trash whose time is up (the background job; any node may run it)."""
        return await self._purge(before=dt.datetime.now(_UTC), who=PURGE)

    async def _purge(
        self,
        *,
        before: dt.datetime | None = None,
        deleted_before: dt.datetime | None = None,
        ids: Sequence[int] | None = None,
        who: str,
    ) -> int:
        if ids is not None and not ids:
            return 0

        async def abandon(intent: object) -> None:
            await self.store.delete_retired([], intent)

        purged = 0
        async with file_deletions(self.pool) as allowed:
            if not allowed:
                log.info("a backup is copying the archive: the purge waits for its next run")
                return 0
            while True:
                batch = await index.purge_batch(
                    self.pool,
                    before=before,
                    deleted_before=deleted_before,
                    ids=ids,
                    retire=self.store.retire,
                    abandon=abandon,
                    who=who,
                )
                if batch is None:
                    return purged
                count, unreferenced, intent = batch
                await self.store.delete_retired(unreferenced, intent)
                purged += count

    def start(self, interval: float) -> None:
        """Run the purge every ``interval`` seconds (jittered: nodes spread out)."""
        self._task = asyncio.get_running_loop().create_task(self._run(interval))

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.0))
            try:
                n = await self.purge_expired()
                if n:
                    log.info("purged %d instances from the trash", n)
            except Exception as exc:  # noqa: BLE001 - tried again at the next interval
                log.error("purging the trash failed (will retry): %s", exc)

    # -- IOCM rejection -----------------------------------------------------------------

    async def rejected(self, sop_uids: Sequence[str]) -> dict[str, tuple[str, str]]:
        return await index.rejected(self.pool, sop_uids)

    async def stored(
        self, instances: Sequence[tuple[str, str, bytes]], *, who: str, may_purge: bool
    ) -> None:
        """Newly stored instances (SOP Class, SOP Instance UID, metadata): a rejection
        note among them hides what it references (IHE RAD TF-2 4.66)."""
        others = []
        for sop_class, sop_uid, metadata in instances:
            rejection = rejection_of(sop_class, sop_uid, metadata)
            if rejection is not None:
                await self.reject(rejection, who=who, may_purge=may_purge)
            elif sop_class == KEY_OBJECT_SELECTION:
                others.append(sop_uid)
        if others:
            await index.looked_at(self.pool, others)

    async def recover(self) -> int:
        """At start-up: look at the Key Object Selection documents a stopped server
        stored but did not look at (a rejection note then takes effect now; what it
        rejects waits in the trash whatever its code). Returns how many."""
        notes = await index.unapplied_notes(self.pool, KEY_OBJECT_SELECTION)
        await self.stored(
            [(KEY_OBJECT_SELECTION, uid, meta) for uid, meta in notes],
            who="system:recovery",
            may_purge=False,
        )
        return len(notes)

    async def reject(self, rejection: Rejection, *, who: str, may_purge: bool) -> list[Trashed]:
        """Hide what the note rejects. A 113039 note ("Data Retention Policy Expired")
        purges at once only when its storer may delete; from anyone else (a write-only
        token, a DIMSE peer with access control on) it waits in the trash like the
        other codes, so storing a note cannot destroy what deleting could not."""
        at_once = rejection.code in PURGED_AT_ONCE and may_purge
        trashed = await index.reject(
            self.pool,
            rejection.note_uid,
            rejection.code,
            rejection.references,
            who=who,
            expires=self._expires(0 if at_once else None),
        )
        if at_once or self.settings.trash_days <= 0:
            await self._purge(ids=[i for t in trashed for i in t.ids], who=who)
        await self.settle()
        return trashed

    # -- corrections --------------------------------------------------------------------

    async def update(self, study: str, body: Any, *, who: str) -> Correction:
        """Correct patient and study attributes (a DICOM JSON object)."""
        try:
            patch = validate(body)
        except PatchError as exc:
            raise BadRequest(str(exc)) from None
        out = await corrections.update(self.pool, study, patch, who=who)
        await self.settle()
        return out

    async def undo(self, study: str, *, who: str) -> Correction:
        out = await corrections.undo(self.pool, study, who=who)
        await self.settle()
        return out

    async def history(self, study: str) -> list[dict[str, Any]]:
        return await corrections.history(self.pool, study)

    async def merge(self, source: Any, target: Any, *, who: str) -> list[Correction]:
        """Merge patients: ``{"PatientID": ..., "IssuerOfPatientID": ...}`` each; the
        target may carry more Patient module attributes (keywords or tags) to apply."""
        src, _ = _patient(source, "source", extra=False)
        dst, given = _patient(target, "target", extra=True)
        out = await corrections.merge(self.pool, src, dst, given, who=who)
        await self.settle()
        return out


async def _nothing() -> None:
    """No cache to settle (the CLI, a test)."""


_IDENTIFIERS = {"PatientID": "00100020", "IssuerOfPatientID": "00100021"}


def _patient(
    value: Any, name: str, *, extra: bool
) -> tuple[tuple[str, str | None], dict[str, Any]]:
    if not isinstance(value, dict):
        raise BadRequest(f"{name}: an object with PatientID (and IssuerOfPatientID)")
    ids: dict[str, str | None] = {}
    rest: dict[str, Any] = {}
    for key, entry in value.items():
        tag = _IDENTIFIERS.get(str(key), str(key))
        if tag in _IDENTIFIERS.values():
            text = entry
            if isinstance(entry, dict):  # DICOM JSON
                values = entry.get("Value") or [None]
                text = values[0]
            if text is not None and (not isinstance(text, str) or not 0 < len(text) <= 64):
                raise BadRequest(f"{name}.{key}: a string of 1 to 64 characters")
            ids[tag] = text
        elif extra:
            rest[key] = entry
        else:
            raise BadRequest(f"{name}: only PatientID and IssuerOfPatientID, not {key!r}")
    patient_id = ids.get("00100020")
    if not patient_id:
        raise BadRequest(f"{name}: PatientID is required")
    given: dict[str, Any] = {}
    if rest:
        try:
            given = validate(rest)
        except PatchError as exc:
            raise BadRequest(f"{name}: {exc}") from None
        outside = [k for k in given if not k.startswith("0010")]
        if outside:
            raise BadRequest(f"{name}: only Patient module attributes, not {outside}")
    return (patient_id, ids.get("00100021")), given
