"""Storage SCP: C-STORE through the same two-phase ingest as STOW-RS (PS3.4 Annex B).

Each instance arrives whole (pynetdicom assembles the P-DATA fragments, PS3.8 9.3.5,
into a :class:`app.dimse.spool.Spool`: memory while small, a spool file beyond) and is
written as a DICOM file (PS3.10 7: preamble, File Meta Information, then the data set
exactly as received in the negotiated transfer syntax, compressed or deflated ones
included), streamed from the spool in bounded chunks, then handed to
:class:`app.services.ingest.Ingest`: the same analysis, the
same duplicate rules (identical content: success; a different object under a stored SOP
Instance UID: failure 0111H unless ``on_duplicate = "replace"``), the same publish and
commit. The response goes out only once the instance is durable and visible to QIDO and
WADO.

Instances that arrive on several associations at once are committed together (one fsync
group, one index transaction): a :class:`GroupCommit` collects whatever is waiting while
the previous batch commits.

Statuses (PS3.4 B.2.3): 0000H stored (or an identical copy already was), A700H out of
resources, A900H data set does not match the SOP class (e.g. its SOP Instance UID is not
the one in the request), C000H cannot understand, 0111H duplicate SOP instance, each with
an Error Comment saying why.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydicom.dataset import Dataset

from app.dicom.analysis import Analysis
from app.dimse.bridge import Bridge
from app.dimse.spool import Spool
from app.dimse.status import SUCCESS, Service, failure, status_dataset, storage_status
from app.errors import FailureReason, InstanceRejected
from app.services.ingest import BATCH, FAILED, Ingest, Outcome, Part

#: instances committed in one batch at most (as STOW's batches)


class GroupCommit:
    """Commit parts in batches: whatever arrived while the previous batch committed."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self._waiting: list[tuple[Part, asyncio.Future[Outcome]]] = []
        self._task: asyncio.Task[None] | None = None

    async def commit(self, part: Part) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((part, future))
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
                try:
                    parts = [part for part, _ in batch]
                    # DIMSE peers may delete only while access control is off
                    trusted = not self.ingest.settings.auth
                    outcomes = await self.ingest.commit(
                        parts, who="dimse:c-store", may_purge=trusted
                    )
                except BaseException as exc:  # noqa: BLE001 - every waiter hears of it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), outcome in zip(batch, outcomes):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            self._task = None


class Storage:
    """The C-STORE service of the DIMSE process (coroutines run on the event loop)."""

    def __init__(self, ingest: Ingest, bridge: Bridge) -> None:
        self.ingest = ingest
        self.bridge = bridge
        self.group = GroupCommit(ingest)

    async def store(
        self, data: bytes | memoryview | Spool, sop_class_uid: str, sop_instance_uid: str
    ) -> Outcome:
        """Store one DICOM file's bytes (or a spool's); the outcome says what became of it."""
        if isinstance(data, Spool) and data.refused is not None:
            return Outcome(  # dropped while it arrived: the disk was at its floor
                status=FAILED,
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                reason=int(FailureReason.OUT_OF_RESOURCES),
                message=data.refused,
            )
        temp = self.ingest.new_part()
        try:
            if isinstance(data, Spool) and data.spilled:
                with data.chunks() as chunks:  # read in a thread, a bounded chunk at a time
                    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                        await temp.write(chunk)
            elif isinstance(data, Spool):
                content = data.in_memory()
                if content is None:
                    raise ValueError("the received data set was given up")
                await temp.write(content)
            else:
                await temp.write(data)
        except BaseException:
            await temp.abort()
            raise
        part = await self.ingest.complete(temp)
        problem = _request_mismatch(part.analysis, sop_class_uid, sop_instance_uid)
        if problem is not None:
            await self.ingest.discard([part])
            return Outcome(
                status=FAILED,
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                reason=int(FailureReason.DATASET_DOES_NOT_MATCH),
                message=problem,
            )
        return await self.group.commit(part)

    def handle(self, event: Any) -> Dataset:
        """EVT_C_STORE handler (a pynetdicom thread): returns the C-STORE-RSP status."""
        request = event.request
        try:
            spool = getattr(request, "_dataset_file", None)
            data = spool if isinstance(spool, Spool) else event.encoded_dataset(include_meta=True)
            outcome = self.bridge.run(
                self.store(
                    data, str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
                )
            )
        except Exception as exc:  # noqa: BLE001 - the peer gets a failure status, not a crash
            return failure(exc, Service.STORE)
        if outcome.ok:
            return status_dataset(SUCCESS)
        reason = outcome.reason or int(FailureReason.PROCESSING_FAILURE)
        return status_dataset(storage_status(reason), outcome.message)


def _request_mismatch(
    analysis: Analysis | InstanceRejected, sop_class_uid: str, sop_instance_uid: str
) -> str | None:
    """PS3.7 9.1.1.1: the Affected SOP Class / Instance UIDs are those of the data set."""
    if isinstance(analysis, InstanceRejected):
        return None  # ingest reports why it cannot use the instance
    if analysis.sop_instance_uid != sop_instance_uid:
        return "the data set's SOP Instance UID is not the Affected SOP Instance UID"
    if analysis.sop_class_uid != sop_class_uid:
        return "the data set's SOP Class UID is not the Affected SOP Class UID"
    return None
