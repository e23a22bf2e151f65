"""Ingest: the two-phase store shared by STOW-RS, ``pictor import`` and C-STORE.

A caller streams each instance into a temp blob (:meth:`Ingest.new_part`), hands it to
:meth:`Ingest.complete` (the blob's last write, hashing and closing run in an I/O thread
while the header is parsed from memory and the next part streams in), and commits a
batch with :meth:`Ingest.commit`, which decides each instance's outcome:

* not DICOM / truncated / missing or malformed UIDs: failed, PS3.18 Annex I.2.2 reason;
* Study Instance UID differs from the request's (PS3.18 10.5.1): failed, 0xA901;
* identical to what is stored (same SHA-256): success, nothing duplicated;
* a different object under a stored SOP Instance UID: failed 0x0111, unless the
  ``on_duplicate = "replace"`` setting lets it replace the stored one;
* otherwise: published by the blob store (fsync, intent, link), then the index row is
  committed. Only then is the outcome "stored".
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack

import msgspec

from app.config import Settings
from app.dicom.analysis import Analysis, analyse_content
from app.dicom.equivalence import MAX_DECODED, same_content, same_instance
from app.dicom.iocm import KEY_OBJECT_SELECTION
from app.errors import FailureReason, InstanceRejected, ServiceUnavailable, StorageFull
from app.index import instances as index
from app.index.backup import file_deletions
from app.index.database import INDEX_ERRORS, Pool
from app.observability import record_ingest
from app.services.lifecycle import Lifecycle
from app.storage import BlobStore, Publication, Upload, instance_key

log = logging.getLogger(__name__)

#: instances committed to the index in one transaction (STOW-RS parts, imported files,
#: C-STORE requests waiting): large enough to amortise a commit, small enough that a
#: failure costs little
BATCH = 32

STORED = "stored"
ALREADY_STORED = "already-stored"
FAILED = "failed"

STORAGE_FULL = "storage-full"
INDEX_DOWN = "index-down"
_NO_SPACE = "the archive's storage is full (no space left on the device); try again later"


class Outcome(msgspec.Struct, kw_only=True):
    status: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    reason: int | None = None
    message: str = ""
    #: why a failure is the archive's and not the instance's: :data:`STORAGE_FULL` or
    #: :data:`INDEX_DOWN` (a request that stored nothing for it: 507 / 503)
    cause: str = ""

    @property
    def ok(self) -> bool:
        return self.status != FAILED


def _failed(exc: InstanceRejected) -> Outcome:
    return Outcome(
        status=FAILED,
        sop_class_uid=exc.sop_class_uid,
        sop_instance_uid=exc.sop_instance_uid,
        reason=int(exc.reason),
        message=exc.message,
    )


def _outcome(
    a: Analysis, status: str, reason: int | None = None, message: str = "", cause: str = ""
) -> Outcome:
    return Outcome(
        status=status,
        sop_class_uid=a.sop_class_uid,
        sop_instance_uid=a.sop_instance_uid,
        study_uid=a.study_uid,
        series_uid=a.series_uid,
        reason=reason,
        message=message,
        cause=cause,
    )


def _full(a: Analysis, message: str) -> Outcome:
    return _outcome(a, FAILED, FailureReason.OUT_OF_RESOURCES, message, STORAGE_FULL)


class Part:
    """One instance on its way in: its complete temp blob and what analysis found."""

    __slots__ = ("temp", "analysis", "written")

    def __init__(
        self,
        temp: Upload,
        analysis: Analysis | InstanceRejected,
        written: asyncio.Future[None],
    ) -> None:
        self.temp = temp
        self.analysis = analysis
        #: the temp file is complete and closed (its SHA-256 known)
        self.written = written


class Ingest:
    """Analysis runs in the calling process: parsing walks the data set without reading
    its values, which costs less than handing the bytes to a worker process would.
    Several server processes use several cores; file I/O and hashing run in threads, in
    parallel with the event loop."""

    def __init__(
        self, settings: Settings, pool: Pool, store: BlobStore, lifecycle: Lifecycle | None = None
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.store = store
        #: IOCM: rejected instances are refused; stored rejection notes take effect
        self.lifecycle = lifecycle or Lifecycle(settings, pool, store)
        #: publications whose commit failed, waiting for the index to say what it has
        self._resolving: set[asyncio.Task[None]] = set()

    def new_part(self) -> Upload:
        return self.store.create_temp()

    async def complete(self, temp: Upload) -> Part:
        """All of an instance was received: finish its file and analyse it.

        An instance that fits in the receive buffer is analysed from memory while its
        file is finished in an I/O thread; a larger one is analysed from its file.
        """
        written = asyncio.ensure_future(temp.finish())
        if temp.in_memory is None:
            await asyncio.wait([written])
        written.add_done_callback(lambda _: temp.release())  # bounded memory
        if written.done() and written.exception() is not None:
            return Part(temp, self._write_failed(written.exception()), written)
        try:
            # the SHA-256 is filled in at commit, once the I/O thread has computed it
            with temp.content() as content:
                result: Analysis | InstanceRejected = analyse_content(content, "", temp.size)
        except InstanceRejected as exc:
            result = exc
        except Exception:  # a bug must not lose the rest of the request
            log.exception("analysis of an instance failed")
            result = InstanceRejected(
                FailureReason.PROCESSING_FAILURE, "processing failure (logged by the archive)"
            )
        return Part(temp, result, written)

    @staticmethod
    def _write_failed(exc: BaseException | None) -> InstanceRejected:
        log.error("writing an instance failed: %s", exc)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return InstanceRejected(FailureReason.OUT_OF_RESOURCES, _NO_SPACE)
        return InstanceRejected(
            FailureReason.OUT_OF_RESOURCES, "the instance could not be written; try again later"
        )

    def space_problem(self, incoming: int = 0) -> str | None:
        """Why new data (``incoming`` bytes more) cannot be taken now: the storage's
        free space is, or would fall, below ``PICTOR_MIN_FREE_BYTES``. Checked before a
        request's body is read and again before each batch is published."""
        floor = self.settings.min_free_bytes
        try:
            free = self.store.free_bytes()
        except OSError as exc:
            log.error("the storage's free space is unknown: %s", exc)
            return None  # the write itself will say what is wrong
        if free < floor:
            return (
                f"the archive's storage is full: {free} bytes free, below the floor of "
                f"{floor} (PICTOR_MIN_FREE_BYTES); nothing more is stored until space is "
                "freed"
            )
        if free - incoming < floor:
            return (
                f"the archive's storage is full for this request: its {incoming} bytes "
                f"would leave {free - incoming} of the {floor} that must stay free "
                "(PICTOR_MIN_FREE_BYTES); nothing of it is stored"
            )
        return None

    def check_space(self, incoming: int = 0) -> None:
        """Raise :class:`StorageFull` (507) when :meth:`space_problem` says so."""
        problem = self.space_problem(incoming)
        if problem is not None:
            raise StorageFull(problem)

    async def discard(self, parts: Sequence[Part]) -> None:
        """Abandon parts (client hung up, body malformed): nothing of them is kept."""
        if parts:
            await asyncio.wait([p.written for p in parts])
        for part in parts:
            part.temp.discard()

    async def commit(
        self,
        parts: Sequence[Part],
        expected_study: str | None = None,
        *,
        who: str = "system",
        may_purge: bool = False,
    ) -> list[Outcome]:
        """Decide and store a batch; returns one outcome per part, in order. ``who``:
        whom the audit trail names for what a stored rejection note does; ``may_purge``:
        whether the storer may delete (a 113039 note purges at once only then)."""
        outcomes: list[Outcome | None] = [None] * len(parts)
        candidates: dict[int, Analysis] = {}
        seen: dict[str, int] = {}
        # what the index has of these UIDs is asked while the parts' files are finished
        # (hashed, written, fsynced): a DIMSE C-STORE waits for both, one after the other
        lookup = asyncio.ensure_future(
            self._lookup(
                {p.analysis.sop_instance_uid for p in parts if isinstance(p.analysis, Analysis)}
            )
        )
        try:
            if parts:
                await asyncio.wait([p.written for p in parts])
            for i, part in enumerate(parts):
                a = part.analysis
                if not isinstance(a, InstanceRejected) and part.written.exception() is not None:
                    a = self._write_failed(part.written.exception())
                if isinstance(a, InstanceRejected):
                    failed = _failed(a)
                    if a.message == _NO_SPACE:
                        failed.cause = STORAGE_FULL
                    outcomes[i] = failed
                    continue
                a = msgspec.structs.replace(a, sha256=part.temp.sha256)
                if expected_study is not None and a.study_uid != expected_study:
                    outcomes[i] = _outcome(
                        a,
                        FAILED,
                        FailureReason.STUDY_UID_MISMATCH,
                        f"Study Instance UID {a.study_uid} does not match the study in the "
                        f"request URL, {expected_study} (PS3.18 10.5.1)",
                    )
                    continue
                first = seen.get(a.sop_instance_uid)
                if first is not None:
                    same = candidates[first].sha256 == a.sha256
                    outcomes[i] = (
                        _outcome(a, ALREADY_STORED)
                        if same
                        else _outcome(
                            a,
                            FAILED,
                            FailureReason.DUPLICATE_SOP_INSTANCE,
                            f"SOP Instance UID {a.sop_instance_uid} appears twice in the request "
                            "with different content",
                        )
                    )
                    continue
                seen[a.sop_instance_uid] = i
                candidates[i] = a
        except BaseException:  # the lookup is not left running unawaited
            lookup.cancel()
            raise

        try:
            existing, rejected = await lookup
            resent = await self._resent(existing, [(a, parts[i]) for i, a in candidates.items()])
        except ServiceUnavailable as exc:
            await self.discard(parts)  # nothing of this batch was published
            for i, a in candidates.items():
                outcomes[i] = _outcome(
                    a, FAILED, FailureReason.OUT_OF_RESOURCES, exc.message, INDEX_DOWN
                )
            return self._final(parts, outcomes)
        except BaseException:
            await self.discard(parts)  # nothing of this batch was published
            raise
        full = self.space_problem()
        new: dict[int, index.NewInstance] = {}
        retired: list[str] = []
        for i, a in candidates.items():
            old = existing.get(a.sop_instance_uid)
            rejection = rejected.get(a.sop_instance_uid)
            if rejection is not None:
                outcomes[i] = _outcome(
                    a,
                    FAILED,
                    FailureReason.REJECTED_INSTANCE,
                    # the note first: a DIMSE Error Comment keeps 64 characters
                    f"rejected by note {rejection[0]} (IHE IOCM, code {rejection[1]}): SOP "
                    f"Instance UID {a.sop_instance_uid} is stored again only once the "
                    "rejection is revoked (delete the note, or restore the instance from the "
                    "trash)",
                )
            elif old is not None and (old.file_sha256 == a.sha256 or old.pk in resent):
                outcomes[i] = _outcome(a, ALREADY_STORED)
            elif full is not None and (old is None or self.settings.on_duplicate == "replace"):
                outcomes[i] = _full(a, full)  # it would be written: not below the floor
            elif old is None:
                key = instance_key(a.study_uid, a.series_uid, a.sop_instance_uid)
                new[i] = index.NewInstance(a, key)
            elif self.settings.on_duplicate == "replace":
                key = instance_key(a.study_uid, a.series_uid, a.sop_instance_uid, _version())
                new[i] = index.NewInstance(a, key, replaces=old.pk)
                retired.append(old.file_key)
            else:
                outcomes[i] = _outcome(
                    a,
                    FAILED,
                    FailureReason.DUPLICATE_SOP_INSTANCE,
                    f"a different object is already stored under SOP Instance UID "
                    f"{a.sop_instance_uid}; it was not replaced (PICTOR_ON_DUPLICATE=reject)",
                )

        if new:
            await self._store(parts, new, retired, outcomes)
        notes = [
            (a.sop_class_uid, a.sop_instance_uid, a.metadata)
            for i, a in candidates.items()
            if a.sop_class_uid == KEY_OBJECT_SELECTION
            and (o := outcomes[i]) is not None
            and o.status in (STORED, ALREADY_STORED)
        ]
        if notes:
            await self._apply_notes(notes, who, may_purge)
        for i, part in enumerate(parts):
            if i not in new:
                part.temp.discard()
        return self._final(parts, outcomes)

    async def _lookup(
        self, uids: set[str]
    ) -> tuple[dict[str, index.Existing], dict[str, tuple[str, str]]]:
        """The stored instances and the rejections of these SOP Instance UIDs."""
        if not uids:
            return {}, {}
        ordered = sorted(uids)
        existing = await index.find_existing(self.pool, ordered)
        return existing, await self.lifecycle.rejected(ordered)

    async def _resent(
        self, existing: dict[str, index.Existing], candidates: Iterable[tuple[Analysis, Part]]
    ) -> set[int]:
        """The stored instances (primary keys) that a candidate with other bytes re-sends:
        the same data set in another encoding (another transfer syntax, another door's
        File Meta Information; app.dicom.equivalence), pixels included. The stored
        object is kept."""
        differing = {
            old.pk: (a, part, old)
            for a, part in candidates
            if (old := existing.get(a.sop_instance_uid)) is not None and old.file_sha256 != a.sha256
        }
        if not differing:
            return set()
        stored = await index.stored_metadata(self.pool, list(differing))
        same: set[int] = set()
        for pk, (a, part, old) in differing.items():
            if pk not in stored or not same_instance(stored[pk], a.metadata):
                continue
            if await asyncio.to_thread(self._same_content, old, part):
                same.add(pk)
        return same

    def _same_content(self, old: index.Existing, part: Part) -> bool:
        if max(old.file_size, part.temp.size) > MAX_DECODED:
            return False  # not read whole to be compared: the duplicate rules apply
        key = old.file_key
        try:
            kept = self.store.read_blocking(key)
        except OSError:
            return False
        with part.temp.content() as received:
            return same_content(kept, received)

    @staticmethod
    def _final(parts: Sequence[Part], outcomes: list[Outcome | None]) -> list[Outcome]:
        final = [o if o is not None else Outcome(status=FAILED, reason=0x0110) for o in outcomes]
        for i, o in enumerate(final):
            stored = o.status == STORED
            failed = o.reason if o.status == FAILED else None
            record_ingest(o.status, parts[i].temp.size if stored else 0, failed)
        return final

    async def _apply_notes(
        self, notes: list[tuple[str, str, bytes]], who: str, may_purge: bool
    ) -> None:
        """Stored Key Object Selection documents: a rejection note takes effect now.
        Its own outcome stays "stored" if applying it fails (logged; storing the note
        again applies it: a rejection is idempotent)."""
        try:
            await self.lifecycle.stored(notes, who=who, may_purge=may_purge)
        except Exception:  # noqa: BLE001 - the note is stored; its effect is logged
            log.exception("applying rejection notes %s failed", [n[1] for n in notes])

    async def _store(
        self,
        parts: Sequence[Part],
        new: dict[int, index.NewInstance],
        retired: list[str],
        outcomes: list[Outcome | None],
    ) -> None:
        order = list(new)
        try:
            pubs = list(await self.store.publish([(parts[i].temp, new[i].file_key) for i in order]))
        except OSError as exc:  # nothing of the batch is published (the store undid it)
            log.error("publishing %d instances failed: %s", len(order), exc)
            no_space = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            for i in order:
                a = new[i].analysis
                outcomes[i] = (
                    _full(a, _NO_SPACE)
                    if no_space
                    else _outcome(
                        a,
                        FAILED,
                        FailureReason.OUT_OF_RESOURCES,
                        "the instance could not be written; try again later",
                    )
                )
            new.clear()  # the caller discards their temps
            return
        # a key already on disk without a row (an orphan or a concurrent writer): use a
        # versioned name; the unique SOP Instance UID in the index decides who wins
        clashes = [k for k, pub in enumerate(pubs) if not pub.linked]
        stale_intents = {pubs[k].intent for k in clashes} - {None}
        if clashes:
            for k in clashes:
                i = order[k]
                a = new[i].analysis
                key = instance_key(a.study_uid, a.series_uid, a.sop_instance_uid, _version())
                new[i] = msgspec.structs.replace(new[i], file_key=key)
            again = await self.store.publish(
                [(parts[order[k]].temp, new[order[k]].file_key) for k in clashes]
            )
            for k, pub in zip(clashes, again):
                pubs[k] = pub
        intent = await self.store.retire(retired) if retired else None
        async with AsyncExitStack() as hold:
            # replaced files are deleted after the commit: not under a backup's copy
            deletable = not retired or await hold.enter_async_context(file_deletions(self.pool))
            await self._commit(
                parts, new, order, pubs, stale_intents, retired, intent, outcomes, deletable
            )

    async def _commit(
        self,
        parts: Sequence[Part],
        new: dict[int, index.NewInstance],
        order: list[int],
        pubs: list[Publication],
        stale_intents: set[object],
        retired: list[str],
        intent: object,
        outcomes: list[Outcome | None],
        deletable: bool,
    ) -> None:
        try:
            results, replaced = await index.commit_batch(self.pool, [new[i] for i in order])
        except BaseException as exc:
            # the transaction may have committed all the same (the connection was lost
            # after the server committed): the files stay until the index says which
            # rows exist (issue #19: unpublishing them could lose stored instances;
            # leaving them unresolved left files without rows until a restart)
            self._resolve_later(pubs, stale_intents, retired, intent)
            if not isinstance(exc, ServiceUnavailable):
                raise
            for i in order:
                outcomes[i] = _outcome(
                    new[i].analysis, FAILED, FailureReason.OUT_OF_RESOURCES, exc.message, INDEX_DOWN
                )
            return
        losers: list[Publication] = []
        for k, i in enumerate(order):
            a = new[i].analysis
            if results[k] == index.INSERTED:
                outcomes[i] = _outcome(a, STORED)
                continue
            losers.append(pubs[k])
            if results[k] == index.SERIES_ELSEWHERE:
                outcomes[i] = _outcome(
                    a,
                    FAILED,
                    FailureReason.DATASET_DOES_NOT_MATCH,
                    f"Series Instance UID {a.series_uid} is already stored in another study",
                )
            else:
                now = await index.find_existing(self.pool, [a.sop_instance_uid])
                other = now.get(a.sop_instance_uid)
                same = other is not None and (
                    other.file_sha256 == a.sha256 or bool(await self._resent(now, [(a, parts[i])]))
                )
                outcomes[i] = (
                    _outcome(a, ALREADY_STORED)
                    if same
                    else _outcome(
                        a,
                        FAILED,
                        FailureReason.DUPLICATE_SOP_INSTANCE,
                        f"a different object was stored under SOP Instance UID "
                        f"{a.sop_instance_uid} at the same time",
                    )
                )
        if losers:
            # An object is deleted only when no row references it. A store whose
            # conditional create is a check and then a write (moto's) lets two writers
            # both "create" one key; the loser must not delete the winner's object.
            try:
                shared = await index.referenced_keys(self.pool, [p.key for p in losers])
            except INDEX_ERRORS:
                self._resolve_later(pubs, stale_intents, retired, intent)
                return
            if shared:
                log.warning("a concurrent writer created the same object as this one: %s", shared)
                losers = [p for p in losers if p.key not in shared]
        await self.store.settle([p for p in pubs if p not in losers], losers, stale_intents)
        if intent is not None:
            if deletable:
                await self.store.delete_retired(replaced, intent)
            else:
                self._delete_after_backup(replaced, intent)

    def _delete_after_backup(self, keys: list[str], intent: object) -> None:
        """Replaced files a running backup may still copy: deleted once it is done."""

        async def later() -> None:
            while True:
                await asyncio.sleep(5)
                try:
                    async with file_deletions(self.pool) as allowed:
                        if allowed:
                            await self.store.delete_retired(keys, intent)
                            return
                except INDEX_ERRORS:
                    pass

        task = asyncio.get_running_loop().create_task(later())
        self._resolving.add(task)
        task.add_done_callback(self._resolving.discard)

    def _resolve_later(
        self,
        pubs: list[Publication],
        stale_intents: set[object],
        retired: list[str],
        intent: object,
    ) -> None:
        """Once the index answers again: keep the published files whose rows were
        committed, unpublish the others, delete the retired files that lost their row."""

        async def resolve() -> None:
            keys = [p.key for p in pubs] + retired
            delay = 0.5
            while True:
                try:
                    kept = await index.referenced_keys(self.pool, keys)
                    break
                except INDEX_ERRORS:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
            await self.store.settle(
                [p for p in pubs if p.key in kept],
                [p for p in pubs if p.key not in kept],
                stale_intents,
            )
            if intent is not None:
                await self.store.delete_retired([k for k in retired if k not in kept], intent)
            log.warning(
                "after a failed index commit: %d of %d instances had been committed",
                sum(p.key in kept for p in pubs),
                len(pubs),
            )

        task = asyncio.get_running_loop().create_task(resolve())
        self._resolving.add(task)
        task.add_done_callback(self._resolving.discard)


def _version() -> str:
    return secrets.token_hex(4)
