"""Forwarding over DIMSE (issue #17): a route's batch as C-STORE requests (PS3.4 B.2)
on one association with the destination, as Pictor's AE title.

Transfer syntax as for C-MOVE (:mod:`app.dimse.retrieve`): per SOP class the stored
syntax and the uncompressed ones are proposed (PS3.8 9.3.2.2); an instance goes as
stored when the peer accepted that, else decoded to Explicit VR Little Endian, else
re-encoded losslessly, else it is not sent. A C-STORE answered with success or a
warning (PS3.4 B.2.3: B000H, B007H, B006H) is an acknowledgement; a failure status, an
aborted association or no answer within ``PICTOR_ROUTE_TIMEOUT`` is not.

pynetdicom blocks: association and each C-STORE run in a thread; the bytes are read
(and re-encoded in the codec workers) on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pynetdicom import AE, evt

from app.config import Settings
from app.dicom.deidentify import deidentify
from app.dimse.network import no_delay
from app.dimse.retrieve import as_dataset, offered_by, outgoing, store_contexts
from app.services.retrieve import StoredInstance
from app.services.routes import Deid, Sender, dimse_address
from app.storage import BlobStore

#: C-STORE statuses that store the instance (PS3.4 B.2.3, Table B.2-1)
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class DimseSender:
    """C-STOREs to one peer, an association per batch."""

    def __init__(self, store: BlobStore, target: str, calling: str, timeout: float) -> None:
        self.store = store
        self.aet, self.host, self.port = dimse_address(target)
        self.calling = calling
        self.timeout = timeout
        self.where = f"{self.aet}@{self.host}:{self.port}"

    def _associate(self, batch: Sequence[StoredInstance]) -> Any:
        ae = AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        return ae.associate(
            self.host,
            self.port,
            contexts=store_contexts(batch),
            ae_title=self.aet,
            evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)],
        )

    async def send(
        self, batch: Sequence[StoredInstance], deid: Deid | None
    ) -> tuple[set[str], str | None]:
        assoc = await asyncio.to_thread(self._associate, batch)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "refused"
            return set(), f"{self.where}: the association was {why}"
        taken: set[str] = set()
        try:
            offered = offered_by(assoc)
            for inst in batch:
                ready = await outgoing(
                    self.store, inst, offered.get(inst.sop_class_uid, frozenset())
                )
                if ready is None:
                    return taken, (
                        f"{self.where} accepted no transfer syntax that can carry "
                        f"{inst.sop_instance_uid} ({inst.transfer_syntax})"
                    )
                ds = await asyncio.to_thread(as_dataset, inst, *ready)
                if deid is not None:  # after a transcode: it has the original UIDs again
                    await asyncio.to_thread(deidentify, ds, deid.key, deid.options)
                answer = await asyncio.to_thread(assoc.send_c_store, ds)
                code = int(answer.Status) if answer is not None and "Status" in answer else None
                if code not in _STORED:
                    what = "no answer" if code is None else f"status {code:04X}H"
                    return taken, f"{self.where}: C-STORE of {inst.sop_instance_uid}: {what}"
                taken.add(inst.sop_instance_uid)
                if not assoc.is_established:
                    return taken, f"{self.where}: the association ended"
        finally:
            await asyncio.to_thread(assoc.release)
        return taken, None

    async def close(self) -> None:
        return None


def senders(store: BlobStore, settings: Settings) -> Any:
    """The factory :class:`app.services.routes.Routes` calls for a ``dimse:`` route."""

    def make(target: str, token: str | None, study: str) -> Sender:
        return DimseSender(store, target, settings.dimse_ae_title, settings.route_timeout)

    return make
